"""A permutation as a lever: no strength, exact restore and undo (buffers included), records through files,
loaded models, another model's weights, and mixture-of-experts models refused."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from tiny_models import MOE_ARCHITECTURES, assert_state_restored, build_model, make_tokenizer, state_copy
from torch import nn

from almostlinear.connectivity import Permutation, feedforward_spec, random_perms, transformer_spec, weight_matching
from almostlinear.core.artifact import FingerprintWarning, Where
from almostlinear.core.errors import AlmostLinearError, LeverError
from almostlinear.core.lever import Baked, Lever
from almostlinear.core.locate import locate
from almostlinear.core.models import LoadedModel

IDS = torch.randint(3, 60, (2, 9), generator=torch.Generator().manual_seed(0))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 6 * 6, 4)).eval()
    with torch.no_grad():  # running statistics that a permutation visibly moves
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2)
    return model


def _perm(model, seed: int = 1) -> Permutation:
    spec = transformer_spec(model) if getattr(model, "config", None) is not None else feedforward_spec(model)
    return Permutation.from_perms(spec, random_perms(spec, seed))


def test_a_permutation_is_a_lever_without_strength():
    perm = _perm(build_model("gpt2"))
    assert isinstance(perm, Lever) and perm.bakes and perm.strength_units == ("none",)
    assert perm.provenance.units == "none" and perm.provenance.where == Where()
    model = build_model("gpt2")
    before = state_copy(model)
    with pytest.raises(LeverError, match="only strength=1"):
        perm.apply(model, strength=0.5)
    with pytest.raises(LeverError, match="only strength=1"):
        perm.bake_(model, 2.0)
    assert_state_restored(model, before)


@pytest.mark.parametrize("make", [lambda: build_model("gpt2"), _cnn], ids=["gpt2", "cnn_batchnorm"])
def test_apply_restores_bit_for_bit_after_an_exception(make):
    model = make()
    before = state_copy(model)
    perm = _perm(model)
    with pytest.raises(KeyError, match="inside"), perm.apply(model) as module:
        assert module is model
        assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items() if "running" in k) \
            or not torch.equal(model.transformer.wte.weight, before["transformer.wte.weight"])
        raise KeyError("inside")
    assert_state_restored(model, before)


@pytest.mark.parametrize("make", [lambda: build_model("gpt2"), _cnn], ids=["gpt2", "cnn_batchnorm"])
def test_bake_then_undo_is_exact_and_the_function_is_kept(make):
    model = make()
    before = state_copy(model)
    inputs = IDS if getattr(model, "config", None) is not None else torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        expected = model(inputs)
        expected = getattr(expected, "logits", expected)
    perm = _perm(model)
    baked = perm.bake_(model)
    assert isinstance(baked, Baked)
    with torch.no_grad():
        out = model(inputs)
    torch.testing.assert_close(getattr(out, "logits", out), expected, rtol=1e-5, atol=1e-5)
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    baked.undo_()
    assert_state_restored(model, before)


def test_a_saved_bake_is_undone_in_another_process(tmp_path):
    model = build_model("gpt2")  # tied head: one tensor under two names
    before = state_copy(model)
    path = _perm(model).bake_(model).save(tmp_path / "baked.safetensors")
    record = Baked.load(path)
    fresh = build_model("gpt2")
    with pytest.raises(LeverError, match="not as this"):
        record.undo_(fresh)
    assert_state_restored(fresh, before)
    record.undo_(model)
    assert_state_restored(model, before)


def test_a_bake_that_moved_buffers_is_undone_in_this_process_only(tmp_path):
    model = _cnn()
    before = state_copy(model)
    baked = _perm(model).bake_(model)
    with pytest.raises(LeverError):
        baked.save(tmp_path / "baked.safetensors")
    baked.undo_()
    assert_state_restored(model, before)


def test_another_models_weights_warn_and_strict_raises():
    a, b = build_model("gpt2"), build_model("gpt2", seed=1)
    perm = weight_matching(a, b, transformer_spec(a), max_iter=2)
    before = state_copy(a)
    with pytest.raises(AlmostLinearError, match="fitted on model"):
        perm.apply(a, strict=True)
    with pytest.raises(AlmostLinearError, match="fitted on model"):
        perm.bake_(a, strict=True)
    assert_state_restored(a, before)
    with pytest.warns(FingerprintWarning), perm.apply(a):
        pass
    with pytest.warns(FingerprintWarning):
        perm.bake_(a).undo_()
    assert_state_restored(a, before)


def test_a_loaded_model_is_accepted():
    model = build_model("llama")
    before = state_copy(model)
    loaded = LoadedModel(model, make_tokenizer(), "tiny-llama", "memory", "causal-lm")
    perm = weight_matching(build_model("llama", seed=1), loaded, transformer_spec(model), max_iter=2)  # for loaded
    assert perm.provenance.model_fingerprint == loaded.fingerprint
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", FingerprintWarning)
        expected = model(IDS).logits
        with perm.apply(loaded) as module:
            assert module is model
            torch.testing.assert_close(model(IDS).logits, expected, rtol=1e-5, atol=1e-5)
    perm.bake_(loaded).undo_(loaded)
    assert_state_restored(model, before)


@pytest.mark.parametrize("family", MOE_ARCHITECTURES)
def test_mixture_of_experts_models_are_refused_by_name(family):
    model = build_model(family)
    with pytest.raises(LeverError, match=f"of {locate(model).model_type} are mixtures of experts"):
        transformer_spec(model)


def test_a_block_marked_moe_is_refused_before_any_change():
    model = build_model("llama")
    structure = locate(model)
    blocks = (dataclasses.replace(structure.blocks[0], moe=True, mlp_down_proj=None), *structure.blocks[1:])
    with pytest.raises(LeverError, match=r"blocks \[0\] of llama are mixtures of experts"):
        transformer_spec(model, dataclasses.replace(structure, blocks=blocks))
