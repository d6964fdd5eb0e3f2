"""Weight-space demonstrations on the digits MLPs: barriers and re-basin, soups, task vectors.

Each function trains (or reads from the cache) the networks it needs and returns plain numbers, so
the audit, the command line and the benchmarks share them. Accuracies are fractions on the 397 test
images; choices (soup ingredients, task-vector scales) are made on the 200 validation images.
"""

from __future__ import annotations

import copy
import time

from ..merging import TaskVector, greedy_soup, uniform_soup
from ..zoo.digits_data import digits
from ..zoo.mlp import Recipe, digits_mlp, evaluate, make_mlp
from .line import interpolate, model_state
from .matching import activation_matching, weight_matching
from .repair import repair_
from .spec import feedforward_spec

LOW, HIGH = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)


def _test_eval(model) -> dict[str, float]:
    d = digits()
    return evaluate(model, d.x_test, d.y_test)


def rebasin(width: int = 64, *, seeds: tuple[int, int] = (100, 101), alphas: int = 11, activation: bool = True,
            repair: bool = True) -> dict:
    """Barriers between two independently trained MLPs: naive, after weight / activation matching, with REPAIR.

    Barriers are in accuracy points (error barrier x 100) and nats (loss barrier).
    """
    d = digits()
    a = digits_mlp(Recipe(width=width, seed=seeds[0]))
    b = digits_mlp(Recipe(width=width, seed=seeds[1]))
    spec = feedforward_spec(a)
    out = {"width": width, "seeds": list(seeds), "params": sum(p.numel() for p in a.parameters()),
           "endpoint_accuracy": [_test_eval(a)["accuracy"], _test_eval(b)["accuracy"]]}

    def record(tag, curve):
        out[f"{tag}_barrier_points"] = 100 * curve.barrier("accuracy")
        out[f"{tag}_loss_barrier"] = curve.barrier("loss")
        out[f"{tag}_midpoint_accuracy"] = curve.midpoint("accuracy")
        out[f"{tag}_curve"] = curve.to_json()

    record("naive", interpolate(a, b, _test_eval, alphas))
    began = time.perf_counter()
    wm = weight_matching(a, b, spec)
    out["weight_matching_s"] = time.perf_counter() - began
    out["weight_matching_sweeps"] = wm.provenance.extra["sweeps"]
    with wm.apply(b):
        record("weight_matching", interpolate(a, b, _test_eval, alphas))
        if repair:
            # interpolate() uses ``a`` itself as the workspace, so A's statistics come from a copy
            a_fixed = copy.deepcopy(a)
            fix = lambda m, alpha: repair_(m, a_fixed, b, alpha, [d.x_train], spec)  # noqa: E731
            record("weight_matching_repair", interpolate(a, b, _test_eval, alphas, after=fix))
    if activation:
        am = activation_matching(a, b, spec, [d.x_train])
        with am.apply(b):
            record("activation_matching", interpolate(a, b, _test_eval, alphas))
    return out


def _accuracy(state, x, y, width) -> float:
    net = make_mlp(width)
    net.load_state_dict(state)
    return evaluate(net, x, y)["accuracy"]


