"""The ``steer`` command on a tiny model saved as a local folder."""

import argparse
import subprocess
import sys

import pytest

from almostlinear.core.artifact import load
from almostlinear.steering import SteeringVector
from almostlinear.steering.choices import PAIR_SETS
from almostlinear.steering.cli import read_pairs_file, register
from tiny_models import build_model, make_tokenizer


def _parser():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    build_model("llama").save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def test_fit_then_generate_then_dose(folder, tmp_path, capsys):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("positive,negative\nthe cat is on the road,the old king\na dog,one two three\n")
    out = tmp_path / "v.safetensors"
    args = _parser().parse_args(["steer", "fit", "--model", str(folder), "--pairs", str(pairs), "--layer", "1",
                                 "--positions", "last:2", "--out", str(out)])
    assert args.func(args) == 0
    vector = load(out)
    assert isinstance(vector, SteeringVector) and vector.layer == 1 and vector.positions == ("last", 2)
    assert vector.norms["n_pairs"] == 2
    args = _parser().parse_args(["steer", "generate", "--model", str(folder), "--vector", str(out), "--strength",
                                 "4", "--prompt", "the cat", "--prompt", "a dog", "--compare",
                                 "--max-new-tokens", "4"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert sum(line.startswith("steered:") for line in lines) == 2
    assert sum(line.startswith("unsteered:") for line in lines) == 2
    args = _parser().parse_args(["steer", "dose", "--model", str(folder), "--vector", str(out),
                                 "--strengths=-1,1", "--prompts", "4", "--words", "cat,dog", "--against", "king"])
    assert args.func(args) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["strength", "effect", "s.e.", "KL", "dCE"]
    assert len(table) == 5 and "R^2" in table[-1]


def test_bad_input_gives_exit_code_2(folder, tmp_path, capsys):
    from almostlinear.cli import main

    assert main(["steer", "fit", "--model", str(folder), "--pairs", "nothing-here", "--layer", "0",
                 "--out", str(tmp_path / "v.safetensors")]) == 2
    assert "no pair set" in capsys.readouterr().err
    assert main(["steer", "fit", "--model", str(folder), "--pairs", "sentiment", "--layer", "5",
                 "--out", str(tmp_path / "v.safetensors")]) == 2
    assert main(["steer", "generate", "--model", str(folder), "--vector", str(tmp_path / "missing.safetensors")]) == 2
    assert "no artifact file" in capsys.readouterr().err


def test_pair_files(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"positive": "a", "negative": "b"}\n\n{"positive": "c", "negative": "d"}\n')
    assert read_pairs_file(str(jsonl)) == [("a", "b"), ("c", "d")]
    tsv = tmp_path / "p.tsv"
    tsv.write_text("x\ty\n")
    assert read_pairs_file(str(tsv)) == [("x", "y")]
    assert len(read_pairs_file("weddings")) >= 10


def test_building_the_parser_imports_no_torch():
    code = ("import argparse, sys; from almostlinear.steering.cli import register; "
            "register(argparse.ArgumentParser().add_subparsers()); "
            "print(sorted(m for m in ('torch', 'transformers', 'scipy', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_choices_match_what_the_library_accepts():
    from almostlinear.core.lever import UNITS as ALL_UNITS
    from almostlinear.steering import METHODS, SteeringVector
    from almostlinear.steering.choices import UNITS
    from almostlinear.steering.fit import READS

    parser = _parser()
    fit = parser.parse_args(["steer", "fit", "--layer", "0", "--out", "x", "--method", METHODS[-1], "--read",
                             READS[-1]])
    assert (fit.method, fit.read) == (METHODS[-1], READS[-1])
    assert parser.parse_args(["steer", "dose", "--vector", "v", "--units", UNITS[-1]]).units == UNITS[-1]
    assert SteeringVector.strength_units == UNITS and set(UNITS) <= set(ALL_UNITS)
    assert {name: len(read_pairs_file(name)) > 0 for name in PAIR_SETS} == dict.fromkeys(PAIR_SETS, True)
