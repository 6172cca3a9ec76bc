"""The ``mmdg`` command line and the entry points pyproject.toml declares."""
from __future__ import annotations

import importlib
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mmdg_lite import __version__, cli

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _entry_points() -> list[tuple[str, str]]:
    project = PYPROJECT["project"]
    groups = {"scripts": project.get("scripts", {}), "gui-scripts": project.get("gui-scripts", {}),
              **project.get("entry-points", {})}
    return [(name, target) for group in groups.values() for name, target in group.items()]


def test_pyproject_declares_the_mmdg_script():
    assert PYPROJECT["project"]["scripts"].get("mmdg") == "mmdg_lite.cli:main"


@pytest.mark.parametrize("name, target", _entry_points())
def test_every_entry_point_names_an_importable_callable(name, target):
    module_name, _, attr = target.partition(":")
    assert attr, f"entry point {name} = {target!r} names no object (module:object)"
    module = importlib.import_module(module_name)  # ModuleNotFoundError names the missing module
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    assert callable(obj), f"entry point {name} = {target!r} is not callable"


def test_version_agrees_with_pyproject_and_metadata():
    assert __version__ == PYPROJECT["project"]["version"]
    assert importlib.metadata.version("mmdg_lite") == __version__


def _installed_script() -> Path:
    script = Path(sys.executable).parent / ("mmdg.exe" if sys.platform == "win32" else "mmdg")
    assert script.is_file(), (f"no installed mmdg script at {script}: reinstall the package "
                              "(source scripts/_env.sh, or pip install -e .)")
    return script


