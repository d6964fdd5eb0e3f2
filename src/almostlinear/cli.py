"""Command line: a thin layer over the library that parses, calls and shows progress."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .clitools import (byte_size, device, input_file, output_folder, positive_int, progress_bar, say, set_threads,
                       restore_library_progress, setup_progress, show_progress, text_file,
                       word_list)

def cmd_audit(args: argparse.Namespace) -> int:
    from .audit import run_audit
    from .distributed.group import init_from_environment, local_device

    set_threads(args.threads)
    if init_from_environment(args.device):  # launched by torchrun: one rank of several
        args.device = local_device(args.device)
    sections = args.sections or None
    texts = None
    if args.texts:
        from .core.errors import EmptyDataError

        with open(args.texts, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle if line.strip()]
        if not lines:
            raise EmptyDataError(f"{args.texts} has no non-empty lines")
        texts = {"neutral": lines}
    budget = None
    if args.state_memory is not None:
        from dataclasses import replace

        from .core.section import Budget

        budget = replace(Budget.quick() if args.quick else Budget.full(), state_bytes=args.state_memory)
    report = run_audit(args.model, out=args.out, quick=args.quick, device=args.device, sections=sections,
                       budget=budget,
                       seed=args.seed, texts=texts, progress=say, progress_bar=progress_bar, dtype=args.dtype,
                       device_map=_device_map(args.device_map), max_memory=_max_memory(args.max_memory),
                       offload_folder=args.offload_folder, random_weights=args.random_weights,
                       apply=args.apply or None)
    if "rank" in report.report:  # another rank of a torchrun audit: it served passes; rank 0 reports
        return 0
    print(report.summary())
    print(f"wrote {os.path.join(args.out, 'report.json')} and {os.path.join(args.out, 'report.html')}")
    failed = [s.id for s in report.sections if s.status == "failed"]
    if failed:
        print(f"sections that failed: {', '.join(failed)} (see the report's notes)", file=sys.stderr)
        return 1
    return 0

def cmd_compare(args: argparse.Namespace) -> int:
    from .audit.compare import compare_reports

    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.b)), "compare")
    comparison = compare_reports(args.a, args.b, out=out)
    print(comparison.summary())
    print(f"wrote {os.path.join(out, 'compare.json')} and {os.path.join(out, 'compare.html')}")
    return 0


def _device_map(text: str | None):
    """``auto`` (or another accelerate strategy, or a device) as is; a JSON object as a module → device map."""
    if not text or not text.lstrip().startswith("{"):
        return text
    from .core.errors import ChoiceError

    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ChoiceError(f"--device-map: {text!r} is not valid JSON ({error.msg}); use auto or a JSON object") from error


def _max_memory(text: str | None) -> dict | None:
    """``"0=20GiB,cpu=60GiB"`` as accelerate's ``max_memory`` (GPU indices as integers)."""
    if not text:
        return None
    from .core.errors import ChoiceError

    limits: dict = {}
    for part in text.split(","):
        device, sep, size = part.partition("=")
        if not sep or not device.strip() or not size.strip():
            raise ChoiceError(f"--max-memory takes DEVICE=SIZE pairs such as 0=20GiB,cpu=60GiB; got {part!r}")
        device = device.strip()
        limits[int(device) if device.isdigit() else device] = size.strip()
    return limits


def cmd_models(args: argparse.Namespace) -> int:
    from .core.embedded import available

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

