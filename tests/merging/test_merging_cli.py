"""``almostlinear merge`` and ``task-vector`` through their argparse registration."""

from __future__ import annotations

import argparse

import pytest

from almostlinear.core.errors import AlmostLinearError
from almostlinear.merging import TaskVector, verify
from almostlinear.merging.cli import parse_size, register


def _run(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_merge_plan_and_task_vector(saved_models, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""merge_method: ties
base_model: {saved_models['base']}
models:
  - model: {saved_models['ft0']}
    parameters: {{weight: 1.0, density: 0.5}}
  - model: {saved_models['ft1']}
    parameters: {{weight: 1.0, density: 0.5}}
""")
    assert _run(["merge", str(recipe), "--plan-only"]) == 0
    assert "model.layers.0.mlp.up_proj.weight" in capsys.readouterr().out
    assert _run(["merge", str(recipe), "--out", str(tmp_path / "out"), "--quiet", "--shard-size", "20KB"]) == 0
    printed = capsys.readouterr().out
    assert "sign conflicts" in printed and all(verify(tmp_path / "out").values())
    # library errors go to the command line's one handler, which prints them as messages
    with pytest.raises(AlmostLinearError, match="already exists"):
        _run(["merge", str(recipe), "--out", str(tmp_path / "out"), "--quiet"])
    with pytest.raises(AlmostLinearError, match="--out DIR is required"):
        _run(["merge", str(recipe)])
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text() + "wat: 1\n")
    with pytest.raises(AlmostLinearError, match="'wat'"):
        _run(["merge", str(bad), "--out", str(tmp_path / "o2")])
    assert _run(["task-vector", str(saved_models["base"]), str(saved_models["ft0"]),
                 "--out", str(tmp_path / "tv.safetensors")]) == 0
    assert len(TaskVector.load(tmp_path / "tv.safetensors").deltas) > 0
    assert "· reading" in capsys.readouterr().err
    with pytest.raises(AlmostLinearError):  # an OSError (a file as the folder), reported as a message
        _run(["task-vector", str(saved_models["base"]), str(saved_models["ft0"]),
              "--out", str(tmp_path / "tv.safetensors" / "inside")])


def test_parse_size():
    assert parse_size("2GB") == 2_000_000_000 and parse_size("1GiB") == 2**30 and parse_size("500") == 500
