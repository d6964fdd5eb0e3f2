import pytest
import torch

from almostlinear.core.errors import ChoiceError, EmptyDataError, ShapeError
from almostlinear.similarity import (
    MEASURES,
    kernel_stats,
    layer_similarity,
    linear_cka,
    mean_cca,
    procrustes_similarity,
    pwcca,
    rsa,
    svcca,
)
from almostlinear.similarity.reservoir import TokenReservoir

PAIRWISE = {
    "cka": linear_cka,
    "cka_debiased": lambda x, y: linear_cka(x, y, debiased=True),
    "procrustes": procrustes_similarity,
    "cca": mean_cca,
    "svcca": svcca,
    "pwcca": pwcca,
    "rsa": rsa,
}


def _layers(seed, n=40, widths=(5, 7, 5, 3)):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, widths[0], generator=g, dtype=torch.float64)
    out = [h]
    for width in widths[1:]:
        h = torch.tanh(h @ torch.randn(h.shape[1], width, generator=g, dtype=torch.float64)) + 0.3 * torch.randn(
            n, width, generator=g, dtype=torch.float64)
        out.append(h)
    return out


@pytest.mark.parametrize("measure", MEASURES)
def test_matrix_entries_equal_the_pairwise_functions(measure):
    layers = _layers(0)
    matrix = layer_similarity(layers, measure=measure)
    expected = torch.tensor([[PAIRWISE[measure](a, b) for b in layers] for a in layers], dtype=torch.float64)
    torch.testing.assert_close(matrix, expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("measure", ["cka", "cka_debiased", "procrustes"])
def test_across_two_models_gives_the_rectangular_block(measure):
    a, b = _layers(1, widths=(4, 6, 4)), _layers(2, widths=(3, 5))
    matrix = layer_similarity(a, b, measure=measure)
    assert matrix.shape == (3, 2)
    expected = torch.tensor([[PAIRWISE[measure](x, y) for y in b] for x in a], dtype=torch.float64)
    torch.testing.assert_close(matrix, expected, rtol=1e-9, atol=1e-10)


def test_gram_route_in_row_blocks_equals_feature_route():
    layers = _layers(3, n=57, widths=(6, 9, 4, 6, 2))
    features = kernel_stats(layers, method="features")
    grams = kernel_stats(layers, method="gram", block_bytes=8 * 5 * 57 * 4)  # blocks of 4 rows, the last short
    torch.testing.assert_close(grams.inner, features.inner, rtol=1e-11, atol=0)
    torch.testing.assert_close(grams.cka_debiased(), features.cka_debiased(), rtol=1e-10, atol=1e-12)
    stacked = torch.stack([x.float() for x in _layers(3, widths=(4, 4, 4))])  # one [layers, n, d] tensor
    assert layer_similarity(stacked).shape == (3, 3)


def test_mask_selects_tokens_in_every_layer():
    layers = _layers(4)
    mask = torch.arange(40) % 4 != 1
    torch.testing.assert_close(layer_similarity(layers, mask=mask), layer_similarity([x[mask] for x in layers]))


def test_bad_input_is_refused():
    layers = _layers(5)
    with pytest.raises(ShapeError, match="same examples"):
        layer_similarity([layers[0], layers[1][:30]])
    with pytest.raises(EmptyDataError, match="no layers"):
        layer_similarity([])
    with pytest.raises(ChoiceError, match="measure"):
        layer_similarity(layers, measure="cosine")
    with pytest.raises(ChoiceError, match="method"):
        layer_similarity(layers, method="fast")
    with pytest.raises(ShapeError, match="examples"):
        layer_similarity(layers, [x[:20] for x in layers])
    with pytest.raises(ShapeError):
        layer_similarity(torch.zeros(40, 5))


def test_reservoir_sample_is_a_subset_independent_of_batching():
    rows = torch.arange(300, dtype=torch.float32).reshape(1, 300, 1).expand(2, 300, 1).contiguous()
    samples = []
    for cuts in ([0, 300], [0, 1, 7, 150, 299, 300], list(range(0, 301, 25))):
        reservoir = TokenReservoir(40, seed=3)
        for start, stop in zip(cuts[:-1], cuts[1:], strict=True):
            reservoir.add(rows[:, start:stop])
        samples.append(reservoir.sample())
    assert all(torch.equal(s, samples[0]) for s in samples)
    kept = samples[0][0, :, 0].long()
    assert kept.unique().numel() == 40 and bool((kept < 300).all())
    assert torch.equal(samples[0][0], samples[0][1])  # the sites of one token stay together
    small = TokenReservoir(500)
    small.add(rows)
    assert torch.equal(small.sample(), rows)


def test_reservoir_keeps_each_row_with_equal_probability():
    counts = torch.zeros(100)
    for seed in range(400):
        reservoir = TokenReservoir(10, seed=seed)
        for start in range(0, 100, 30):
            reservoir.add(torch.arange(start, min(start + 30, 100), dtype=torch.float32).reshape(1, -1, 1))
        counts[reservoir.sample()[0, :, 0].long()] += 1
    # each row is kept with probability 0.1: 40 of 400 expected, sd 6; early and late rows alike
    assert counts[:50].mean() == pytest.approx(40, abs=4)
    assert counts[50:].mean() == pytest.approx(40, abs=4)
    assert counts.min() > 15 and counts.max() < 70
