"""``mmdg adapt`` on a tiny SD pipeline saved to tmp_path: outputs, determinism, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("transformers")

from mmdg_lite import cli  # noqa: E402
from mmdg_lite.pipelines import tiny_sd_pipeline  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "tiny_sd"
    tiny_sd_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refs")
    for k, colour in enumerate([(230, 30, 30), (30, 30, 230), (230, 30, 30), (30, 30, 230)]):
        im = Image.new("RGB", (48, 48), (0, 0, 0))
        im.paste(colour, (12, 12, 36, 36))
        im.save(folder / f"ref_{k}.png")
    return folder


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def adapt(model, refs, out, *extra):
    return cli.main(["adapt", "--model", str(model), "--references", str(refs), "--prompt", "a red square",
                     "--num-images", "2", "--steps", "3", "--seed", "1", "--out", str(out), "--quiet", *extra])


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir())


def test_adapt_writes_images_grid_and_metrics(model, refs, tmp_path, capsys):
    out = tmp_path / "run"
    assert adapt(model, refs, out, "--baseline", "--strength", "1.0", "--fit", "crop") == 0
    # the closing line named the guided images alone, not the unguided/ folder and grid --baseline adds
    assert capsys.readouterr().out == (f"wrote 2 images, grid.png and metrics.json (and the unguided ones in "
                                       f"unguided/, grid_unguided.png) to {out}\n")
    assert sorted(p.name for p in (out / "unguided").iterdir()) == ["0000.png", "0001.png"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["0000.png", "0001.png"]
    assert (out / "grid.png").is_file() and (out / "grid_unguided.png").is_file()
    with Image.open(out / "images" / "0000.png") as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    m = json.loads((out / "metrics.json").read_text())
    assert m["num_references"] == 4 and m["prompt_aware"] is False and m["image_size"] == 32 and m["fit"] == "crop"
    assert m["references"] == str(refs.resolve()) and m["reference_prompts"] is None  # what the run read
    assert m["guided"]["latent_mmd2"] >= 0 and m["unguided"]["latent_mmd2"] >= 0
    assert m["time_ratio"] > 0 and m["strength"] == 1.0
    assert leftovers(tmp_path) == ["run"]  # the temporary folder was moved, not left behind


def test_adapt_same_seed_same_images_and_strength_zero_is_unguided(model, refs, tmp_path):
    adapt(model, refs, tmp_path / "a", "--strength", "0")
    adapt(model, refs, tmp_path / "b", "--strength", "0", "--baseline")
    a = (tmp_path / "a" / "images" / "0001.png").read_bytes()
    assert a == (tmp_path / "b" / "images" / "0001.png").read_bytes()
    assert a == (tmp_path / "b" / "unguided" / "0001.png").read_bytes()
    adapt(model, refs, tmp_path / "c", "--strength", "0", "--eval-point", "x0_hat")  # the step wrapper
    assert a == (tmp_path / "c" / "images" / "0001.png").read_bytes()
    adapt(model, refs, tmp_path / "d", "--strength", "1", "--eval-point", "x0_hat")
    assert a != (tmp_path / "d" / "images" / "0001.png").read_bytes()


def test_adapt_prompt_aware(model, refs, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\na blue square\n\na red square\na blue square\n")  # blank lines skipped
    out = tmp_path / "run"
    assert adapt(model, refs, out, "--reference-prompts", str(prompts), "--prompt", "a blue square") == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["prompt_aware"] is True and m["prompts"] == ["a red square", "a blue square"]
    assert m["reference_prompts"] == str(prompts.resolve())
    assert len(list((out / "images").iterdir())) == 4  # 2 prompts x 2 images


def test_adapt_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["adapt", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--references", "--reference-prompts", "--prompt", "--num-images",
                 "--strength", "--seed", "--out", "--steps", "--guidance-scale", "--baseline"):
        assert flag in text
    assert "(default: 4)" in text and "(default: 30)" in text


def _bad_cases(model, refs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    (broken / "notes.txt").write_text("hello")
    three = tmp_path / "three.txt"
    three.write_text("a\nb\nc\n")
    return {
        "missing model": (["--model", str(tmp_path / "nope")], "--model"),
        "model not a pipeline": (["--model", str(refs)], "model_index.json"),
        "empty references": (["--references", str(empty)], "empty"),
        "missing references": (["--references", str(tmp_path / "nope")], "--references"),
        "unreadable references": (["--references", str(broken)], "not readable images"),
        "prompt count": (["--reference-prompts", str(three)], "has 3 prompts but"),
        "missing prompts file": (["--reference-prompts", str(tmp_path / "nope.txt")], "cannot read"),
        "zero images": (["--num-images", "0"], "--num-images"),
        "negative images": (["--num-images", "-2"], "--num-images"),
        "negative strength": (["--strength", "-0.5"], "--strength"),
        "strength not a number": (["--strength", "strong"], "--strength"),
        "strength nan": (["--strength", "nan"], "--strength"),
        "guidance scale nan": (["--guidance-scale", "nan"], "--guidance-scale"),
        "guidance scale inf": (["--guidance-scale", "inf"], "--guidance-scale"),
        "guidance scale below 1": (["--guidance-scale", "0.5"], "--guidance-scale: must be a finite number >= 1"),
        "negative seed": (["--seed", "-1"], "--seed"),
        "bad device": (["--device", "cpux"], "--device"),
        "too many steps": (["--steps", "5000"], "--steps must be at most 999 for DDIMScheduler"),
        # steps_offset 1 with "leading" spacing: 1,000 of 1,000 steps would index timestep 1,000
        "steps past the offset": (["--steps", "1000"], "--steps must be at most 999 for DDIMScheduler"),
        "huge reference": (["--references", str(_huge_folder(tmp_path))], "DecompressionBombError"),
    }


def _huge_folder(tmp_path):
    """A 1-bit PNG over Pillow's decompression-bomb limit (about 179 megapixels; 24 kB on disk)."""
    folder = tmp_path / "huge"
    folder.mkdir()
    Image.new("1", (14_000, 14_000), 1).save(folder / "big.png")
    return folder


