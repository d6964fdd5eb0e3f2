"""Spectral maths against closed forms, SciPy and dense decompositions."""

import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from almostlinear.core.errors import NonFiniteError, ShapeError
from almostlinear.spectra import effective_rank, gram_svd, product_svd, stable_rank
from almostlinear.spectra.ranks import top_eigenvectors

positive = st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=40)


@settings(max_examples=50, deadline=None)
@given(positive)
def test_ranks_of_a_diagonal_matrix_match_their_closed_forms(values):
    sigma = torch.linalg.svdvals(torch.diag(torch.tensor(values, dtype=torch.float64)))
    s = np.array(values)
    assert float(stable_rank(sigma)) == pytest.approx((s**2).sum() / s.max() ** 2, rel=1e-10)
    assert float(effective_rank(sigma)) == pytest.approx(np.exp(scipy.stats.entropy(s / s.sum())), rel=1e-10)
    assert 1 - 1e-9 <= float(effective_rank(sigma)) <= len(values) + 1e-9


def test_rank_extremes():
    flat = torch.ones(7)
    assert float(stable_rank(flat)) == pytest.approx(7)
    assert float(effective_rank(flat)) == pytest.approx(7)
    one = torch.tensor([3.0, 0.0, 0.0])
    assert float(stable_rank(one)) == pytest.approx(1)
    assert float(effective_rank(one)) == pytest.approx(1)  # 0·log 0 counts as 0
    assert float(stable_rank(torch.zeros(4))) == 0 and float(effective_rank(torch.zeros(4))) == 0
    batched = effective_rank(torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    assert batched.tolist() == pytest.approx([2.0, 1.0])


def test_rank_input_errors():
    with pytest.raises(NonFiniteError):
        stable_rank(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ShapeError, match="non-negative"):
        effective_rank(torch.tensor([1.0, -0.5]))
    with pytest.raises(ShapeError, match="at least one"):
        stable_rank(torch.zeros(0))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_product_svd_equals_the_dense_svd_of_the_product(m, n, r, seed):
    g = torch.Generator().manual_seed(seed)
    left = torch.randn(2, m, r, generator=g, dtype=torch.float64)
    right = torch.randn(2, r, n, generator=g, dtype=torch.float64)
    u, s, v = product_svd(left, right)
    dense = left @ right
    k = min(m, n, r)
    reference = torch.linalg.svdvals(dense)[..., :k]
    assert torch.allclose(s[..., :k], reference, atol=1e-10)
    assert (s[..., k:].abs() < 1e-10).all()  # any singular values beyond the rank are zero
    rebuilt = u.transpose(-1, -2) @ torch.diag_embed(s) @ v
    assert torch.allclose(rebuilt, dense, atol=1e-10)


def test_product_svd_broadcasts_a_shared_factor():
    left = torch.randn(3, 4, 10, 2, dtype=torch.float64)
    right = torch.randn(3, 1, 2, 10, dtype=torch.float64)
    _, s, _ = product_svd(left, right)
    assert s.shape == (3, 4, 2)
    assert torch.allclose(s[1, 2], torch.linalg.svdvals(left[1, 2] @ right[1, 0])[:2], atol=1e-10)


def test_product_svd_rejects_bad_factors():
    with pytest.raises(ShapeError):
        product_svd(torch.randn(4, 2), torch.randn(3, 4))
    with pytest.raises(NonFiniteError):
        product_svd(torch.full((4, 2), float("nan")), torch.randn(2, 4))


@pytest.mark.parametrize("side", ["in", "out"])
@pytest.mark.parametrize("n_vectors", [None, 3])
def test_gram_svd_matches_numpy_svd(side, n_vectors):
    w = torch.randn(40, 12, dtype=torch.float64) if side == "in" else torch.randn(12, 40, dtype=torch.float64)
    w[:, 0] *= 5  # a clear top direction
    s, vectors = gram_svd(w, side, n_vectors=n_vectors)
    u, ref, vh = np.linalg.svd(w.numpy(), full_matrices=False)
    assert np.allclose(s.numpy(), ref, atol=1e-10)
    expected = vh if side == "in" else u.T
    k = vectors.shape[0]
    assert k == (12 if n_vectors is None else 3)
    overlap = np.abs((vectors.numpy() @ expected[:k].T).diagonal())  # signs are arbitrary
    assert np.allclose(overlap, 1.0, atol=1e-8)


def test_gram_svd_in_float32_is_close_enough_for_ranks():
    w = torch.randn(96, 24)
    s, _ = gram_svd(w, "in", torch.float32)
    ref = torch.linalg.svdvals(w.double())
    assert torch.allclose(s.double(), ref, atol=3e-4 * float(ref[0]))
    assert float(effective_rank(s)) == pytest.approx(float(effective_rank(ref)), rel=1e-5)


def test_top_eigenvectors_match_eigh():
    a = torch.randn(50, 50, dtype=torch.float64)
    gram = a @ a.T
    values, vectors = torch.linalg.eigh(gram)
    top = top_eigenvectors(gram, 2)
    assert torch.allclose((top @ vectors[:, -2:].flip(-1)).diagonal().abs(), torch.ones(2, dtype=torch.float64),
                          atol=1e-6)
    with pytest.raises(ValueError):
        top_eigenvectors(gram, 0)
    rough = top_eigenvectors(gram, 2, max_iterations=1)  # stops early but still returns unit vectors
    assert torch.allclose(rough.norm(dim=-1), torch.ones(2, dtype=torch.float64))


def test_gram_svd_rejects_bad_input():
    with pytest.raises(ValueError, match="side"):
        gram_svd(torch.randn(3, 3), "left")
    with pytest.raises(ShapeError):
        gram_svd(torch.randn(3), "in")
    with pytest.raises(NonFiniteError):
        gram_svd(torch.full((3, 3), float("inf")), "in")


def test_importing_spectra_loads_nothing_and_every_public_name_resolves():
    code = (
        "import sys, types\n"
        "import almostlinear.spectra as package\n"
        "assert 'torch' not in sys.modules, 'importing the package imported torch'\n"
        "for name in package.__all__:  # a name shadowed by its submodule would come back as a module\n"
        "    assert not isinstance(getattr(package, name), types.ModuleType), name\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
