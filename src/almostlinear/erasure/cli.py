"""``almostlinear erase``: fit a LEACE eraser for a concept, report guardedness and cost, save it.

The concept comes from the packaged true/false statements (cities or capitals) or from a user's
labelled file. Half the texts (split by subject for statements) fit the eraser; the other half test
it: a linear probe is trained and tested before and after erasure and compared with chance. The cost
is the KL and cross-entropy change on neutral text with the eraser applied at every token.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import clitools
from ..core.digest import data_hash
from ..core.errors import AlmostLinearError, EmptyDataError, LayerError, check_choice

DATASETS = ("cities", "capitals")
NEUTRAL_TEXTS = 48  # the same call as the audit and the lenses, so the cached texts are shared
NEUTRAL_NEW_TOKENS = 80


def read_labelled(path: str | Path) -> tuple[list[str], list[str]]:
    """Texts and labels from a file: JSON lines ``{"text": ..., "label": ...}`` or ``label<TAB>text`` lines."""
    try:
        with open(path, encoding="utf-8") as handle:
            texts, labels = _labelled_lines(path, handle)
    except UnicodeDecodeError:
        raise EmptyDataError(f"{path} is not UTF-8 text") from None
    except AlmostLinearError:
        raise
    except ValueError as error:  # a path no file can have, such as one with a NUL byte
        raise EmptyDataError(f"cannot open {path!r}: {error}") from None
    if not texts:
        raise EmptyDataError(f"{path} holds no labelled texts")
    return texts, labels


def _labelled_lines(path, handle) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for number, line in enumerate(handle, 1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                item = json.loads(line)
                text, label = item["text"], item["label"]
            except (ValueError, KeyError, TypeError) as error:
                raise EmptyDataError(
                    f"{path}:{number}: expected {{\"text\": ..., \"label\": ...}}: {error}") from None
        else:
            label, tab, text = line.partition("\t")
            if not tab:
                raise EmptyDataError(f"{path}:{number}: expected 'label<TAB>text' or a JSON object")
        if not str(text).strip():
            raise EmptyDataError(f"{path}:{number}: empty text")
        texts.append(str(text))
        labels.append(str(label))
    return texts, labels


def _concept(dataset: str | None, data_file: str | None, statements: int, seed: int):
    """``(train_texts, train_labels, test_texts, test_labels, class_names, data_hash)``."""
    import torch

    from .. import data

    if data_file is not None:
        texts, names = read_labelled(data_file)
        classes = sorted(set(names))
        index = {c: i for i, c in enumerate(classes)}
        order = list(range(len(texts)))
        random.Random(seed).shuffle(order)
        cut = len(order) // 2
        train, test = sorted(order[:cut]), sorted(order[cut:])
        y = torch.tensor([index[n] for n in names])
        digest = data_hash([f"{n}\t{t}" for n, t in zip(names, texts)])
        return [texts[i] for i in train], y[train], [texts[i] for i in test], y[test], classes, digest
    check_choice(dataset, DATASETS, "dataset")
    if dataset == "cities":
        items = data.city_statements(statements, seed=seed)
    else:
        items = data.capital_statements(statements, seed=seed)
    train, test = data.split(items, 0.5, seed=seed)
    label = lambda part: torch.tensor([int(s.label) for s in part])  # noqa: E731
    return ([s.text for s in train], label(train), [s.text for s in test], label(test), ["false", "true"],
            data_hash(items))


def parse_layers(text: str | None, n_layers: int) -> list[int]:
    """``"all"``, ``"0,5,-1"`` or ``"10-20"`` (inclusive) as layer indices (validated later)."""
    if text is None or text == "all":
        return list(range(n_layers))
    layers: list[int] = []
    for part in text.split(","):
        span = re.fullmatch(r"\s*(-?\d+)\s*-\s*(-?\d+)\s*", part)
        if span:
            layers.extend(range(int(span[1]), int(span[2]) + 1))
        elif re.fullmatch(r"\s*-?\d+\s*", part):
            layers.append(int(part))
        else:
            raise LayerError(f"cannot read layers {text!r}: write 'all', '0,5,-1' or '10-20'")
    if not layers:
        raise LayerError(f"no layers in {text!r}")
    return layers


def erase_command(model_name, *, dataset: str = "cities", data_file: str | None = None,
                  layers: Sequence[int] | None = None, site_name: str = "resid_post", method: str = "leace",
                  shrinkage: bool | None = None, statements: int = 200, neutral: int = 16,
                  neutral_file: str | None = None, out: str | Path | None = None, seed: int = 0,
                  max_length: int = 64, as_json: bool = False, say: Callable[[str], None] | None = None,
                  stream=None) -> dict:
    """Fit, evaluate and optionally save an eraser; print a summary (or JSON) and return the numbers.

    ``layers`` defaults to the middle layer; several layers are erased in order (concept scrubbing).
    ``shrinkage=None`` shrinks the covariance when there are fewer training texts than dimensions.
    """
    from .. import data
    from ..core.sites import Site
    from .evaluate import erasure_cost, guardedness
    from .fit import fit_eraser

    say = say or clitools.say
    stream = stream or sys.stdout
    loaded = clitools.load_model(model_name)
    structure = loaded.structure
    layers = [structure.n_layers // 2] if layers is None else [structure.block(i).index for i in layers]
    sites = [str(Site(site_name, layer)) for layer in layers]
    train_x, train_y, test_x, test_y, classes, digest = _concept(dataset, data_file, statements, seed)
    if len(classes) < 2:
        raise EmptyDataError("the labels name a single class: there is no concept to erase")
    binary = len(classes) == 2
    width = Site(site_name, 0).width(structure)
    if shrinkage is None:
        shrinkage = len(train_x) < width
    say(f"fitting a {method} eraser on {len(train_x)} texts at {len(sites)} site(s): {', '.join(sites[:4])}"
        f"{' ...' if len(sites) > 4 else ''}")
    eraser = fit_eraser(loaded, None, train_x, train_y, sites, n_classes=1 if binary else len(classes),
                        method=method, shrinkage=shrinkage, max_length=max_length, data_hash=digest,
                        progress=True)
    say(f"testing a linear probe at {sites[-1]} on {len(test_x)} held-out texts, before and after erasure")
    groups = [(classes[1], train_y, test_y)] if binary else [
        (c, (train_y == i).long(), (test_y == i).long()) for i, c in enumerate(classes)]
    guarded = {name: guardedness(loaded, None, eraser, (train_x, ytr), (test_x, yte), max_length=max_length).as_dict()
               for name, ytr, yte in groups}
    if neutral_file is not None:
        with open(neutral_file, encoding="utf-8") as handle:
            texts = [line.strip() for line in handle if line.strip()]
    else:
        say("neutral text for the cost: sampled from the model once, then cached")
        texts = data.neutral_texts(loaded.model, loaded.tokenizer, NEUTRAL_TEXTS, max_new_tokens=NEUTRAL_NEW_TOKENS,
                                   cache_key=loaded.fingerprint)
    texts = texts[:neutral]
    say(f"measuring KL and cross-entropy change on {len(texts)} neutral texts")
    cost = erasure_cost(loaded, None, eraser, texts, max_length=max_length)
    result = {"model": loaded.name, "sites": list(eraser.sites), "ranks": list(eraser.ranks), "method": method,
              "shrinkage": shrinkage,
              "classes": classes, "n_train": len(train_x), "n_test": len(test_x), "guardedness": guarded,
              "cost": cost.as_dict(), "data_hash": digest}
    if out is not None:
        result["saved"] = str(eraser.save(out))
    if as_json:
        print(json.dumps(result, indent=1), file=stream)
        return result
    print(f"LEACE erasure ({method}) of {'/'.join(classes)} at {', '.join(eraser.sites)} of {loaded.name}", file=stream)
    print(f"{'class':>12}  {'probe before':>12}  {'probe after':>11}  {'chance':>6}", file=stream)
    for name, g in guarded.items():
        print(f"{name:>12}  {g['accuracy_before']:>12.3f}  {g['accuracy_after']:>11.3f}  {g['chance']:>6.3f}",
              file=stream)
    print(f"held-out logistic probe at {guarded[next(iter(guarded))]['site']}, {len(train_x)} train / "
          f"{len(test_x)} test texts; after erasure a linear probe should be at chance (arXiv 2306.03819)",
          file=stream)
    print(f"cost on neutral text (eraser at every token): {cost}", file=stream)
    if out is not None:
        print(f"saved the eraser to {result['saved']}", file=stream)
    return result


def _layers_arg(text: str) -> str:
    """The layer syntax of :func:`parse_layers`, checked while parsing (the indices once the model is known)."""
    try:
        parse_layers(text, 1)
    except LayerError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def cmd_erase(args: argparse.Namespace) -> int:
    if args.data is not None:
        _, labels = read_labelled(args.data)  # the file's faults are found before the model loads
        if len(set(labels)) < 2:
            raise EmptyDataError(f"{args.data}: the labels name a single class: there is no concept to erase")
    clitools.set_threads(args.threads)  # the command line's main puts the caller's thread count back
    layers = None
    model = args.model
    if args.layers is not None:
        model = clitools.load_model(args.model)
        layers = parse_layers(args.layers, model.structure.n_layers)
    erase_command(model, dataset=args.dataset, data_file=args.data, layers=layers, site_name=args.site,
                  method=args.method, shrinkage=args.shrinkage, statements=args.statements, neutral=args.neutral,
                  neutral_file=args.neutral_file, out=args.out, seed=args.seed, max_length=args.max_length,
                  as_json=args.json)
    return 0


def register(sub) -> None:
    """Add ``erase`` to an argparse sub-parsers object."""
    erase = sub.add_parser("erase", help="fit a LEACE eraser for a concept; probe accuracy before/after, cost; save")
    erase.add_argument("--model", default=None,
                       help="embedded name, local folder, or hub id (default: the embedded SmolLM2)")
    source = erase.add_mutually_exclusive_group()
    source.add_argument("--dataset", choices=DATASETS, default="cities",
                        help="packaged true/false statements (default: cities)")
    source.add_argument("--data", default=None,
                        help="a labelled file: JSON lines {\"text\": ..., \"label\": ...} or label<TAB>text lines")
    erase.add_argument("--layers", default=None, type=_layers_arg,
                       help="'all', comma-separated layers or a range like 10-20 (default: the middle layer)")
    erase.add_argument("--site", choices=("resid_pre", "resid_post", "attn_out", "mlp_out"), default="resid_post")
    erase.add_argument("--method", choices=("leace", "orth"), default="leace")
    erase.add_argument("--shrinkage", action=argparse.BooleanOptionalAction, default=None,
                       help="shrink the covariance toward the identity (default: when there are fewer "
                            "training texts than dimensions)")
    erase.add_argument("--statements", type=clitools.positive_int, default=200,
                       help="how many packaged statements to use")
    erase.add_argument("--neutral", type=clitools.positive_int, default=16, help="neutral texts to measure the cost on")
    erase.add_argument("--neutral-file", default=None, type=clitools.text_file,
                       help="a UTF-8 file, one neutral text per line")
    erase.add_argument("--max-length", type=clitools.positive_int, default=64, help="tokens per text")
    erase.add_argument("--out", default=None, type=clitools.output_file, help="save the eraser (.safetensors)")
    erase.add_argument("--json", action="store_true", help="print the numbers as JSON")
    erase.add_argument("--seed", type=int, default=0)
    clitools.add_threads(erase)
    erase.set_defaults(func=cmd_erase)
