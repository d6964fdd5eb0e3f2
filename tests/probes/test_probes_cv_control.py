"""Grouped folds, cross-validation, control tasks and selectivity."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression

from almostlinear.core.errors import EmptyDataError, ShapeError
from almostlinear.probes import control_labels, cross_validate, fit_logistic, grouped_folds, selectivity


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=6, max_size=60), st.integers(2, 5), st.integers(0, 1000))
def test_grouped_folds_partition_and_keep_groups_apart(groups, k, seed):
    if len(set(groups)) < k:
        with pytest.raises(EmptyDataError):
            grouped_folds(groups, k, seed=seed)
        return
    folds = grouped_folds(groups, k, seed=seed)
    assert len(folds) == k
    together = torch.cat(folds).sort().values
    assert together.tolist() == list(range(len(groups)))  # a partition of all examples
    fold_of = {}
    for i, fold in enumerate(folds):
        assert len(fold) > 0
        for j in fold.tolist():
            assert fold_of.setdefault(groups[j], i) == i  # a group never straddles two folds
    # greedy dealing: no fold exceeds the smallest by more than the largest group
    sizes = [len(f) for f in folds]
    largest = max(groups.count(g) for g in set(groups))
    assert max(sizes) - min(sizes) <= largest


def test_plain_folds_and_clear_errors():
    folds = grouped_folds(None, 4, n=10)
    assert sorted(len(f) for f in folds) == [2, 2, 3, 3]
    with pytest.raises(EmptyDataError, match="folds"):
        grouped_folds(None, 5, n=3)
    with pytest.raises(ValueError, match="k must"):
        grouped_folds(None, 1, n=10)
    x = torch.randn(20, 3)
    with pytest.raises(ShapeError, match="groups"):
        cross_validate(x, torch.arange(20) % 2, groups=list(range(19)))
    with pytest.raises(ShapeError, match="labels"):
        cross_validate(x, torch.arange(19) % 2)
    with pytest.raises(EmptyDataError, match="two classes"):
        cross_validate(x, torch.ones(20))


def _task(n=240, d=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    subjects = torch.arange(n) // 2  # two examples per subject, like true/false statement pairs
    identity = torch.randn(n // 2, d, generator=g)[subjects] * 2  # what the subject looks like
    identity[:, 0] = 0
    y = torch.arange(n) % 2 == 0
    x = identity + torch.randn(n, d, generator=g) * 0.3
    x[:, 0] += 1.5 * (2 * y.float() - 1)  # the property, readable along one axis
    return x, y, subjects.tolist()


def test_cross_validate_equals_a_manual_loop_with_sklearn():
    x, y, groups = _task()
    result = cross_validate(x, y, groups=groups, k=4, method="logistic", l2=1e-2)
    folds = grouped_folds(groups, 4)
    correct = 0
    for test in folds:
        train = np.setdiff1d(np.arange(len(y)), test.numpy())
        mean, std = x[train].mean(0), x[train].std(0)
        ref = LogisticRegression(C=1 / (len(train) * 1e-2), tol=1e-10, max_iter=10_000)
        ref.fit(((x[train] - mean) / std).numpy(), y[train].numpy())
        correct += (ref.predict(((x[test] - mean) / std).numpy()) == y[test].numpy()).sum()
    assert abs(float(result.accuracy[0]) - correct / len(y)) <= 1 / len(y)  # at most one borderline example
    assert result.fold_accuracy.shape == (4, 1) and torch.all(result.l2 == 1e-2)


def test_inner_cv_chooses_the_penalty_from_the_grid_per_layer():
    x, y, groups = _task(160)
    noisy = torch.stack([x, torch.randn_like(x)])
    result = cross_validate(noisy, y, groups=groups, k=3, l2=None, l2_grid=(1e-3, 1.0))
    assert result.l2.shape == (3, 2)
    assert set(result.l2.flatten().tolist()) <= {1e-3, 1.0}
    assert result.accuracy[0] > 0.9 and abs(float(result.accuracy[1]) - 0.5) < 0.15


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=4, max_size=80), st.integers(0, 10_000))
def test_control_labels_are_constant_per_type_and_balanced(types, seed):
    labels = torch.arange(len(types)) % 3 == 0  # a third positive
    if len(set(types)) < 2:
        with pytest.raises(EmptyDataError):
            control_labels(types, labels, seed=seed)
        return
    control = control_labels(types, labels, seed=seed)
    first = {}
    for t, c in zip(types, control.tolist()):
        assert first.setdefault(t, c) == c  # one label per type
    distinct = len(first)
    positive_types = sum(first.values())
    expected = min(max(round(float(labels.double().mean()) * distinct), 1), distinct - 1)
    assert positive_types == expected


def test_selectivity_is_task_minus_control_on_the_same_folds():
    x, y, groups = _task(160, 80)  # wide enough for a linear probe to memorise subjects
    found = selectivity(x, y, groups, k=4, l2=1e-2, seed=3)
    task = cross_validate(x, y, k=4, l2=1e-2, seed=3).accuracy
    control = cross_validate(x, control_labels(groups, y, seed=3), k=4, l2=1e-2, seed=3).accuracy
    assert torch.equal(found.task, task) and torch.equal(found.control, control)
    assert torch.equal(found.selectivity, task - control)
    # subjects are easy to recognise here, so the control task is learnable above chance by memorising,
    # while the property generalises: the probe is accurate and selective
    assert float(found.task[0]) > 0.9 and float(found.control[0]) > 0.6


def test_logistic_probe_cannot_memorise_types_it_never_saw():
    x, y, groups = _task()
    control = control_labels(groups, y, seed=1)
    grouped = cross_validate(x, control, groups=groups, k=4, l2=1e-2).accuracy
    assert abs(float(grouped[0]) - 0.5) < 0.12  # unseen subjects: the control is guesswork
    w, _ = fit_logistic(x, y, l2=1e-2)
    assert w.shape == (10,)
