"""``almostlinear export``: a fitted lever as a file other engines load.

    almostlinear export edit.safetensors --to peft --out adapter/
    almostlinear export tv.safetensors --to peft --target-error 0.05 --out adapter/
    almostlinear export vec.safetensors --to hf --strength 0.2 --out steered-model/
    almostlinear export vec.safetensors --to gguf --strength 0.2 --out vec.gguf
    almostlinear export repeng.gguf --to artifact --out vectors/

The kind is read from each file; several files go into one export where the target allows. A
``.gguf`` control vector read with ``--to artifact`` becomes one steering-vector file per layer.
Building the parser imports neither torch nor transformers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import clitools
from ..clitools import load_artifact, load_model, say
from ..core.errors import AlmostLinearError

TARGETS = ("peft", "hf", "gguf", "artifact")
UNITS = ("residual", "diff", "raw")  # a steering vector's strength units (steering.choices.UNITS)


def output_path(text: str) -> str:
    """A ``.gguf`` file to write, or otherwise a folder to write (checked before any work)."""
    return clitools.output_file(text) if str(text).endswith(".gguf") else clitools.output_folder(text)


def export_command(args: argparse.Namespace) -> int:
    clitools.set_threads(args.threads)
    if args.to == "artifact":
        return _import(args)
    if any(str(path).endswith(".gguf") for path in args.files):
        raise AlmostLinearError("a .gguf control vector is read with --to artifact; export its steering vectors "
                                "from the files that writes")
    levers = [load_artifact(path) for path in args.files]
    strengths = args.strength or [1.0] * len(levers)
    if len(strengths) == 1 and len(levers) > 1:
        strengths = strengths * len(levers)
    if len(strengths) != len(levers):
        raise AlmostLinearError(f"{len(strengths)} strengths for {len(levers)} files: give one, or one per file")
    if args.to == "gguf":
        from .gguf import export_gguf

        model = load_model(args.model) if args.model or args.side_effects else None
        measured = _measure(levers, model, strengths, args)
        path = export_gguf(levers, args.out, model=model, strengths=strengths, units=args.units,
                           side_effects=measured)
        print(f"wrote {path} (llama.cpp control vector) and its card")
        return 0
    model = load_model(args.model)
    measured = _measure(levers, model, strengths, args)
    if args.to == "peft":
        from .peft import export_peft

        say("computing the adapter's factors")
        plan = export_peft(levers, model, args.out, strengths=strengths, rank=args.rank,
                           target_error=args.target_error, side_effects=measured)
        ranks = sorted({f.rank for f in plan.modules.values()})
        note = "exact" if plan.exact else f"SVD relative error {plan.total_error:.3g}"
        print(f"wrote {args.out}: PEFT LoRA adapter, {len(plan.modules)} modules, ranks {ranks}, {note}")
        return 0
    from .hf import export_hf

    say("baking the levers and writing the weights")
    export_hf(levers, model, args.out, strengths=strengths, side_effects=measured)
    print(f"wrote {args.out}: plain-weights model with {len(levers)} lever(s) baked in")
    return 0


def _measure(levers, model, strengths, args) -> dict | None:
    """KL and ΔCE of the levers together on ``--side-effects`` neutral texts, for the card (None: not asked)."""
    if not args.side_effects:
        return None
    from ..data import FALLBACK_TEXTS
    from .measure import measure_side_effects

    say(f"measuring side effects on {args.side_effects} neutral texts")
    texts = [FALLBACK_TEXTS[i % len(FALLBACK_TEXTS)] for i in range(args.side_effects)]
    found = measure_side_effects(levers, model, texts, strengths=strengths, units=args.units)
    say(f"KL {found['kl']:.4g} nats/token, ΔCE {found['delta_ce']:+.4g} over {found['n_tokens']} tokens")
    return found


def _import(args: argparse.Namespace) -> int:
    from .gguf import import_gguf

    if len(args.files) != 1 or not str(args.files[0]).endswith(".gguf"):
        raise AlmostLinearError("--to artifact reads one llama.cpp control vector (.gguf)")
    vectors = import_gguf(args.files[0])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for vector in vectors:
        path = vector.save(out / f"{Path(args.files[0]).stem}.resid_post.{vector.layer}.safetensors")
        print(f"wrote {path}")
    return 0


def register(sub) -> None:
    """Add ``export`` to an argparse sub-parsers object."""
    p = sub.add_parser("export", help="write levers as a PEFT adapter, a plain-weights model or a llama.cpp "
                                      "control vector (or read a control vector)")
    p.add_argument("files", nargs="+", type=clitools.input_file, help="artifact files (.safetensors), or one .gguf")
    p.add_argument("--to", required=True, choices=TARGETS)
    p.add_argument("--out", required=True, type=output_path, help="output folder (or a .gguf file for --to gguf)")
    p.add_argument("--model", help="base model name or folder (default: the default model; optional for gguf)")
    p.add_argument("--strength", type=clitools.float_list, help="one strength, or one per file (comma-separated)")
    p.add_argument("--units", choices=UNITS, help="units of --strength for steering vectors (default: each vector's)")
    truncation = p.add_mutually_exclusive_group()
    truncation.add_argument("--rank", type=clitools.positive_int,
                            help="peft: truncate task vectors and merges to this rank")
    truncation.add_argument("--target-error", type=clitools.unit_interval,
                            help="peft: the smallest rank whose relative Frobenius error is at most this")
    p.add_argument("--side-effects", type=clitools.nonnegative_int, default=0, metavar="N",
                   help="measure KL and cross-entropy change on N neutral texts for the card (default: not measured)")
    clitools.add_threads(p)
    p.set_defaults(func=export_command)
