"""``sae train`` / ``sae eval`` through an argparse parser, on a tiny model."""

import argparse
import json

import pytest
import torch
from tiny_models import WORDS, build_model, make_tokenizer

import almostlinear.core.models as models
from almostlinear.core.artifact import load as load_artifact
from almostlinear.core.models import LoadedModel
from almostlinear.sae import SparseAutoencoder
from almostlinear.sae.cli import register


@pytest.fixture
def tiny_loaded(monkeypatch):
    loaded = LoadedModel(build_model("llama"), make_tokenizer(), "tiny", "memory", "causal-lm")
    monkeypatch.setattr(models, "load", lambda *a, **k: loaded)
    return loaded


def _run(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_train_then_eval(tiny_loaded, tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (12,), generator=g)) for _ in range(30)]
    text_file = tmp_path / "texts.txt"
    text_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "sae.safetensors"
    assert _run(["sae", "train", "--text-file", str(text_file), "--site", "resid_post.1", "--width", "48", "--k", "6",
                 "--batch-size", "64", "--epochs", "3", "--out", str(out)]) == 0
    sae = load_artifact(out)
    assert isinstance(sae, SparseAutoencoder) and sae.width == 48 and sae.k == 6
    assert sae.tokens == 3 * (30 * 11 // 64) * 64  # three passes of whole minibatches; first tokens skipped
    assert str(sae.provenance.where) == "resid_post.1" and sae.provenance.data_hash
    assert sae.provenance.units == "fraction"
    assert "saved to" in capsys.readouterr().out
    streamed = tmp_path / "streamed.safetensors"
    assert _run(["sae", "train", "--text-file", str(text_file), "--activation", "relu", "--expansion", "2",
                 "--batch-size", "64", "--buffer-tokens", "128", "--out", str(streamed)]) == 0
    capsys.readouterr()
    relu = load_artifact(streamed)
    assert relu.activation == "relu" and relu.width == 64 and relu.site.layer == 1
    assert _run(["sae", "eval", str(out), "--text-file", str(text_file), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["l0"] <= 6 and 0 <= scores["fvu"] < 1
    assert scores["variance_explained"] == pytest.approx(1 - scores["fvu"])
    assert _run(["sae", "eval", str(out), "--text-file", str(text_file)]) == 0
    assert "CE loss recovered" in capsys.readouterr().out
