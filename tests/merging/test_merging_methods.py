"""In-memory merges against direct computations and independent re-implementations of the papers' rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from almostlinear.core.errors import AlmostLinearError, ChoiceError, NonFiniteError, ShapeError
from almostlinear.merging import greedy_soup, merge_state_dicts, uniform_soup
from almostlinear.merging import methods


def _sd(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": scale * torch.randn(6, 5, generator=g), "b": scale * torch.randn(5, generator=g),
            "ids": torch.arange(4)}


def _ties_reference(base: np.ndarray, fts: list[np.ndarray], density: float, lam: float) -> np.ndarray:
    """Algorithm 1 of arXiv 2306.01708, written directly in numpy."""
    taus = [f - base for f in fts]
    trimmed = []
    for t in taus:
        flat = t.ravel()
        k = max(1, int(density * flat.size))
        keep = np.argsort(-np.abs(flat), kind="stable")[:k]
        out = np.zeros_like(flat)
        out[keep] = flat[keep]
        trimmed.append(out.reshape(t.shape))
    stack = np.stack(trimmed)
    gamma = np.sign(stack.sum(0))
    gamma[gamma == 0] = 1
    agree = (np.sign(stack) == gamma)
    count = agree.sum(0)
    merged = np.where(count > 0, (stack * agree).sum(0) / np.maximum(count, 1), 0.0)
    return base + lam * merged


def test_linear_is_the_weighted_average():
    a, b, c = _sd(1), _sd(2), _sd(3)
    out = merge_state_dicts("linear", [a, b, c], weights=[1, 2, 3])
    expected = (a["w"] + 2 * b["w"] + 3 * c["w"]) / 6
    torch.testing.assert_close(out["w"], expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(out["ids"], a["ids"])
    raw = merge_state_dicts("linear", [a, b], weights=[0.5, 0.25], normalize=False)
    torch.testing.assert_close(raw["b"], 0.5 * a["b"] + 0.25 * b["b"])


@given(st.integers(0, 10_000), st.sampled_from(["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties"]))
def test_weight_zero_on_the_second_model_returns_the_first(seed, method):
    a, b = _sd(seed), _sd(seed + 1, scale=3.0)
    if method == "linear":
        out = merge_state_dicts("linear", [a, b], weights=[1.0, 0.0])
        for k in a:
            torch.testing.assert_close(out[k], a[k], rtol=0, atol=0)
        return
    # with a base: weight 1 on a fine-tune equal to the base, 0 on another, returns the base
    out = merge_state_dicts(method, [a, b], weights=[1.0, 0.0], base=a)
    for k in a:
        torch.testing.assert_close(out[k], a[k], rtol=0, atol=1e-6)


def test_slerp_endpoints_and_angle():
    x = torch.tensor([1.0, 0.0, 0.0])
    y = torch.tensor([0.0, 2.0, 0.0])
    assert torch.allclose(methods.slerp(x, y, 0.0), x)
    assert torch.allclose(methods.slerp(x, y, 1.0), y)
    mid = methods.slerp(x, y, 0.5)
    # halfway along the quarter circle: coefficients sin(pi/4)/sin(pi/2) on both ends
    assert torch.allclose(mid, torch.tensor([2 ** -0.5, 2 ** 0.5, 0.0]), atol=1e-6)
    # parallel inputs fall back to linear interpolation
    assert torch.allclose(methods.slerp(x, 3 * x, 0.5), 2 * x)
    out = merge_state_dicts("slerp", [{"w": x}, {"w": y}], t=0.25)
    assert torch.allclose(out["w"], methods.slerp(x, y, 0.25))


def test_task_arithmetic_matches_the_formula():
    base, a, b = _sd(0), _sd(1), _sd(2)
    out = merge_state_dicts("task_arithmetic", [a, b], weights=[0.3, 0.6], base=base, lam=0.5)
    expected = base["w"] + 0.5 * (0.3 * (a["w"] - base["w"]) + 0.6 * (b["w"] - base["w"]))
    torch.testing.assert_close(out["w"], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_ties_equals_algorithm_1_of_the_paper(density):
    base, a, b, c = _sd(0), _sd(1), _sd(2), _sd(3)
    out = merge_state_dicts("ties", [a, b, c], base=base, density=density, lam=0.8)
    for k in ("w", "b"):
        ref = _ties_reference(base[k].double().numpy(), [m[k].double().numpy() for m in (a, b, c)], density, 0.8)
        np.testing.assert_allclose(out[k].double().numpy(), ref, rtol=1e-5, atol=1e-6)


def test_ties_weighted_election_differs_only_where_weights_flip_the_sign():
    base = {"w": torch.zeros(3)}
    a = {"w": torch.tensor([1.0, -1.0, 0.5])}
    b = {"w": torch.tensor([-2.0, 0.5, 0.5])}
    paper = merge_state_dicts("ties", [a, b], base=base, weights=[3.0, 1.0], density=1.0)
    weighted = merge_state_dicts("ties", [a, b], base=base, weights=[3.0, 1.0], density=1.0, election="weighted")
    # coordinate 0: unweighted sum -1 elects '-', weighted sum +1 elects '+'
    assert paper["w"][0] == -2.0 and weighted["w"][0] == 1.0
    assert torch.equal(paper["w"][1:], weighted["w"][1:])


def test_dare_keeps_the_expected_fraction_and_is_unbiased():
    delta = torch.randn(200_000, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    dropped = methods.dare(delta, 0.1, generator=g)
    kept = (dropped != 0).double().mean().item()
    assert abs(kept - 0.1) < 0.005
    # survivors are rescaled by 1/p: the sum is preserved in expectation
    assert torch.allclose(dropped[dropped != 0], delta[dropped != 0] / 0.1)
    l1 = methods.dare(delta, 0.3, generator=torch.Generator().manual_seed(1), rescale="l1")
    assert abs(l1.abs().sum().item() - delta.abs().sum().item()) < 1e-6 * delta.abs().sum().item()


def test_dare_is_reproducible_per_tensor_name_and_density_one_is_task_arithmetic():
    base, a, b = _sd(0), _sd(1), _sd(2)
    one = merge_state_dicts("dare_linear", [a, b], base=base, density=0.5, seed=7)
    two = merge_state_dicts("dare_linear", [b, a][::-1], base=base, density=0.5, seed=7)
    assert torch.equal(one["w"], two["w"])
    full = merge_state_dicts("dare_linear", [a, b], base=base, density=1.0)
    ta = merge_state_dicts("task_arithmetic", [a, b], base=base)
    torch.testing.assert_close(full["w"], ta["w"])


def _dropped(seed: int, model: int) -> torch.Tensor:
    """Which entries DARE keeps of input ``model`` (of two) for ``seed``, read off a merge that
    weights that input alone."""
    base = {"w": torch.zeros(4000, dtype=torch.float64)}
    fts = [{"w": torch.ones(4000, dtype=torch.float64)}, {"w": torch.ones(4000, dtype=torch.float64)}]
    weights = [1.0 if i == model else 0.0 for i in range(2)]
    return merge_state_dicts("dare_linear", fts, base=base, weights=weights, density=0.5, seed=seed)["w"] != 0


@pytest.mark.parametrize("seed", [0, 1, 41])
def test_adjacent_dare_seeds_share_no_masks(seed):
    """With per-model seeds ``seed + i``, model 1 of seed s kept exactly what model 0 of seed s + 1 kept."""
    later, first = _dropped(seed, 1), _dropped(seed + 1, 0)
    agreement = (later == first).double().mean().item()
    assert abs(agreement - 0.5) < 0.05  # independent masks of density 0.5 agree on about half the entries
    assert 0.45 < later.double().mean().item() < 0.55
    assert not torch.equal(_dropped(seed, 0), _dropped(seed, 1))  # the models of one run differ too
    assert torch.equal(_dropped(seed, 1), later)  # and each is reproducible


def test_soups():
    sds = [_sd(i) for i in range(4)]
    soup = uniform_soup(sds)
    torch.testing.assert_close(soup["w"], torch.stack([s["w"] for s in sds]).mean(0))
    target = sds[2]["w"]

    def score(sd):  # closeness to model 2: greedy soup keeps model 2 alone first
        return -float((sd["w"] - target).norm())

    out, chosen = greedy_soup(sds, score)
    assert chosen[0] == 2
    assert torch.equal(out["w"], sds[2]["w"]) or len(chosen) > 1
    # an evaluation that rewards averaging accepts every ingredient
    centre = torch.stack([s["w"] for s in sds]).mean(0)
    out, chosen = greedy_soup(sds, lambda sd: -float((sd["w"] - centre).norm()))
    assert sorted(chosen) == [0, 1, 2, 3]
    torch.testing.assert_close(out["w"], centre)


def test_bad_inputs_name_the_tensor():
    a, b = _sd(0), _sd(1)
    b_bad = dict(b, w=torch.randn(6, 4))
    with pytest.raises(ShapeError, match="'w'"):
        merge_state_dicts("linear", [a, b_bad])
    with pytest.raises(ShapeError, match="lacks tensor 'b'"):
        merge_state_dicts("linear", [a, {k: v for k, v in b.items() if k != "b"}])
    with pytest.raises(AlmostLinearError, match="needs base"):
        merge_state_dicts("ties", [a, b])
    with pytest.raises(ChoiceError, match="'dentsity'"):
        merge_state_dicts("ties", [a, b], base=a, dentsity=0.3)
    with pytest.raises(ChoiceError, match="unknown merge method 'average'; choose one of 'linear'"):
        merge_state_dicts("average", [a, b])
    with pytest.raises(NonFiniteError, match="'w'"):
        merge_state_dicts("linear", [a, dict(b, w=torch.full((6, 5), float("nan")))])
    with pytest.raises(AlmostLinearError, match="'ids'"):
        merge_state_dicts("linear", [a, dict(b, ids=torch.arange(4) + 1)])


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties"])
def test_chunked_streaming_equals_the_in_memory_merge_even_with_tied_magnitudes(method):
    from almostlinear.merging.dispatch import merge_into

    g = torch.Generator().manual_seed(0)
    base = torch.randn(37, 11, generator=g)
    # quantised deltas: many entries share a magnitude, so the top-k boundary has ties
    fts = [base + 0.01 * torch.randint(-3, 4, base.shape, generator=g).float() for _ in range(3)]
    options = {"density": [0.3, 0.5, 0.2]} if method == "ties" else {}
    kwargs = {} if method == "linear" else {"base": {"w": base}}
    expected = merge_state_dicts(method, [{"w": f} for f in fts], weights=[0.5, 1.0, 0.7], **kwargs, **options)["w"]
    out = torch.empty_like(base)
    merge_into(method, "w", fts, [0.5, 1.0, 0.7], None if method == "linear" else base, options, out, chunk=7)
    assert torch.equal(out, expected)
    if method == "ties":
        kept = [(methods.trim_magnitude(f - base, d) != 0).sum().item() for f, d in zip(fts, [0.3, 0.5, 0.2])]
        assert kept == [int(d * base.numel()) for d in (0.3, 0.5, 0.2)]
