"""``almostlinear merge recipe.yaml --out DIR`` and ``almostlinear task-vector BASE FINETUNED --out FILE``.

Library errors (a bad recipe, inputs that do not fit, an existing output folder) reach the command
line's one handler, which prints them as messages.
"""

from __future__ import annotations

import argparse
import functools
import json
import re

from .. import clitools
from ..clitools import say
from ..core.errors import AlmostLinearError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """'2GB', '500MB', '1.5GiB', '1000000' -> bytes."""
    m = _SIZE.match(str(text))
    unit = (m.group(2) or "").lower() if m else None
    if m is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 2GB, 500MB, 1GiB)")
    size = int(float(m.group(1)) * _UNITS[unit])
    if size < 1:
        raise argparse.ArgumentTypeError(f"a shard size must be at least one byte, got {text!r}")
    return size


def _as_message(command):
    """Files that cannot be read or written are reported like library errors, without a traceback."""
    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except OSError as error:
            raise AlmostLinearError(str(error)) from error
    return run


@_as_message
def merge_command(args: argparse.Namespace) -> int:
    from .plan import plan_merge
    from .recipe import parse_recipe
    from .run import merge_files

    if args.out is not None:
        clitools.check_arg(clitools.output_folder, args.out, "--out")
    try:
        recipe = parse_recipe(args.recipe)
    except AlmostLinearError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as error:
        # a recipe whose values have the wrong shape (e.g. a list where a name goes)
        raise AlmostLinearError(f"cannot read the recipe {args.recipe}: {type(error).__name__}: {error}") from None
    plan = plan_merge(recipe, check_overflow=not args.no_overflow_check)
    print(plan.summary())
    if args.plan_only:
        for t in plan.tensors:
            print(f"  {t.name:60s} {str(t.shape):20s} {','.join(str(d).replace('torch.', '') for d in t.in_dtypes)}"
                  f" -> {str(t.out_dtype).replace('torch.', '')}  {t.action}")
        return 0
    if args.out is None:
        raise AlmostLinearError("--out DIR is required unless --plan-only")
    result = merge_files(recipe, args.out, shard_bytes=args.shard_size, overwrite=args.overwrite,
                         progress=not args.quiet, plan=plan)
    s = result.signals
    print(f"wrote {result.out} in {result.seconds:.1f}s")
    print("relative task-vector norms: " + ", ".join(f"{x:.4g}" for x in s["relative_norms"] if x is not None))
    if s["sign_conflict_rate_top20"] is not None:
        print(f"sign conflicts among top-20% entries: {s['sign_conflict_rate_top20']:.3f}")
    if len(s["cosine"]) > 1:
        print("task-vector cosines: " + json.dumps([[round(x, 4) for x in row] for row in s["cosine"]]))
    return 0


@_as_message
def task_vector_command(args: argparse.Namespace) -> int:
    from .artifact import TaskVector
    from .stream import Checkpoint

    clitools.check_arg(clitools.output_file, args.out, "--out")
    try:
        base, ft = Checkpoint(args.base), Checkpoint(args.finetuned)
    except AlmostLinearError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as error:
        # a malformed safetensors header or shard index
        raise AlmostLinearError(f"cannot read the checkpoints' headers: {type(error).__name__}: {error}") from None
    names = [n for n in base.keys() if base.info(n).dtype.is_floating_point]
    missing = [n for n in names if n not in ft]
    if missing:
        raise AlmostLinearError(f"tensor {missing[0]!r} is missing from {args.finetuned}")
    say(f"reading {len(names)} floating-point tensors from each model")
    b = {n: base.read(n) for n in names}
    tv = TaskVector.from_state_dicts(b, {n: ft.read(n) for n in names})
    base_norm = sum(float(v.double().pow(2).sum()) for v in b.values()) ** 0.5
    tv.save(args.out)
    print(f"task vector over {len(tv.deltas)} tensors ({tv.numel:,} numbers): |tau| = {tv.norm():.4g}, "
          f"|tau|/|theta_base| = {tv.norm() / base_norm:.4g}; saved to {args.out}")
    return 0


def register(sub) -> None:
    """Add ``merge`` and ``task-vector`` to an argparse sub-parsers object."""
    merge = sub.add_parser("merge", help="merge models from a mergekit-style YAML recipe, streamed, written atomically")
    merge.add_argument("recipe", type=clitools.text_file,
                       help="YAML recipe (merge_method, base_model, models, parameters, dtype, ...)")
    merge.add_argument("--out", help="output folder (created atomically; must not exist unless --overwrite)")
    merge.add_argument("--plan-only", action="store_true", help="check the inputs and list every tensor, write nothing")
    merge.add_argument("--overwrite", action="store_true",
                       help="replace --out if it exists (only once the merge succeeded)")
    merge.add_argument("--shard-size", type=parse_size, default=parse_size("2GB"),
                       help="bytes per output shard (default 2GB)")
    merge.add_argument("--no-overflow-check", action="store_true",
                       help="skip reading inputs whose values might not fit a narrower output dtype")
    merge.add_argument("--quiet", action="store_true", help="no progress bar")
    merge.set_defaults(func=merge_command)
    tv = sub.add_parser("task-vector", help="save tau = finetuned - base as one .safetensors file")
    tv.add_argument("base", type=clitools.input_path, help="base model folder")
    tv.add_argument("finetuned", type=clitools.input_path, help="fine-tuned model folder")
    tv.add_argument("--out", required=True, help="output .safetensors file")
    tv.set_defaults(func=task_vector_command)
