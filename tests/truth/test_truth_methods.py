import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.decomposition import PCA

from almostlinear.core.artifact import Where, load
from almostlinear.core.errors import ArtifactError, EmptyDataError, NonFiniteError, ShapeError
from almostlinear.truth import (
    PairNormaliser,
    TruthDirection,
    fit_contrast_pca,
    fit_logistic_difference,
    fit_mean_difference,
    sign_free_accuracy,
)
from almostlinear.truth.normalise import balanced_accuracy
from truth_synthetic import cosine, make_pairs


def _differences(x_pos, x_neg, per_dimension=False):
    pos = (x_pos - x_pos.mean(0)) / _scale(x_pos, per_dimension)
    neg = (x_neg - x_neg.mean(0)) / _scale(x_neg, per_dimension)
    return (pos - neg).numpy()


def _scale(x, per_dimension):
    std = x.std(0)
    return std if per_dimension else std.mean()


@pytest.mark.parametrize("n,d", [(200, 12), (20, 40)])  # covariance and Gram-matrix paths
@pytest.mark.parametrize("per_dimension", [False, True])
def test_contrast_pca_is_sklearn_first_component_of_the_differences(n, d, per_dimension):
    data = make_pairs(n, d, seed=1, truth_scale=1.5)
    fit = fit_contrast_pca(data.x_pos, data.x_neg, per_dimension=per_dimension)
    reference = PCA(n_components=1).fit(_differences(data.x_pos, data.x_neg, per_dimension)).components_[0]
    assert abs(cosine(fit.weight[0], torch.from_numpy(reference))) == pytest.approx(1.0, abs=1e-9)


def test_mean_difference_is_the_difference_of_class_means():
    data = make_pairs(200, 10, seed=2)
    fit = fit_mean_difference(data.x_pos, data.x_neg, data.truth)
    diff = torch.from_numpy(_differences(data.x_pos, data.x_neg))
    expected = diff[data.truth].mean(0) - diff[~data.truth].mean(0)
    assert torch.allclose(fit.weight[0], expected, atol=1e-10)
    assert float(fit.accuracy(data.x_pos, data.x_neg, data.truth)[0]) > 0.97


def test_supervised_methods_fix_the_sign():
    data = make_pairs(200, 10, seed=3)
    for fit in (fit_mean_difference(data.x_pos, data.x_neg, data.truth),
                fit_logistic_difference(data.x_pos, data.x_neg, data.truth)):
        assert fit.oriented
        assert float(fit.accuracy(data.x_pos, data.x_neg, data.truth)[0]) > 0.97
        assert float(fit.accuracy(data.x_pos, data.x_neg, ~data.truth)[0]) < 0.03


def test_sign_free_accuracy_ignores_the_sign():
    predicted = torch.tensor([True, True, False, False])
    labels = torch.tensor([False, False, True, False])
    assert float(sign_free_accuracy(predicted, labels)) == 0.75
    assert float(sign_free_accuracy(~predicted, labels)) == 0.75


def test_balanced_accuracy_matches_sklearn_and_scores_a_constant_as_chance():
    from sklearn.metrics import balanced_accuracy_score

    g = torch.Generator().manual_seed(0)
    labels = torch.rand(30, generator=g) < 0.3
    predicted = torch.rand(30, generator=g) < 0.5
    expected = balanced_accuracy_score(labels.numpy(), predicted.numpy())
    assert float(balanced_accuracy(predicted, labels)) == pytest.approx(expected)
    assert float(balanced_accuracy(torch.ones(30, dtype=torch.bool), labels, sign_free=True)) == 0.5


@settings(max_examples=25, deadline=None)
@given(shift_pos=st.floats(-50, 50), shift_neg=st.floats(-50, 50), scale=st.floats(0.01, 100), seed=st.integers(0, 9))
def test_predictions_do_not_depend_on_each_sides_offset_or_a_common_scale(shift_pos, shift_neg, scale, seed):
    data = make_pairs(40, 6, seed=seed, truth_scale=1.0)
    moved_pos, moved_neg = scale * data.x_pos + shift_pos, scale * data.x_neg + shift_neg
    for fit_fn in (fit_contrast_pca, lambda p, n: fit_mean_difference(p, n, data.truth)):
        a = fit_fn(data.x_pos, data.x_neg).decision(data.x_pos, data.x_neg)
        b = fit_fn(moved_pos, moved_neg).decision(moved_pos, moved_neg)
        assert torch.allclose(a, b, atol=1e-7 * (1 + a.abs().max()))


