"""Levers baked into a save_pretrained folder: transformers alone loads it and computes the applied lever."""

from __future__ import annotations

import json

import pytest
import torch
from export_helpers import ablation, edit, logits, relative, steering_vector, task_vector
from tiny_models import assert_state_restored, build_model, state_copy
from transformers import AutoModelForCausalLM

from almostlinear.core.errors import LeverError
from almostlinear.export import export_hf

TOLERANCE = 1e-5


def _reload(folder):
    return AutoModelForCausalLM.from_pretrained(folder).eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "gptj", "falcon"])
def test_steering_vector_as_bias_equals_hooked(arch, tmp_path):
    model = build_model(arch).eval()
    state = state_copy(model)
    lever = steering_vector(model, layer=1)
    with lever.apply(model, strength=0.8):
        expected = logits(model)
    export_hf(lever, model, tmp_path, strengths=[0.8])
    assert_state_restored(model, state)  # the bake is undone after writing
    got = logits(_reload(tmp_path))
    assert relative(got, expected) < TOLERANCE
    assert relative(got, logits(model)) > 1e-3


def test_llama_declares_mlp_bias_and_writes_zeros_elsewhere(tmp_path):
    model = build_model("llama").eval()
    export_hf(steering_vector(model, layer=0), model, tmp_path)
    assert model.config.mlp_bias is False  # only the saved config changes
    assert json.loads((tmp_path / "config.json").read_text())["mlp_bias"] is True
    reloaded = _reload(tmp_path)
    assert torch.count_nonzero(reloaded.model.layers[0].mlp.down_proj.bias) > 0
    assert torch.count_nonzero(reloaded.model.layers[1].mlp.down_proj.bias) == 0
    assert torch.count_nonzero(reloaded.model.layers[0].mlp.gate_proj.bias) == 0
    assert "mlp_bias" in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize("arch", ["qwen2", "gemma", "mistral"])
def test_steering_without_bias_option_is_refused(arch, tmp_path):
    model = build_model(arch).eval()
    state = state_copy(model)
    with pytest.raises(LeverError, match="no config option"):
        export_hf(steering_vector(model, layer=1), model, tmp_path)
    assert_state_restored(model, state)
    # nothing half-baked stays in the module: no bias was left behind
    assert all(getattr(block.mlp.down_proj, "bias", None) is None for block in model.model.layers)


@pytest.mark.parametrize("arch", ["qwen2", "gemma"])  # gemma: tied head, which the ablation unties
def test_ablation_baked_equals_hooked(arch, tmp_path):
    model = build_model(arch).eval()
    state = state_copy(model)
    lever = ablation(model, k=2)
    with lever.apply(model):
        expected = logits(model)
    export_hf(lever, model, tmp_path)
    assert_state_restored(model, state)
    assert relative(logits(_reload(tmp_path)), expected) < TOLERANCE


def test_several_levers_baked_together(tmp_path):
    model = build_model("llama").eval()
    levers = [edit(model, layer=1), task_vector(model), steering_vector(model, layer=0)]
    with levers[0].apply(model), levers[1].apply(model), levers[2].apply(model, strength=0.5):
        expected = logits(model)
    export_hf(levers, model, tmp_path, strengths=[1.0, 1.0, 0.5])
    assert relative(logits(_reload(tmp_path)), expected) < TOLERANCE
    card = (tmp_path / "README.md").read_text()
    assert card.count("### ") == 3 and "editing.low_rank" in card and "merging.task_vector" in card


def test_hook_only_lever_is_refused(tmp_path):
    from almostlinear.erasure import LeaceEraser

    model = build_model("llama")
    x = torch.randn(64, 32)
    eraser = LeaceEraser.fit(x, (x[:, 0] > 0).long(), site="resid_post.0")
    if eraser.bakes:
        pytest.skip("this eraser bakes; nothing to refuse")
    with pytest.raises(LeverError, match="bakes=False"):
        export_hf(eraser, model, tmp_path)


def test_permutation_baked_weights_are_the_applied_ones(tmp_path):
    from almostlinear.connectivity import Permutation, random_perms, transformer_spec

    model = build_model("llama").eval()
    spec = transformer_spec(model)
    permutation = Permutation.from_perms(spec, random_perms(spec, seed=5))
    with permutation.apply(model):
        expected = {k: v.clone() for k, v in model.state_dict().items()}
    export_hf(permutation, model, tmp_path)
    saved = _reload(tmp_path).state_dict()
    changed = [k for k in expected if not torch.equal(expected[k], model.state_dict()[k])]
    assert changed and all(torch.equal(saved[k], expected[k]) for k in expected)
    assert relative(logits(_reload(tmp_path)), logits(model)) < TOLERANCE  # a permuted network: same function
