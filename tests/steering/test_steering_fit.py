"""Steering directions against independent references (NumPy, scikit-learn) and fitting on tiny models."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from almostlinear.core.errors import ChoiceError, EmptyDataError, LayerError, ShapeError
from almostlinear.steering import extract, fit_steering, fit_steering_layers
from tiny_models import TEXTS, build_model, make_tokenizer

PAIRS = [(TEXTS[0], TEXTS[3]), (TEXTS[1], TEXTS[5]), (TEXTS[2], TEXTS[4]), ("the dog is in the house", "a cat")]


def _pairs(seed, n=12, d=10, shift=1.0):
    g = torch.Generator().manual_seed(seed)
    neg = torch.randn(n, d, generator=g, dtype=torch.float64)
    mean = torch.randn(d, generator=g, dtype=torch.float64)
    spread = torch.randn(d, generator=g, dtype=torch.float64)
    pos = neg + shift * mean + torch.randn(n, 1, generator=g, dtype=torch.float64) * spread \
        + 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return pos, neg


def _cos(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float(a @ b / (a.norm() * b.norm()))


@settings(max_examples=25)
@given(st.integers(0, 10_000))
def test_mean_diff_is_the_mean_of_differences(seed):
    pos, neg = _pairs(seed)
    np.testing.assert_allclose(extract(pos, neg, "mean_diff").numpy(), (pos - neg).numpy().mean(0), rtol=1e-5,
                               atol=1e-6)


@settings(max_examples=25)
@given(st.integers(0, 10_000))
def test_centred_pca_matches_sklearn_and_is_oriented(seed):
    pos, neg = _pairs(seed)
    delta = (pos - neg).numpy()
    reference = PCA(n_components=1, svd_solver="full").fit(delta).components_[0]
    ours = extract(pos, neg, "pca")
    assert abs(_cos(ours, reference)) == pytest.approx(1.0, abs=1e-6)
    assert float(torch.as_tensor(delta.mean(0)) @ ours.double()) >= 0  # sign fixed by the labelled data
    assert float(ours.norm()) == pytest.approx(1.0, abs=1e-6)


@settings(max_examples=25)
@given(st.integers(0, 10_000))
def test_uncentred_pca_matches_numpy_svd(seed):
    pos, neg = _pairs(seed, n=30, d=8)  # more pairs than features: the d x d branch
    delta = (pos - neg).numpy()
    top = np.linalg.svd(delta, full_matrices=False)[2][0]
    ours = extract(pos, neg, "pca_uncentred")
    assert abs(_cos(ours, top)) == pytest.approx(1.0, abs=1e-6)
    assert _cos(ours, delta.mean(0)) > 0


def test_centred_pca_is_not_the_mean_difference():
    # differences = a shared shift plus a large spread along another axis: centred PCA finds the
    # spread (the known pitfall), uncentred PCA and the mean difference find the shift
    pos, neg = _pairs(3, n=40, d=10, shift=1.0)
    mean = (pos - neg).mean(0)
    assert abs(_cos(extract(pos, neg, "pca"), mean)) < abs(_cos(extract(pos, neg, "pca_uncentred"), mean))


def test_randomized_pca_is_seeded_and_agrees_with_exact():
    pos, neg = _pairs(5, n=50, d=40)
    a = extract(pos, neg, "pca", solver="randomized", seed=1)
    b = extract(pos, neg, "pca", solver="randomized", seed=1)
    assert torch.equal(a, b)
    assert _cos(a, extract(pos, neg, "pca")) == pytest.approx(1.0, abs=1e-4)


def test_probe_direction_matches_sklearn_logistic_regression():
    pos, neg = _pairs(7, n=40, d=6, shift=0.7)
    x = torch.cat([pos, neg]).numpy()
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    l2 = 1e-2
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=1 / (len(x) * l2), tol=1e-10, max_iter=10_000).fit(scaler.transform(x), y)
    reference = clf.coef_[0] / scaler.scale_  # back to raw units
    assert _cos(extract(pos, neg, "probe", l2=l2), reference) == pytest.approx(1.0, abs=1e-4)


def test_bad_pair_tensors():
    pos, neg = _pairs(0)
    with pytest.raises(EmptyDataError):
        extract(pos[:0], neg[:0])
    with pytest.raises(EmptyDataError, match="one-sided"):
        extract(pos, pos.clone())
    with pytest.raises(ShapeError):
        extract(pos, neg[:, :3])
    with pytest.raises(EmptyDataError):
        extract(pos[:1], neg[:1], "pca")
    with pytest.raises(ChoiceError, match="unknown method"):
        extract(pos, neg, "svm")
    with pytest.raises(ChoiceError, match="unknown solver"):
        extract(pos, neg, "pca", solver="qr")
    with pytest.raises(ValueError, match="NaN"):
        extract(pos * float("nan"), neg)


def _last_token_resid_post(model, tokenizer, text, layer):
    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**ids, output_hidden_states=True).hidden_states
    return hidden[layer + 1][0, -1].double()


def test_fit_on_tiny_model_is_the_mean_difference_of_last_tokens():
    model, tok = build_model("llama"), make_tokenizer()
    vector = fit_steering(model, tok, PAIRS, layer=0)
    diffs = torch.stack([_last_token_resid_post(model, tok, p, 0) - _last_token_resid_post(model, tok, n, 0)
                         for p, n in PAIRS])
    mean = diffs.mean(0)
    assert _cos(vector.direction, mean) == pytest.approx(1.0, abs=1e-5)
    assert vector.norms["diff_norm"] == pytest.approx(float(mean.norm()), rel=1e-4)
    assert vector.norms["n_pairs"] == len(PAIRS)
    assert vector.norms["residual_median"] > 0
    assert vector.provenance.model_fingerprint.startswith("sha256:")
    assert vector.provenance.data_hash and vector.site == "resid_post" and vector.layer == 0


def test_fit_many_layers_in_one_pass_equals_one_at_a_time():
    model, tok = build_model("gpt2"), make_tokenizer()
    many = fit_steering_layers(model, tok, PAIRS, layers=[0, -1], method="pca_uncentred")
    one = fit_steering(model, tok, PAIRS, layer=1, method="pca_uncentred")
    assert set(many) == {0, 1}
    assert torch.allclose(many[1].direction, one.direction, atol=1e-6)


def test_single_pair_is_activation_addition():
    model, tok = build_model("llama"), make_tokenizer()
    vector = fit_steering(model, tok, [("the king", "the queen")], layer=1, read="mean")
    assert vector.norms["n_pairs"] == 1 and vector.provenance.extra["read"] == "mean"


@pytest.mark.parametrize("pairs, message", [
    ([], "no contrast pairs"),
    ([("the cat", "")], "one-sided"),
    ([("the cat", None)], "one-sided"),
    ([("the cat", "the cat"), ("a dog", "a dog")], "one-sided"),
    (["the cat"], "not a"),
])
def test_bad_pair_sets(pairs, message):
    model, tok = build_model("llama"), make_tokenizer()
    with pytest.raises(EmptyDataError, match=message):
        fit_steering(model, tok, pairs, layer=0)


def test_layer_out_of_range():
    model, tok = build_model("llama"), make_tokenizer()
    with pytest.raises(LayerError):
        fit_steering(model, tok, PAIRS, layer=7)
