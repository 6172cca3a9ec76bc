"""The scripts' command lines refuse what would destroy work or waste a build (an outside probe
ran each of them): nothing they refuse writes a file."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=300, cwd=cwd or ROOT,
                          env={**os.environ, **(env or {})})


def test_student_notebooks_never_overwrite_the_instructor_copies(tmp_path):
    # run on a copy: were the refusal to regress, it would replace these, not the real notebooks
    (tmp_path / "notebooks").mkdir()
    nb = tmp_path / "notebooks" / "01_mmd_basics.ipynb"
    nb.write_bytes((ROOT / "notebooks" / "01_mmd_basics.ipynb").read_bytes())
    before = nb.read_bytes()
    script = str(ROOT / "scripts" / "make_student_notebooks.py")
    out = run(sys.executable, script, "--out", "notebooks", "notebooks/01_mmd_basics.ipynb", cwd=tmp_path)
    assert out.returncode == 2 and "would overwrite" in out.stderr  # it replaced all eight
    assert nb.read_bytes() == before
    (tmp_path / "notes.md").write_text("# notes")
    out = run(sys.executable, script, "--out", "s", "notes.md", cwd=tmp_path)
    assert out.returncode == 2 and "not a notebook: 'notes.md'" in out.stderr and not (tmp_path / "s").exists()


def test_explorer_smoke_run_needs_its_own_folder(monkeypatch, capsys, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("precompute", ROOT / "scripts" / "precompute_explorer_grids.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def no_sweep(*args, **kwargs):  # were the refusal to regress, nothing is computed or written
        raise AssertionError("the sweep must not run")
    monkeypatch.setattr(module, "explorer_grid_sweep", no_sweep)
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    for argv, match in ((["--domain", "digits", "--tiny"], "--tiny needs --out"),  # replaced the shipped grid
                        (["--domain", "digits", "--tiny", "--out", str(ROOT / "data" / "explorer")], "--tiny needs --out"),
                        (["--domain", "digits", "--threads", "0"], "--threads: must be a positive integer"),
                        # --out under a file: a raw NotADirectoryError after the whole sweep
                        (["--domain", "digits", "--tiny", "--out", str(blocker / "g")], "--out: cannot create the folder")):
        with pytest.raises(SystemExit) as exit_info:
            module.main(argv)
        assert exit_info.value.code == 2 and match in capsys.readouterr().err


def test_model_builders_check_out_before_training_and_share_their_weights(tmp_path):
    taken = tmp_path / "a_file"
    taken.write_text("mine")
    out = run(sys.executable, "scripts/train_digits_unet.py", "--tiny", "--out", str(taken))
    assert out.returncode == 2 and "exists and is not a folder" in out.stderr and taken.read_text() == "mine"
    out = run(sys.executable, "scripts/train_digits_unet.py", "--tiny", "--out", str(tmp_path / "m"))
    assert out.returncode == 0, out.stderr
    weights = tmp_path / "m" / "diffusion_pytorch_model.safetensors"
    assert stat.S_IMODE(weights.stat().st_mode) == 0o644  # safetensors writes 0600


def test_shell_scripts_answer_help_without_running():
    for script, first in (("test.sh", "Run every test"), ("run.sh", "The main job"), ("build_book.sh", "Build the book")):
        out = run("bash", f"scripts/{script}", "--help")
        assert out.returncode == 0 and out.stdout.startswith(first), (script, out.stdout[:200], out.stderr[:200])
        assert "[test]" not in out.stdout and "[setup]" not in out.stdout  # test.sh --help ran the whole suite


def test_env_setup_stops_on_a_failed_install(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text("#!/bin/bash\necho 'ERROR: pip failed' >&2\nexit 1\n")
    python.chmod(0o755)
    out = run("bash", "-c", "source scripts/_env.sh && echo CONTINUED", env={"MMDG_VENV": str(venv)})
    # the failures were swallowed and the environment stamped as installed
    assert out.returncode != 0 and "CONTINUED" not in out.stdout and not (venv / ".mmdg-stamp").exists()


@pytest.mark.parametrize("script,valid", [("build_book.sh", "--execute"), ("run.sh", "--refresh")])
def test_shell_scripts_refuse_an_unknown_argument_before_the_environment_setup(tmp_path, script, valid):
    """`build_book.sh --exectue` created .venv and installed every extra (minutes) before it said
    the argument was unknown."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f"#!/bin/bash\ntouch {tmp_path / 'setup-ran'}\nexit 1\n")
    python.chmod(0o755)
    out = run("bash", f"scripts/{script}", "--bogus", env={"MMDG_VENV": str(venv)})
    assert out.returncode == 2, (out.stdout[-300:], out.stderr[-300:])
    assert "unknown argument '--bogus'" in out.stderr and valid in out.stderr
    assert not (tmp_path / "setup-ran").exists(), "the environment setup ran before the argument check"


