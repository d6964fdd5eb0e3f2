"""Weight matching (Git Re-Basin, arXiv 2209.04836) time for two width-1024 digits MLPs.

    python benchmarks/bench_rebasin.py [--width 1024] [--threads 1] [--repeats 3] [--write-md]
    python benchmarks/bench_rebasin.py --transformer [--max-iter 5] [--write-md]

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

``--transformer`` times weight matching on SmolLM2-135M-Instruct (spec from ``transformer_spec``, 121
permutations) against a copy permuted by a planted random permutation plus Gaussian noise of 2 % of
each tensor's RMS. Two variants run in the same process, one after the other: ``weight_matching``
(steps whose cost cannot have changed are skipped, cost terms kept per group of permutations) and
``direct_weight_matching`` below, which recomputes every tensor's term at every step as the
published algorithm does. Both must find the same permutations (checked and reported).
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


def direct_weight_matching(a: dict, b: dict, spec, *, max_iter: int = 100, seed: int = 0) -> tuple[dict, int]:
    """Coordinate descent that recomputes every cost term at every step (the published algorithm)."""
    import torch
    from scipy.optimize import linear_sum_assignment

    from almostlinear.connectivity.spec import identity_perms, permute_tensor

    perms = identity_perms(spec)
    names = list(spec.sizes)
    generator = torch.Generator().manual_seed(seed)
    sweeps = 0
    for sweeps in range(1, max_iter + 1):
        improved = False
        for k in torch.randperm(len(names), generator=generator).tolist():
            name = names[k]
            n = spec.sizes[name]
            cost = torch.zeros(n, n, dtype=torch.float64)
            for key, ap in spec.touching(name):
                wb = permute_tensor(b[key].double(), spec.axes[key], perms, skip=ap)
                cost += ap.units(a[key].double()) @ ap.units(wb).T
            new = torch.from_numpy(linear_sum_assignment(cost.numpy(), maximize=True)[1])
            rows = torch.arange(n)
            if cost[rows, new].sum() - cost[rows, perms[name]].sum() > 1e-12 * max(1.0, float(cost.abs().max())):
                improved = True
            perms[name] = new
        if not improved:
            break
    return perms, sweeps


def transformer(args) -> list[str]:
    """Weight matching on SmolLM2 against a planted permutation: library vs direct recomputation."""
    import time

    import torch

    import almostlinear as al
    from almostlinear.connectivity import Permutation, transformer_spec, weight_matching
    from almostlinear.connectivity.spec import random_perms

    model = al.load().model
    spec = transformer_spec(model)
    a = {k: v.detach() for k, v in model.state_dict().items()}
    planted = random_perms(spec, 3)
    noise = torch.Generator().manual_seed(0)
    b = {k: v + 0.02 * v.pow(2).mean().sqrt() * torch.randn(v.shape, generator=noise) if v.is_floating_point() else v
         for k, v in Permutation.from_perms(spec, planted).permute_state_dict(a).items()}
    load = [common.load_average()]
    start = time.perf_counter()
    ours = weight_matching(a, b, spec, max_iter=args.max_iter)
    ours_s = time.perf_counter() - start
    load.append(common.load_average())
    start = time.perf_counter()
    direct, direct_sweeps = (None, None) if args.skip_direct else direct_weight_matching(a, b, spec,
                                                                                        max_iter=args.max_iter)
    direct_s = time.perf_counter() - start
    load.append(common.load_average())
    undo = {n: torch.argsort(p) for n, p in planted.items()}
    recovered = sum(torch.equal(ours.perms[n], undo[n]) for n in spec.sizes)
    result = {"machine": common.machine_info(), "threads": torch.get_num_threads(), "permutations": len(spec.sizes),
              "max_iter": args.max_iter, "seconds": ours_s, "sweeps": ours.provenance.extra["sweeps"],
              "assignments_solved": ours.provenance.extra["assignments_solved"],
              "assignments_direct": None if direct is None else direct_sweeps * len(spec.sizes),
              "recovered": recovered, "load_average_before_between_after": load}
    lines = [f"SmolLM2-135M-Instruct, {len(spec.sizes)} permutations, planted permutation + 2 % RMS noise, "
             f"{result['threads']} torch thread(s), load average before / between / after "
             f"{', '.join(f'{x[0]:.1f}' for x in load)}:",
             f"- weight matching (almostlinear): {ours_s:.1f} s, {result['sweeps']} sweeps, "
             f"{result['assignments_solved']} of {result['sweeps'] * len(spec.sizes)} assignments solved; "
             f"planted permutation recovered for {recovered} of {len(spec.sizes)}"]
    if direct is not None:
        same = sum(torch.equal(ours.perms[n], direct[n]) for n in spec.sizes)
        result.update(direct_seconds=direct_s, direct_sweeps=direct_sweeps, same_permutations=same,
                      ratio_over_direct=ours_s / direct_s)
        lines.append(f"- direct recomputation of every term at every step: {direct_s:.1f} s, {direct_sweeps} sweeps; "
                     f"ratio almostlinear / direct = {ours_s / direct_s:.3f}; identical permutations: {same} of "
                     f"{len(spec.sizes)}")
    common.write_json("rebasin_transformer", result)
    return lines


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
    parser.add_argument("--transformer", action="store_true",
                        help="time weight matching on SmolLM2 against a planted permutation instead")
    parser.add_argument("--max-iter", type=int, default=5, help="sweep limit for --transformer")
    parser.add_argument("--skip-direct", action="store_true", help="with --transformer, skip the direct variant")
    args = parser.parse_args(argv)
    threads = common.set_threads(args.threads)
    if args.transformer:
        lines = transformer(args)
        print("\n".join(lines))
        if args.write_md:
            command = "OMP_NUM_THREADS=1 python benchmarks/bench_rebasin.py " + " ".join(argv or sys.argv[1:])
            text = (common.HERE / "results_rebasin.md").read_text()
            marker = "### Weight matching on a transformer"
            text = text.split(marker)[0].rstrip() + "\n\n" + "\n".join(
                [marker, "", f"Command: `{command}`", "", *lines]) + "\n"
            (common.HERE / "results_rebasin.md").write_text(text)
        return
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
