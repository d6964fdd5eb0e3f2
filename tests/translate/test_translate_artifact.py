"""LinearMap: save/load, held-out scoring that refuses training rows, directions and probes through a map."""

import pytest
import torch

from almostlinear.core.artifact import Where, load
from almostlinear.core.errors import EmptyDataError, ShapeError
from almostlinear.translate import (
    LinearMap,
    TrainingRowsError,
    evaluate,
    r2_score,
    split_rows,
    transfer_probe,
    transfer_vector,
)


def _pair(seed=0, n=200, dx=12, dy=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dx, generator=g)
    y = x @ torch.randn(dx, dy, generator=g) + 0.5 * torch.randn(n, dy, generator=g) + 4.0
    return x, y


def test_save_load_round_trip(tmp_path):
    x, y = _pair()
    fitted = LinearMap.fit(x, y, "low_rank", rank=3, source="a.resid_post.3", target="b.resid_post.5",
                           model_fingerprint="abc")
    path = fitted.save(tmp_path / "map.safetensors")
    again = load(path)
    assert isinstance(again, LinearMap) and again.kind == "translate.linear_map"
    assert torch.equal(again.weight, fitted.weight) and torch.equal(again.train_rows, fitted.train_rows)
    assert (again.method, again.rank, again.source, again.target) == ("low_rank", 3, "a.resid_post.3", "b.resid_post.5")
    assert again.provenance.model_fingerprint == "abc" and again.provenance.units is None
    assert again.provenance.where is None  # "a.resid_post.3" names a model's site, not a site alone
    assert torch.equal(again.transform(x[:5]), fitted.transform(x[:5])) and torch.equal(again(x[:5]), again.transform(x[:5]))
    assert not hasattr(fitted, "apply")  # it maps rows, not a model
    at_site = LinearMap.fit(x, y, source="resid_post.3", target="resid_post.5")
    assert at_site.provenance.where == Where("resid_post", (3,))


def test_held_out_score_refuses_training_rows():
    x, y = _pair()
    fitted = LinearMap.fit(x[:150], y[:150])
    with pytest.raises(TrainingRowsError, match="used to fit"):
        fitted.score(x[140:], y[140:])
    scores = fitted.score(x[150:], y[150:])
    pred = fitted.transform(x[150:]).double()
    assert scores.r2 == pytest.approx(r2_score(pred, y[150:].double()), abs=1e-6)
    assert scores.r2 < fitted.train_r2


def test_evaluate_scores_only_rows_outside_the_fit():
    x, y = _pair(n=100)
    result = evaluate(x, y, "affine", test=0.3, seed=1)
    train, test = split_rows(100, 0.3, seed=1)
    assert set(train.tolist()).isdisjoint(test.tolist())
    assert result.map.overlaps_training(x[test]) == 0
    assert result.map.overlaps_training(x[train]) == len(train)
    refit = LinearMap.fit(x[train], y[train], "affine", seed=1)
    assert result.held_out.r2 == pytest.approx(refit.score(x[test], y[test]).r2)
    assert result.train_r2 == pytest.approx(refit.train_r2)


def test_grouped_split_keeps_groups_whole():
    groups = [i // 3 for i in range(60)]
    train, test = split_rows(60, 0.3, seed=0, groups=groups)
    assert {groups[i] for i in train.tolist()}.isdisjoint({groups[i] for i in test.tolist()})
    assert sorted(train.tolist() + test.tolist()) == list(range(60))
    with pytest.raises(ShapeError, match="one key per row"):
        split_rows(60, 0.3, groups=groups[:-1])
    with pytest.raises(EmptyDataError, match="one group"):
        split_rows(60, 0.3, groups=["same"] * 60)


def test_direction_and_probe_through_the_map_match_direct_computation():
    x, y = _pair()
    fitted = LinearMap.fit(x, y)
    a, b = x[0], x[1]
    v = b - a
    assert torch.allclose(transfer_vector(fitted, v), fitted.transform(b) - fitted.transform(a), atol=1e-5)  # no bias
    w, c = torch.randn(8), 0.7
    w_src, c_src = transfer_probe(fitted, w, c)
    assert torch.allclose(x @ w_src + c_src, fitted.transform(x) @ w + c, atol=1e-4)  # the adjoint
