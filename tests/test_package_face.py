"""The package's face: light to import, the main levers at the top, every family found from the manifest."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import almostlinear as al
from almostlinear.families import FAMILIES, artifact_modules, cli_modules, section_paths

PROBE = """
import contextlib, io, sys
from almostlinear.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        code = main({argv!r})
    except SystemExit as stop:
        code = stop.code
heavy = sorted(m for m in ("torch", "transformers", "scipy", "sklearn") if m in sys.modules)
print(code, heavy, len(out.getvalue()))
"""


@pytest.mark.parametrize("argv", [["--help"], ["models"], ["steer", "--help"], ["merge", "--help"]])
def test_the_command_line_answers_without_importing_torch(argv):
    done = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    code, heavy, printed = done.stdout.split(" ", 1)[0], done.stdout.split("[", 1)[1].split("]")[0], done.stdout.split()[-1]
    assert code in ("0", "None") and heavy == "" and int(printed) > 100, done.stdout


def test_importing_the_package_and_every_family_face_loads_no_torch():
    names = ", ".join(f"almostlinear.{family.name}" for family in FAMILIES)
    code = f"import sys, almostlinear, {names}; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["SteeringVector", "DirectionalAblation", "LeaceEraser", "LowRankEdit", "RankOneEdit",
                                  "TaskVector", "LoraAdapter", "Permutation", "SparseAutoencoder", "Baked", "Where",
                                  "fit_steering", "fit_eraser", "rome", "memit", "load", "collect", "load_artifact"])
def test_the_main_levers_are_at_the_top(name):
    assert name in al.__all__ and getattr(al, name) is not None


def test_the_manifest_names_modules_that_exist():
    for module in artifact_modules() + cli_modules():
        importlib.import_module(module)
    for module, name in section_paths():
        assert getattr(importlib.import_module(module), name).id
    families = [family.name for family in FAMILIES]
    assert len(families) == len(set(families))
    for family in families:
        importlib.import_module(f"almostlinear.{family}")


def test_a_missing_file_is_a_message_not_a_traceback(capsys, tmp_path):
    from almostlinear.cli import main

    with pytest.raises(SystemExit) as stop:  # refused by the parser, before any work
        main(["audit", "--texts", str(tmp_path / "missing.txt")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err


@pytest.mark.parametrize("family", [f.name for f in FAMILIES])
def test_no_exported_name_is_shadowed_by_a_submodule(family):
    # Importing a submodule binds its name on the package; a public function of the same name would
    # then be hidden behind the module. Import every submodule first, then resolve every name.
    import pkgutil

    package = importlib.import_module(f"almostlinear.{family}")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"almostlinear.{family}.{info.name}")
    for name in getattr(package, "__all__", ()):
        assert not isinstance(getattr(package, name), type(importlib)), f"almostlinear.{family}.{name} is a module"


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    from almostlinear import cli

    def broken(args):
        raise RuntimeError("something inside")

    monkeypatch.setattr(cli, "cmd_models", broken)
    assert cli.main(["models"]) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: something inside" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(RuntimeError, match="something inside"):
        cli.main(["--debug", "models"])
