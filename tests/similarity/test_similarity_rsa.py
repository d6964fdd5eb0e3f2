import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist, squareform
from scipy.stats import pearsonr, rankdata, spearmanr

from almostlinear.core.errors import ChoiceError, EmptyDataError, ShapeError
from almostlinear.similarity import rdm, rsa
from almostlinear.similarity.rdms import average_ranks, upper_triangle


def _pair(seed, n=30):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8))
    y = np.tanh(x @ rng.normal(size=(8, 5))) + 0.5 * rng.normal(size=(n, 5))
    return x, y


@pytest.mark.parametrize("metric", ["correlation", "euclidean"])
def test_rdm_equals_scipy_pdist(metric):
    x, _ = _pair(0)
    np.testing.assert_allclose(rdm(torch.tensor(x), metric=metric).numpy(), squareform(pdist(x, metric)),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(upper_triangle(rdm(torch.tensor(x), metric=metric)).numpy(), pdist(x, metric),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("metric", ["correlation", "euclidean"])
def test_rsa_equals_scipy_rank_and_linear_correlation_of_the_rdms(metric):
    x, y = _pair(1)
    tx, ty = torch.tensor(x), torch.tensor(y)
    assert rsa(tx, ty, metric=metric) == pytest.approx(spearmanr(pdist(x, metric), pdist(y, metric))[0], rel=1e-10)
    assert rsa(tx, ty, metric=metric, compare="pearson") == pytest.approx(
        pearsonr(pdist(x, metric), pdist(y, metric))[0], rel=1e-10)


def test_average_ranks_handle_ties_like_scipy():
    values = torch.tensor([3.0, 1.0, 3.0, 2.0, 1.0, 3.0, 0.5])
    np.testing.assert_array_equal(average_ranks(values).numpy(), rankdata(values.numpy()))


def test_mask_and_bad_input():
    x, y = (torch.tensor(a) for a in _pair(2))
    mask = torch.arange(30) >= 5
    assert rsa(x, y, mask=mask) == pytest.approx(rsa(x[mask], y[mask]), rel=1e-12)
    with pytest.raises(ShapeError, match="same examples"):
        rsa(x, y[:10])
    with pytest.raises(ChoiceError, match="metric"):
        rdm(x, metric="cosine")
    with pytest.raises(ChoiceError, match="comparison"):
        rsa(x, y, compare="kendall")
    with pytest.raises(EmptyDataError, match="constant"):
        rdm(torch.ones(4, 3, dtype=torch.float64))
    with pytest.raises(EmptyDataError):
        rsa(x[:2], y[:2])
