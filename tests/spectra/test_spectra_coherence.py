"""Token coherence: brute-force cosines (scikit-learn), the random-set baseline, edge cases."""

import numpy as np
import scipy.stats
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score
from sklearn.metrics.pairwise import cosine_similarity

from almostlinear.core.errors import NonFiniteError, ShapeError
from almostlinear.spectra import Coherence, CoherenceScorer, auc_greater, mean_pairwise_cosine


def _embeddings(vocab=60, d=8, seed=0):
    return torch.randn(vocab, d, generator=torch.Generator().manual_seed(seed)) + 0.5  # a shared offset


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 59), min_size=2, max_size=12), st.integers(0, 1000))
def test_mean_pairwise_cosine_matches_brute_force(ids, seed):
    emb = _embeddings(seed=seed)
    sims = cosine_similarity(emb.numpy().astype(np.float64)[ids])
    upper = sims[np.triu_indices(len(ids), k=1)]
    assert float(mean_pairwise_cosine(emb, torch.tensor(ids))) == pytest.approx(upper.mean(), abs=1e-6)


def test_identical_tokens_have_coherence_one():
    emb = _embeddings()
    assert float(mean_pairwise_cosine(emb, torch.tensor([7, 7, 7, 7]))) == pytest.approx(1.0)
    assert CoherenceScorer(emb).score([3, 3]).score == pytest.approx(1.0)


def test_zero_embeddings_count_as_orthogonal():
    emb = _embeddings()
    emb[0] = 0
    # pairs (1,2) and two pairs with the zero row: mean = cos(1, 2) / 3
    expected = float(torch.cosine_similarity(emb[1], emb[2], dim=0)) / 3
    assert float(mean_pairwise_cosine(emb, torch.tensor([0, 1, 2]))) == pytest.approx(expected, abs=1e-6)


def test_random_sets_are_distinct_in_range_and_seeded():
    emb = _embeddings(vocab=12)
    scorer = CoherenceScorer(emb, n_random_sets=300, seed=3)
    sets = scorer.random_sets(10)  # close to the vocabulary size: repeats are common and must be redrawn
    assert sets.shape == (300, 10)
    assert all(len(set(row)) == 10 for row in sets.tolist())
    assert int(sets.min()) >= 0 and int(sets.max()) < 12
    assert torch.equal(sets, CoherenceScorer(emb, n_random_sets=300, seed=3).random_sets(10))


def test_baseline_estimates_the_mean_cosine_of_distinct_pairs():
    emb = _embeddings(vocab=60)
    sims = cosine_similarity(emb.numpy().astype(np.float64))
    exact = sims[~np.eye(60, dtype=bool)].mean()  # every set's mean has this expectation
    scorer = CoherenceScorer(emb, n_random_sets=4000, seed=1)
    mean, std = scorer.baseline(5)
    assert abs(mean - exact) < 4 * std / np.sqrt(4000)


def test_z_score_and_ratio_follow_their_definitions():
    emb = _embeddings()
    scorer = CoherenceScorer(emb, n_random_sets=500)
    c = scorer.score([1, 2, 3])
    mean, std = scorer.baseline(3)
    assert (c.baseline_mean, c.baseline_std, c.size) == (mean, std, 3)
    assert c.z_score == pytest.approx((c.score - mean) / std)
    assert c.ratio == pytest.approx(c.score / mean)
    assert np.isnan(Coherence(0.5, 0.0, 0.0, 2).z_score) and np.isnan(Coherence(0.5, 0.0, 0.0, 2).ratio)
    many = scorer.score_many(torch.tensor([[1, 2, 3], [4, 4, 4]]))
    assert many[0] == c and many[1].score == pytest.approx(1.0)


def test_bad_token_lists_are_refused():
    emb = _embeddings()
    with pytest.raises(ShapeError, match="two tokens"):
        mean_pairwise_cosine(emb, torch.tensor([1]))
    with pytest.raises(ShapeError, match="token ids"):
        mean_pairwise_cosine(emb, torch.tensor([1, 60]))
    with pytest.raises(ShapeError):
        CoherenceScorer(emb).random_sets(61)
    with pytest.raises(ValueError):
        CoherenceScorer(emb, n_random_sets=1)



@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=30), st.lists(st.integers(-3, 3), min_size=1, max_size=30))
def test_auc_greater_matches_scipy_and_sklearn(x, y):
    auc, p_value = auc_greater(torch.tensor(x), torch.tensor(y))  # small integers: many ties
    u = scipy.stats.mannwhitneyu(x, y, alternative="greater", method="asymptotic", use_continuity=False)
    assert auc == pytest.approx(u.statistic / (len(x) * len(y)))
    assert auc == pytest.approx(roc_auc_score([1] * len(x) + [0] * len(y), x + y))
    if len(set(x + y)) == len(x + y):  # no ties: scipy's tie correction changes nothing
        assert p_value == pytest.approx(u.pvalue, rel=1e-9)


def test_auc_greater_refuses_empty_or_nan_samples():
    with pytest.raises(ShapeError):
        auc_greater(torch.zeros(0), torch.ones(3))
    with pytest.raises(NonFiniteError):
        auc_greater(torch.tensor([float("nan")]), torch.ones(3))


def test_centring_removes_the_mean_embedding_before_the_cosines():
    emb = _embeddings()
    centred = emb.double() - emb.double().mean(0)
    ids = torch.tensor([4, 9, 11])
    sims = cosine_similarity(centred.numpy()[ids.numpy()])
    expected = sims[np.triu_indices(3, k=1)].mean()
    assert CoherenceScorer(emb, center=True).score(ids).score == pytest.approx(expected, abs=1e-9)
    assert CoherenceScorer(emb).score(ids).score != pytest.approx(expected, abs=1e-3)
