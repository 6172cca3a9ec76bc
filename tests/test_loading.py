"""Loading saved models: every broken file gives an error that names it and says what is wrong.

Each case damages one file of a freshly saved model in a known way (truncation, random bytes,
bad JSON, a config edited away from the weights) and checks that the loader refuses it with the
file's path and the defect in the message, rather than loading something else or retraining.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mmdg_lite.toys.models as toy_models
from mmdg_lite._io import ArtifactError, from_pretrained, read_config, read_safetensors
from mmdg_lite.denoisers import MLPDenoiser, load_denoiser, save_denoiser


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_denoiser(MLPDenoiser(3, hidden=16, layers=2, time_embed_dim=8, cond_dim=2), tmp_path / "m")


def _fails(folder: Path, exc: type[Exception], file: str, *fragments: str) -> str:
    """load_denoiser(folder) raises ``exc`` whose message names folder/file and each fragment."""
    with pytest.raises(exc) as info:
        load_denoiser(folder)
    msg = str(info.value)
    assert str(folder / file) in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_the_saved_model_loads(saved):
    model = load_denoiser(saved)
    assert model.config == {"dim": 3, "hidden": 16, "layers": 2, "time_embed_dim": 8, "cond_dim": 2}


# --- model.safetensors -------------------------------------------------------------------------

def test_missing_weights(saved):
    (saved / "model.safetensors").unlink()
    _fails(saved, FileNotFoundError, "model.safetensors", "does not exist", "save_denoiser")


def test_missing_folder(tmp_path):
    _fails(tmp_path / "nowhere", FileNotFoundError, "config.json", "does not exist")


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_weights(saved, keep):
    path = saved / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    _fails(saved, ArtifactError, "model.safetensors", "truncated", f"header describes {len(raw):,}")


@pytest.mark.parametrize("n_bytes", [0, 5])
def test_weights_shorter_than_the_header_length(saved, n_bytes):
    (saved / "model.safetensors").write_bytes(b"\x01" * n_bytes)
    _fails(saved, ArtifactError, "model.safetensors", "truncated", f"{n_bytes} bytes")


def test_garbage_weights(saved):
    gen = torch.Generator().manual_seed(0)
    (saved / "model.safetensors").write_bytes(bytes(torch.randint(0, 256, (4096,), generator=gen).tolist()))
    _fails(saved, ArtifactError, "model.safetensors", "not a safetensors file")


def test_garbage_header_of_plausible_length(saved):
    header = b"{not json at all}"
    (saved / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    _fails(saved, ArtifactError, "model.safetensors", "not a safetensors file", "header")


def test_git_lfs_pointer_instead_of_weights(saved):
    (saved / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 499792\n")
    _fails(saved, ArtifactError, "model.safetensors", "Git LFS pointer", "git lfs pull")


def test_bytes_after_the_tensor_data(saved):
    with (saved / "model.safetensors").open("ab") as fh:
        fh.write(b"junk")
    _fails(saved, ArtifactError, "model.safetensors", "4 unexpected bytes")


def test_non_finite_weights(saved):
    state = load_file(str(saved / "model.safetensors"))
    state["in_proj.bias"][0] = float("nan")
    save_file(state, str(saved / "model.safetensors"))
    _fails(saved, ArtifactError, "model.safetensors", "['in_proj.bias']", "NaN or inf")


# --- config.json -------------------------------------------------------------------------------

def test_missing_config(saved):
    (saved / "config.json").unlink()
    _fails(saved, FileNotFoundError, "config.json", "does not exist")


def test_invalid_json(saved):
    (saved / "config.json").write_text('{"class": "MLPDenoiser", "dim": 3,\n "hidden": 16,}\n')
    _fails(saved, ArtifactError, "config.json", "invalid JSON at line 2")


def test_config_that_is_not_an_object(saved):
    (saved / "config.json").write_text("[3, 16, 2]")
    _fails(saved, ArtifactError, "config.json", "expected a JSON object", "list")


def test_unknown_config_key(saved):
    _edit_config(saved, hiden=32)
    msg = _fails(saved, ArtifactError, "config.json", "unknown config keys ['hiden']")
    assert "'hidden'" in msg  # the valid keys are listed


def test_missing_required_config_key(saved):
    config = json.loads((saved / "config.json").read_text())
    del config["dim"]
    (saved / "config.json").write_text(json.dumps(config))
    _fails(saved, ArtifactError, "config.json", "missing config keys ['dim']")


def test_invalid_config_value(saved):
    _edit_config(saved, hidden=-3)
    _fails(saved, ArtifactError, "config.json", "invalid MLPDenoiser settings", "hidden")


def test_unknown_class(saved):
    _edit_config(saved, **{"class": "UNet2DModel"})
    _fails(saved, ArtifactError, "config.json", "'UNet2DModel'")


# --- config against weights --------------------------------------------------------------------

def test_config_whose_shapes_do_not_match_the_weights(saved):
    _edit_config(saved, hidden=32)
    msg = _fails(saved, ArtifactError, "model.safetensors", "does not match its config", "shape mismatch",
                 "blocks.0.weight: (16, 16) in the file, (32, 32) expected", "and 10 more")
    assert str(saved / "config.json") in msg


def test_config_that_drops_tensors_the_weights_hold(saved):
    _edit_config(saved, cond_dim=0)  # the file still holds the condition projection
    _fails(saved, ArtifactError, "model.safetensors",
           "unexpected tensors ['cond_proj.bias', 'cond_proj.weight', 'null_cond']")


def test_weights_that_lack_a_tensor(saved):
    state = load_file(str(saved / "model.safetensors"))
    del state["out_proj.weight"]
    save_file(state, str(saved / "model.safetensors"))
    _fails(saved, ArtifactError, "model.safetensors", "missing tensors ['out_proj.weight']")


def test_extra_layers_in_config(saved):
    _edit_config(saved, layers=3)
    _fails(saved, ArtifactError, "model.safetensors", "missing tensors ['blocks.2.bias', 'blocks.2.weight'")


# --- the helpers on their own ------------------------------------------------------------------

def test_read_config_without_allowed_keys_accepts_any(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"anything": 1}')
    assert read_config(path) == {"anything": 1}
    with pytest.raises(ArtifactError, match="missing config keys \\['dim'\\]"):
        read_config(path, required_keys=["dim"])


def test_read_safetensors_round_trip_and_hint(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.arange(6.0).reshape(2, 3)}, str(path))
    assert torch.equal(read_safetensors(path)["a"], torch.arange(6.0).reshape(2, 3))
    with pytest.raises(FileNotFoundError, match="rebuild with X"):
        read_safetensors(tmp_path / "other.safetensors", hint="rebuild with X")
    with pytest.raises(FileNotFoundError, match="is a folder"):
        read_safetensors(tmp_path)


# --- the shipped toy models never retrain behind the user's back -------------------------------

@pytest.fixture()
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a loader started training")

    monkeypatch.setattr(toy_models, "train_toy_2d", refuse)
    monkeypatch.setattr(toy_models, "train_cond_2d", refuse)


@pytest.mark.parametrize("loader, script", [("load_or_train_toy_2d", "scripts/train_toy_models.py"),
                                            ("load_or_train_cond_2d", "scripts/train_conditional_toy.py")])
def test_toy_loader_raises_instead_of_retraining(tmp_path, no_training, loader, script):
    with pytest.raises(FileNotFoundError) as info:
        getattr(toy_models, loader)(folder=tmp_path / "gone")
    msg = str(info.value)
    assert str(tmp_path / "gone" / "model.safetensors") in msg and script in msg and "retrain=True" in msg


def test_toy_loader_names_a_damaged_file_and_the_rebuild(tmp_path, no_training):
    folder = save_denoiser(MLPDenoiser(2, hidden=8, layers=1), tmp_path / "toy")
    raw = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(raw[:100])
    with pytest.raises(ArtifactError, match="truncated.*scripts/train_toy_models.py"):
        toy_models.load_or_train_toy_2d(folder=folder)


def test_toy_loader_retrains_only_when_asked(monkeypatch):
    calls = []

    def fake_train(progress=True, **kw):
        calls.append(progress)
        return "model", [], "mixture", 0.0

    monkeypatch.setattr(toy_models, "train_toy_2d", fake_train)
    assert toy_models.load_or_train_toy_2d(retrain=True, progress=False) == ("model", "mixture")
    assert calls == [False]


@pytest.mark.skipif(not (toy_models.TOY_2D_DIR / "model.safetensors").is_file(), reason="no shipped model")
def test_shipped_toy_models_load_without_training(no_training):
    model, _ = toy_models.load_or_train_toy_2d(progress=False)
    cond_model, _ = toy_models.load_or_train_cond_2d()
    assert model.config["dim"] == 2 and cond_model.config["cond_dim"] == 8


# --- diffusers folders through the checked from_pretrained ---------------------------------------

@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory) -> Path:
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    folder = tmp_path_factory.mktemp("unet") / "unet"
    unet.save_pretrained(folder)
    return folder


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_from_pretrained_loads_a_sound_folder(unet_folder):
    from diffusers import UNet2DModel

    unet = from_pretrained(UNet2DModel, unet_folder)
    assert isinstance(unet, UNet2DModel) and list(unet.config.block_out_channels) == [8, 8]


def test_from_pretrained_names_a_truncated_weights_file(unet_folder, tmp_path):
    from diffusers import UNet2DModel

    folder = _copy(unet_folder, tmp_path / "u")
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="truncated") as info:
        from_pretrained(UNet2DModel, folder)
    assert str(weights) in str(info.value)


def test_from_pretrained_names_invalid_json(unet_folder, tmp_path):
    from diffusers import UNet2DModel

    folder = _copy(unet_folder, tmp_path / "u")
    (folder / "config.json").write_text('{"_class_name": "UNet2DModel",')
    with pytest.raises(ArtifactError, match="invalid JSON") as info:
        from_pretrained(UNet2DModel, folder)
    assert str(folder / "config.json") in str(info.value)


@pytest.mark.parametrize("change, fragment", [({"block_out_channels": [16, 16]}, "size mismatch"),
                                              ({"layers_per_block": 2}, "missing keys")])
def test_from_pretrained_rejects_weights_that_do_not_match_the_config(unet_folder, tmp_path, change, fragment):
    from diffusers import UNet2DModel

    folder = _copy(unet_folder, tmp_path / "u")
    config = json.loads((folder / "config.json").read_text())
    config.update(change)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match=fragment) as info:
        from_pretrained(UNet2DModel, folder)
    msg = str(info.value)
    assert str(folder) in msg and "diffusion_pytorch_model.safetensors" in msg


def test_from_pretrained_missing_folder(tmp_path):
    from diffusers import UNet2DModel

    with pytest.raises(FileNotFoundError, match="is not a folder"):
        from_pretrained(UNet2DModel, tmp_path / "none")


def test_retrain_and_progress_must_be_bools():
    """retrain="no" is truthy: it retrained for 6,000 steps, against "loading never retrains silently"."""
    from mmdg_lite.toys import models as toy_models

    for fn in (toy_models.load_or_train_toy_2d, toy_models.load_or_train_cond_2d):
        with pytest.raises(TypeError, match="retrain must be True or False; got 'no'"):
            fn(retrain="no")
        with pytest.raises(TypeError, match="progress must be True or False; got 1"):
            fn(progress=1)


def test_a_pipeline_tokenizer_without_its_vocabulary_files_is_refused(tmp_path, capsys, monkeypatch):
    """A tokenizer folder that kept only tokenizer_config.json 'loaded' (mmdg info: 'loads') as a
    CLIPTokenizer of its two special tokens, which reads every prompt alike; vocab.json and
    merges.txt in place of tokenizer.json are a complete vocabulary and still load."""
    import shutil

    transformers = pytest.importorskip("transformers")
    from mmdg_lite import cli
    from mmdg_lite._io import check_pipeline_folder
    from mmdg_lite._resources import DATA_DIR

    pipe = shutil.copytree(DATA_DIR / "sd" / "shapes_pipeline", tmp_path / "pipe")
    tok = pipe / "tokenizer"
    original = transformers.CLIPTokenizer.from_pretrained(tok)("a red circle").input_ids
    model = json.loads((tok / "tokenizer.json").read_text())["model"]
    (tok / "tokenizer.json").unlink()
    empty = transformers.CLIPTokenizer.from_pretrained(tok)  # the defect: special tokens only
    assert len(empty) == len(set(empty.all_special_tokens)) and len(empty("a red circle").input_ids) > 3
    with pytest.raises(ArtifactError, match=r"tokenizer component\(s\) tokenizer \(CLIPTokenizer needs "
                                            r"tokenizer.json, or merges.txt and vocab.json\) hold no vocabulary"):
        check_pipeline_folder(pipe)
    monkeypatch.setattr(cli, "shipped_models", lambda: {"sd": (pipe, cli._loader_for(pipe))})
    assert cli.main(["info"]) == 1 and "sd  FAILS: ArtifactError" in capsys.readouterr().out

    (tok / "vocab.json").write_text(json.dumps(model["vocab"]))
    (tok / "merges.txt").write_text("#version: 0.2\n" + "".join(" ".join(m) + "\n" for m in model["merges"]))
    assert check_pipeline_folder(pipe) == pipe
    assert transformers.CLIPTokenizer.from_pretrained(tok)("a red circle").input_ids == original


@pytest.mark.parametrize("component, weights", [("unet", "diffusion_pytorch_model.safetensors"),
                                                ("text_encoder", "model.safetensors")])
def test_a_pipeline_component_that_lacks_a_tensor_is_refused(tmp_path, capsys, monkeypatch, component, weights):
    """A pipeline's from_pretrained initialises a tensor its component's file lacks and 'loads'
    (mmdg info said 'loads'); the checked from_pretrained loads each component strictly."""
    import shutil

    pytest.importorskip("transformers")
    import diffusers

    from mmdg_lite import cli
    from mmdg_lite._resources import DATA_DIR

    pipe = shutil.copytree(DATA_DIR / "sd" / "shapes_pipeline", tmp_path / "pipe")
    tensors = load_file(pipe / component / weights)
    dropped = sorted(tensors)[3]
    del tensors[dropped]
    save_file(tensors, pipe / component / weights, metadata={"format": "pt"})
    assert diffusers.DiffusionPipeline.from_pretrained(str(pipe), local_files_only=True) is not None  # silent
    with pytest.raises(ArtifactError, match=rf"{component}: the weights .* missing keys \['{re.escape(dropped)}'\]"):
        from_pretrained(diffusers.DiffusionPipeline, pipe)
    monkeypatch.setattr(cli, "shipped_models", lambda: {"sd": (pipe, cli._loader_for(pipe))})
    assert cli.main(["info"]) == 1 and "sd  FAILS: ArtifactError" in capsys.readouterr().out


def test_the_checked_pipeline_holds_the_weights_of_a_plain_load():
    pytest.importorskip("transformers")
    import diffusers

    from mmdg_lite._resources import DATA_DIR

    folder = DATA_DIR / "sd" / "shapes_pipeline"
    checked = from_pretrained(diffusers.DiffusionPipeline, folder)
    plain = diffusers.DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    assert checked.components.keys() == plain.components.keys()
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(checked, name).state_dict(), getattr(plain, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)



def test_the_checked_pipeline_loads_the_variant_it_is_asked_for(tmp_path):
    """Its strict component loads dropped variant=: with variant='fp16' a folder holding both files
    gave the components the non-variant weights (diffusers' own load reads the fp16 ones), and a
    folder of fp16 files alone failed ('no file named model.safetensors')."""
    pytest.importorskip("transformers")
    import diffusers

    from mmdg_lite.pipelines import tiny_sd_pipeline

    pipe = tiny_sd_pipeline()
    pipe.save_pretrained(tmp_path / "both")
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.mul_(0.5)
    pipe.save_pretrained(tmp_path / "both", variant="fp16")
    pipe.save_pretrained(tmp_path / "fp16", variant="fp16")
    for folder in (tmp_path / "both", tmp_path / "fp16"):
        checked = from_pretrained(diffusers.DiffusionPipeline, folder, variant="fp16")
        plain = diffusers.DiffusionPipeline.from_pretrained(str(folder), variant="fp16", local_files_only=True)
        for name in ("unet", "text_encoder"):
            a, b = getattr(checked, name).state_dict(), getattr(plain, name).state_dict()
            assert all(torch.equal(a[k], b[k]) for k in b), (folder.name, name)
    assert torch.equal(checked.unet.conv_in.weight, pipe.unet.conv_in.weight)

def test_a_pipeline_tokenizer_without_its_config_is_refused(tmp_path):
    """Without tokenizer_config.json the tokenizer 'loaded' with model_max_length 1e30 (the
    shipped one says 16), the length the SD pipelines pad every prompt to."""
    import shutil

    transformers = pytest.importorskip("transformers")
    from mmdg_lite._io import check_pipeline_folder
    from mmdg_lite._resources import DATA_DIR

    pipe = shutil.copytree(DATA_DIR / "sd" / "shapes_pipeline", tmp_path / "pipe")
    config = json.loads((pipe / "tokenizer" / "tokenizer_config.json").read_text())
    (pipe / "tokenizer" / "tokenizer_config.json").unlink()
    assert transformers.CLIPTokenizer.from_pretrained(pipe / "tokenizer").model_max_length > 1e29 > \
        config["model_max_length"]
    with pytest.raises(ArtifactError, match=r"component\(s\) \['tokenizer'\] have no tokenizer_config.json"):
        check_pipeline_folder(pipe)


def _sd_with_safety_checker(folder: Path) -> Path:
    """A tiny StableDiffusionPipeline saved with a safety checker and feature extractor (SD 1.x's layout)."""
    transformers = pytest.importorskip("transformers")
    import diffusers
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    from mmdg_lite.pipelines import tiny_sd_pipeline

    tiny = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1)
    config = transformers.CLIPConfig(text_config={**tiny, "vocab_size": 100}, projection_dim=16,
                                     vision_config={**tiny, "image_size": 32, "patch_size": 8})
    pipe = diffusers.StableDiffusionPipeline(**{
        **tiny_sd_pipeline().components, "safety_checker": StableDiffusionSafetyChecker(config),
        "feature_extractor": transformers.CLIPImageProcessor(size={"shortest_edge": 32},
                                                             crop_size={"height": 32, "width": 32})})
    pipe.save_pretrained(folder)
    return folder


def test_a_pipeline_with_its_safety_checker_is_not_refused_as_a_missing_library(tmp_path):
    """SD 1.x pipelines (the hub's, or one saved with save_pretrained) record their safety checker
    as ['stable_diffusion', 'StableDiffusionSafetyChecker'], a module of diffusers' pipelines, not
    a package: the library check refused them ('need stable_diffusion, which is not installed')."""
    import diffusers
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    from mmdg_lite._io import MissingExtraError, check_pipeline_folder
    from mmdg_lite.pipelines.adapt import load_pipeline

    folder = _sd_with_safety_checker(tmp_path / "sd")
    assert json.loads((folder / "model_index.json").read_text())["safety_checker"][0] == "stable_diffusion"
    assert check_pipeline_folder(folder) == folder
    assert isinstance(from_pretrained(diffusers.DiffusionPipeline, folder).safety_checker, StableDiffusionSafetyChecker)
    assert load_pipeline(folder, device="cpu").safety_checker is None  # mmdg adapt runs without it
    index = json.loads((folder / "model_index.json").read_text())
    index["safety_checker"][0] = "no_such_library"  # a library that is really missing is still named
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(MissingExtraError, match="need no_such_library, which is not installed"):
        check_pipeline_folder(folder)


def test_a_component_passed_to_from_pretrained_need_not_be_in_the_folder(tmp_path):
    """A pipeline copied without its safety checker (saving 1.2 GB of SD 1.x) loads in diffusers
    with safety_checker=None, as load_pipeline (mmdg adapt) asks; the folder check demanded the
    folder all the same ('copy the whole pipeline folder again')."""
    import shutil

    import diffusers

    from mmdg_lite._io import check_pipeline_folder
    from mmdg_lite.pipelines.adapt import load_pipeline

    folder = _sd_with_safety_checker(tmp_path / "sd")
    shutil.rmtree(folder / "safety_checker")
    assert load_pipeline(folder, device="cpu").safety_checker is None
    assert from_pretrained(diffusers.DiffusionPipeline, folder, safety_checker=None).safety_checker is None
    with pytest.raises(ArtifactError, match=r"names the component\(s\) \['safety_checker'\], but their folders"):
        check_pipeline_folder(folder)  # a full load needs it
    with pytest.raises(ArtifactError, match=r"names the component\(s\) \['safety_checker'\], but their folders"):
        from_pretrained(diffusers.DiffusionPipeline, folder)
