"""The interpolate and rebasin commands, through a parser built here."""

from __future__ import annotations

import argparse
import json

import pytest

from almostlinear.connectivity.cli import register


def _parse(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(argv)


def test_rebasin_command(tmp_path, capsys):
    out = tmp_path / "r.json"
    args = _parse(["rebasin", "--widths", "64", "--out", str(out)])
    assert args.func(args) == 0
    [row] = json.loads(out.read_text())
    assert row["width"] == 64 and row["weight_matching_barrier_points"] < row["naive_barrier_points"]
    assert "WM+REPAIR" in capsys.readouterr().out


def test_interpolate_command_between_two_saved_models(tmp_path, capsys):
    from tiny_models import build_model, make_tokenizer

    folders = []
    for seed in (0, 1):
        folder = tmp_path / f"m{seed}"
        build_model("gpt2", seed=seed).save_pretrained(folder)
        make_tokenizer().save_pretrained(folder)
        folders.append(str(folder))
    out = tmp_path / "c.json"
    args = _parse(["interpolate", *folders, "--alphas", "3", "--texts", "3", "--out", str(out), "--quiet"])
    assert args.func(args) == 0
    summary = json.loads(out.read_text())
    assert summary["alphas"] == [0.0, 0.5, 1.0] and len(summary["values"]["loss"]) == 3
    assert summary["barrier"] == pytest.approx(max(summary["values"]["loss"]) - (summary["values"]["loss"][0]
                                                                                + summary["values"]["loss"][2]) / 2)
    assert "barrier" in capsys.readouterr().out


def test_cli_module_and_package_face_import_no_torch():
    import subprocess
    import sys

    # the parser imports every family's cli module; torch comes later, with a command that needs it
    code = ("import sys, almostlinear.connectivity.cli, almostlinear.connectivity as c; c.__all__;"
            " sys.exit(int('torch' in sys.modules or 'scipy' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