def test_installed_script_help():
    out = subprocess.run([str(_installed_script()), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: mmdg") and "info" in out.stdout


def test_installed_script_version():
    out = subprocess.run([str(_installed_script()), "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"mmdg {__version__}"


def test_every_subcommand_has_help_and_a_function():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) >= {"info"}
    for name, p in sub.choices.items():
        assert p.format_help().strip() and callable(p.get_default("func")), name


def test_no_subcommand_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "usage: mmdg" in capsys.readouterr().out


def test_unknown_subcommand_is_an_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2 and "frobnicate" in capsys.readouterr().err


def test_info_reports_the_shipped_models(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"mmdg_lite {__version__}" in out and "data dir" in out
    shipped = cli.shipped_models()
    assert {"toy/mlp_2d", "toy/cond_2d"} <= set(shipped)
    lines = [line for line in out.splitlines() if line.startswith("model ")]
    assert sorted(line.split()[1] for line in lines) == sorted(shipped)
    assert "FAILS" not in out
    checkable = [name for name, (_, load) in shipped.items() if load is not None]
    assert sum(line.split()[2] == "loads" for line in lines) == len(checkable)


def test_info_puts_the_libraries_logging_back_as_it_found_it(capsys):
    # `mmdg info` silenced diffusers' and transformers' notices and bars for good: called from a
    # notebook (cli.main(["info"])), every later load in that kernel showed neither
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = (diffusers_logging, transformers_logging)
    before = [(lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in libraries]
    try:
        for lib in libraries:
            lib.set_verbosity_info()
            lib.enable_progress_bar()
        assert cli.main(["info"]) == 0
        assert "FAILS" not in capsys.readouterr().out
        for lib in libraries:
            assert lib.get_verbosity() == lib.INFO and lib.is_progress_bar_enabled(), lib.__name__
    finally:
        for lib, (level, bar) in zip(libraries, before):
            lib.set_verbosity(level)
            lib.enable_progress_bar() if bar else lib.disable_progress_bar()


def test_info_reports_a_broken_model_and_exits_nonzero(capsys, monkeypatch, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\x00" * 3)
    (folder / "training.json").write_text('{"sha256": "' + "0" * 64 + '"}')

    def load():
        from mmdg_lite.denoisers import load_denoiser
        return load_denoiser(folder)

    monkeypatch.setattr(cli, "shipped_models", lambda: {"toy/broken": (folder, load)})
    assert cli.main(["info"]) == 1
    out = capsys.readouterr().out
    assert "toy/broken  FAILS: FileNotFoundError" in out and "sha256 MISMATCH" in out


def test_info_finds_model_folders_by_their_config(tmp_path, monkeypatch):
    import mmdg_lite._resources as resources
    from mmdg_lite.denoisers import MLPDenoiser, save_denoiser

    save_denoiser(MLPDenoiser(2, hidden=4, layers=1), tmp_path / "toy" / "mlp_2d")
    save_denoiser(MLPDenoiser(2, hidden=4, layers=1), tmp_path / "extra" / "mine")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"width": 3}')
    monkeypatch.setattr(resources, "DATA_DIR", tmp_path)
    found = cli.shipped_models()
    assert {"extra/mine", "other"} <= set(found)
    assert found["other"][1] is None
    assert found["extra/mine"][1]().config["hidden"] == 4


def test_info_without_the_sd_extra_reports_the_pipeline_as_not_checked(capsys, monkeypatch):
    # a core install (no transformers) printed "FAILS: AttributeError: 'super' object ..." and exit 1
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    assert cli.main(["info"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if "sd/shapes_pipeline" in l)
    assert "not checked:" in line and "pip install 'mmdg_lite[sd]'" in line and "FAILS" not in line


def test_shared_argparse_types_take_their_range_and_refuse_the_rest():
    """One set of argparse types serves the CLI, the scripts and the benchmarks (four copies had
    drifted apart): the bounds are exact, and nan / inf / words are usage errors that say what is valid."""
    import argparse

    from mmdg_lite._argtypes import integer, number, positive_float, positive_int

    seed = integer(0, 2**63, maximum_label="2**63")
    strength = number(0.0, inclusive=True)
    assert positive_int("1") == 1 and seed("0") == 0 and seed(str(2**63 - 1)) == 2**63 - 1
    assert strength("0") == 0.0 and positive_float("1e-9") == 1e-9
    for parse, text, what in ((positive_int, "0", "a positive integer"), (positive_int, "1.5", "a positive integer"),
                              (seed, str(2**63), "an integer in [0, 2**63)"), (seed, "-1", "an integer in [0, 2**63)"),
                              (positive_float, "0", "a positive number"), (positive_float, "nan", "a positive number"),
                              (positive_float, "inf", "a positive number"), (strength, "-0.5", "a finite number >= 0"),
                              (strength, "x", "a finite number >= 0")):
        with pytest.raises(argparse.ArgumentTypeError, match=rf"must be {re.escape(what)}; got {re.escape(repr(text))}"):
            parse(text)


_ADAPT_NEEDS = ["--references", "refs", "--prompt", "a", "--out", "out"]


@pytest.mark.parametrize("argv, prog, unknown", [
    (["info", "extra"], "info", "extra"), (["info", "--version"], "info", "--version"),
    (["adapt", *_ADAPT_NEEDS, "--bogus", "1"], "adapt", "--bogus 1"), (["--bogus", "info"], None, "--bogus")])
def test_unknown_arguments_are_reported_by_the_parser_they_were_given_to(capsys, argv, prog, unknown):
    # argparse passed a subcommand's unknown flags up to the top level: 'mmdg adapt ... --bogus 1'
    # printed 'mmdg: error' under 'usage: mmdg [-h] [--version] COMMAND ...', without adapt's flags
    parser = cli.build_parser()
    if prog is not None:
        parser = next(a for a in parser._actions if a.dest == "command").choices[prog]
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith(parser.format_usage())
    assert f"{parser.prog}: error: unrecognized arguments: {unknown}\n" in err


def test_info_into_a_closed_pipe_exits_quietly():
    # `mmdg info | head -1` ended in a BrokenPipeError traceback from the second print
    child = ("import sys; from mmdg_lite import cli; cli.shipped_models = lambda: {}; "
             "cli._silence_libraries = lambda: None; sys.exit(cli.main(['info']))")
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader leaves before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1 and err == ""


def test_ctrl_c_is_reported_in_one_line_with_status_130(capsys, monkeypatch):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "shipped_models", interrupted)
    try:
        status = cli.main(["info"])
    except KeyboardInterrupt:  # pytest would stop the whole run here
        pytest.fail("KeyboardInterrupt escaped mmdg info (a traceback for the user)")
    assert status == 130
    assert capsys.readouterr().err == "mmdg info: interrupted\n"


def _tiny_model_with_record(folder: Path, record: str) -> tuple[Path, object]:
    from mmdg_lite.denoisers import MLPDenoiser, load_denoiser, save_denoiser

    save_denoiser(MLPDenoiser(2, hidden=4, layers=1), folder)
    (folder / "training.json").write_text(record)
    return folder, lambda: load_denoiser(folder)


def test_info_fails_on_weights_that_differ_from_the_recorded_sha256(capsys, monkeypatch, tmp_path):
    # a damaged or swapped weights file that still loads was reported 'sha256 MISMATCH' with exit 0
    import hashlib

    good, load_good = _tiny_model_with_record(tmp_path / "good", "{}")
    have = hashlib.sha256((good / "model.safetensors").read_bytes()).hexdigest()
    (good / "training.json").write_text(json.dumps({"sha256": have}))
    bad, load_bad = _tiny_model_with_record(tmp_path / "bad", json.dumps({"sha256": have[::-1]}))
    monkeypatch.setattr(cli, "shipped_models", lambda: {"good": (good, load_good)})
    assert cli.main(["info"]) == 0 and "good  loads  (sha256 ok)" in capsys.readouterr().out
    monkeypatch.setattr(cli, "shipped_models", lambda: {"good": (good, load_good), "bad": (bad, load_bad)})
    assert cli.main(["info"]) == 1
    assert "bad   loads  (sha256 MISMATCH with training.json)" in capsys.readouterr().out


def test_info_reports_a_training_json_that_is_not_an_object(capsys, monkeypatch, tmp_path):
    # json.loads(...).get('sha256') on a list was an AttributeError traceback
    folder, load = _tiny_model_with_record(tmp_path / "m", "[1, 2]")
    monkeypatch.setattr(cli, "shipped_models", lambda: {"m": (folder, load)})
    assert cli.main(["info"]) == 0
    assert "m  loads  (no sha256 in training.json)" in capsys.readouterr().out



def test_info_says_when_a_model_has_no_training_json_to_check_its_weights_against(capsys, monkeypatch, tmp_path):
    # a shipped model folder that lost its training.json printed a bare 'loads', as if its weights
    # had been checked against a recorded sha256 (a record without one already gets a note)
    folder, load = _tiny_model_with_record(tmp_path / "m", "{}")
    (folder / "training.json").unlink()
    monkeypatch.setattr(cli, "shipped_models", lambda: {"m": (folder, load)})
    assert cli.main(["info"]) == 0
    assert "model     m  loads  (no training.json)\n" in capsys.readouterr().out

def test_every_shipped_weights_file_is_identified_by_its_recorded_sha256():
    # toy/mlp_2d's training.json had no sha256, so mmdg info could not tell a damaged file from it
    import hashlib

    checked = 0
    for name, (folder, _) in cli.shipped_models().items():
        weights = [w for w in (folder / "model.safetensors", folder / "diffusion_pytorch_model.safetensors")
                   if w.is_file()]
        if weights and (folder / "training.json").is_file():
            record = json.loads((folder / "training.json").read_text())
            assert record.get("sha256") == hashlib.sha256(weights[0].read_bytes()).hexdigest(), name
            assert cli._check_sha256(folder) == ("sha256 ok", False), name
            checked += 1
    assert checked >= 6


def test_info_reports_a_long_failure_on_one_line(capsys, monkeypatch, tmp_path):
    # a config edited away from its weights printed torch's state-dict error, one line per tensor
    # (150 lines for digits_unet), inside the table
    first = "UNet2DModel.from_pretrained failed: Error(s) in loading state_dict for UNet2DModel:"
    lines = [f"\tsize mismatch for block{k}.weight: copying a param with shape [16] ..." for k in range(150)]

    def load():
        raise RuntimeError("\n".join([first, *lines]))

    monkeypatch.setattr(cli, "shipped_models", lambda: {"bad": (tmp_path, load), "good": (tmp_path, lambda: 0)})
    assert cli.main(["info"]) == 1
    report = [line for line in capsys.readouterr().out.splitlines() if line.startswith("model ")]
    assert len(report) == 2 and report[0].startswith(f"model     bad   FAILS: RuntimeError: {first}")
    assert report[0].endswith("[...]") and len(report[0]) < 500 and report[1] == "model     good  loads"


def test_info_with_stdout_closed_runs_without_a_traceback(monkeypatch, capsys):
    # with stdout closed (mmdg info >&-) Python sets sys.stdout to None and print writes nothing
    monkeypatch.setattr(cli, "shipped_models", lambda: {})
    monkeypatch.setattr(sys, "stdout", None)
    assert cli.main(["info"]) == 0


def test_info_reports_unreadable_weights_as_a_failure(capsys, monkeypatch, tmp_path):
    # a weights file mmdg info cannot read for its sha256 raised the OSError as a traceback
    folder, _ = _tiny_model_with_record(tmp_path / "m", json.dumps({"sha256": "0" * 64}))
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "model.safetensors":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(cli, "shipped_models", lambda: {"m": (folder, lambda: None)})
    assert cli.main(["info"]) == 1
    assert "m  loads  (cannot read model.safetensors: PermissionError: Permission denied)" in capsys.readouterr().out


def test_info_checks_each_weights_file_of_a_pipeline_against_its_recorded_sha256(capsys, monkeypatch, tmp_path):
    # the SD pipeline keeps its weights in subfolders and recorded no sha256: mmdg info printed
    # 'loads' with exit 0 for a swapped UNet file, though the README says it checks every model's
    import hashlib
    import shutil

    name, (shipped, _) = next((n, m) for n, m in cli.shipped_models().items() if n == "sd/shapes_pipeline")
    record = json.loads((shipped / "training.json").read_text())
    for rel, want in record["sha256"].items():  # the record identifies the shipped files
        assert hashlib.sha256((shipped / rel).read_bytes()).hexdigest() == want, rel
    assert cli._check_sha256(shipped) == ("sha256 ok", False)
    folder = tmp_path / "pipe"
    shutil.copytree(shipped, folder)
    monkeypatch.setattr(cli, "shipped_models", lambda: {name: (folder, lambda: None)})
    assert cli.main(["info"]) == 0 and f"{name}  loads  (sha256 ok)" in capsys.readouterr().out
    vae = folder / "vae" / "diffusion_pytorch_model.safetensors"
    vae.write_bytes((folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes())  # swapped
    assert cli.main(["info"]) == 1 and "sha256 MISMATCH" in capsys.readouterr().out
    vae.unlink()
    assert cli.main(["info"]) == 1 and "weights files differ" in capsys.readouterr().out


def test_a_pipeline_load_failure_shows_its_cause_on_the_shortened_line(capsys, monkeypatch, tmp_path):
    # the checked from_pretrained listed the pipeline's files before diffusers' error, and the
    # one-line report (400 characters) ended inside that listing: the cause was never shown
    import shutil

    pytest.importorskip("transformers")
    from PIL import Image

    from mmdg_lite._resources import DATA_DIR

    folder = shutil.copytree(DATA_DIR / "sd" / "shapes_pipeline", tmp_path / "pipe")
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "NoSuchScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    monkeypatch.setattr(cli, "shipped_models", lambda: {"sd": (folder, cli._loader_for(folder))})
    assert cli.main(["info"]) == 1
    assert re.search(r"sd  FAILS: ArtifactError: .*pipe: DiffusionPipeline.from_pretrained failed: "
                     r"ValueError: .*NoSuchScheduler", capsys.readouterr().out)
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.new("RGB", (8, 8)).save(refs / "a.png")
    assert cli.main(["adapt", "--model", str(folder), "--references", str(refs), "--prompt", "x",
                     "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "from_pretrained failed: ValueError: `diffusers` has no class `NoSuchScheduler`" in capsys.readouterr().err
