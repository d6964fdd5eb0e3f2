"""``almostlinear steer``: fit a vector from contrast pairs, generate with it, sweep its strength.

    almostlinear steer fit --pairs sentiment --layer 9 --out v.safetensors
    almostlinear steer generate --vector v.safetensors --strength 0.1 --prompt "I went to the store and"
    almostlinear steer dose --vector v.safetensors --strengths=-0.2,-0.1,0,0.1,0.2

The library does the work; this module parses, loads and prints. Building the parser imports
neither torch nor transformers (they load inside the commands), so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

from .. import clitools
from ..clitools import load_artifact, load_model, say
from ..core.errors import ChoiceError, EmptyDataError
from .choices import METHODS, PAIR_SETS, READS, UNITS


def read_pairs_file(spec: str) -> list[tuple[str, str]]:
    """Built-in pair sets by name, or a file: JSON lines ``{"positive": .., "negative": ..}`` or a
    two-column CSV/TSV (positive, negative; a header row naming them is skipped)."""
    if spec in PAIR_SETS:
        from ..data import sentiment

        return list({"sentiment": sentiment.SENTIMENT_PAIRS, "weddings": sentiment.WEDDING_PAIRS}[spec])
    path = Path(spec)
    if not path.is_file():
        raise EmptyDataError(f"no pair set {spec!r}: name one of {', '.join(PAIR_SETS)} or give a "
                             ".jsonl/.csv/.tsv file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise EmptyDataError(f"{spec} is not UTF-8 text") from None
    pairs = []
    if path.suffix in (".jsonl", ".json"):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                pairs.append((str(row["positive"]), str(row["negative"])))
            except (ValueError, KeyError, TypeError) as error:
                raise EmptyDataError(f"{spec}:{number}: expected {{\"positive\": ..., \"negative\": ...}}: "
                                     f"{error}") from None
        return pairs
    delimiter = "\t" if path.suffix == ".tsv" else ","
    try:
        rows = [r for r in csv.reader(text.splitlines(), delimiter=delimiter) if r]
    except csv.Error as error:
        raise EmptyDataError(f"{spec}: {error}") from None
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["positive", "negative"]:
        rows = rows[1:]
    for number, row in enumerate(rows, 1):
        if len(row) < 2:
            raise EmptyDataError(f"{spec}: row {number} has {len(row)} column; write positive{delimiter}negative")
        pairs.append((row[0], row[1]))
    return pairs


_POLICY = re.compile(r"all|prompt|generated|first|last|last:[1-9]\d*|-?\d+(,-?\d+)*")


def _position_arg(text: str) -> str:
    """A position policy as the command line writes it (checked before any work)."""
    if not _POLICY.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"unknown position policy {text!r}: use all, prompt, generated, "
                                         "last:K (K at least 1) or comma-separated positions")
    return text.strip()


def _positions(text: str):
    """``all``, ``prompt``, ``generated`` or ``last:K`` as a position policy."""
    from .positions import from_header

    return from_header(text)


def _load_vector(path: str):
    from .artifact import SteeringVector

    return load_artifact(path, SteeringVector)


def fit_command(args) -> int:
    from ..core.errors import check_choice
    from ..core.sites import SITE_NAMES
    from .fit import fit_steering

    check_choice(args.site, SITE_NAMES, "site")
    pairs = read_pairs_file(args.pairs)  # the file is read before the model loads: its errors come first
    loaded = load_model(args.model)
    say(f"fitting {args.method} at {args.site}.{args.layer} from {len(pairs)} pairs")
    vector = fit_steering(loaded, pairs=pairs, layer=args.layer, site=args.site, method=args.method, read=args.read,
                          positions=_positions(args.positions), progress=args.progress)
    path = vector.save(args.out)
    norms = ", ".join(f"{k} {v:.4g}" for k, v in vector.norms.items())
    print(f"saved {path}: {vector.provenance.method} at {vector.site}.{vector.layer}; {norms}")
    print(f"strength 1 adds a vector of norm {vector.norms['residual_median']:.4g} (the median residual norm)")
    return 0


def generate_command(args) -> int:
    from ..data import sentiment
    from .cost import side_effects
    from .generate import generate_steered

    vector = _load_vector(args.vector)
    loaded = load_model(args.model)
    prompts = args.prompt or [sentiment.NEUTRAL_PROMPTS[0]]
    positions = _positions(args.positions) if args.positions else None
    kwargs = dict(positions=positions, units=args.units, max_new_tokens=args.max_new_tokens, chat=args.chat)
    steered = generate_steered(loaded, prompts=prompts, vectors=vector, strength=args.strength, **kwargs)
    base = generate_steered(loaded, prompts=prompts, vectors=None, **kwargs) if args.compare else None
    for i, prompt in enumerate(prompts):
        print(f"prompt:    {prompt}")
        print(f"steered:   {steered[i]}")
        if base is not None:
            print(f"unsteered: {base[i]}")
    if args.side_effects:
        from .. import data

        texts = data.neutral_texts(loaded.model, loaded.tokenizer, args.side_effects, max_new_tokens=64,
                                   cache_key=loaded.fingerprint)
        cost = side_effects(loaded, None, texts, lambda: vector.apply(loaded, args.strength, positions=positions,
                                                                        units=args.units),
                            max_length=96, skip_first=True)
        print(f"side effects on {len(texts)} neutral texts: {cost}")
    return 0


def dose_command(args) -> int:
    from ..data import sentiment
    from .behaviour import TokenPreference
    from .dose import dose_response

    if bool(args.words) != bool(args.against):
        raise ChoiceError("--words and --against go together: give both, or neither to use --behaviour")
    vector = _load_vector(args.vector)
    loaded = load_model(args.model)
    strengths = args.strengths
    prompts = list(sentiment.NEUTRAL_PROMPTS[: args.prompts])
    if args.words and args.against:
        behaviour = TokenPreference([f" {w}" for w in args.words], [f" {w}" for w in args.against])
    elif args.behaviour == "sentiment":
        behaviour = TokenPreference(sentiment.POSITIVE_WORDS, sentiment.NEGATIVE_WORDS)
    else:
        behaviour = TokenPreference(sentiment.WEDDING_WORDS, sentiment.PLAIN_WORDS)
    neutral = list(sentiment.NEUTRAL_PROMPTS[args.prompts:]) or None
    dose = dose_response(loaded, None, vector, prompts, strengths, behaviour, neutral=neutral, units=args.units,
                         progress=args.progress)
    print(f"{'strength':>9} {'effect':>9} {'s.e.':>7} {'KL':>8} {'dCE':>8}")
    for s, e, se, kl, dce in zip(dose.strengths, dose.mean_effect, dose.stderr, dose.kl, dose.delta_ce):
        kl_text = f"{kl:8.4f}" if kl is not None else f"{'-':>8}"
        dce_text = f"{dce:+8.4f}" if dce is not None else f"{'-':>8}"
        print(f"{s:9.3g} {e:+9.3f} {se:7.3f} {kl_text} {dce_text}")
    fit = dose.linearity()
    print(f"slope {fit['slope']:.3f} per unit strength, R^2 {fit['r2']:.3f}; "
          f"{dose.anti_steerable():.0%} of prompts move the wrong way")
    return 0


def register(sub) -> None:
    """Add ``steer`` with ``fit``, ``generate`` and ``dose`` to an argparse sub-parsers object."""
    steer = sub.add_parser("steer", help="steering vectors: fit, generate, dose-response")
    inner = steer.add_subparsers(dest="steer_command", required=True)

    fit = inner.add_parser("fit", help="fit a steering vector from contrast pairs")
    fit.add_argument("--model", help="name or folder (default: the default model)")
    fit.add_argument("--pairs", default="sentiment",
                     help=f"built-in set ({', '.join(PAIR_SETS)}) or a .jsonl/.csv/.tsv file of (positive, negative)")
    fit.add_argument("--layer", type=int, required=True)
    fit.add_argument("--site", default="resid_post")
    fit.add_argument("--method", default="mean_diff", choices=METHODS)
    fit.add_argument("--read", default="last", choices=READS)
    fit.add_argument("--positions", default="all", type=_position_arg, help="all, prompt, generated or last:K")
    fit.add_argument("--out", required=True, type=clitools.output_file)
    fit.add_argument("--progress", action="store_true")
    fit.set_defaults(func=fit_command)

    gen = inner.add_parser("generate", help="generate with a steering vector added")
    gen.add_argument("--vector", required=True)
    gen.add_argument("--strength", type=clitools.finite_float, default=0.1,
                     help="in units of the median residual norm at the vector's layer (see --units)")
    gen.add_argument("--prompt", action="append", type=clitools.nonempty_text, help="may be repeated")
    gen.add_argument("--model", help="name or folder (default: the default model)")
    gen.add_argument("--positions", default=None, type=_position_arg,
                     help="all, prompt, generated or last:K (default: the vector's)")
    gen.add_argument("--units", default="residual", choices=UNITS)
    gen.add_argument("--max-new-tokens", type=clitools.positive_int, default=32)
    gen.add_argument("--chat", action="store_true", help="wrap each prompt in the chat template")
    gen.add_argument("--compare", action="store_true", help="also print the unsteered continuation")
    gen.add_argument("--side-effects", type=clitools.nonnegative_int, default=0, metavar="N",
                     help="also report KL and cross-entropy change on N neutral texts")
    gen.set_defaults(func=generate_command)

    dose = inner.add_parser("dose", help="behaviour change and side effects against strength")
    dose.add_argument("--vector", required=True)
    dose.add_argument("--model", help="name or folder (default: the default model)")
    dose.add_argument("--strengths", default="-0.2,-0.1,0,0.1,0.2", type=clitools.float_list,
                      help="comma-separated strengths")
    dose.add_argument("--behaviour", default="sentiment", choices=("sentiment", "weddings"))
    dose.add_argument("--words", type=clitools.word_list,
                      help="comma-separated next words scored for (instead of --behaviour)")
    dose.add_argument("--against", type=clitools.word_list,
                      help="comma-separated next words scored against (with --words)")
    dose.add_argument("--prompts", type=clitools.positive_int, default=16,
                      help="neutral prompts scored (the rest measure side effects)")
    dose.add_argument("--units", default="residual", choices=UNITS)
    dose.add_argument("--progress", action="store_true")
    dose.set_defaults(func=dose_command)
