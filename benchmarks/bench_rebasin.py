"""Weight matching (Git Re-Basin, arXiv 2209.04836) time for two width-1024 digits MLPs.

    python benchmarks/bench_rebasin.py [--width 1024] [--threads 1] [--repeats 3] [--write-md]

Networks: two 2-hidden-layer ReLU MLPs (64 -> W -> W -> 10) trained on scikit-learn's digits from
seeds 100 and 101 by ``almostlinear.zoo`` (cached; trained first if absent). Variants, interleaved:

  al_weight_matching   ``weight_matching(a, b, feedforward_spec(a))``: spec-driven, float64 costs,
                       SciPy Hungarian, random visiting order, stop when a sweep gains nothing
  numpy_reference      the published algorithm written directly for this MLP in NumPy + SciPy
                       (hand-written per-layer cost ``W_l^A P W_l^B^T + b b^T + W_{l+1}^A^T ...``),
                       as in the JAX reference code, which is not installable here
  al_activation_matching  ``activation_matching`` over the 1200 training images (one pass each)

Both weight-matching variants must reach the same objective (checked and reported), and the
permuted network must compute the same function (checked). No reference library ships weight
matching for PyTorch (``rebasin`` 0.0.47 is stale and skips attention), hence the direct version.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def numpy_weight_matching(wa: list, wb: list, seed: int = 0, max_iter: int = 100) -> list:
    """Coordinate descent over hidden layers of an MLP given as [(W [out, in], b [out]), ...]."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    hidden = len(wa) - 1
    perms = [np.arange(wa[l][0].shape[0]) for l in range(hidden)]
    rng = np.random.RandomState(seed)
    for _ in range(max_iter):
        improved = False
        for l in rng.permutation(hidden):
            wb_in = wb[l][0] if l == 0 else wb[l][0][:, perms[l - 1]]
            cost = wa[l][0] @ wb_in.T + np.outer(wa[l][1], wb[l][1])
            wb_next = wb[l + 1][0] if l + 1 == hidden else wb[l + 1][0][perms[l + 1], :]
            cost += wa[l + 1][0].T @ wb_next
            _, cols = linear_sum_assignment(cost, maximize=True)
            rows = np.arange(len(cols))
            if cost[rows, cols].sum() > cost[rows, perms[l]].sum() + 1e-12 * max(1.0, np.abs(cost).max()):
                improved = True
            perms[l] = cols
        if not improved:
            break
    return perms


def objective(a, b_perm) -> float:
    return float(sum((pa.detach().double() * pb.detach().double()).sum()
                     for pa, pb in zip(a.parameters(), b_perm.parameters())))


