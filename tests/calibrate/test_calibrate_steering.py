"""The calibration tools on real steering vectors, one per layer."""

from __future__ import annotations

import pytest
import torch
from calibrate_levers import sentences, unit
from tiny_models import D_MODEL, build_model, make_tokenizer

from almostlinear.calibrate import choose_strength, interference
from almostlinear.data.statements import split
from almostlinear.steering.artifact import SteeringVector


def test_steering_vectors_per_layer():
    torch.set_num_threads(1)
    model, tokenizer, neutral = build_model("llama"), make_tokenizer(), sentences(12)
    vectors = {layer: SteeringVector.from_direction(unit(D_MODEL, layer + 1), layer=layer, method="test",
                                                    norms={"residual_median": 0.2})
               for layer in (0, 1)}
    strengths = [0.5, 1.0, 4.0]
    choice = choose_strength(vectors, model, tokenizer, neutral, strengths=strengths, kl_budget=0.015)
    validation, test = split(neutral, 0.5, seed=0, key=lambda t: t)
    for row in choice.grid:
        vector = vectors[row["label"]]
        assert row["kl"] == pytest.approx(vector.side_effects(model, validation, row["strength"], tokenizer=tokenizer,
                                                              max_length=64).kl, rel=1e-9)
    within = [row for row in choice.grid if row["within_budget"]]
    assert within and len(within) < len(choice.grid)
    assert choice.strength == max(row["strength"] for row in within) and choice.units == "residual"
    assert choice.lever is vectors[choice.label]
    assert choice.test_kl == pytest.approx(choice.lever.side_effects(model, test, choice.strength, tokenizer=tokenizer,
                                                                     max_length=64).kl, rel=1e-9)
    report = interference(vectors, model, tokenizer, neutral, strengths=0.01)
    assert report.gap < 0.05 and report.no_footprint == ()
    # each vector offers its direction as a footprint: the overlap is the cosine between the two directions
    (overlap,) = report.overlaps
    expected = abs(float(vectors[0].direction.double() @ vectors[1].direction.double()))
    assert overlap.cosines[0] == pytest.approx(expected, abs=1e-6)