@pytest.mark.parametrize("flag,value", [("--samples", "0"), ("--steps", "0"), ("--timeout", "0"), ("--seed", "-1"),
                                        ("--timeout", "inf"), ("--seed", str(2**63)),  # these two: raw tracebacks
                                        ("--timeout", "0.0001")])  # init_distributed refused it in a traceback
def test_distributed_example_names_its_flags(flag, value):
    out = run(sys.executable, "scripts/distributed_example.py", flag, value)
    assert out.returncode == 2 and flag in out.stderr and "Traceback" not in out.stderr


def test_eval_only_without_a_saved_model_says_how_to_rebuild(tmp_path, monkeypatch, capsys):
    # a raw FileNotFoundError / JSONDecodeError traceback before
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    from _artifacts import build

    monkeypatch.setattr(sys, "argv", ["train_toy_models.py", "--eval-only"])
    with pytest.raises(SystemExit) as exit_info:
        build("doc", tmp_path / "missing", train=None, load_world=lambda: None, evaluate=None, describe={})
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--eval-only needs the saved model" in err
    assert "running train_toy_models.py without --eval-only" in err


def test_a_failed_evaluation_writes_no_model_beside_the_old_training_record(tmp_path, monkeypatch):
    # the new weights were saved before the (long) evaluation: one that failed or was interrupted left
    # them beside the old training.json, whose sha256 and quality were the old model's
    from mmdg_lite.denoisers import MLPDenoiser

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    from _artifacts import build

    monkeypatch.setattr(sys, "argv", ["train_toy_models.py"])
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "training.json").write_text("old")

    def evaluate(model, world):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build("doc", folder, lambda: (MLPDenoiser(2, hidden=4, layers=1), [1.0] * 500, None, 0.1), lambda: None,
              evaluate, {})
    assert sorted(p.name for p in folder.iterdir()) == ["training.json"]
    assert (folder / "training.json").read_text() == "old"
    build("doc", folder, lambda: (MLPDenoiser(2, hidden=4, layers=1), [1.0] * 500, None, 0.1), lambda: None,
          lambda model, world: {"off_mode": 0.5}, {})
    info = json.loads((folder / "training.json").read_text())
    assert info["quality"] == {"off_mode": 0.5} and (folder / "model.safetensors").is_file()


def test_sd_pipeline_build_writes_nothing_when_its_sampling_fails(tmp_path, monkeypatch, one_thread):
    # it saved the pipeline, then sampled 16 images per caption: a failure or Ctrl-C there left the
    # new weights in data/sd/shapes_pipeline beside the old training.json (the old sha256s)
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_sd_pipeline", ROOT / "scripts" / "train_sd_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def detect(images):
        raise KeyboardInterrupt
    monkeypatch.setattr(module, "detect_shapes", detect)
    with pytest.raises(KeyboardInterrupt):
        module.build(tmp_path, tiny=True)
    assert list(tmp_path.iterdir()) == []


def test_build_scripts_need_only_the_models_they_load():
    # train_sd_pipeline.py's --help said "train (needs data/images/shapes_vae)", but it trains its
    # own 4-channel VAE (train_shapes_vae) and never loads the shipped one
    for script in sorted((ROOT / "scripts").glob("train_*.py")):
        text = script.read_text()
        for model in re.findall(r"needs data/images/(\w+)", text.split('"""')[1]):
            assert f"load_{model}(" in text, f"{script.name} says it needs data/images/{model} but never loads it"


def test_toy_build_scripts_name_the_folder_they_write():
    # train_toy_models.py said "Train the shipped toy models and write them to data/toy/" (its --help's
    # first line), but it builds only mlp_2d; the conditional model is train_conditional_toy.py's
    from mmdg_lite.toys import COND_2D_DIR, TOY_2D_DIR

    for script, folder in (("train_toy_models.py", TOY_2D_DIR), ("train_conditional_toy.py", COND_2D_DIR)):
        first = (ROOT / "scripts" / script).read_text().split("\n", 1)[0]
        assert f"data/toy/{folder.name}/" in first, (script, first)


def _benchmark(monkeypatch, name: str, *argv: str):
    """benchmarks/<name>.py loaded as a module, with ``argv`` as its command line."""
    import importlib.util

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    path = ROOT / "benchmarks" / f"{name}.py"
    monkeypatch.setattr(sys, "argv", [str(path), *argv])
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sandbox = Path(tempfile.mkdtemp(prefix="benchmark-"))  # were a refusal to regress, it writes here
    for attr in ("OUT", "PLOT", "OUT_RFF", "RESULTS", "CACHE", "PARTIAL"):
        if isinstance(getattr(module, attr, None), Path):
            monkeypatch.setattr(module, attr, sandbox / getattr(module, attr).name)
    return module


