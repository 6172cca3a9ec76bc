"""The scripts' command lines refuse what would destroy work or waste a build (an outside probe
ran each of them): nothing they refuse writes a file."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
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
                        (["--domain", "digits", "--threads", "0"], "--threads: must be an integer >= 1"),
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


@pytest.mark.parametrize("flag,value", [("--samples", "0"), ("--steps", "0"), ("--timeout", "0"), ("--seed", "-1")])
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