@pytest.mark.parametrize("case", ["missing model", "model not a pipeline", "empty references",
                                  "missing references", "unreadable references", "prompt count",
                                  "missing prompts file", "zero images", "negative images",
                                  "negative strength", "strength not a number", "strength nan",
                                  "guidance scale nan", "guidance scale inf", "guidance scale below 1",
                                  "negative seed", "bad device",
                                  "too many steps", "steps past the offset", "huge reference"])
def test_adapt_bad_input_exits_nonzero_and_writes_nothing(model, refs, tmp_path, capsys, case):
    work = tmp_path / "work"
    work.mkdir()
    args, message = _bad_cases(model, refs, tmp_path)[case]
    opts = {"--model": str(model), "--references": str(refs), "--prompt": "a red square", "--steps": "2",
            "--out": str(work / "out")}
    opts.update(zip(args[::2], args[1::2]))
    argv = ["adapt", "--quiet"] + [a for kv in opts.items() for a in kv]
    try:
        status = cli.main(argv)
    except SystemExit as exit_info:  # argparse's own errors
        status = exit_info.code
    assert status != 0
    err = capsys.readouterr().err
    assert message in err
    assert leftovers(work) == []  # no output folder, no temporary folder


def test_adapt_without_model_before_the_embedded_pipeline_exists(refs, tmp_path, capsys, monkeypatch):
    import mmdg_lite.pipelines.adapt as adapt_module

    monkeypatch.setattr(adapt_module, "EMBEDDED_PIPELINE", tmp_path / "not_built")
    status = cli.main(["adapt", "--references", str(refs), "--prompt", "x", "--out", str(tmp_path / "o")])
    assert status == 2 and "--model is required" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_adapt_failure_midway_leaves_nothing(model, refs, tmp_path, capsys, monkeypatch):
    import mmdg_lite.pipelines.adapt as adapt_module

    def fail(*args, **kwargs):
        raise FloatingPointError("boom")

    monkeypatch.setattr(adapt_module, "generate", fail)
    (tmp_path / "out").mkdir()  # an existing empty folder is allowed, and left as it was
    assert adapt(model, refs, tmp_path / "out") == 1
    assert "boom" in capsys.readouterr().err
    assert leftovers(tmp_path) == ["out"] and leftovers(tmp_path / "out") == []


