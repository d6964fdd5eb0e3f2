"""``almostlinear translate``: fit a linear map between two models or two layers, and score it honestly.

Two modes:

* between models (default): ``--source minilm-l6 --target smollm2-135m``. One vector per text from
  each model on shared texts, maps fitted on 70% of them, held-out R² and retrieval top-1 on the rest.
* stitching (``--stitch I:J``): map block I's output of ``--target`` to block J's output, run the rest
  of the model from there, and report the next-token cross-entropy beside the unstitched model; with
  ``--steer`` also move a sentiment steering vector from block I to block J through the map.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import clitools

METHODS = ("affine", "orthogonal", "low_rank")


def _texts(path: str | None, n_statements: int, seed: int) -> tuple[list[str], list]:
    from .. import data
    from ..core.errors import EmptyDataError

    if path is not None:
        texts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(texts) < 8:
            raise EmptyDataError(f"{path} has {len(texts)} non-empty lines; a held-out score needs at least 8 texts")
        return texts, list(range(len(texts)))
    statements = data.city_statements(n_statements, seed=seed)
    texts = [s.text for s in statements] + list(data.FALLBACK_TEXTS)
    groups = [s.subject for s in statements] + [f"neutral{i}" for i in range(len(data.FALLBACK_TEXTS))]
    return texts, groups


def translate_command(source: str = "minilm-l6", target: str = "smollm2-135m", *, source_site: str | None = None,
                      target_site: str | None = None, method: str = "affine", rank: int = 32,
                      texts_file: str | None = None, statements: int = 240, out: str | None = None, seed: int = 0,
                      stream=None, say=clitools.say):
    """Fit ``method`` maps source → target and back on shared texts; print held-out R² and retrieval top-1."""
    from ..core.errors import check_choice
    from .artifact import evaluate
    from .pool import text_vectors

    stream = stream or sys.stdout
    check_choice(method, METHODS, "map method")
    texts, groups = _texts(texts_file, statements, seed)
    vectors, names = [], []
    for name, site in ((source, source_site), (target, target_site)):
        loaded = clitools.load_model(name)
        say(f"reading {len(texts)} texts with {loaded.name}")
        vectors.append(text_vectors(loaded.model, loaded.tokenizer, texts, site, kind=loaded.kind,
                                    structure=loaded.structure))
        names.append(f"{loaded.name}" + (f"@{site}" if site else ""))
    options = {"rank": rank} if method == "low_rank" else ({"scale": True} if method == "orthogonal" else {})
    print(f"{method} maps on {len(texts)} shared texts (30% held out, grouped by subject)", file=stream)
    print(f"{'direction':<40}  {'R² held out':>11}  {'R² in-sample':>12}  {'top-1':>6}  {'chance':>6}", file=stream)
    results = []
    for x, y, a, b in ((vectors[0], vectors[1], names[0], names[1]), (vectors[1], vectors[0], names[1], names[0])):
        result = evaluate(x, y, method, seed=seed, groups=groups, source=a, target=b, **options)
        results.append(result)
        h = result.held_out
        print(f"{a + ' → ' + b:<40}  {h.r2:>11.3f}  {result.train_r2:>12.3f}  {h.top1:>6.3f}  {h.chance_top1:>6.3f}",
              file=stream)
    if out is not None:
        path = results[0].map.save(out)
        print(f"saved the {names[0]} → {names[1]} map (fitted on the training texts) to {path}", file=stream)
    return results


def stitch_command(model: str = "smollm2-135m", layers: tuple[int, int] = (10, 12), *, method: str = "affine",
                   rank: int = 32, fit_texts: int = 32, eval_texts: int = 16, steer: bool = False, scale: float = 4.0,
                   out: str | None = None, seed: int = 0, progress: bool = False, stream=None, say=clitools.say):
    """Stitch block ``i``'s output to block ``j``'s in one model through a fitted map; print the losses."""
    from .. import data
    from ..core.errors import EmptyDataError
    from .stitch import Network, fit_stitch, stitched_loss
    from .transfer import steering_transfer

    stream = stream or sys.stdout
    loaded = clitools.load_model(model)
    if loaded.structure.unembedding is None:
        raise EmptyDataError(f"{model} has no output head: stitching is scored by next-token loss")
    i, j = (loaded.structure.block(k).index for k in layers)
    say(f"sampling {fit_texts + eval_texts} neutral texts from the model (cached after the first run)")
    texts = data.neutral_texts(loaded.model, loaded.tokenizer, max(48, fit_texts + eval_texts), max_new_tokens=80,
                               seed=seed, cache_key=loaded.fingerprint)
    if len(texts) < fit_texts + eval_texts:
        raise EmptyDataError(f"only {len(texts)} texts for {fit_texts} fitting and {eval_texts} evaluation texts")
    net = Network.of(loaded.model, loaded.tokenizer, loaded.structure)
    options = {"rank": rank} if method == "low_rank" else ({"scale": True} if method == "orthogonal" else {})
    say(f"fitting a {method} map resid_post.{i} → resid_post.{j} on {fit_texts} texts")
    mapping, mean = fit_stitch(net, net, texts[:fit_texts], f"resid_post.{i}", f"resid_post.{j}", method,
                               progress=progress, **options)
    say(f"scoring the stitched model on {eval_texts} other texts")
    result = stitched_loss(net, net, texts[fit_texts:fit_texts + eval_texts], f"resid_post.{i}", f"resid_post.{j}",
                           mapping, target_mean=mean, progress=progress)
    print(f"{loaded.name}: block {i} output → {method} map → block {j} output, then blocks {j + 1}…; "
          f"next-token cross-entropy on {result.tokens} held-out tokens (nats)", file=stream)
    rows = [("unstitched model", result.target), (f"stitched ({method} map)", result.stitched)]
    if result.identity is not None:
        skipped = f"block {j}" if j == i + 1 else f"blocks {i + 1}–{j}"
        rows.append((f"identity (skip {skipped})" if j > i else "identity", result.identity))
    rows.append(("mean of block j output", result.mean_ablation))
    for name, value in rows:
        print(f"  {name:<32} {value:7.3f}  ({value - result.target:+.3f})", file=stream)
    print(f"  map in-sample R² {mapping.train_r2:.3f}, ridge {mapping.ridge}", file=stream)
    steering = None
    if steer:
        say("moving a sentiment steering vector through the map")
        steering = steering_transfer(loaded.model, loaded.tokenizer, mapping, f"resid_post.{i}", f"resid_post.{j}",
                                     scale=scale, seed=seed, structure=loaded.structure)
        print(f"sentiment vector block {i} → block {j} (scale {scale}): shift of log P(positive) − log P(negative), "
              f"nats: native {steering.shift_native:+.2f}, moved through the map {steering.shift_transferred:+.2f}, "
              f"random {steering.shift_random:+.2f}; cosine to native {steering.cosine:.2f}", file=stream)
    if out is not None:
        print(f"saved the map to {mapping.save(out)}", file=stream)
    return result, steering


def _layers(text: str) -> tuple[int, int]:
    try:
        i, j = (int(part) for part in text.split(":"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--stitch takes I:J (two block indices), got {text!r}") from error
    return i, j


def _run(args: argparse.Namespace) -> int:
    from ..core.sites import Site

    for text in (args.source_site, args.target_site):
        if text is not None:
            Site.parse(text)  # an unknown site name is found before the models load
    if args.texts is not None and args.stitch is None:
        _texts(args.texts, args.statements, args.seed)  # too few lines is found before the models load
    if args.stitch is not None:
        stitch_command(args.target, args.stitch, method=args.method, rank=args.rank, steer=args.steer,
                       scale=args.scale, out=args.out, seed=args.seed, progress=args.progress)
    else:
        translate_command(args.source, args.target, source_site=args.source_site, target_site=args.target_site,
                          method=args.method, rank=args.rank, texts_file=args.texts, statements=args.statements,
                          out=args.out, seed=args.seed)
    return 0


def register(sub) -> None:
    """Add ``translate`` to an argparse sub-parsers object."""
    p = sub.add_parser("translate", help="linear maps between models or layers: held-out R², retrieval, stitching",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="minilm-l6", help="model mapped from (default minilm-l6)")
    p.add_argument("--target", default="smollm2-135m", help="model mapped to, or stitched (default smollm2-135m)")
    p.add_argument("--source-site", default=None, type=clitools.site_spec,
                   help="e.g. resid_post.5 (default: last block of an encoder, middle block of a decoder)")
    p.add_argument("--target-site", default=None, type=clitools.site_spec, help="e.g. resid_post.10")
    p.add_argument("--method", choices=METHODS, default="affine")
    p.add_argument("--rank", type=clitools.positive_int, default=32, help="rank of low_rank maps")
    p.add_argument("--texts", default=None, type=clitools.text_file,
                   help="a UTF-8 file, one text a line (default: generated statements and packaged neutral "
                        "sentences)")
    p.add_argument("--statements", type=clitools.positive_int, default=240,
                   help="generated statements when --texts is not given")
    p.add_argument("--stitch", type=_layers, default=None, metavar="I:J",
                   help="stitch block I's output to block J's in --target instead")
    p.add_argument("--steer", action="store_true", help="with --stitch: also move a sentiment vector through the map")
    p.add_argument("--scale", type=clitools.finite_float, default=4.0, help="steering scale for --steer")
    p.add_argument("--out", default=None, type=clitools.output_file, help="save the fitted map as .safetensors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="with --stitch: progress bars on stderr")
    p.set_defaults(func=_run)
