import pytest
import torch
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score

from almostlinear.core.errors import EmptyDataError, ShapeError
from almostlinear.similarity import encoding_r2
from almostlinear.similarity.encoding import group_split


def _data(seed, n=400, dx=10, dy=6, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dx, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, dx, dtype=torch.float64)
    y = x @ torch.randn(dx, dy, generator=g, dtype=torch.float64)
    y = y + noise * torch.randn(n, dy, generator=g, dtype=torch.float64)
    return x, y + 7.0


def test_held_out_r2_equals_scikit_learn_ridge_on_the_same_split():
    x, y = _data(0)
    groups = torch.arange(400) // 10  # 40 "texts" of 10 tokens
    score = encoding_r2(x, y, groups=groups, ridge=0.3, seed=4)
    train, test = group_split(groups, 0.25, 4)
    xt = x[train].numpy()
    lam = 0.3 * xt.var(0).sum() / xt.shape[1]  # the ridge is relative to the mean variance of x
    model = Ridge(alpha=lam * xt.shape[0]).fit(xt, y[train].numpy())
    expected = r2_score(y[test].numpy(), model.predict(x[test].numpy()), multioutput="variance_weighted")
    assert score.held_out_r2 == pytest.approx(expected, rel=1e-9)
    assert (score.n_train, score.n_test) == (int(train.sum()), int(test.sum()))


def test_split_keeps_every_group_on_one_side():
    groups = torch.tensor([3, 3, 1, 1, 1, 7, 7, 9, 9, 9, 2, 2])
    train, test = group_split(groups, 0.4, seed=1)
    assert not set(groups[train].tolist()) & set(groups[test].tolist())
    assert bool((train ^ test).all())


def test_exact_maps_score_one_and_noise_scores_near_zero():
    x, y = _data(1, noise=0.0)
    assert encoding_r2(x, y, ridge=0.0).held_out_r2 == pytest.approx(1.0, abs=1e-9)
    g = torch.Generator().manual_seed(2)
    unrelated = torch.randn(400, 3, generator=g, dtype=torch.float64)
    score = encoding_r2(x, unrelated)
    # no skill held out (expected about -d/n_train below 0); in-sample, noise is fitted (about +d/n)
    assert -0.15 < score.held_out_r2 < 0.02
    assert score.in_sample_r2 > 0.01


def test_a_list_of_ridges_picks_one_of_them():
    x, y = _data(3, noise=3.0)
    score = encoding_r2(x, y, ridge=[1e-4, 1e-2, 1.0, 100.0], groups=torch.arange(400) // 4)
    assert score.ridge in (1e-4, 1e-2, 1.0, 100.0)
    assert score.ridge != 100.0  # a ridge a hundred times the variance throws the signal away


def test_bad_input_is_refused():
    x, y = _data(4)
    with pytest.raises(ShapeError, match="groups"):
        encoding_r2(x, y, groups=torch.zeros(10))
    with pytest.raises(EmptyDataError, match="2 groups"):
        encoding_r2(x, y, groups=torch.zeros(400))
    with pytest.raises(ShapeError, match="test_fraction"):
        encoding_r2(x, y, test_fraction=1.5)
    with pytest.raises(ShapeError, match="ridge"):
        encoding_r2(x, y, ridge=[-1.0])
    with pytest.raises(ShapeError, match="same examples"):
        encoding_r2(x, y[:100])
