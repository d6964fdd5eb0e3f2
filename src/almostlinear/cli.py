"""Command line: a thin layer over the library that parses, calls and shows progress."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _threads(value: int | None) -> None:
    import torch

    # Chosen deliberately: BLAS defaults can oversubscribe small machines and slow small solves.
    torch.set_num_threads(value or max(1, os.cpu_count() or 1))


def _progress_bar(total: int, description: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="text", file=sys.stderr)


def _say(message: str) -> None:
    print(f"· {message}", file=sys.stderr, flush=True)


def cmd_audit(args: argparse.Namespace) -> int:
    from .audit import run_audit

    _threads(args.threads)
    sections = args.sections.split(",") if args.sections else None
    texts = None
    if args.texts:
        from .core.errors import EmptyDataError

        with open(args.texts, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle if line.strip()]
        if not lines:
            raise EmptyDataError(f"{args.texts} has no non-empty lines")
        texts = {"neutral": lines}
    report = run_audit(args.model, out=args.out, quick=args.quick, device=args.device, sections=sections,
                       seed=args.seed, texts=texts, progress=_say, progress_bar=_progress_bar)
    print(report.summary())
    print(f"wrote {os.path.join(args.out, 'report.json')} and {os.path.join(args.out, 'report.html')}")
    failed = [s.id for s in report.sections if s.status == "failed"]
    if failed:
        print(f"sections that failed: {', '.join(failed)} (see the report's notes)", file=sys.stderr)
        return 1
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from .probes.cli import probe_command

    _threads(args.threads)
    layers = [int(v) for v in args.layers.split(",")] if args.layers else None
    probe_command(args.model, dataset=args.dataset, layers=layers, out=args.out,
                  statements=args.statements, candidates=args.candidates, seed=args.seed)
    return 0


def cmd_lens(args: argparse.Namespace) -> int:
    from .lens.cli import lens_command

    _threads(args.threads)
    return lens_command(args.model, args.prompt, args.kind, args.out)


def cmd_models(args: argparse.Namespace) -> int:
    from .core.models import available

    rows = available()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for row in rows:
        state = "installed" if row["installed"] else f"not installed ({row['install']})"
        default = " [default]" if row["default"] else ""
        print(f"{row['name']}{default}: {row['description']}")
        print(f"    {state}; source: {row['source'] or '-'}")
        if row["converted_cache"]:
            print(f"    converted cache: {row['converted_cache']}")
    print("Also accepted: a local Hugging Face folder (with config.json), or a hub id owner/name when online.")
    return 0


# Lever families that contribute their own commands (each module's ``register(sub)``); their heavy
# imports happen inside the commands, so building the parser stays fast.
FAMILY_COMMANDS = ("steering", "erasure", "editing", "merging", "adapters", "connectivity", "latent", "translate", "sae")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .core.models import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="almostlinear", description=__doc__)
    parser.add_argument("--version", action="version", version=f"almostlinear {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    audit = sub.add_parser("audit", help="measure how linear a model is, beside the literature's values")
    audit.add_argument("--model", default=DEFAULT_MODEL, help="embedded name, local folder, or hub id")
    audit.add_argument("--out", default="audit-out", help="folder for report.json and report.html")
    audit.add_argument("--quick", action="store_true", help="a small token budget: minutes on 2 CPU cores")
    audit.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    audit.add_argument("--sections", default=None, help="comma-separated subset of section ids")
    audit.add_argument("--seed", type=int, default=0)
    audit.add_argument("--texts", default=None,
                       help="a UTF-8 file, one text per line, to use instead of model-generated neutral text")
    audit.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    audit.set_defaults(func=cmd_audit)

    probe = sub.add_parser("probe", help="truth probes on every layer: held-out accuracy, selectivity; save the best")
    probe.add_argument("--model", default=DEFAULT_MODEL)
    probe.add_argument("--dataset", choices=["cities", "capitals"], default="cities")
    probe.add_argument("--layers", default=None, help="comma-separated layers (default: all)")
    probe.add_argument("--out", default=None, help="save the best layer's logistic probe (.safetensors)")
    probe.add_argument("--statements", type=int, default=400)
    probe.add_argument("--candidates", type=int, default=1000)
    probe.add_argument("--seed", type=int, default=0)
    probe.add_argument("--threads", type=int, default=None)
    probe.set_defaults(func=cmd_probe)

    lens = sub.add_parser("lens", help="the top token per layer and position of one prompt, through a lens")
    lens.add_argument("--prompt", required=True, help="the text to read")
    lens.add_argument("--model", default=DEFAULT_MODEL, help="embedded name, local folder, or hub id")
    lens.add_argument("--kind", choices=("logit", "affine", "tuned"), default="logit",
                      help="affine and tuned lenses are fitted on neutral text once per model, then cached")
    lens.add_argument("--out", default=None, help="also write the picture as a PNG to this file")
    lens.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    lens.set_defaults(func=cmd_lens)

    models = sub.add_parser("models", help="list the models available offline")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd_models)

    import importlib

    for family in FAMILY_COMMANDS:
        importlib.import_module(f"almostlinear.{family}.cli").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .core.errors import AlmostLinearError

    # Commands choose torch's thread count; when run in-process (tests, notebooks) put the caller's back.
    torch = sys.modules.get("torch")
    threads_before = torch.get_num_threads() if torch is not None else None
    try:
        return args.func(args)
    except AlmostLinearError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; no report was written", file=sys.stderr)
        return 130
    finally:
        if threads_before is not None:
            sys.modules["torch"].set_num_threads(threads_before)
