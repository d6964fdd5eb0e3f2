"""``almostlinear lora-combine A B ... --weights 1 -1 --out DIR [--rank R]``: exact LoRA arithmetic."""

from __future__ import annotations

import argparse

from .. import clitools
from ..core.errors import AlmostLinearError


def _read(read_peft, folder: str):
    """One adapter; a malformed config or weights file is reported as a message, not a traceback."""
    import re

    from safetensors import SafetensorError

    try:
        return read_peft(folder)
    except AlmostLinearError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, ZeroDivisionError, RecursionError, re.error,
            SafetensorError) as error:
        raise AlmostLinearError(f"cannot read the adapter {folder}: {type(error).__name__}: {error}") from None


def combine_command(args: argparse.Namespace) -> int:
    from .combine import combine_exact, combine_svd, linear_factor_mix, relative_error
    from .lora import read_peft, write_peft

    weights = args.weights or [1.0] * len(args.adapters)
    if len(weights) != len(args.adapters):
        raise AlmostLinearError(f"{len(weights)} weights for {len(args.adapters)} adapters")
    adapters = [_read(read_peft, folder) for folder in args.adapters]
    if args.rank is None:
        combined = combine_exact(adapters, weights)
        note = f"exact (rank {max(combined.ranks.values())}, relative error " \
               f"{relative_error(combined, adapters, weights)['total']:.2e})"
    else:
        result = combine_svd(adapters, weights, rank=args.rank)
        combined = result.adapter
        worst = max(result.errors, key=result.errors.get)
        note = (f"rank {args.rank} by SVD: relative error {result.total_error:.4f} over all modules, "
                f"worst {result.errors[worst]:.4f} at {worst}")
    write_peft(combined, args.out)  # errors reach the command line's one handler: one line, exit 2
    print(f"wrote {args.out}: sum of {len(adapters)} adapters with weights {weights}, {note}")
    ranks = {a.modules[next(iter(a.modules))].rank for a in adapters}
    if len(ranks) == 1:
        error = relative_error(linear_factor_mix(adapters, weights), adapters, weights)["total"]
        print(f"for comparison, mixing A and B separately (PEFT's 'linear') would be off by {error:.4f}")
    return 0


def register(sub) -> None:
    """Add ``lora-combine`` to an argparse sub-parsers object."""
    p = sub.add_parser("lora-combine", help="add PEFT LoRA adapters exactly (sum of BA), optionally SVD to a rank")
    p.add_argument("adapters", nargs="+", type=clitools.input_folder, help="PEFT adapter folders")
    p.add_argument("--weights", type=clitools.finite_float, nargs="+", help="one weight per adapter (default 1 each)")
    p.add_argument("--rank", type=clitools.positive_int,
                   help="truncate the sum to this rank by SVD and report the error")
    p.add_argument("--out", required=True, type=clitools.output_folder, help="output adapter folder")
    p.set_defaults(func=combine_command)
