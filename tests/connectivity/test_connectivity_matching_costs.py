"""Weight matching with cached cost terms finds the permutations of recomputing every term each step."""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_model
from torch import nn

from almostlinear.connectivity import feedforward_spec, transformer_spec, weight_matching
from almostlinear.connectivity.costs import MatchingCosts
from almostlinear.connectivity.spec import identity_perms, permute_tensor, random_perms


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    named = dict(model.named_parameters(remove_duplicate=False))
    return {k: v.detach() for k, v in named.items()}


def _direct_cost(spec, a, b, perms, name) -> torch.Tensor:
    n = spec.sizes[name]
    cost = torch.zeros(n, n, dtype=torch.float64)
    for key, ap in spec.touching(name):
        wb = permute_tensor(b[key].double(), spec.axes[key], perms, skip=ap)
        cost += ap.units(a[key].double()) @ ap.units(wb).T
    return cost


def _direct_weight_matching(spec, a, b, seed=0, max_iter=100) -> dict[str, torch.Tensor]:
    """The published coordinate descent, every cost recomputed from every tensor at every step."""
    from scipy.optimize import linear_sum_assignment

    perms = identity_perms(spec)
    names = list(spec.sizes)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(max_iter):
        improved = False
        for k in torch.randperm(len(names), generator=generator).tolist():
            name = names[k]
            cost = _direct_cost(spec, a, b, perms, name)
            new = torch.from_numpy(linear_sum_assignment(cost.numpy(), maximize=True)[1])
            rows = torch.arange(len(new))
            if cost[rows, new].sum() - cost[rows, perms[name]].sum() > 1e-12 * max(1.0, float(cost.abs().max())):
                improved = True
            perms[name] = new
        if not improved:
            break
    return perms


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "qwen3", "gemma2"])
@pytest.mark.parametrize("seed", [0, 1])
def test_same_permutations_as_direct_recomputation_on_independent_transformers(family, seed):
    a, b = build_model(family, 0), build_model(family, 1)
    spec = transformer_spec(a)
    found = weight_matching(a, b, spec, seed=seed)
    direct = _direct_weight_matching(spec, _state(a), _state(b), seed=seed)
    moved = [n for n in spec.sizes if not torch.equal(direct[n], torch.arange(spec.sizes[n]))]
    assert moved, "independent networks should need some permutation"
    for name in spec.sizes:
        assert torch.equal(found.perms[name], direct[name]), name
    # converged: the last sweep changed nothing, and at least one step was skipped as unchanged
    extra = found.provenance.extra
    assert extra["assignments_solved"] < extra["sweeps"] * len(spec.sizes)


def test_same_permutations_on_independent_mlps():
    torch.manual_seed(0)
    widths = [6, 16, 12, 10, 3]

    def mlp():
        layers = []
        for i in range(len(widths) - 1):
            layers += [nn.Linear(widths[i], widths[i + 1]), nn.ReLU()]
        return nn.Sequential(*layers[:-1])

    a, b = mlp(), mlp()
    spec = feedforward_spec(a)
    for seed in range(3):
        found = weight_matching(a, b, spec, seed=seed)
        direct = _direct_weight_matching(spec, _state(a), _state(b), seed=seed)
        assert all(torch.equal(found.perms[n], direct[n]) for n in spec.sizes)


def test_cached_costs_follow_every_permutation_change():
    a, b = build_model("llama", 0), build_model("llama", 1)
    spec = transformer_spec(a)
    sa, sb = _state(a), _state(b)
    costs = MatchingCosts(spec, sa, sb, identity_perms(spec))
    groups = {name: len(costs.groups[name]) for name in spec.sizes}
    assert groups["residual"] > 2  # a constant group, and per block its attention and its MLP
    for step in range(4):  # move a few permutations, then every cost must match a fresh recomputation
        for name, perm in list(random_perms(spec, step).items())[step::3]:
            costs.solved(name, perm)
        for name in spec.sizes:
            expected = _direct_cost(spec, sa, sb, costs.perms, name)
            assert torch.allclose(costs.cost(name), expected, rtol=1e-12, atol=1e-12), (step, name)


def test_an_unchanged_neighbourhood_skips_the_step_and_a_changed_one_does_not():
    a, b = build_model("llama", 0), build_model("llama", 1)
    spec = transformer_spec(a)
    costs = MatchingCosts(spec, _state(a), _state(b), identity_perms(spec))
    assert not costs.unchanged_since_solved("mlp.0")  # never solved
    costs.solved("mlp.0", torch.arange(spec.sizes["mlp.0"]))
    assert costs.unchanged_since_solved("mlp.0")
    costs.solved("mlp.1", torch.randperm(spec.sizes["mlp.1"]))  # not a neighbour of mlp.0
    assert costs.unchanged_since_solved("mlp.0")
    costs.solved("residual", torch.randperm(spec.sizes["residual"]))
    assert not costs.unchanged_since_solved("mlp.0")


def test_tied_embedding_and_head_are_computed_once():
    a, b = build_model("gemma", 0), build_model("gemma", 1)  # gemma ties its head to the embedding
    spec = transformer_spec(a)
    sa = _state(a)
    tied = [k for k in spec.axes if k.endswith("embed_tokens.weight") or k == "lm_head.weight"]
    assert len(tied) == 2 and sa[tied[0]].data_ptr() == sa[tied[1]].data_ptr()
    costs = MatchingCosts(spec, sa, _state(b), identity_perms(spec))
    costs.cost("residual")
    assert costs.terms_computed == len(spec.touching("residual")) - 1
    assert torch.allclose(costs.cost("residual"), _direct_cost(spec, sa, _state(b), costs.perms, "residual"),
                          rtol=1e-12, atol=1e-12)