def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .core.defaults import DEFAULT_MODEL
    from .families import cli_modules

    parser = argparse.ArgumentParser(prog="almostlinear", description=__doc__)
    parser.add_argument("--version", action="version", version=f"almostlinear {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    sub = parser.add_subparsers(dest="command", required=True)

    audit = sub.add_parser("audit", help="measure how linear a model is, beside the literature's values")
    audit.add_argument("--model", default=DEFAULT_MODEL, help="embedded name, local folder, or hub id")
    audit.add_argument("--out", default="audit-out", type=output_folder, help="folder for report.json and report.html")
    audit.add_argument("--quick", action="store_true", help="a small token budget: minutes on 2 CPU cores")
    audit.add_argument("--device", default="cpu", type=device, help="cpu, cuda, cuda:1, ...")
    audit.add_argument("--sections", default=None, type=word_list, help="comma-separated subset of section ids")
    audit.add_argument("--seed", type=int, default=0)
    audit.add_argument("--texts", default=None, type=text_file,
                       help="a UTF-8 file, one text per line, to use instead of model-generated neutral text")
    audit.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: all cores)")
    audit.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                       help="the weights' dtype")
    audit.add_argument("--device-map", default=None,
                       help="place the model with accelerate: auto (fill the GPUs, then CPU, then disk), "
                            "balanced, sequential, or a JSON object module -> device; "
                            "--device is then not used for loading")
    audit.add_argument("--max-memory", default=None, help="with --device-map: limits such as 0=20GiB,cpu=60GiB")
    audit.add_argument("--offload-folder", default=None, help="with --device-map: where weights go on the disk tier")
    audit.add_argument("--state-memory", default=None, type=byte_size, metavar="SIZE",
                       help="memory the per-layer statistics may hold at once (default 10GB); below what all "
                            "layers need, layers are served in groups, one forward pass each")
    audit.add_argument("--random-weights", action="store_true",
                       help="build the architecture from its config with random weights (timing runs)")
    audit.add_argument("--apply", default=None, nargs="+", action="extend", type=input_file, metavar="FILE",
                       help="lever files (edits, steering vectors, task vectors, erasers, ...) applied to the "
                            "model while it is audited, in the order given; the model is restored afterwards")
    audit.set_defaults(func=cmd_audit)

    compare = sub.add_parser("compare", help="two audits side by side: metric deltas, overlaid curves, "
                                             "scorecard changes")
    compare.add_argument("a", type=input_file, metavar="A/report.json", help="the first audit (the baseline)")
    compare.add_argument("b", type=input_file, metavar="B/report.json", help="the second audit")
    compare.add_argument("--out", default=None, type=output_folder,
                         help="folder for compare.json and compare.html (default: 'compare' beside B)")
    compare.set_defaults(func=cmd_compare)

    models = sub.add_parser("models", help="list the models available offline")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd_models)

    import importlib

    # Every family's commands, from the manifest; their heavy imports happen inside the commands.
    for module in cli_modules():
        importlib.import_module(module).register(sub)
    _add_quiet(parser)
    return parser


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    """Every command (``steer fit`` as well as ``audit``) takes ``--quiet``; some define their own."""
    nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in nested:
        for command in action.choices.values():
            _add_quiet(command)
    if not nested and "--quiet" not in parser._option_string_actions:
        parser.add_argument("--quiet", action="store_true", help="no progress bars or status lines")

def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .core.errors import AlmostLinearError

    # Commands choose torch's thread count; when run in-process (tests, notebooks) put the caller's back.
    torch = sys.modules.get("torch")
    threads_before = torch.get_num_threads() if torch is not None else None
    from .core import progress

    try:
        with progress.configured():  # in-process callers get their own settings back
            quiet = getattr(args, "quiet", False)
            setup_progress(quiet)
            if getattr(args, "progress", None) is False and show_progress(quiet):
                args.progress = True  # commands with a --progress flag show their bars on a terminal anyway
            try:
                return args.func(args)
            finally:
                if getattr(args, "quiet", False):
                    restore_library_progress()
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - one line for the user; the traceback with --debug
        if args.debug:
            raise
        if isinstance(error, AlmostLinearError):
            print(f"error: {error}", file=sys.stderr)
            return 2
        if isinstance(error, OSError):  # a path the user gave that cannot be read or written
            print(f"error: {error.strerror or error}: {error.filename or ''}".rstrip(": "), file=sys.stderr)
            return 2
        print(f"error: {type(error).__name__}: {error} (this looks like a bug in almostlinear; "
              "run again with --debug for the traceback and report it)", file=sys.stderr)
        return 1
    finally:
        if threads_before is not None:
            sys.modules["torch"].set_num_threads(threads_before)
