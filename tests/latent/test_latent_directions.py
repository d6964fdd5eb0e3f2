"""Class-mean directions, arithmetic, scores and grids on synthetic codes and on the digits VAE."""

import numpy as np
import pytest
import torch

from almostlinear.core.artifact import load
from almostlinear.core.errors import EmptyDataError, NonFiniteError, ShapeError
from almostlinear.latent import (
    AttributeDirection,
    analogy,
    class_means,
    lerp,
    path_agreement,
    path_predictions,
    per_step_agreement,
    save_grid,
    score_digits,
    transfer_success,
)


def _clusters(seed=0, n=40, d=5):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centres = torch.randn(3, d, generator=g) * 4
    return centres[labels] + torch.randn(n, d, generator=g), labels, centres


def test_class_means_equal_numpy_group_means():
    z, labels, _ = _clusters()
    means = class_means(z, labels)
    for c in range(3):
        assert np.allclose(means[c].numpy(), z.numpy()[labels.numpy() == c].mean(0))


def test_attribute_direction_moves_one_class_mean_onto_another_and_round_trips(tmp_path):
    z, labels, _ = _clusters()
    direction = AttributeDirection.fit(z, labels, 0, 2, space="synthetic")
    means = class_means(z, labels)
    assert torch.allclose(direction.shift(means[0].float()), means[2].float(), atol=1e-6)
    assert torch.allclose(analogy(z[:4], means[0].float(), means[2].float()), direction.shift(z[:4]), atol=1e-6)
    halfway = 0.5 * (means[0] + means[2]).float()
    assert torch.allclose(direction.shift(means[0].float(), 0.5), halfway, atol=1e-6)
    assert not hasattr(direction, "apply")  # it moves codes, not a model
    again = load(direction.save(tmp_path / "direction.safetensors"))
    assert isinstance(again, AttributeDirection) and again.kind == "latent.attribute_direction"
    assert again.provenance.units == "raw" and again.provenance.where is None
    assert torch.equal(again.vector, direction.vector) and (again.source, again.target) == ("0", "2")
    with pytest.raises(EmptyDataError, match="label 7"):
        AttributeDirection.fit(z, labels, 0, 7)
    with pytest.raises(ShapeError):
        direction.shift(torch.zeros(2, 4))
    with pytest.raises(NonFiniteError):
        direction.shift(z, float("inf"))
    with pytest.raises(ShapeError, match="one label per code"):
        class_means(z, labels[:-1])


def test_path_scores_on_a_known_classifier():
    # one-dimensional codes, identity decoder, classifier = sign: a path from -1 to +1 switches at 0
    start, end = torch.full((4, 1), -1.0), torch.full((4, 1), 1.0)
    paths = lerp(start, end, 5)
    predicted = path_predictions(paths, lambda z: z, lambda x: (x[:, 0] > 0).long())
    assert path_agreement(predicted, torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)) == 1.0
    steps = per_step_agreement(predicted, torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long))
    assert torch.isnan(steps[2]) and bool((steps[[0, 1, 3, 4]] == 1).all())
    # a classifier that always answers the start class agrees on half of the scored steps
    stuck = torch.zeros_like(predicted)
    assert path_agreement(stuck, torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)) == 0.5
    assert transfer_success(torch.ones(3, 1), 1, lambda z: z, lambda x: (x[:, 0] > 0).long()) == 1.0


def test_digits_scores_beat_their_baselines():
    scores = score_digits(pairs=[(0, 1), (3, 8), (7, 2), (5, 6)], per_pair=6, steps=7)
    for kind in ("lerp", "slerp"):
        assert 0.5 < scores.agreement[kind] <= 1.0  # a path stuck at either end scores 0.5
    assert scores.transfer > 0.5 > scores.transfer_baseline
    # both latent paths start at the same reconstruction, so their first steps agree equally
    assert scores.per_step["lerp"][0] == scores.per_step["slerp"][0]
    assert scores.agreement["lerp"] == pytest.approx(sum(scores.per_pair_agreement["lerp"].values()) / 4)
    assert len(scores.per_step["slerp"]) == 7
    assert all(0.5 <= scores.agreement_given_endpoints[k] <= 1 for k in ("lerp", "slerp", "pixels"))
    for bad in ([], [(3, 3)], [(2, 10)]):
        with pytest.raises(ShapeError, match="two different digits"):
            score_digits(pairs=bad)
    with pytest.raises(ShapeError, match="per_pair"):
        score_digits(pairs=[(0, 1)], per_pair=0)


def test_grid_is_written_as_png(tmp_path):
    images = torch.rand(2, 3, 64)
    out = save_grid(images, tmp_path / "grid.png", row_labels=["a", "b"], title="t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ShapeError, match="square"):
        save_grid(torch.rand(1, 1, 10), tmp_path / "bad.png")
