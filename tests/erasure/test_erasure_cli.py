"""``almostlinear erase`` through the command line's ``main``, on a tiny model saved to a folder."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from test_erasure_model import _labelled
from tiny_models import TEXTS, build_model, make_tokenizer

from almostlinear.core.artifact import load
from almostlinear.core.errors import ChoiceError, EmptyDataError, LayerError
from almostlinear.erasure import LeaceEraser
from almostlinear.erasure.cli import _concept, parse_layers, read_labelled


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "tiny-llama"
    build_model("llama").save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def _run(argv):
    from almostlinear.cli import main

    return main(argv)


def test_erase_command_end_to_end(folder, tmp_path, capsys):
    texts, labels = _labelled(n=120)
    data = tmp_path / "concept.tsv"
    data.write_text("".join(f"{'cat' if y else 'dog'}\t{t}\n" for t, y in zip(texts, labels.tolist())))
    neutral = tmp_path / "neutral.txt"
    neutral.write_text("\n".join(TEXTS))
    out = tmp_path / "eraser.safetensors"
    code = _run(["erase", "--model", str(folder), "--data", str(data), "--neutral-file", str(neutral),
                 "--layers", "0-1", "--out", str(out), "--json", "--threads", "1"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sites"] == ["resid_post.0", "resid_post.1"]
    (g,) = result["guardedness"].values()
    assert g["accuracy_after"] <= g["chance"] + 0.15
    assert g["accuracy_before"] > g["accuracy_after"]
    assert result["cost"]["n_tokens"] > 0 and result["cost"]["kl"] > 0
    eraser = load(out)
    assert isinstance(eraser, LeaceEraser) and eraser.sites == ("resid_post.0", "resid_post.1")
    assert eraser.provenance.data_hash == result["data_hash"]


def test_multiclass_file_and_text_output(folder, tmp_path, capsys):
    lines = [json.dumps({"text": f"{w} is big", "label": w}) for w in ("Paris", "Rome", "Tokyo") * 12]
    data = tmp_path / "c.jsonl"
    data.write_text("\n".join(lines))
    neutral = tmp_path / "neutral.txt"
    neutral.write_text("\n".join(TEXTS))
    assert _run(["erase", "--model", str(folder), "--data", str(data), "--neutral-file", str(neutral),
                 "--layers", "1", "--method", "orth", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "Paris" in printed and "Tokyo" in printed and "cost on" in printed


def test_thread_count_is_put_back_also_on_error(folder, tmp_path, capsys):
    threads = torch.get_num_threads()
    code = _run(["erase", "--model", str(folder), "--data", str(tmp_path / "missing.tsv"), "--layers", "1",
                 "--threads", str(threads + 1)])
    assert code == 2 and "No such file" in capsys.readouterr().err  # a message, not a traceback
    assert torch.get_num_threads() == threads


def test_bad_files_and_layers(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("\n")
    with pytest.raises(EmptyDataError):
        read_labelled(empty)
    bad = tmp_path / "bad.tsv"
    bad.write_text("no tab here\n")
    with pytest.raises(EmptyDataError):
        read_labelled(bad)
    with pytest.raises(LayerError):
        parse_layers("a,b", 4)
    assert parse_layers("1-3,-1", 30) == [1, 2, 3, -1]
    assert parse_layers("all", 3) == [0, 1, 2]
    assert torch.tensor(parse_layers(None, 2)).tolist() == [0, 1]


def test_unknown_dataset_and_missing_model_are_library_errors(tmp_path, capsys):
    with pytest.raises(ChoiceError, match="dataset"):
        _concept("rivers", None, 10, 0)
    assert _run(["erase", "--model", str(tmp_path / "no-model-here"), "--threads", "1"]) == 2
    assert capsys.readouterr().err.startswith("error:")


def test_building_the_parser_imports_no_torch():
    code = ("import argparse, sys; from almostlinear.erasure.cli import register; "
            "register(argparse.ArgumentParser().add_subparsers()); "
            "print(sorted(m for m in ('torch', 'transformers', 'scipy', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
