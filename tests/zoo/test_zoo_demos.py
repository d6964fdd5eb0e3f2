"""Soups and task vectors on the digits MLPs (cached networks; numbers are deterministic)."""

from __future__ import annotations

from almostlinear.connectivity.digits import soups, task_vectors


def test_soup_beats_its_best_ingredient_and_needs_a_shared_start():
    found = soups(64, lrs=(0.02, 0.05), weight_decays=(0.0,))
    assert found["fine_tunes"] == 4
    assert found["uniform_soup_accuracy"] >= found["best_single_accuracy"]
    assert found["independent_init_average_accuracy"] < found["best_single_accuracy"] - 0.05


def test_task_negation_and_addition():
    found = task_vectors(64)
    assert found["negated"]["low"] < found["base"]["low"] - 0.5  # the negated task falls toward chance
    assert found["negated"]["high"] >= 0.95 * found["base"]["high"] - 0.02  # the control is kept
    assert found["added"]["all"] > found["base"]["all"]
    assert found["added"]["all"] > max(found["fine_tuned_low"]["all"], found["fine_tuned_high"]["all"])
