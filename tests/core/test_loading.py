"""``load`` with a dtype, an accelerate device map (offload included) and random weights."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TEXTS, build_model, make_tokenizer

from almostlinear import collect, fingerprint, load
from almostlinear.core.errors import ChoiceError

pytest.importorskip("accelerate")

SITES = ["resid_post.0", "mlp_key.1"]


@pytest.fixture
def folder(tmp_path):
    """A tiny Llama saved as a Hugging Face folder, and the model itself."""
    model = build_model("llama")
    path = tmp_path / "tiny-llama"
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path, model


def _assert_same_as_in_memory(loaded, model) -> None:
    """Fingerprint, tying and every activation and logit of ``loaded`` equal those of ``model``."""
    assert loaded.fingerprint == fingerprint(model)
    assert loaded.structure.tied_embeddings == model.config.tie_word_embeddings
    got = collect(loaded.model, loaded.tokenizer, TEXTS, SITES, logits=True)
    expected = collect(model, make_tokenizer(), TEXTS, SITES, logits=True)
    for site in SITES:
        assert torch.equal(got[site], expected[site])
    assert torch.equal(got.logits, expected.logits)


@pytest.mark.parametrize("dtype", ["bfloat16", torch.float16, "float32"])
def test_dtype(folder, dtype):
    path, model = folder
    loaded = load(str(path), dtype=dtype)
    expected = dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype)
    assert {p.dtype for p in loaded.model.parameters()} == {expected}
    assert loaded.dtype == str(expected).removeprefix("torch.")
    assert loaded.device_map is None
    assert loaded.fingerprint == fingerprint(model.to(expected))


def test_device_map_auto(folder):
    path, model = folder
    loaded = load(str(path), device_map="auto", dtype="bfloat16")
    if not torch.cuda.is_available():
        assert loaded.device_map == {"": "cpu"}  # the whole model on one device
    assert loaded.device_map
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    reference = load(str(path), dtype="bfloat16").model  # the same load without a map
    assert loaded.fingerprint == fingerprint(reference) == fingerprint(model.to(torch.bfloat16))
    got = collect(loaded.model, loaded.tokenizer, TEXTS, SITES)
    expected = collect(reference, make_tokenizer(), TEXTS, SITES)
    for site in SITES:
        assert torch.equal(got[site], expected[site])


def test_device_map_with_disk_offload(folder, tmp_path):
    """Layer 1 on the disk tier: its weights are meta tensors read through accelerate."""
    path, model = folder
    placement = {"model.embed_tokens": "disk", "model.layers.0": "cpu", "model.layers.1": "disk",
                 "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    loaded = load(str(path), device_map=placement, offload_folder=tmp_path / "offload")
    assert loaded.model.model.layers[1].mlp.down_proj.weight.is_meta
    assert loaded.model.model.embed_tokens.weight.is_meta
    assert loaded.device_map == placement
    _assert_same_as_in_memory(loaded, model)


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # untied and tied embeddings
def test_everything_offloaded_by_a_memory_limit(family, tmp_path):
    model = build_model(family)
    path = tmp_path / family
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    loaded = load(str(path), device_map="auto", max_memory={"cpu": "1KB"}, offload_folder=tmp_path / "offload")
    assert all(p.is_meta for p in loaded.model.parameters()) and loaded.device_map == {"": "disk"}
    _assert_same_as_in_memory(loaded, model)


def test_map_options_need_a_map(folder):
    path, _ = folder
    with pytest.raises(ChoiceError, match="device_map"):
        load(str(path), max_memory={"cpu": "1GB"})
    with pytest.raises(ChoiceError, match="device_map"):
        load(str(path), offload_folder="somewhere")
    with pytest.raises(ChoiceError, match="random weights"):
        load(str(path), device_map="auto", random_weights=True)


def test_random_weights(folder):
    path, model = folder
    state = torch.random.get_rng_state()
    one = load(str(path), random_weights=True, dtype="bfloat16")
    assert torch.equal(torch.random.get_rng_state(), state), "the caller's random state is left alone"
    two = load(str(path), random_weights=True, dtype="bfloat16")
    assert one.random_weights and one.dtype == "bfloat16"
    assert one.structure.summary() == load(str(path)).structure.summary()
    assert one.fingerprint == two.fingerprint != fingerprint(model.to(torch.bfloat16))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_audit_records_dtype_and_device_map(folder, tmp_path, dtype):
    import json

    from almostlinear.cli import main

    path, _ = folder
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS * 3), encoding="utf-8")
    out = tmp_path / "out"
    code = main(["audit", "--model", str(path), "--dtype", dtype, "--device-map", "auto", "--quick",
                 "--sections", "model_card,interlayer_linearity", "--texts", str(texts), "--out", str(out),
                 "--threads", "1"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    settings = report["settings"]
    assert settings["dtype"] == dtype and settings["random_weights"] is False
    assert settings["device_map"] == ({"": "cpu"} if not torch.cuda.is_available() else settings["device_map"])
    assert settings["device_map"]
    assert {s["status"] for s in report["sections"]} == {"ok"}


def test_audit_with_random_weights(folder, tmp_path):
    from almostlinear.audit import run_audit

    path, model = folder
    report = run_audit(str(path), random_weights=True, sections=["model_card"], progress=lambda _: None)
    assert report.report["settings"]["random_weights"] is True
    assert report.report["settings"]["device_map"] is None and report.report["settings"]["dtype"] == "float32"
    assert report.report["model"]["fingerprint"] != fingerprint(model)


def test_max_memory_option():
    from almostlinear.cli import _max_memory

    assert _max_memory("0=20GiB, cpu=60GiB") == {0: "20GiB", "cpu": "60GiB"}
    assert _max_memory(None) is None
    with pytest.raises(ChoiceError, match="DEVICE=SIZE"):
        _max_memory("20GiB")


def test_device_map_option():
    from almostlinear.cli import _device_map

    assert _device_map("auto") == "auto" and _device_map(None) is None
    assert _device_map('{"model": 0, "lm_head": "cpu"}') == {"model": 0, "lm_head": "cpu"}
    with pytest.raises(ChoiceError, match="JSON"):
        _device_map("{model: 0")