def soups(width: int = 64, *, lrs: tuple[float, ...] = (0.005, 0.02, 0.05), seeds: tuple[int, ...] = (0, 1),
          weight_decays: tuple[float, ...] = (0.0, 1e-3)) -> dict:
    """Uniform and greedy soups (arXiv 2203.05482) of fine-tunes of one pre-trained MLP, vs the best fine-tune.

    "Pre-training": 500 training images, 8 epochs. Fine-tunes: 500 other images, 15 epochs, over the
    grid of learning rates, weight decays and data orders. Greedy: ingredients in order of
    validation accuracy, each kept if validation accuracy does not drop (``almostlinear.merging``).
    """
    d = digits()
    base = Recipe(width=width, seed=0, rows=(0, 500), epochs=8)
    tunes = [base.fine_tune(rows=(500, 1000), epochs=15, lr=lr, weight_decay=wd, data_seed=1000 + s)
             for lr in lrs for wd in weight_decays for s in seeds]
    states = [model_state(digits_mlp(r)) for r in tunes]
    val = [_accuracy(s, d.x_val, d.y_val, width) for s in states]
    test = [_accuracy(s, d.x_test, d.y_test, width) for s in states]
    order = sorted(range(len(states)), key=lambda i: -val[i])
    uniform = uniform_soup(states)
    greedy, chosen = greedy_soup(states, lambda sd: _accuracy(sd, d.x_val, d.y_val, width))
    control = uniform_soup([model_state(digits_mlp(Recipe(width=width, seed=s, rows=(0, 1000))))
                                   for s in (200, 201)])
    return {
        "width": width, "fine_tunes": len(states),
        "pretrained_accuracy": _test_eval(digits_mlp(base))["accuracy"],
        "best_single_accuracy": test[order[0]], "mean_single_accuracy": sum(test) / len(test),
        "uniform_soup_accuracy": _accuracy(uniform, d.x_test, d.y_test, width),
        "greedy_soup_accuracy": _accuracy(greedy, d.x_test, d.y_test, width),
        "greedy_soup_ingredients": len(chosen),
        "independent_init_average_accuracy": _accuracy(control, d.x_test, d.y_test, width),
    }


def task_vectors(width: int = 64, *, scales: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)) -> dict:
    """Task arithmetic (arXiv 2212.04089) with tasks = digits 0-4 and digits 5-9.

    Uses :class:`almostlinear.merging.TaskVector`. Base: all classes, 300 images, 3 epochs. Each
    task fine-tunes the base on its own classes among the other 900 training images (10 epochs).
    Negation subtracts ``lambda * tau_low`` with the largest ``lambda`` keeping accuracy on 5-9 (the control) at >= 95% of the base's; addition adds
    ``lambda * (tau_low + tau_high)`` with ``lambda`` chosen on validation accuracy over all digits.
    """
    d = digits()
    base_recipe = Recipe(width=width, seed=0, rows=(0, 300), epochs=3)
    tune = {name: base_recipe.fine_tune(rows=(300, 1200), classes=cls, epochs=10, lr=0.02)
            for name, cls in (("low", LOW), ("high", HIGH))}
    base = model_state(digits_mlp(base_recipe))
    tuned = {k: model_state(digits_mlp(r)) for k, r in tune.items()}
    tau = {k: TaskVector.from_state_dicts(base, tuned[k]) for k in tuned}

    def with_delta(delta: TaskVector, scale: float) -> dict:
        return delta.apply_to(base, scale)

    def acc(state, part="test", classes=None):
        x, y = d.subset(part, classes)
        return _accuracy(state, x, y, width)

    out = {"width": width, "base": {"low": acc(base, classes=LOW), "high": acc(base, classes=HIGH),
                                    "all": acc(base)}}
    for k, cls in (("low", LOW), ("high", HIGH)):
        out[f"fine_tuned_{k}"] = {"low": acc(tuned[k], classes=LOW), "high": acc(tuned[k], classes=HIGH),
                                  "all": acc(tuned[k])}
    control_floor = 0.95 * acc(base, "val", HIGH)
    neg = None
    for s in scales:
        state = with_delta(tau["low"], -s)
        if acc(state, "val", HIGH) >= control_floor:
            neg = (s, state)
    if neg is not None:
        out["negation_scale"] = neg[0]
        out["negated"] = {"low": acc(neg[1], classes=LOW), "high": acc(neg[1], classes=HIGH)}
    total = tau["low"] + tau["high"]
    out["task_vector_cosine"] = tau["low"].cosine(tau["high"])
    best = max(scales, key=lambda s: acc(with_delta(total, s), "val"))
    added = with_delta(total, best)
    out["addition_scale"] = best
    out["added"] = {"low": acc(added, classes=LOW), "high": acc(added, classes=HIGH), "all": acc(added)}
    # normalised accuracy (arXiv 2212.04089): merged / fine-tuned, each task on its own classes
    out["addition_normalized_accuracy"] = 0.5 * (out["added"]["low"] / out["fine_tuned_low"]["low"]
                                                 + out["added"]["high"] / out["fine_tuned_high"]["high"])
    out["chance"] = 0.1  # ten-way classification
    return out
