"""LEACE maths: agreement with concept-erasure, guardedness checked by scikit-learn, invariants."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression

from almostlinear.core.artifact import load
from almostlinear.core.errors import ChoiceError, EmptyDataError, NonFiniteError, ShapeError
from almostlinear.erasure import LeaceEraser, LeaceFitter, erase, shrink_covariance

concept_erasure = pytest.importorskip("concept_erasure")


def _data(n=600, d=12, seed=0, classes=2):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    z = torch.randint(0, classes, (n,), generator=g)
    shift = torch.randn(classes, d, generator=g, dtype=torch.float64) * 2
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + shift[z]
    return x, z


@pytest.mark.parametrize("shrinkage", [False, True])
@pytest.mark.parametrize("classes", [2, 3])
def test_agrees_with_concept_erasure(shrinkage, classes):
    x, z = _data(classes=classes)
    k = 1 if classes == 2 else classes
    ref = concept_erasure.LeaceFitter(x.shape[1], k, dtype=torch.float64, shrinkage=shrinkage,
                                      constrain_cov_trace=False)
    ref.update(x, z if k == 1 else torch.nn.functional.one_hot(z, classes))
    mine = LeaceFitter(x.shape[1], k, shrinkage=shrinkage)
    for part in torch.split(torch.arange(len(x)), 97):  # streamed in uneven batches
        mine.update(x[part], z[part])
    left, right, mean = mine.factors()
    torch.testing.assert_close(erase(x, left, right, mean), ref.eraser(x), rtol=1e-9, atol=1e-9)
    eraser = LeaceEraser.fit(x, z, n_classes=k, shrinkage=shrinkage)  # stored in float32
    torch.testing.assert_close(eraser(x), ref.eraser(x), rtol=1e-4, atol=1e-4)


def test_orth_agrees_with_concept_erasure():
    x, z = _data()
    ref = concept_erasure.LeaceFitter(x.shape[1], 1, dtype=torch.float64, method="orth")
    ref.update(x, z)
    left, right, mean = LeaceFitter(x.shape[1], method="orth").update(x, z).factors()
    torch.testing.assert_close(erase(x, left, right, mean), ref.eraser(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method", ["leace", "orth"])
def test_logistic_probe_at_chance_after_erasure(method):
    x, z = _data(n=800, d=10)
    before = LogisticRegression(max_iter=2000).fit(x.numpy(), z.numpy())
    assert before.score(x.numpy(), z.numpy()) > 0.9
    erased = LeaceEraser.fit(x, z, method=method)(x.float()).double()
    after = LogisticRegression(max_iter=2000, C=1e4).fit(erased.numpy(), z.numpy())
    majority = max(float(z.float().mean()), 1 - float(z.float().mean()))
    # guardedness (arXiv 2306.03819): the best linear classifier is no better than a constant
    assert abs(after.score(erased.numpy(), z.numpy()) - majority) < 0.03
    assert abs(after.coef_).max() < 1e-2 * abs(before.coef_).max()
    zc = z.double() - z.double().mean()
    assert ((erased - erased.mean(0)).T @ zc).abs().max() / len(z) < 1e-4  # no covariance left


def test_leace_moves_points_less_than_orthogonal_projection():
    x, z = _data()
    leace = LeaceEraser.fit(x, z)(x.float()).double()
    orth = LeaceEraser.fit(x, z, method="orth")(x.float()).double()
    assert (leace - x).pow(2).sum(1).mean() <= (orth - x).pow(2).sum(1).mean() + 1e-6


@given(seed=st.integers(0, 10_000), d=st.integers(2, 8), classes=st.integers(2, 4))
def test_erasing_twice_equals_once(seed, d, classes):
    x, z = _data(n=80, d=d, seed=seed, classes=classes)
    k = 1 if classes == 2 else classes
    left, right, mean = LeaceFitter(d, k).update(x, z).factors()
    once = erase(x, left, right, mean)
    twice = erase(once, left, right, mean)
    torch.testing.assert_close(twice, once, rtol=1e-8, atol=1e-8 * float(x.abs().max()))


def test_merge_equals_one_pass():
    x, z = _data()
    a = LeaceFitter(12).update(x[:250], z[:250])
    b = LeaceFitter(12).update(x[250:], z[250:])
    whole = LeaceFitter(12).update(x, z)
    for got, want in zip(a.merge(b).factors(), whole.factors()):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_shrinkage_keeps_trace_and_limits():
    s = torch.diag(torch.tensor([4.0, 1.0, 0.25], dtype=torch.float64))
    shrunk = shrink_covariance(s, 5)
    torch.testing.assert_close(torch.trace(shrunk), torch.trace(s))
    iso = torch.eye(3, dtype=torch.float64) * 2
    torch.testing.assert_close(shrink_covariance(iso, 5), iso)
    assert torch.allclose(shrink_covariance(s, 10**9), s, atol=1e-6)


def test_save_load_round_trip(tmp_path):
    x, z = _data()
    eraser = LeaceEraser.fit(x, z, site="resid_post.3", model_fingerprint="sha256:abc", data_hash="d1")
    back = load(eraser.save(tmp_path / "e.safetensors"))
    assert isinstance(back, LeaceEraser)
    assert back.sites == ("resid_post.3",) and back.ranks == eraser.ranks
    assert torch.equal(back.left, eraser.left) and torch.equal(back.mean, eraser.mean)
    p = back.provenance
    expected = ("sha256:abc", "resid_post", 3, "leace", "d1")
    assert (p.model_fingerprint, p.site, p.layer, p.method, p.data_hash) == expected
    assert p.units == "fraction" and "operation" not in p.extra and "sites" not in p.extra
    torch.testing.assert_close(back(x.float()), eraser(x.float()))


def test_bad_input():
    x, z = _data(n=50)
    with pytest.raises(ShapeError):
        LeaceFitter(11).update(x, z)
    with pytest.raises(ShapeError):
        LeaceFitter(12).update(x, z[:10])
    with pytest.raises(EmptyDataError):
        LeaceFitter(12).factors()
    with pytest.raises(EmptyDataError):
        LeaceFitter(12).update(x, torch.ones(50)).factors()
    bad = x.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(NonFiniteError):
        LeaceFitter(12).update(bad, z)
    with pytest.raises(NonFiniteError):
        LeaceFitter(12).update(x, torch.full((50,), float("nan")))
    with pytest.raises(ChoiceError, match="erasure method"):
        LeaceFitter(12, method="nope")
    with pytest.raises(ShapeError):  # three classes without n_classes: refused, not erased as one number
        LeaceFitter(12).update(x, torch.arange(50) % 3)
    eraser = LeaceEraser.fit(x, z)
    with pytest.raises(ShapeError):
        eraser(torch.randn(4, 7))
