"""``almostlinear export`` end to end on a tiny model saved as a local folder."""

from __future__ import annotations

import pytest
import torch
from export_helpers import edit, logits, peft_logits, relative, steering_vector
from tiny_models import build_model, make_tokenizer

from almostlinear.cli import main
from almostlinear.export import read_control_vector


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("ALMOSTLINEAR_CACHE", str(tmp_path / "cache"))
    model = build_model("llama")
    path = tmp_path / "llama"
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def _model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def test_export_edit_to_peft(folder, tmp_path, capsys):
    model = _model(folder)
    lever = edit(model, layer=1)
    lever.save(tmp_path / "edit.safetensors")
    code = main(["export", str(tmp_path / "edit.safetensors"), "--to", "peft", "--model", str(folder),
                 "--out", str(tmp_path / "adapter"), "--strength", "0.5", "--threads", "1"])
    assert code == 0 and "exact" in capsys.readouterr().out
    with lever.apply(model, strength=0.5):
        expected = logits(model)
    assert relative(peft_logits(model, tmp_path / "adapter"), expected) < 1e-5
    assert (tmp_path / "adapter" / "README.md").is_file()


def test_export_vector_to_hf_gguf_and_back(folder, tmp_path, capsys):
    model = _model(folder)
    vector = steering_vector(model, layer=1)
    vector.save(tmp_path / "vec.safetensors")
    assert main(["export", str(tmp_path / "vec.safetensors"), "--to", "hf", "--model", str(folder),
                 "--out", str(tmp_path / "steered"), "--strength", "0.3", "--threads", "1"]) == 0
    with vector.apply(model, strength=0.3):
        expected = logits(model)
    assert relative(logits(_model(tmp_path / "steered")), expected) < 1e-5

    assert main(["export", str(tmp_path / "vec.safetensors"), "--to", "gguf", "--strength", "0.3",
                 "--out", str(tmp_path / "vec.gguf")]) == 0
    cvec = read_control_vector(tmp_path / "vec.gguf")
    assert torch.allclose(cvec.layers[1], vector.added(0.3), atol=1e-6)
    assert main(["export", str(tmp_path / "vec.gguf"), "--to", "artifact", "--out", str(tmp_path / "back")]) == 0
    (written,) = sorted((tmp_path / "back").glob("*.safetensors"))
    assert written.name == "vec.resid_post.1.safetensors"


def test_refusal_is_one_line_exit_2(folder, tmp_path, capsys):
    model = _model(folder)
    steering_vector(model, layer=1).save(tmp_path / "vec.safetensors")
    code = main(["export", str(tmp_path / "vec.safetensors"), "--to", "peft", "--model", str(folder),
                 "--out", str(tmp_path / "adapter")])
    err = capsys.readouterr().err
    assert code == 2 and "error: steering.vector cannot be a LoRA adapter" in err and "--to gguf" in err
    assert not (tmp_path / "adapter").exists()


def test_side_effects_measured_into_the_card(folder, tmp_path):
    from almostlinear.data import FALLBACK_TEXTS
    from almostlinear.export import measure_side_effects

    model = _model(folder)
    lever = edit(model, layer=1, scale=5.0)
    lever.save(tmp_path / "edit.safetensors")
    assert main(["export", str(tmp_path / "edit.safetensors"), "--to", "peft", "--model", str(folder),
                 "--out", str(tmp_path / "adapter"), "--side-effects", "3", "--threads", "1"]) == 0
    card = (tmp_path / "adapter" / "README.md").read_text()
    texts = [FALLBACK_TEXTS[i] for i in range(3)]
    found = measure_side_effects([lever], model, texts, tokenizer=make_tokenizer())
    assert found["kl"] > 0 and f"kl: {found['kl']:.4g}" in card and "delta_ce" in card
