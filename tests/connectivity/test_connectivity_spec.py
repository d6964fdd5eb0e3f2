"""A permuted network computes the same function; planted permutations are recovered."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import CAUSAL, build_model
from torch import nn

from almostlinear.connectivity import (
    Permutation,
    activation_matching,
    check_spec,
    feedforward_spec,
    random_perms,
    transformer_spec,
    weight_matching,
)
from almostlinear.connectivity.spec import identity_perms
from almostlinear.core.artifact import load
from almostlinear.core.errors import ShapeError, StructureError


def _mlp(widths: list[int], seed: int, norm: bool) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers.append(nn.Linear(a, b))
        if b != widths[-1]:
            if norm:
                layers.append(nn.LayerNorm(b))
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


@settings(max_examples=25)
@given(widths=st.lists(st.integers(1, 12), min_size=2, max_size=4), seed=st.integers(0, 10_000),
       norm=st.booleans())
def test_permuted_mlp_computes_the_same_function(widths, seed, norm):
    model = _mlp([5, *widths, 3], seed, norm).double()  # a LayerNorm over 1-2 units amplifies float32 rounding
    spec = feedforward_spec(model)
    assert check_spec(model, spec, torch.randn(7, 5, dtype=torch.float64), seed=seed) < 1e-10


def test_permuted_cnn_with_batchnorm_and_flatten_is_the_same_function():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 6 * 6, 4)).eval()
    with torch.no_grad():  # non-trivial running statistics
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2)
    spec = feedforward_spec(model)
    assert spec.sizes == {"hidden.0": 6, "hidden.1": 5}
    assert "1.running_var" in spec.axes
    assert check_spec(model, spec, torch.randn(3, 1, 8, 8)) < 1e-5


@pytest.mark.parametrize("family", CAUSAL)
def test_permuted_transformer_gives_identical_logits(family):
    model = build_model(family)
    spec = transformer_spec(model)
    assert "residual" in spec.sizes and "mlp.0" in spec.sizes and "heads.1" in spec.sizes
    ids = torch.randint(3, 60, (2, 9))
    for seed in range(3):
        assert check_spec(model, spec, ids, seed=seed) < 1e-5


def test_grouped_query_llama_permutes_groups_and_keeps_rope_dimensions():
    model = build_model("llama")  # 4 query heads over 2 kv heads, RoPE
    spec = transformer_spec(model)
    assert spec.sizes["heads.0"] == 2 and spec.sizes["group.0"] == 2 and spec.sizes["vo.0"] == 8
    assert "qk.0" not in spec.sizes and any("rotary" in n for n in spec.notes)
    # A RoPE-pair permutation of query/key dimensions would change the function:
    gpt2 = transformer_spec(build_model("gpt2"))
    assert "qk.0" in gpt2.sizes  # no rotary embedding: query/key dimensions are free


def test_wrong_rope_permutation_is_detected():
    """Control for the check itself: permuting query/key dimensions under RoPE changes the logits."""
    from almostlinear.connectivity.spec import AxisPerm, PermutationSpec

    model = build_model("llama")  # head_dim 8, 4 query heads, 2 kv heads
    axes = {"model.layers.0.self_attn.q_proj.weight": (AxisPerm("qk", 0, (4, 8), 1),),
            "model.layers.0.self_attn.k_proj.weight": (AxisPerm("qk", 0, (2, 8), 1),)}
    bad = PermutationSpec({"qk": 8}, axes)
    assert check_spec(model, bad, torch.randint(3, 60, (1, 9))) > 1e-4
    gpt2 = build_model("gpt2")  # learned positions: the same kind of permutation is exact there
    assert check_spec(gpt2, transformer_spec(gpt2), torch.randint(3, 60, (1, 9))) < 1e-5


def test_apply_restores_bit_for_bit_even_on_error():
    model = build_model("gpt2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    perm = Permutation.from_perms(transformer_spec(model), random_perms(transformer_spec(model), 1))
    with pytest.raises(RuntimeError):
        with perm.apply(model):
            assert not torch.equal(model.transformer.wte.weight, before["transformer.wte.weight"])
            raise RuntimeError("boom")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_permutation_save_load_and_inverse(tmp_path):
    model = _mlp([4, 6, 6, 2], 0, False)
    spec = feedforward_spec(model)
    perm = Permutation.from_perms(spec, random_perms(spec, 3))
    path = perm.save(tmp_path / "perm.safetensors")
    again = load(path)
    assert isinstance(again, Permutation)
    assert all(torch.equal(again.perms[n], perm.perms[n]) for n in spec.sizes)
    state = dict(model.state_dict())
    back = perm.inverse().permute_state_dict(perm.permute_state_dict(state))
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_bad_permutations_and_models_raise():
    model = _mlp([4, 6, 2], 0, False)
    spec = feedforward_spec(model)
    with pytest.raises(ShapeError):
        Permutation.from_perms(spec, {"hidden.0": torch.tensor([0, 0, 1, 2, 3, 4])})
    with pytest.raises(StructureError):
        Permutation.from_perms(spec, {})
    with pytest.raises(StructureError):
        feedforward_spec(nn.Sequential(nn.Linear(3, 3)))
    with pytest.raises(StructureError):
        transformer_spec(build_model("bert"))  # post-norm encoder: attention output norm has no rule yet


def test_weight_matching_recovers_a_planted_permutation_in_a_transformer():
    a = build_model("llama")
    spec = transformer_spec(a)
    b = build_model("llama")
    planted = Permutation.from_perms(spec, random_perms(spec, 5))
    planted.bake_(b)
    found = weight_matching(a, b, spec)
    with found.apply(b):
        for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
            assert torch.equal(pa, pb), name
    assert found.provenance.method == "weight_matching"


def test_weight_matching_never_lowers_the_objective_and_matches_brute_force():
    # one hidden layer of 5 units: 120 permutations, checked exhaustively
    from itertools import permutations

    a, b = _mlp([3, 5, 2], 0, False), _mlp([3, 5, 2], 1, False)
    spec = feedforward_spec(a)

    def score(order):
        pb = Permutation.from_perms(spec, {"hidden.0": torch.tensor(order)}).permute_state_dict(b.state_dict())
        return sum(float((a.state_dict()[k].double() * pb[k].double()).sum()) for k in spec.axes)

    best = max(permutations(range(5)), key=score)
    found = weight_matching(a, b, spec).perms["hidden.0"].tolist()
    assert score(found) == pytest.approx(score(best)) and score(found) >= score(list(range(5)))


def test_activation_matching_recovers_a_planted_permutation():
    a = _mlp([5, 10, 10, 3], 0, False)
    spec = feedforward_spec(a)
    b = _mlp([5, 10, 10, 3], 0, False)
    Permutation.from_perms(spec, random_perms(spec, 2)).bake_(b)
    found = activation_matching(a, b, spec, [torch.randn(200, 5)])
    with found.apply(b):
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.equal(pa, pb)
    assert identity_perms(spec).keys() == found.perms.keys()


@pytest.mark.real
def test_permuted_smollm2_gives_the_same_logits(smollm2):
    model = smollm2.model
    spec = transformer_spec(model, smollm2.structure)
    assert spec.sizes["residual"] == 576 and spec.sizes["group.0"] == 3  # 9 query heads over 3 kv heads
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt").input_ids
    first = next(model.parameters()).clone()
    assert check_spec(model, spec, ids) < 1e-3  # logits of size ~20 in float32
    assert torch.equal(next(model.parameters()), first)


def test_activation_matching_of_transformer_mlp_units():
    a = build_model("gpt2")
    spec = transformer_spec(a)
    b = build_model("gpt2")
    planted = {n: torch.arange(k) for n, k in spec.sizes.items()}
    planted["mlp.1"] = torch.randperm(spec.sizes["mlp.1"], generator=torch.Generator().manual_seed(0))
    Permutation.from_perms(spec, planted).bake_(b)
    ids = torch.randint(3, 60, (8, 12))
    with pytest.raises(StructureError):
        activation_matching(a, b, spec, [ids])
    found = activation_matching(a, b, spec, [ids], unobserved="identity")
    with found.apply(b):
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.equal(pa, pb)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_permuted_state_dict_of_a_tied_model_loads_back_consistently(family):
    model = build_model(family)
    if family == "llama":
        model.lm_head.weight = model.model.embed_tokens.weight  # tie the head to the embedding
    spec = transformer_spec(model)
    perm = Permutation.from_perms(spec, random_perms(spec, 4))
    ids = torch.randint(3, 60, (1, 8))
    expected = model(ids).logits.detach()
    model.load_state_dict(perm.permute_state_dict(model.state_dict()))
    torch.testing.assert_close(model(ids).logits.detach(), expected, atol=1e-5, rtol=1e-5)


def test_fitted_permutation_warns_on_another_model():
    from almostlinear.core.artifact import FingerprintWarning

    a, b = _mlp([4, 6, 2], 0, False), _mlp([4, 6, 2], 1, False)
    perm = weight_matching(a, b, feedforward_spec(a))
    assert perm.provenance.model_fingerprint is not None
    with pytest.warns(FingerprintWarning):
        with perm.apply(a):
            pass
    with pytest.raises(Exception, match="fitted on model"):
        with perm.apply(a, strict=True):
            pass