def test_benchmark_tables_record_every_argument_they_ran_with(monkeypatch, tmp_path):
    # distributed.md said `python benchmarks/distributed.py` for a run with --repeats 3 (run_all.sh)
    bench = _benchmark(monkeypatch, "distributed", "--repeats", "3", "--worlds", "1", "--sizes", "8")
    seen = {}

    def measure(world, sizes, repeats, out):  # the processes are not the point here
        seen["repeats"] = repeats
        rows = [dict(n=8, mode=m, wall_s=1.0, cpu_s=1.0, comm_s=0.0, gathers=0, sent_per_step=0.0,
                     received_per_step=0.0) for m in ("exact", "rff")]
        return dict(rows=rows, samples={"8/exact": [[0.0]], "8/rff": [[0.0]]})
    monkeypatch.setattr(bench, "measure", measure)
    monkeypatch.setattr(bench, "OUT", tmp_path / "distributed.md")
    bench.main()
    assert seen["repeats"] == 3
    text = (tmp_path / "distributed.md").read_text()
    assert "Generated by `python benchmarks/distributed.py --repeats 3 --worlds 1 --sizes 8`" in text
    committed = (ROOT / "benchmarks" / "results" / "distributed.md").read_text()
    best_of = re.search(r"best of (\d+)", committed).group(1)
    assert f"`python benchmarks/distributed.py --repeats {best_of}`" in committed  # the command that wrote it
    assert f'"distributed|--repeats {best_of}"' in (ROOT / "benchmarks" / "run_all.sh").read_text()


def test_quick_benchmark_runs_never_replace_the_committed_tables(monkeypatch, tmp_path, capsys):
    # images.py --quick rewrote results/images.{md,json}, which three other benchmarks read
    from concurrent.futures import ThreadPoolExecutor

    bench = _benchmark(monkeypatch, "images", "--quick")
    results = tmp_path / "results"
    results.mkdir()
    for suffix in (".md", ".json"):
        (results / f"images{suffix}").write_text("committed")
    monkeypatch.setattr(bench, "OUT", results / "images.md")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(bench, "ProcessPoolExecutor", ThreadPoolExecutor)
    monkeypatch.setattr(bench, "adaptation_rows", lambda *a, **k: {"unguided": {}})
    monkeypatch.setattr(bench, "sweep", lambda *a, **k: {})
    timed = []
    monkeypatch.setattr(bench, "step_time_ratio", lambda **kwargs: timed.append(kwargs) or {})
    monkeypatch.setattr(bench, "render", lambda data: "# quick\n" + data["meta"]["command"])
    bench.main()
    assert timed == [{"repeats": 2, "num_steps": 20}]  # the smoke run timed 30 repeats of 50 steps (minutes)
    assert [(results / f"images{s}").read_text() for s in (".md", ".json")] == ["committed"] * 2
    quick = tmp_path / "tmp" / "mmdg_benchmarks_quick" / "images.md"
    assert quick.read_text().endswith("benchmarks/images.py --quick")
    for extra in ("--timing", "--render"):  # they rewrite the committed files: --quick cannot apply
        monkeypatch.setattr(sys, "argv", ["images.py", "--quick", extra])
        with pytest.raises(SystemExit) as exit_info:
            bench.main()
        assert exit_info.value.code == 2 and "--quick cannot be combined" in capsys.readouterr().err
    assert [(results / f"images{s}").read_text() for s in (".md", ".json")] == ["committed"] * 2


def test_benchmark_counts_are_refused_below_one_before_any_work(monkeypatch, capsys):
    # fd_samples --seeds 0 and --jobs 0, gradients --repeats 0, distributed --repeats 0: raw tracebacks
    for name, argv, option in (("fd_samples", ["--seeds", "0"], "--seeds"), ("fd_samples", ["--jobs", "0"], "--jobs"),
                               ("gradients", ["--repeats", "0"], "--repeats"),
                               ("gradients", ["--chunk-size", "-1"], "--chunk-size"),
                               ("toy_guidance", ["--n", "-5"], "--n"), ("distributed", ["--repeats", "x"], "--repeats"),
                               ("performance", ["--budget", "0"], "--budget"),  # every cell skipped, table written
                               ("performance", ["--max-minutes", "nan"], "--max-minutes")):
        bench = _benchmark(monkeypatch, name, *argv)
        heavy = {"performance": "performance", "gradients": "time_gradients"}.get(name)
        if heavy:  # were the refusal to regress, fail at once rather than time every cell
            monkeypatch.setattr(bench, heavy, lambda *args: pytest.fail("the benchmark ran"))
        with pytest.raises(SystemExit) as exit_info:
            bench.main()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, (name, argv, err)
        what = "number" if name == "performance" else "integer"
        assert f"argument {option}: must be a positive {what}; got {argv[1]!r}" in err
    bench = _benchmark(monkeypatch, "fd_samples", "--n", "100")  # exited 1 with a bare message, no usage
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "usage: " in err and "--n: must be a positive multiple of 256; got 100" in err


