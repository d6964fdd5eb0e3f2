"""``almostlinear interpolate`` and ``almostlinear rebasin``: paths between models, and alignment on digits.

The library does the work; this module parses, calls it and prints.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from .. import clitools
from ..clitools import load_model, say


def interpolate_command(a: str, b: str | None = None, *, noise: float = 0.02, alphas: int = 11,
                        texts: int = 12, max_tokens: int = 64, seed: int = 0, out: str | None = None,
                        progress: bool = True, stream=None) -> dict:
    """Cross-entropy on neutral text along the line from model ``a`` to model ``b``.

    Without ``b``, the far end is ``a`` with Gaussian noise of ``noise`` times each tensor's RMS.
    ``a`` and ``b`` are anything :func:`almostlinear.load` accepts (embedded names, local folders).
    """
    import torch

    from .. import data
    from .line import interpolate, model_state
    from .section import _cross_entropy

    stream = stream or sys.stdout
    left = load_model(a)
    if b is not None:
        right = model_state(load_model(b).model)
        label = b
    else:
        generator = torch.Generator().manual_seed(seed)
        right = {}
        for name, p in left.model.named_parameters():
            rms = p.detach().float().pow(2).mean().sqrt()
            right[name] = p.detach() + (noise * rms * torch.randn(p.shape, generator=generator)).to(p.dtype)
        right.update({k: v.detach() for k, v in left.model.named_buffers()})
        label = f"{a} + {noise:g} RMS noise"
    sample = list(data.FALLBACK_TEXTS)[:texts]
    seqs = [left.tokenizer(t).input_ids[:max_tokens] for t in sample]
    seqs = [s for s in seqs if len(s) >= 2]
    curve = interpolate(left.model, right, lambda m: _cross_entropy(m, seqs), alphas, progress=progress)
    print(f"cross-entropy (nats/token) on {len(seqs)} texts, from {a} (alpha 0) to {label} (alpha 1)", file=stream)
    for alpha, value in zip(curve.alphas, curve.values["loss"]):
        print(f"  {alpha:5.2f}  {value:8.4f}", file=stream)
    summary = {"a": a, "b": label, **curve.to_json(), "barrier": curve.barrier("loss"),
               "barrier_linear": curve.barrier_linear("loss")}
    print(f"barrier {summary['barrier']:.4f}, above the straight line {summary['barrier_linear']:.4f}", file=stream)
    if out:
        with open(out, "w") as handle:
            json.dump(summary, handle, indent=2)
    return summary


def rebasin_command(widths: Sequence[int] = (64,), seeds: Sequence[int] = (100, 101), *, out: str | None = None,
                    stream=None) -> list[dict]:
    """Barriers between two independently trained digits MLPs, before and after alignment, per width."""
    from .digits import rebasin

    stream = stream or sys.stdout
    rows = []
    print(f"{'width':>6} {'naive':>7} {'WM':>7} {'AM':>7} {'WM+REPAIR':>10}   (error barrier, accuracy points)",
          file=stream)
    for width in widths:
        say(f"width {width}: training (or reading cached) networks, seeds {seeds[0]} and {seeds[1]}")
        r = rebasin(width, seeds=(seeds[0], seeds[1]))
        rows.append({k: v for k, v in r.items() if not k.endswith("_curve")})
        print(f"{width:>6} {r['naive_barrier_points']:7.2f} {r['weight_matching_barrier_points']:7.2f} "
              f"{r['activation_matching_barrier_points']:7.2f} {r['weight_matching_repair_barrier_points']:10.2f}",
              file=stream)
    if out:
        with open(out, "w") as handle:
            json.dump(rows, handle, indent=2)
    return rows


def _interpolate(args) -> int:
    interpolate_command(args.a, args.b, noise=args.noise, alphas=args.alphas, texts=args.texts,
                        max_tokens=args.max_tokens, seed=args.seed, out=args.out, progress=not args.quiet)
    return 0


def _rebasin(args) -> int:
    rebasin_command(args.widths, args.seeds, out=args.out)
    return 0


def register(sub) -> None:
    """Add ``interpolate`` and ``rebasin`` to an argparse sub-parsers object."""
    p = sub.add_parser("interpolate", help="cross-entropy on neutral text along the line between two models")
    p.add_argument("a", help="model at alpha = 0 (embedded name or local folder)")
    p.add_argument("b", nargs="?", default=None, help="model at alpha = 1 (default: a with Gaussian noise)")
    p.add_argument("--noise", type=clitools.finite_float, default=0.02,
                   help="noise as a fraction of each tensor's RMS (no b)")
    p.add_argument("--alphas", type=clitools.int_at_least(2), default=11,
                   help="number of evenly spaced points, ends included")
    p.add_argument("--texts", type=clitools.positive_int, default=12, help="packaged neutral texts scored")
    p.add_argument("--max-tokens", type=clitools.int_at_least(2), default=64, help="tokens per text at most")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, type=clitools.output_file, help="write the curve and barriers as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_interpolate)
    r = sub.add_parser("rebasin", help="barrier between independently trained digits MLPs before/after alignment")
    r.add_argument("--widths", type=clitools.positive_int, nargs="+", default=[64], help="hidden widths")
    r.add_argument("--seeds", type=clitools.nonnegative_int, nargs=2, default=[100, 101],
                   help="the two networks' training seeds")
    r.add_argument("--out", default=None, type=clitools.output_file, help="write the numbers as JSON")
    r.set_defaults(func=_rebasin)