@pytest.mark.parametrize("per_dimension", [False, True])
def test_truth_direction_in_raw_units_gives_the_same_decisions(per_dimension):
    data = make_pairs(120, 8, seed=4)
    stacked_pos, stacked_neg = torch.stack([data.x_pos, 2 * data.x_pos]), torch.stack([data.x_neg, 2 * data.x_neg])
    fit = fit_mean_difference(stacked_pos, stacked_neg, data.truth, per_dimension=per_dimension)
    decisions = fit.decision(stacked_pos, stacked_neg)
    for index in range(2):
        direction = fit.to_direction(index, layer=10 + index)
        assert torch.allclose(direction.decision(stacked_pos[index], stacked_neg[index]), decisions[index], atol=1e-9)
        assert direction.layer == 10 + index and direction.provenance.layer == 10 + index
    if not per_dimension:  # one scale per side: the same direction on both sides
        assert abs(cosine(direction.direction, direction.direction_neg)) == pytest.approx(1.0)


def test_truth_direction_round_trips_through_a_file(tmp_path):
    data = make_pairs(80, 8, seed=5)
    direction = fit_contrast_pca(data.x_pos, data.x_neg).to_direction(0, layer=3, site="resid_post")
    path = direction.save(tmp_path / "truth.safetensors")
    loaded = TruthDirection.load(path)
    assert isinstance(loaded, TruthDirection)
    assert torch.equal(loaded.direction, direction.direction) and torch.equal(loaded.bias, direction.bias)
    assert (loaded.layer, loaded.site, loaded.method, loaded.oriented) == (3, "resid_post", "contrast_pca", False)
    assert loaded.kind == "truth.direction" and loaded.provenance.where == Where("resid_post", (3,))
    assert loaded.provenance.units is None and not hasattr(loaded, "apply")  # it only reads
    assert loaded.score(data.x_pos, data.x_neg, data.truth) == direction.score(data.x_pos, data.x_neg, data.truth)
    assert isinstance(load(path), TruthDirection)


def test_loading_another_kind_as_a_truth_direction_fails(tmp_path):
    from almostlinear.probes import LinearProbe

    path = LinearProbe(torch.ones(3), torch.tensor(0.0)).save(tmp_path / "probe.safetensors")
    with pytest.raises(ArtifactError, match="not a 'truth.direction'"):
        TruthDirection.load(path)


def test_bad_input_is_refused_with_clear_errors():
    data = make_pairs(8, 4)
    with pytest.raises(EmptyDataError, match="at least 2 contrast pairs"):
        fit_contrast_pca(data.x_pos[:1], data.x_neg[:1])
    with pytest.raises(ShapeError, match="same shape"):
        fit_contrast_pca(data.x_pos, data.x_neg[:, :3])
    with pytest.raises(ShapeError, match=r"\[n, d\] or \[layers, n, d\]"):
        fit_contrast_pca(data.x_pos[0], data.x_neg[0])
    broken = data.x_pos.clone()
    broken[0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        fit_contrast_pca(broken, data.x_neg)
    with pytest.raises(ShapeError, match="labels has 3 entries"):
        fit_mean_difference(data.x_pos, data.x_neg, data.truth[:3])
    for fit_fn in (fit_logistic_difference, fit_mean_difference):
        with pytest.raises(EmptyDataError, match="needs true and false pairs"):
            fit_fn(data.x_pos, data.x_neg, torch.ones(8, dtype=torch.bool))
    with pytest.raises(ShapeError, match="binary"):
        fit_mean_difference(data.x_pos, data.x_neg, torch.arange(8))
    fit = fit_contrast_pca(data.x_pos, data.x_neg)
    with pytest.raises(ShapeError, match="normaliser fitted on 1 layers"):
        fit.decision(torch.stack([data.x_pos] * 2), torch.stack([data.x_neg] * 2))
    with pytest.raises(ShapeError):
        TruthDirection(torch.ones(3), torch.ones(4), torch.tensor(0.0), "ccs", False)


def test_normaliser_centres_each_side_and_scales_to_unit_average_spread():
    data = make_pairs(100, 6, seed=6)
    z_pos, z_neg = PairNormaliser.fit(data.x_pos, data.x_neg)(data.x_pos, data.x_neg)
    for z in (z_pos[0], z_neg[0]):
        assert np.allclose(z.mean(0).numpy(), 0, atol=1e-12)
        assert float(z.std(0).mean()) == pytest.approx(1.0)