def test_defaults_benchmark_keeps_its_table_when_interrupted_and_resumes_only_like_runs(monkeypatch, tmp_path,
                                                                                         capsys):
    # an interrupted run replaced the committed defaults.json with its first rows, and --resume
    # --n 200 reported rows run at --n 1000 as 200-sample rows
    bench = _benchmark(monkeypatch, "defaults", "--seeds", "1", "--sweep-seeds", "1", "--n", "10")
    for name in ("OUT", "CACHE", "PARTIAL"):
        monkeypatch.setattr(bench, name, tmp_path / getattr(bench, name).name)
    bench.CACHE.write_text('{"a": {}}\n')  # committed rows of another run (no settings: the defaults)
    monkeypatch.setattr(bench, "rows", lambda: {"first": "a", "second": "b"})
    calls = []

    def run(factory, name, seed, n):
        calls.append(factory)
        if factory == "b" and len(calls) < 10:
            raise KeyboardInterrupt
        return {"tv": 0.05, "off_mode": 0.0}
    monkeypatch.setattr(bench, "run", run)
    with pytest.raises(KeyboardInterrupt):
        bench.main()
    assert bench.CACHE.read_text() == '{"a": {}}\n' and not bench.OUT.exists()
    assert set(json.loads(bench.PARTIAL.read_text())) == {"settings", "first"}
    for argv in (["--resume", "--n", "20"], ["--resume", "--seeds", "2"]):  # the partial rows are 10-sample, 1 seed
        monkeypatch.setattr(sys, "argv", ["defaults.py", *argv, "--sweep-seeds", "1"])
        with pytest.raises(SystemExit) as exit_info:
            bench.main()
        assert exit_info.value.code == 2 and "--resume: defaults.partial.json was run with" in capsys.readouterr().err
    calls.clear()
    calls.extend([None] * 10)  # the second row runs now
    monkeypatch.setattr(sys, "argv", ["defaults.py", "--resume", "--seeds", "1", "--sweep-seeds", "1", "--n", "10"])
    bench.main()
    assert "a" not in calls[10:] and "b" in calls[10:]  # the first row came from the partial run
    assert set(json.loads(bench.CACHE.read_text())) == {"settings", "first", "second"}
    assert not bench.PARTIAL.exists() and "`python benchmarks/defaults.py --resume --seeds 1" in bench.OUT.read_text()


def test_quick_sd_benchmark_writes_to_the_temp_dir(monkeypatch, tmp_path):
    # sd.py --quick (2 seeds) replaced results/sd.md and sd.json
    bench = _benchmark(monkeypatch, "sd", "--quick")
    monkeypatch.setattr(bench, "OUT", tmp_path / "results" / "sd.md")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))

    class Pipe:
        def set_progress_bar_config(self, **kw):
            pass
    monkeypatch.setattr("diffusers.StableDiffusionPipeline.from_pretrained", lambda *a, **k: Pipe())
    monkeypatch.setattr(bench, "pairing", lambda pipe, seeds: {
        "summary": {label: {k: (0.5, 0.1) for k in bench.KEYS} for label, _, _ in bench.ROWS}})
    monkeypatch.setattr(bench, "timing", lambda pipe, repeats: dict(
        unguided_s=1.0, guided_s=1.0, ratio=1.0, repeats=repeats, pair_ratio_range=(1.0, 1.0)))
    bench.main()
    assert not (tmp_path / "results").exists()
    quick = tmp_path / "mmdg_benchmarks_quick"
    assert "Generated by `python benchmarks/sd.py --quick`" in (quick / "sd.md").read_text()
    assert json.loads((quick / "sd.json").read_text())["timing"]["repeats"] == 2


def test_benchmark_help_gives_the_whole_first_paragraph_and_one_repeat_works(monkeypatch, capsys):
    # --help stopped mid-sentence ("... and the sweep that"); gradients.py --repeats 1 raised
    # StatisticsError after its timing runs
    for name, words in (("defaults", "chose the default mechanism"), ("distributed", "cost model on paper"),
                        ("images_untuned", "what a user who tunes nothing gets")):
        bench = _benchmark(monkeypatch, name, "--help")
        with pytest.raises(SystemExit) as exit_info:
            monkeypatch.setitem(sys.modules, "__main__", bench)  # parse_jobs reads the running script's doc
            bench.main()
        out = capsys.readouterr().out
        assert exit_info.value.code == 0 and words in " ".join(out.split()), (name, out)
    bench = _benchmark(monkeypatch, "gradients")
    row = bench.time_gradients(16, 1)
    assert row["closed_iqr"] == 0.0 and row["closed"] > 0 and row["rel_err"] < 1e-5


