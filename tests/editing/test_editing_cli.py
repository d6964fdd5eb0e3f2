"""``almostlinear edit`` / ``generate`` end to end on tiny models saved as local folders."""

from __future__ import annotations

import argparse
import warnings

import pytest
import torch
from tiny_models import build_model, make_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from almostlinear.core.errors import ArtifactError, ShapeError
from almostlinear.editing.cli import build_request, generate_command, load_edit, register
from almostlinear.editing.request import EditRequestError


@pytest.fixture
def folders(tmp_path, monkeypatch):
    monkeypatch.setenv("ALMOSTLINEAR_CACHE", str(tmp_path / "cache"))
    made = {}
    narrow = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                          max_position_embeddings=64, pad_token_id=0, eos_token_id=1))
    for name, model in (("llama", build_model("llama")), ("llama_other", build_model("llama", seed=1)),
                        ("narrow", narrow)):
        folder = tmp_path / name
        model.save_pretrained(folder)
        make_tokenizer().save_pretrained(folder)
        made[name] = str(folder)
    return made


def _parse(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(argv)


def test_build_request():
    assert build_request("{} is in", "Paris", "Italy").prompt == "{} is in"
    request = build_request("Paris is in the", "Paris", "Italy")
    assert request.prompt == "{} is in the" and request.text == "Paris is in the"
    with pytest.raises(EditRequestError, match="not in the prompt"):
        build_request("Rome is in", "Paris", "Italy")


def test_edit_then_generate(folders, tmp_path, capsys):
    out = tmp_path / "edit.safetensors"
    args = _parse(["edit", "--model", folders["llama"], "--subject", "Paris", "--prompt", "{} is in the country of",
                   "--target", "Japan", "--out", str(out), "--stats-tokens", "200", "--threads", "1"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "P('Japan')" in text and "saved the edit" in text
    edit = load_edit(out)
    assert edit.method == "rome" and edit.requests[0]["target"] == "Japan"
    args = _parse(["generate", "--model", folders["llama"], "--edit", str(out), "--prompt", "Paris is in the country of",
                   "--prompt", "the cat", "--max-new-tokens", "4", "--threads", "1"])  # keep the suite at 1 thread
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert text.count("unedited:") == 2 and text.count("edited:") == 4

    # Same architecture, other weights: a warning, or with --strict a clear error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = generate_command(folders["llama_other"], str(out), ["Paris is in"], max_new_tokens=2)
    assert len(rows) == 1
    assert "fitted on model" in capsys.readouterr().err
    with pytest.raises(ArtifactError):
        generate_command(folders["llama_other"], str(out), ["Paris is in"], max_new_tokens=2, strict=True)
    # Another shape of model: a clear error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ShapeError, match="another model"):
            generate_command(folders["narrow"], str(out), ["Paris is in"], max_new_tokens=2)


def test_generate_refuses_other_artifacts(tmp_path):
    from almostlinear.core.artifact import Provenance, Where
    from almostlinear.editing import KeyStatistics

    c = torch.eye(3, dtype=torch.float64)
    path = KeyStatistics(c=c, half_a=c.float(), half_b=c.float(), n_a=1, n_b=1, source="x",
                         provenance=Provenance(where=Where.at("mlp_key", 0))).save(tmp_path / "stats.safetensors")
    with pytest.raises(ArtifactError, match="not an edit"):
        load_edit(path)


def test_cli_module_imports_no_torch():
    import subprocess
    import sys

    # the parser imports every family's cli module; torch comes later, with a command that needs it
    code = ("import sys, almostlinear.editing.cli, almostlinear.editing as e; e.__all__;"
            " sys.exit(int('torch' in sys.modules or 'scipy' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_package_exports_the_evaluation():
    import almostlinear.editing as editing
    from almostlinear.editing import counterfact, eval

    for name in ("counterfact_cases", "CounterfactCase", "evaluate_edits", "EditEvaluation", "CounterfactScores"):
        assert name in editing.__all__
        assert getattr(editing, name) is getattr(counterfact if hasattr(counterfact, name) else eval, name)
