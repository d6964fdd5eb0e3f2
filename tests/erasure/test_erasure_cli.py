"""``almostlinear erase`` through its argparse registration, on a tiny model saved to a folder."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from test_erasure_model import _labelled
from tiny_models import TEXTS, build_model, make_tokenizer

from almostlinear.core.artifact import load
from almostlinear.core.errors import EmptyDataError, LayerError
from almostlinear.erasure import LeaceEraser
from almostlinear.erasure.cli import parse_layers, read_labelled, register


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "tiny-llama"
    build_model("llama").save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def _run(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


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


def test_thread_count_is_put_back_also_on_error(folder, tmp_path):
    threads = torch.get_num_threads()
    with pytest.raises(FileNotFoundError):
        _run(["erase", "--model", str(folder), "--data", str(tmp_path / "missing.tsv"), "--layers", "1",
              "--threads", str(threads + 1)])
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