def test_run_all_refuses_unknown_names_and_lists_every_benchmark():
    # `run_all.sh gradiants` (or --help) ran nothing and exited 0, as if every table were rebuilt
    out = run("bash", "benchmarks/run_all.sh", "gradiants")  # were it to regress, nothing runs either
    assert out.returncode == 2 and "unknown benchmark 'gradiants'" in out.stderr and "[run_all]" not in out.stdout
    out = run("bash", "benchmarks/run_all.sh", "--help")
    assert out.returncode == 0 and "every benchmark, in order" in out.stdout and "[run_all]" not in out.stdout
    listed = set(re.findall(r'^  "(\w+)\|', (ROOT / "benchmarks" / "run_all.sh").read_text(), re.M))
    assert listed == {p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_")}


def test_synthetic_tables_refuses_tables_and_tasks_it_cannot_write(monkeypatch, capsys):
    # --tables 4 (without 1) or 5 ran nothing and exited 0; --tasks ring2d_dirichlet ran every
    # table and then raised KeyError writing it; --tasks foo was a raw traceback
    for argv, match in ((["--tables", "4"], "argument --tables"), (["--tables", "5"], "argument --tables"),
                        (["--tasks", "ring2d_dirichlet"], "argument --tasks"), (["--tasks", "foo"], "argument --tasks")):
        bench = _benchmark(monkeypatch, "synthetic_tables", "--out", "/nonexistent", *argv)
        for name in ("table1", "table3", "table4"):
            monkeypatch.setattr(bench, name, lambda *a: pytest.fail("no table may be computed"))
        with pytest.raises(SystemExit) as exit_info:
            bench.main()
        assert exit_info.value.code == 2 and match in capsys.readouterr().err, argv


def test_distributed_example_check_agrees_to_rounding_in_float64():
    # --check printed 4e-4 for its own defaults in float32 while the README promised ~1e-5 at most;
    # --dtype float64 shows the agreement without float32 rounding
    out = run(sys.executable, "scripts/distributed_example.py", "--samples", "12", "--steps", "4", "--check",
              "--dtype", "float64")
    assert out.returncode == 0, out.stderr
    diff = float(re.search(r"max \|distributed - one process\| = (\S+)", out.stdout).group(1))
    assert diff < 1e-10


def test_distributed_example_refuses_fewer_samples_than_processes():
    # every process raised a ValueError traceback from sample_distributed
    out = run(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
              "scripts/distributed_example.py", "--samples", "1", env={"OMP_NUM_THREADS": "1"})
    assert out.returncode != 0
    assert "argument --samples: must be >= the number of processes (2); got 1" in out.stderr
    assert "ValueError" not in out.stderr


def _rendered_images_table(monkeypatch) -> str:
    """benchmarks/images.py's rendering of the committed images.json, checked to be the committed images.md."""
    bench = _benchmark(monkeypatch, "images", "--render")
    committed = ROOT / "benchmarks" / "results" / "images.md"
    text = bench.render(json.loads(committed.with_suffix(".json").read_text()))
    assert text == committed.read_text()
    return text


def test_images_table_states_how_its_kd_is_computed(monkeypatch):
    # images.md reported 'KD ×1e3' without saying that run_method divides the features by the
    # targets' std (KID's cubic kernel depends on the scale) or how many subsets it averages
    import torch

    from mmdg_lite.images.adaptation import AdaptationTask, _measure
    from mmdg_lite.images.features import image_features
    from mmdg_lite.images.shapes import make_shapes
    from mmdg_lite.metrics import kernel_distance

    text = _rendered_images_table(monkeypatch)
    assert "divided by the target features' std, 20 subsets of min(samples, targets, 1000) points" in text
    imgs = make_shapes(14, seed=3).images
    task = AdaptationTask("stub", None, (3, 32, 32), imgs[:2], imgs[:2], imgs[6:], decode=lambda z: z,
                          has_style=lambda x: torch.ones(len(x), dtype=torch.bool),
                          is_valid=lambda x: torch.ones(len(x), dtype=torch.bool), style="any")
    f, g = image_features(imgs[:6]).double(), image_features(imgs[6:]).double()
    s = float(g.std())
    oracle = kernel_distance(f / s, g / s, subset_size=6, n_subsets=20)  # min(6 samples, 8 targets, 1000)
    assert _measure(task, "stub", imgs[:6], 0.0, 0.0).kd == pytest.approx(1e3 * oracle.mean, rel=1e-6)


@pytest.mark.parametrize("script", ["scripts/run.sh", "scripts/test.sh", "scripts/build_book.sh",
                                    "benchmarks/run_all.sh"])
def test_shell_script_help_is_its_whole_header_comment(script):
    # run.sh --help printed a fixed line range that stopped mid-sentence ("... (this is how the
    # committed") when its header grew by a line
    lines = (ROOT / script).read_text().splitlines()[1:]  # after the shebang
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(re.sub(r"^# ?", "", line))
    out = run("bash", script, "--help")
    assert out.returncode == 0 and out.stdout == "\n".join(header) + "\n", out.stdout


def test_images_table_says_the_classifier_training_time_includes_its_negatives(monkeypatch):
    # images.md's 'training s' column read as the classifier's training alone, but run_method's setup
    # time also draws the classifier's 64 unguided negatives (about 2 of its 3.1 s on digits)
    import time

    import torch

    import mmdg_lite.images.adaptation as adaptation
    import mmdg_lite.sampling as sampling
    from mmdg_lite import MLPDenoiser
    from mmdg_lite.images.adaptation import AdaptationTask, run_method

    text = _rendered_images_table(monkeypatch)
    assert "for classifier guidance it includes drawing its 64 unguided negatives" in text
    real, drawn = sampling.sample, []

    def slow_unguided(denoiser, n, *args, **kwargs):
        if kwargs.get("guidance") is None:  # the negatives
            drawn.append(n)
            time.sleep(0.5)
        return real(denoiser, n, *args, **kwargs)

    monkeypatch.setattr(sampling, "sample", slow_unguided)
    monkeypatch.setattr(adaptation, "_measure", lambda task, method, z, seconds, setup: setup)  # no metrics
    task = AdaptationTask("stub", MLPDenoiser(4, hidden=8, layers=1), (4,), torch.randn(6, 4), None, None,
                          decode=None, has_style=None, is_valid=None, style="any")  # 50 in images.py
    setup = run_method(task, "classifier", n=2, num_steps=2, classifier_steps=1)
    assert drawn == [64] and setup >= 0.5


@pytest.mark.parametrize("name,stem", [("calibration", "calibration_digits"), ("calibration", "calibration_shapes"),
                                       ("classifier_negatives", "classifier_negatives"),
                                       ("digits_reference_count", "digits_reference_count"),
                                       ("fd_samples", "fd_samples"), ("feature_kernels", "feature_kernels"),
                                       ("images_untuned", "images_untuned"), ("style_ceiling", "style_ceiling"),
                                       ("vae_decoder", "vae_decoder")])
def test_committed_tables_are_their_json_rendered(monkeypatch, name, stem):
    # calibration_shapes.md kept the text of an older render (no '(eta 0 unless a setting names
    # it)'), so re-running the calibration's own code on its JSON gave another table
    committed = ROOT / "benchmarks" / "results" / f"{stem}.md"
    text = _benchmark(monkeypatch, name).render(json.loads(committed.with_suffix(".json").read_text()))
    assert text.rstrip("\n") == committed.read_text().rstrip("\n")


def test_calibration_render_rewrites_the_table_from_its_json_without_sampling(monkeypatch, tmp_path):
    bench = _benchmark(monkeypatch, "calibration", "--domain", "shapes", "--render")
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    monkeypatch.setattr(bench, "adaptation_rows", lambda *a, **k: pytest.fail("--render sampled"))
    committed = ROOT / "benchmarks" / "results" / "calibration_shapes"
    (tmp_path / "calibration_shapes.json").write_text(committed.with_suffix(".json").read_text())
    bench.main()
    assert (tmp_path / "calibration_shapes.md").read_text() == committed.with_suffix(".md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration_shapes.json", "calibration_shapes.md"]
    monkeypatch.setattr(sys, "argv", ["calibration.py", "--domain", "shapes", "--render", "--n", "64"])
    with pytest.raises(SystemExit) as exit_info:  # the committed run's sample count is not an option here
        bench.main()
    assert exit_info.value.code == 2


def test_ratio_interval_is_symmetric_in_its_tails_and_refuses_unpaired_runs(monkeypatch):
    # (guided 3 runs, plain 2) used the first two guided runs only, silently; draws=100 left 2 draws
    # below the interval and 3 above it (upper index int(97.5) - 1), so swapping the arms did not
    # give the reciprocal interval; empty lists or draws=0 were bare StatisticsError / IndexError
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from _common import ratio_interval

    import random
    rng = random.Random(1)
    plain = [1 + rng.random() for _ in range(10)]
    guided = [p * (1 + 0.2 * rng.random()) for p in plain]
    for draws in (2000, 100, 7, 1):
        lo, hi = ratio_interval(guided, plain, draws=draws)
        inv_lo, inv_hi = ratio_interval(plain, guided, draws=draws)  # the same resamples, reciprocal ratios
        assert (inv_lo, inv_hi) == pytest.approx((1 / hi, 1 / lo), rel=1e-12), draws
        assert lo <= hi
    assert ratio_interval([1.25 * p for p in plain], plain) == pytest.approx((1.25, 1.25), rel=1e-12)
    for args, kw, match in (((guided + [3.0], plain), {}, "same number"), (([], []), {}, "same number"),
                            ((guided, plain), {"draws": 0}, "draws"), (([1.0], [0.0]), {}, "positive")):
        with pytest.raises(ValueError, match=match):
            ratio_interval(*args, **kw)


def test_quick_synthetic_tables_refuse_the_committed_folder_however_it_is_spelt(monkeypatch, capsys):
    # --quick --out benchmarks/results (a relative path, != the script's absolute RESULTS) wrote the
    # 1-seed smoke tables over the committed table1/3/4 files
    bench = _benchmark(monkeypatch, "synthetic_tables")
    results = bench.RESULTS  # the sandbox _benchmark points RESULTS at
    results.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(results.parent)
    for out in (results.name, str(results), f"./{results.name}/"):
        monkeypatch.setattr(sys, "argv", ["synthetic_tables.py", "--quick", "--out", out])
        for name in ("table1", "table3", "table4"):
            monkeypatch.setattr(bench, name, lambda *a: pytest.fail("no table may be computed"))
        with pytest.raises(SystemExit) as exit_info:
            bench.main()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "argument --out: a --quick smoke run cannot replace" in err, out
    assert not any(results.iterdir())


def test_performance_rff_refuses_the_grid_options_it_would_ignore(monkeypatch, capsys):
    # performance.py --rff --budget 10 ran the RFF benchmark as without --budget (rff() reads only
    # --threads and --repeats) and rff.md's header recorded '--budget 10' as if it had shaped the table
    for flag, value in (("--budget", "10"), ("--mem-budget", "2"), ("--max-minutes", "1")):
        bench = _benchmark(monkeypatch, "performance", "--rff", flag, value)
        monkeypatch.setattr(bench, "rff", lambda args: pytest.fail("the RFF benchmark ran"))
        with pytest.raises(SystemExit) as exit_info:
            bench.main()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and f"argument {flag}: applies to the timing grid, not to --rff" in err
    seen = {}
    bench = _benchmark(monkeypatch, "performance", "--budget", "10")  # the grid still takes them
    monkeypatch.setattr(bench, "performance", lambda args: seen.update(vars(args)))
    bench.main()
    assert (seen["budget"], seen["mem_budget"], seen["max_minutes"]) == (10.0, 8.0, 8.0)


def test_quick_runs_keep_the_counts_given_on_the_command_line(monkeypatch, capsys):
    # toy_guidance --quick --n 100 sampled 500 per run, synthetic_tables --quick --seeds 3 ran 1 seed and
    # defaults --quick --seeds 3 ran 2, silently; defaults --quick --resume ignored --resume
    from types import SimpleNamespace

    class Stop(Exception):
        pass

    bench = _benchmark(monkeypatch, "toy_guidance", "--quick", "--n", "100")
    monkeypatch.setattr(bench, "make_task", lambda name, seed: SimpleNamespace(dim=2))

    def run_one(task, hook, n, seed, full=True):
        raise Stop(n)
    monkeypatch.setattr(bench, "run_one", run_one)
    with pytest.raises(Stop) as stop:
        bench.main()
    assert stop.value.args == (100,)

    seen = []
    bench = _benchmark(monkeypatch, "synthetic_tables", "--quick", "--seeds", "3")
    monkeypatch.setattr(bench, "table1", lambda cfg: (seen.append(cfg), (_ for _ in ()).throw(Stop()))[1])
    with pytest.raises(Stop):
        bench.main()
    cfg = seen[0]
    assert (list(cfg.seeds), cfg.n, cfg.steps, cfg.clf_steps) == ([0, 1, 2], 200, 20, 50)  # the rest: --quick's

    calls = []
    bench = _benchmark(monkeypatch, "defaults", "--quick", "--seeds", "3", "--n", "10")
    monkeypatch.setattr(bench, "rows", lambda: {"default": "a", "sweep": "b"})
    monkeypatch.setattr(bench, "run", lambda factory, name, seed, n: calls.append((factory, seed, n))
                        or {"tv": 0.05, "off_mode": 0.0})
    bench.main()
    assert sorted(set(calls)) == [("a", s, 10) for s in range(3)]
    for extra in (["--resume"], ["--sweep-seeds", "3"]):
        monkeypatch.setattr(sys, "argv", ["defaults.py", "--quick", *extra])
        with pytest.raises(SystemExit) as exit_info:
            bench.main()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and f"argument {extra[0]}: does not apply to --quick" in err


def test_distributed_benchmark_refuses_sizes_it_cannot_shard_before_spawning(monkeypatch, capsys):
    # --sizes 1 --worlds 1 2 ran every world-1 run, then each spawned process died with
    # sample_distributed's ValueError traceback; --worlds 2 2 measured world 2 twice and listed it twice
    for argv, option in ((["--sizes", "1", "--worlds", "1", "2"], "--sizes"), (["--worlds", "2", "2"], "--worlds"),
                         (["--sizes", "8", "8"], "--sizes")):
        bench = _benchmark(monkeypatch, "distributed", *argv)
        monkeypatch.setattr(bench, "measure", lambda *a: pytest.fail("the benchmark ran"))
        with pytest.raises(SystemExit) as exit_info:
            bench.main()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and f"argument {option}: " in err, (argv, err)


def test_run_all_time_covers_the_image_tables_and_the_current_step_timing():
    # run_all.sh gave the image tables 'about 50' minutes, the sum of their stated times, but the
    # 376 s images.md states was measured with 60 timing runs of 50 steps and images.py now runs 400
    header = (ROOT / "benchmarks" / "run_all.sh").read_text().split("\nset -", 1)[0]
    minutes = int(re.search(r"take about (\d+) of them", header).group(1))
    stated = int(re.search(r"stated times sum to ([\d,]+) s", header).group(1).replace(",", ""))
    timing = json.loads((ROOT / "benchmarks" / "results" / "images.json").read_text())["timing"]
    runs = [t for row in timing["rows"].values() for t in (*row["all_guided_s"], *row["all_unguided_s"])]
    sampled = sum(runs) * timing["num_steps"]  # seconds of the timing runs the current script makes
    assert re.search(rf"samples {len(runs)} runs of {timing['num_steps']} steps \({sampled:.0f} s in images.json\)",
                     " ".join(header.replace("#", "").split()))
    old_runs = int(re.search(r"images.md states included (\d+) such runs", " ".join(header.replace("#", "").split()))
                   .group(1))
    assert minutes * 60 >= stated + sampled * (1 - old_runs / len(runs))


def test_fd_samples_table_names_the_sample_count_it_ran(monkeypatch):
    # fd_samples.py --n 512 wrote a table titled 'Digits FD at 256 and at 1,024 samples'
    bench = _benchmark(monkeypatch, "fd_samples")
    data = json.loads((ROOT / "benchmarks" / "results" / "fd_samples.json").read_text())
    data["meta"]["n"] = 512
    data["rows"] = [dict(r, fd_blocks=r["fd_blocks"][:2]) for r in data["rows"]]
    title = bench.render(data).splitlines()[0]
    assert "512 samples" in title and "1,024" not in title


def test_peak_extra_memory_stops_its_sampler_when_the_call_raises(monkeypatch):
    import threading

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    pytest.importorskip("psutil")
    from _common import peak_extra_memory

    before = set(threading.enumerate())

    def boom():
        raise RuntimeError("out of memory")
    with pytest.raises(RuntimeError, match="out of memory"):
        peak_extra_memory(boom)
    assert set(threading.enumerate()) <= before  # no sampling thread left running


def test_overhead_table_names_the_threads_its_cpu_time_sums(monkeypatch):
    # overhead.py --threads 1 wrote 'CPU time (both threads)' under its per-step table
    bench = _benchmark(monkeypatch, "overhead", "--threads", "1", "--repeats", "1")
    row = {"plain_ms_step": 1.0, "guided_ms_step": 1.0, "ratio": 1.0, "ratio_iqr": (1.0, 1.0)}
    monkeypatch.setattr(bench, "unet_overhead", lambda repeats, steps: {"wall": row, "cpu": row})
    monkeypatch.setattr(bench, "step_decomposition", lambda n: {"unet_ms": 1.0, "guide_ms": 1.0, "ratio": 1.0})
    monkeypatch.setattr(bench, "gradient_vs_matmul", lambda n: [])
    monkeypatch.setattr(bench, "half_precision", lambda: [])
    bench.main()
    text = bench.OUT.read_text()
    assert "CPU time (one thread)" in text and "both threads" not in text
    committed = (ROOT / "benchmarks" / "results" / "overhead.md").read_text()
    assert "torch threads 2;" in committed and "CPU time (both threads)" in committed  # the default's text


def test_toy_timing_tables_name_the_threads_they_ran_on(monkeypatch):
    # synthetic_tables.py --threads 2 wrote Table 3 as timed on 'one torch thread' (toy_guidance.py's
    # cost table likewise said 'one thread' whatever --threads was)
    from argparse import Namespace

    bench = _benchmark(monkeypatch, "synthetic_tables", "--threads", "2")
    res = json.loads((ROOT / "benchmarks" / "results" / "table3_sampling_time.json").read_text())
    for threads, words in ((1, "(one torch thread;"), (2, "(2 torch threads;")):
        cfg = Namespace(seeds=range(5), n=1000, steps=100, load=(0.0, 0.0, 0.0), threads=threads,
                        tasks=res["meta"]["tasks"])
        line = next(x for x in bench.write_table3(res, cfg).splitlines() if x.startswith("- Wall-clock"))
        assert words in line, (threads, line)
    assert "one torch thread" in (ROOT / "benchmarks" / "results" / "table3_sampling_time.md").read_text()
    from types import SimpleNamespace

    bench = _benchmark(monkeypatch, "toy_guidance", "--threads", "2", "--seeds", "1", "--n", "4")
    import torch

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # keep the test process's threads
    monkeypatch.setattr(bench, "task_guidance", lambda task: None)
    task = SimpleNamespace(dim=2, base=SimpleNamespace(sample=lambda n, seed: (None,)))
    monkeypatch.setattr(bench, "make_task", lambda name, seed: task)
    monkeypatch.setattr(bench, "run_one", lambda *a, **k: {"tv": 0.1, "off_mode": 0.0, "fd": 1.0, "kd": 1.0,
                                                            "coverage": 1.0, "seconds": 1.0, "samples": None})
    monkeypatch.setattr(bench, "frechet_distance", lambda x, y: 1.0)
    monkeypatch.setattr(bench, "evaluate", lambda x, task: {"tv": 0.1, "off_mode": 0.0, "fd": 1.0, "kd": 1.0,
                                                            "coverage": 1.0})
    monkeypatch.setattr(bench, "variants", lambda: {})
    monkeypatch.setattr(bench, "ROOT", bench.OUT.parent)  # it prints OUT relative to ROOT
    monkeypatch.setattr(bench, "wall_time_ratio", lambda: dict.fromkeys(
        ("unguided", "guided", "unguided_100d", "guided_100d"), 1.0))
    bench.main()
    assert "100 DDPM steps, 2 threads:" in bench.OUT.read_text()
    assert "100 DDPM steps, one thread:" in (ROOT / "benchmarks" / "results" / "toy_guidance.md").read_text()