def demonstrations() -> list[str]:
    """Barriers before/after alignment (3 pairs per width), soups and task vectors on the digits MLPs."""
    import statistics

    from almostlinear.connectivity.digits import rebasin, soups, task_vectors

    def ms(values):
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"

    lines = ["Digits MLPs (2 hidden ReLU layers; test error barrier in accuracy points, mean ± sd over 3 pairs "
             "of independently trained nets, seeds (100,101), (102,103), (104,105); 11 points on the line):", "",
             "| width | endpoint acc. | naive | weight matching | activation matching | WM + REPAIR | "
             "loss barrier naive → WM → WM+REPAIR (nats) |", "|---|---|---|---|---|---|---|"]
    for width in (64, 1024):
        rows = [rebasin(width, seeds=(s, s + 1)) for s in (100, 102, 104)]
        get = lambda key: [r[key] for r in rows]  # noqa: E731
        acc = statistics.mean(sum(r["endpoint_accuracy"]) / 2 for r in rows)
        lines.append(f"| {width} | {100 * acc:.1f} | {ms(get('naive_barrier_points'))} | "
                     f"{ms(get('weight_matching_barrier_points'))} | {ms(get('activation_matching_barrier_points'))} | "
                     f"{ms(get('weight_matching_repair_barrier_points'))} | "
                     f"{statistics.mean(get('naive_loss_barrier')):.2f} → "
                     f"{statistics.mean(get('weight_matching_loss_barrier')):.3f} → "
                     f"{statistics.mean(get('weight_matching_repair_loss_barrier')):.3f} |")
    soup = soups(64)
    tv = task_vectors(64)
    lines += ["", f"Soups (width 64, {soup['fine_tunes']} fine-tunes of one pre-trained net; test accuracy): "
              f"pre-trained {soup['pretrained_accuracy']:.4f}, best single (by validation) "
              f"{soup['best_single_accuracy']:.4f}, mean single {soup['mean_single_accuracy']:.4f}, uniform soup "
              f"{soup['uniform_soup_accuracy']:.4f}, greedy soup {soup['greedy_soup_accuracy']:.4f} "
              f"({soup['greedy_soup_ingredients']} ingredients); average of two independently initialised nets "
              f"{soup['independent_init_average_accuracy']:.4f}.",
              "", f"Task vectors (width 64; tasks digits 0-4 and 5-9, fine-tunes of one base; test accuracy on "
              f"each half): base {tv['base']['low']:.3f} / {tv['base']['high']:.3f}; negating tau(0-4) with scale "
              f"{tv.get('negation_scale')}: 0-4 {tv['negated']['low']:.3f} (chance 0.1), 5-9 "
              f"{tv['negated']['high']:.3f}; adding both with scale {tv['addition_scale']}: "
              f"{tv['added']['low']:.3f} / {tv['added']['high']:.3f}, all digits {tv['added']['all']:.3f} vs base "
              f"{tv['base']['all']:.3f}, normalised accuracy {tv['addition_normalized_accuracy']:.3f}; cosine of "
              f"the two task vectors {tv['task_vector_cosine']:.2f}."]
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write-md", action="store_true")
    parser.add_argument("--demo", action="store_true",
                        help="also measure the digits demonstrations: barriers at widths 64 and 1024 over three "
                             "pairs, soups, task vectors")
    args = parser.parse_args(argv)
    threads = common.set_threads(args.threads)
    demo_lines = demonstrations() if args.demo else []
    import copy

    import torch

    from almostlinear.connectivity import activation_matching, feedforward_spec, weight_matching
    from almostlinear.zoo import Recipe, digits, digits_mlp

    a = digits_mlp(Recipe(width=args.width, seed=100))
    b = digits_mlp(Recipe(width=args.width, seed=101))
    spec = feedforward_spec(a)
    x = digits().x_train
    layers = [m for m in a if isinstance(m, torch.nn.Linear)]
    wa = [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy()) for m in layers]
    wb = [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
          for m in b if isinstance(m, torch.nn.Linear)]
    found = {}
    variants = {
        "al_weight_matching": lambda u: found.__setitem__("al", weight_matching(a, b, spec)),
        "numpy_reference": lambda u: found.__setitem__("np", numpy_weight_matching(wa, wb)),
        "al_activation_matching": lambda u: found.__setitem__("am", activation_matching(a, b, spec, [x])),
    }
    timing = common.interleave(variants, 1, repeats=args.repeats, warmup_units=1)
    ours = copy.deepcopy(b)
    found["al"].bake_(ours)
    ref = copy.deepcopy(b)
    from almostlinear.connectivity import Permutation

    Permutation.from_perms(spec, {f"hidden.{i}": torch.from_numpy(p) for i, p in enumerate(found["np"])}).bake_(ref)
    with torch.no_grad():  # the found permutation, applied to B, must leave B's function unchanged
        same_function = float((ours(x) - b(x)).abs().max())
    result = {
        "machine": common.machine_info(),
        "threads": threads,
        "width": args.width,
        "params": sum(p.numel() for p in a.parameters()),
        "timing": timing.summary(),
        "ratio_al_over_numpy": timing.ratio("al_weight_matching", "numpy_reference"),
        "objective_al": objective(a, ours),
        "objective_numpy": objective(a, ref),
        "objective_identity": objective(a, b),
        "sweeps_al": found["al"].provenance.extra["sweeps"],
        "permuted_function_max_abs_diff": same_function,
    }
    path = common.write_json("rebasin", result)
    lines = [
        f"Width {args.width} MLP ({result['params']} parameters), {threads} torch thread(s), "
        f"load at start {result['machine']['load_average_at_start']}:",
        f"- weight matching (almostlinear): {timing.median_total('al_weight_matching'):.2f} s "
        f"({result['sweeps_al']} sweeps)",
        f"- weight matching (direct NumPy/SciPy): {timing.median_total('numpy_reference'):.2f} s; "
        f"ratio almostlinear / direct = {result['ratio_al_over_numpy']:.2f}",
        f"- activation matching (almostlinear, 1200 images): {timing.median_total('al_activation_matching'):.2f} s",
        f"- objective <A, P(B)>: almostlinear {result['objective_al']:.2f}, direct {result['objective_numpy']:.2f}, "
        f"unaligned {result['objective_identity']:.2f}",
        f"- permuted network vs original, max |logit difference|: {same_function:.1e}",
    ]
    print("\n".join(lines + demo_lines))
    print(f"wrote {path}")
    if args.write_md:
        command = "OMP_NUM_THREADS=1 python benchmarks/bench_rebasin.py " + " ".join(argv or sys.argv[1:])
        text = ["## Re-basin: weight matching time, digits demonstrations", "", f"Command: `{command}`", "",
                *lines, "", *demo_lines]
        (common.HERE / "results_rebasin.md").write_text("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