def test_adapt_refuses_a_non_empty_out(model, refs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert adapt(model, refs, out) == 2
    assert "--out" in capsys.readouterr().err and leftovers(out) == ["keep.txt"]


def test_adapt_refuses_an_unavailable_device_naming_device(model, refs, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert adapt(model, refs, tmp_path / "out", "--device", "cuda") == 2
    err = capsys.readouterr().err
    assert "--device: device 'cuda' is not available" in err and "--model" not in err
    assert leftovers(tmp_path) == []


def test_adapt_unwritable_out_parent_is_an_input_error_before_loading(model, refs, tmp_path, capsys, monkeypatch):
    import tempfile

    import mmdg_lite.pipelines.adapt as adapt_module

    def no_write(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    def no_load(*args, **kwargs):
        raise AssertionError("the model must not load when --out cannot be written")

    monkeypatch.setattr(tempfile, "mkdtemp", no_write)
    monkeypatch.setattr(adapt_module, "load_pipeline", no_load)
    assert adapt(model, refs, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "--out: cannot write in" in err and "Permission denied" in err and "Traceback" not in err



def test_adapt_into_an_empty_folder_whose_parent_is_not_writable(model, refs, tmp_path, capsys, monkeypatch):
    # the partial folder was made beside --out, so an empty folder one may write in (a mount point
    # under a read-only /mnt) was refused: "--out: cannot write in '/mnt'; choose a folder you can write to"
    import tempfile

    out = tmp_path / "mnt" / "results"
    out.mkdir(parents=True)
    real = tempfile.mkdtemp

    def mkdtemp(*args, dir=None, **kwargs):
        if Path(dir) == out.parent:
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    assert adapt(model, refs, out) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "images", "metrics.json"]
    assert leftovers(out.parent) == ["results"]
    assert adapt(model, refs, tmp_path / "mnt" / "new") == 2  # a new folder is still made in the parent
    assert "--out: cannot write in" in capsys.readouterr().err and leftovers(out.parent) == ["results"]

def test_adapt_into_a_symlink_to_an_empty_folder(model, refs, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    assert adapt(model, refs, link) == 0
    assert link.is_symlink() and (target / "metrics.json").is_file() and (link / "grid.png").is_file()
    assert sorted(leftovers(tmp_path)) == ["link", "target"]


def test_adapt_output_folder_permissions(model, refs, tmp_path, capsys):
    import os
    import stat

    old = os.umask(0o022)
    try:
        assert adapt(model, refs, tmp_path / "new") == 0
        existing = tmp_path / "existing"
        existing.mkdir()
        existing.chmod(0o750)
        assert adapt(model, refs, existing) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o755  # the umask, not mkdtemp's 0700
    assert stat.S_IMODE(existing.stat().st_mode) == 0o750  # an existing empty folder keeps its own
    assert "wrote 2 images," in capsys.readouterr().out


def test_adapt_flags_are_not_abbreviated(model, refs, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        adapt(model, refs, tmp_path / "out", "--stre", "2")
    assert exit_info.value.code == 2 and not (tmp_path / "out").exists()


def test_adapt_out_spelled_as_the_current_folder_or_empty(model, refs, tmp_path, capsys, monkeypatch):
    # "." and "./" have no name: they passed the checks and failed after sampling (results lost)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert adapt(model, refs, "./") == 0
    assert (here / "metrics.json").is_file() and (here / "grid.png").is_file()
    assert Path.cwd() == here and here.exists()  # filled in place, not removed and re-created
    assert leftovers(tmp_path) == ["here"]
    import mmdg_lite.pipelines.adapt as adapt_module

    def no_load(*args, **kwargs):
        raise AssertionError("the model must not load for a bad --out")

    monkeypatch.setattr(adapt_module, "load_pipeline", no_load)
    assert adapt(model, refs, "") == 2
    assert "--out: must name a folder; got ''" in capsys.readouterr().err


def test_adapt_refuses_a_dangling_out_link_before_loading(model, refs, tmp_path, capsys, monkeypatch):
    import mmdg_lite.pipelines.adapt as adapt_module

    def no_load(*args, **kwargs):
        raise AssertionError("the model must not load for a bad --out")

    monkeypatch.setattr(adapt_module, "load_pipeline", no_load)
    link = tmp_path / "dangle"
    link.symlink_to(tmp_path / "missing", target_is_directory=True)
    assert adapt(model, refs, link) == 2
    err = capsys.readouterr().err
    assert "--out: " in err and "which does not exist" in err
    assert leftovers(tmp_path) == ["dangle"]


def test_a_pipeline_missing_a_component_folder_or_its_library(model, tmp_path, monkeypatch):
    import importlib.util
    import shutil

    from mmdg_lite._io import ArtifactError, MissingExtraError
    from mmdg_lite.pipelines.adapt import load_pipeline

    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    shutil.rmtree(broken / "tokenizer")  # transformers 5 built an empty tokenizer and "loaded"
    with pytest.raises(ArtifactError, match=r"component\(s\) \['tokenizer'\].*missing or empty"):
        load_pipeline(broken, device="cpu")
    assert cli.main(["adapt", "--model", str(broken), "--references", str(model), "--prompt", "x",
                     "--out", str(tmp_path / "o"), "--quiet"]) == 2
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"need transformers, which is not installed: pip install 'mmdg_lite\[sd\]'"):
        load_pipeline(model, device="cpu")


def test_shorten_cuts_at_a_sentence_or_a_word():
    text = "First sentence here. " * 30
    short = cli._shorten(text, 100)
    assert short.endswith("here. [...]") and len(short) <= 107
    words = cli._shorten("word " * 200, 50)
    assert words.endswith("word [...]")
    assert cli._shorten("short", 50) == "short"


@pytest.mark.parametrize("case", ["unreadable references", "prompt count", "huge reference"])
def test_adapt_reads_the_references_before_the_model_loads(model, refs, tmp_path, capsys, monkeypatch, case):
    # they were read after the model had loaded (minutes for an SDXL checkpoint)
    import mmdg_lite.pipelines.adapt as adapt_module

    def no_load(*args, **kwargs):
        raise AssertionError("the model must not load before the references are checked")

    monkeypatch.setattr(adapt_module, "load_pipeline", no_load)
    args, message = _bad_cases(model, refs, tmp_path)[case]
    opts = {"--model": str(model), "--references": str(refs), "--prompt": "a red square",
            "--out": str(tmp_path / "out"), **dict(zip(args[::2], args[1::2]))}
    assert cli.main(["adapt", "--quiet"] + [a for kv in opts.items() for a in kv]) == 2
    assert message in capsys.readouterr().err


def test_adapt_metrics_name_a_relative_model_folder_absolutely(model, refs, tmp_path, monkeypatch):
    # metrics.json kept --model as typed ("./tiny_sd"), beside an absolute references path: read
    # from another folder, it named no pipeline
    monkeypatch.chdir(model.parent)
    assert cli.main(["adapt", "--model", "./tiny_sd", "--references", str(refs), "--prompt", "a red square",
                     "--num-images", "1", "--steps", "2", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["model"] == str(model.resolve()) and m["references"] == str(refs.resolve())


@pytest.mark.parametrize("kind", ["StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"])
def test_adapt_refuses_a_pipeline_that_needs_an_input_image(model, refs, tmp_path, capsys, kind):
    """An img2img / inpainting pipeline folder loaded, the references were encoded, and then
    diffusers failed with 'Input is in incorrect format' (exit 1): mmdg adapt samples from text
    only, so it is a --model input error naming the pipeline, before any sampling."""
    import diffusers

    from mmdg_lite.pipelines.adapt import generate

    base = tiny_sd_pipeline()
    pipe = getattr(diffusers, kind)(**base.components)
    folder = tmp_path / "image_pipe"
    pipe.save_pretrained(folder)
    assert adapt(folder, refs, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "--model" in err and kind in err and "needs an input image" in err and "incorrect format" not in err
    assert leftovers(tmp_path) == ["image_pipe"]
    with pytest.raises(ValueError, match=f"{kind} needs an input image"):
        generate(pipe, "a red square", 1, steps=1, progress=False)
    generate(base, "a red square", 1, steps=2, progress=False)  # the text-to-image pipeline still runs


def test_adapt_replaces_a_scheduler_guidance_cannot_run_through(refs, tmp_path, capsys):
    """Stable Diffusion 1.x ships PNDM, which guidance cannot run through: mmdg adapt encoded the
    references, ran a UNet step and then failed (exit 1), and no flag could change the scheduler.
    It is refused before sampling, naming --scheduler, which builds another from its config."""
    from diffusers import PNDMScheduler

    pipe = tiny_sd_pipeline()
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)  # as SD 1.5's
    folder = tmp_path / "pndm_sd"
    pipe.save_pretrained(folder)
    assert adapt(folder, refs, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "--scheduler keep" in err and "PNDMScheduler" in err and "--scheduler ddim" in err
    assert leftovers(tmp_path) == ["pndm_sd"]
    assert adapt(folder, refs, tmp_path / "out", "--scheduler", "dpm", "--steps", "1000") == 2  # t = 1 twice
    err = capsys.readouterr().err
    assert "--steps 1000" in err and "use fewer steps" in err and "choose one with --scheduler" not in err
    for name, kind in (("ddim", "DDIMScheduler"), ("euler", "EulerDiscreteScheduler")):
        assert adapt(folder, refs, tmp_path / name, "--scheduler", name) == 0
        assert json.loads((tmp_path / name / "metrics.json").read_text())["scheduler"] == kind


def test_adapt_steps_a_scheduler_cannot_set_up_are_named(refs, tmp_path, capsys):
    """PNDM with its Runge-Kutta warm-up cannot set up 3 steps (nor fewer): the --steps check
    said '--steps must be at most None'."""
    from diffusers import PNDMScheduler

    pipe = tiny_sd_pipeline()
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=False)
    folder = tmp_path / "pndm_prk"
    pipe.save_pretrained(folder)
    assert adapt(folder, refs, tmp_path / "out", "--scheduler", "ddim") == 0  # replaced: any steps
    assert adapt(folder, refs, tmp_path / "out2") == 2
    err = capsys.readouterr().err
    assert "--steps 3: PNDMScheduler" in err and "None" not in err and "another --scheduler" in err


@pytest.mark.parametrize("component", ["unet", "text_encoder"])
def test_a_pipeline_component_without_its_weights_file_is_named(model, tmp_path, component):
    """A model folder that lost its weights: diffusers said a .bin file was missing and fell back to
    pickle loading; the error names the component and the formats looked for, before loading."""
    import shutil

    from mmdg_lite._io import ArtifactError
    from mmdg_lite.pipelines.adapt import load_pipeline

    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    (weights,) = (broken / component).glob("*.safetensors")
    weights.unlink()
    with pytest.raises(ArtifactError, match=rf"component\(s\) \['{component}'\] hold a config.json but no "
                                            r"weights file \(.*\.safetensors"):
        load_pipeline(broken, device="cpu")
    assert cli.main(["adapt", "--model", str(broken), "--references", str(model), "--prompt", "x",
                     "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert not (tmp_path / "o").exists()



@pytest.mark.parametrize("component, weights", [("unet", "diffusion_pytorch_model.safetensors"),
                                                ("text_encoder", "model.safetensors")])
def test_adapt_refuses_a_pipeline_component_that_lacks_a_tensor(model, refs, tmp_path, capsys, component, weights):
    """diffusers' own pipeline load initialises a tensor a component's weights file lacks (at
    random) and sampled with it: mmdg adapt --quiet wrote its images with exit status 0, silently."""
    import shutil

    from safetensors.torch import load_file, save_file

    from mmdg_lite.pipelines.adapt import load_pipeline

    broken = shutil.copytree(model, tmp_path / "broken")
    tensors = load_file(broken / component / weights)
    dropped = sorted(tensors)[-1]
    del tensors[dropped]
    save_file(tensors, broken / component / weights, metadata={"format": "pt"})
    work = tmp_path / "work"
    work.mkdir()
    assert adapt(broken, refs, work / "out") == 2
    assert f"missing keys ['{dropped}']" in capsys.readouterr().err and leftovers(work) == []
    assert load_pipeline(model, device="cpu").unet is not None  # the intact folder loads

def test_adapt_reference_prompts_file_with_a_byte_order_mark(model, refs, tmp_path):
    """A prompts file saved with a UTF-8 byte-order mark (Windows Notepad): the mark was read as part
    of the first prompt, whose features then matched no prompt, and the images changed silently."""
    text = "a red square\na blue square\na red square\na blue square\n"
    plain, marked = tmp_path / "plain.txt", tmp_path / "marked.txt"
    plain.write_text(text, encoding="utf-8")
    marked.write_text(text, encoding="utf-8-sig")
    assert marked.read_bytes().startswith(b"\xef\xbb\xbf")
    for name, prompts in (("p", plain), ("m", marked)):
        assert adapt(model, refs, tmp_path / name, "--reference-prompts", str(prompts),
                     "--prompt", "a red square", "--prompt", "a blue square", "--strength", "3") == 0
    for k in range(4):
        assert (tmp_path / "p" / "images" / f"{k:04d}.png").read_bytes() == \
            (tmp_path / "m" / "images" / f"{k:04d}.png").read_bytes(), k


def test_adapt_metrics_list_each_reference_file_with_its_prompt(model, tmp_path):
    """--reference-prompts pairs prompts with files sorted as text, so 1, 10, 2 for unpadded numbers;
    metrics.json did not say which file got which prompt. It lists them in the order read."""
    from mmdg_lite.images import load_reference_folder

    folder = tmp_path / "refs"
    folder.mkdir()
    for k, grey in ((1, 40), (2, 120), (10, 220)):
        Image.new("RGB", (32, 32), (grey, grey, grey)).save(folder / f"{k}.png")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("first\nsecond\nthird\n")
    assert adapt(model, folder, tmp_path / "run", "--reference-prompts", str(prompts),
                 "--prompt", "first") == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(m["reference_files"].items()) == [("1.png", "first"), ("10.png", "second"), ("2.png", "third")]
    # the order the loader read: the files' grey levels, 40, 220, 120
    means = load_reference_folder(folder, 8, 3).mean(dim=(1, 2, 3))
    greys = [round(float((v + 1) * 127.5)) for v in means]
    assert greys == [40, 220, 120]
    assert adapt(model, folder, tmp_path / "plain", "--prompt", "first") == 0
    assert json.loads((tmp_path / "plain" / "metrics.json").read_text())["reference_files"] == ["1.png", "10.png", "2.png"]


def test_adapt_names_a_reference_link_whose_target_is_missing(model, tmp_path, capsys):
    # a folder holding only a broken link was called "empty" (the link was skipped without a word)
    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / "ref.png").symlink_to(tmp_path / "moved.png")
    assert adapt(model, refs, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "ref.png (a link to" in err and "which does not exist" in err and "empty" not in err
    assert leftovers(tmp_path) == ["refs"]


def test_adapt_empty_references_name_their_subfolders(model, tmp_path, capsys):
    refs = tmp_path / "refs"
    (refs / "squares").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(refs / "squares" / "a.png")
    assert adapt(model, refs, tmp_path / "out") == 2
    assert "is empty; put reference images in it (its subfolders ['squares'] are not read)" in capsys.readouterr().err



    (refs / "circles").symlink_to(refs / "squares", target_is_directory=True)  # a linked folder: the same
    assert adapt(model, refs, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "(its subfolders ['circles', 'squares'] are not read)" in err and "recursive" not in err


@pytest.mark.parametrize("scheduler", ["keep", "euler"])
def test_adapt_refuses_one_step_that_returns_the_initial_noise(model, refs, tmp_path, capsys, scheduler):
    """SD's 'leading' spacing with steps_offset 1 gives --steps 1 only t=1: the run wrote its x_T
    as images (sample() refuses the same run at t=0). The step itself is the oracle: at t=1 it
    moves x_T by under 2 % of its size."""
    import copy

    import torch

    from mmdg_lite.pipelines.adapt import load_pipeline
    sched = copy.deepcopy(load_pipeline(str(model)).scheduler)
    sched.set_timesteps(1)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    moved = sched.step(eps, sched.timesteps[0], x).prev_sample
    assert (moved - x).norm() < 0.02 * x.norm()
    assert adapt(model, refs, tmp_path / "out", "--steps", "1", "--scheduler", scheduler) == 2
    assert "--steps 1 (" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert adapt(model, refs, tmp_path / "out2", "--steps", "2", "--scheduler", scheduler) == 0
