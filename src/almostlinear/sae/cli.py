"""``almostlinear sae train`` and ``almostlinear sae eval``: fit a sparse autoencoder on one site of
a model and score it (L0, FVU, cross-entropy recovered).

Texts come from a file (one per line) or are sampled from the model itself (neutral text, cached).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import clitools
from ..clitools import load_artifact, load_model, say
from ..core.digest import data_hash


def _texts(loaded, args, seed: int) -> list[str]:
    if args.text_file:
        lines = [line.strip() for line in Path(args.text_file).read_text(encoding="utf-8").splitlines()]
        return [line for line in lines if line]
    from .. import data

    say(f"sampling {args.texts} neutral texts from the model (cached after the first run)")
    return data.neutral_texts(loaded.model, loaded.tokenizer, args.texts, max_new_tokens=args.new_tokens, seed=seed,
                              cache_key=loaded.fingerprint)


def _site(loaded, text: str | None):
    from ..core.sites import Site

    return Site.parse(text) if text else Site("resid_post", loaded.structure.n_layers // 2)


def _check_before_loading(args: argparse.Namespace) -> None:
    """What can be refused without the model: the device, the site's name, an empty text file."""
    from ..core.errors import EmptyDataError
    from ..core.sites import Site

    clitools.require_device(args.device)
    if args.site:
        Site.parse(args.site)
    if args.text_file and not any(line.strip() for line in
                                  Path(args.text_file).read_text(encoding="utf-8").splitlines()):
        raise EmptyDataError(f"{args.text_file} has no non-empty lines")


def cmd_train(args: argparse.Namespace) -> int:
    from ..core.artifact import Provenance, Where
    from ..core.collect import collect
    from .train import fit_sae, train_sae

    _check_before_loading(args)
    loaded = load_model(args.model, device=args.device)
    site = _site(loaded, args.site).normalized(loaded.structure)
    texts = _texts(loaded, args, seed=args.seed)
    d = site.width(loaded.structure)
    width = args.width or args.expansion * d
    common = dict(activation=args.activation, k=args.k, l1=args.l1, lr=args.lr, batch_size=args.batch_size,
                  seed=args.seed)
    if args.epochs > 1:
        say(f"reading {site} over {len(texts)} texts")
        acts = collect(loaded.model, loaded.tokenizer, texts, site, skip_first=True, max_length=args.max_length,
                       structure=loaded.structure)[site]
        if args.max_tokens:
            acts = acts[: args.max_tokens]
        provenance = Provenance(model_fingerprint=loaded.fingerprint, where=Where.at(str(site)),
                                method=f"sae-{args.activation}", data_hash=data_hash(texts), units="fraction",
                                extra={"width": width, "epochs": args.epochs})
        say(f"training a {args.activation} SAE with {width} latents for {args.epochs} passes over "
             f"{acts.shape[0]} tokens")
        sae = fit_sae(acts.float(), width, epochs=args.epochs, provenance=provenance, progress=args.progress,
                      **common)
    else:
        say(f"training a {args.activation} SAE with {width} latents on {site}, streaming")
        sae = train_sae(loaded.model, loaded.tokenizer, texts, site, width, max_tokens=args.max_tokens,
                        buffer_tokens=args.buffer_tokens, max_length=args.max_length, structure=loaded.structure,
                        model_fingerprint=loaded.fingerprint, data_hash=data_hash(texts),
                        progress=args.progress, **common)
    path = sae.save(args.out)
    dead = float((sae.latent_frequency == 0).double().mean())
    print(f"{args.activation} SAE on {site}: {width} latents, {sae.tokens} training tokens, "
          f"{dead:.1%} latents never fired in the last pass; saved to {path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .artifact import SparseAutoencoder
    from .evaluate import evaluate_sae

    _check_before_loading(args)
    sae = load_artifact(args.sae, SparseAutoencoder)
    loaded = load_model(args.model, device=args.device)
    sae.check_model(loaded.fingerprint)
    texts = _texts(loaded, args, seed=args.seed)
    scores = evaluate_sae(sae, loaded.model, loaded.tokenizer, texts, site=args.site, ablation=args.ablation,
                          max_length=args.max_length, structure=loaded.structure)
    if args.json:
        print(json.dumps(scores.as_dict(), indent=1))
        return 0
    rows = [("L0 (latents per token)", scores.l0), ("FVU", scores.fvu),
            ("variance explained", scores.variance_explained),
            ("CE clean (nats/token)", scores.ce_clean), ("CE with the SAE spliced in", scores.ce_sae),
            (f"CE {scores.ablation}-ablated", scores.ce_ablated), ("CE loss recovered", scores.ce_recovered),
            ("dead latents on these tokens", scores.dead_fraction)]
    for name, value in rows:
        print(f"{name:<30} {value:>10.4f}")
    print(f"{scores.tokens} tokens reconstructed, {scores.predicted_tokens} next-token predictions scored")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    from ..core.defaults import DEFAULT_MODEL

    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name, folder or hub id")
    parser.add_argument("--device", default="cpu", type=clitools.device, help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--text-file", type=clitools.text_file,
                        help="texts, one per line (default: neutral text sampled from the model)")
    parser.add_argument("--texts", type=clitools.positive_int, default=64, help="how many neutral texts to sample")
    parser.add_argument("--new-tokens", type=clitools.positive_int, default=80,
                        help="length of each sampled neutral text")
    parser.add_argument("--max-length", type=clitools.int_at_least(2), default=128, help="tokens per text at most")
    parser.add_argument("--seed", type=int, default=0)


def register(sub) -> None:
    """Add ``sae train`` and ``sae eval`` to an argparse sub-parsers object."""
    sae = sub.add_parser("sae", help="sparse autoencoders: train one on a site, score it")
    commands = sae.add_subparsers(dest="sae_command", required=True)

    train = commands.add_parser("train", help="train a TopK or ReLU SAE on one site and save it")
    _common(train)
    train.add_argument("--site", type=clitools.site_spec, help="NAME.LAYER (default: resid_post at the middle block)")
    train.add_argument("--activation", choices=("topk", "relu"), default="topk")
    train.add_argument("--width", type=clitools.positive_int,
                       help="number of latents (default: expansion x site width)")
    train.add_argument("--expansion", type=clitools.positive_int, default=8, help="latents per site dimension")
    train.add_argument("--k", type=clitools.positive_int, default=32, help="active latents per token (TopK)")
    train.add_argument("--l1", type=clitools.nonnegative_float, default=5.0, help="L1 coefficient (ReLU)")
    train.add_argument("--lr", type=clitools.positive_float,
                       help="Adam learning rate (default: 2e-4 * sqrt(2^14 / width))")
    train.add_argument("--batch-size", type=clitools.positive_int, default=512)
    train.add_argument("--buffer-tokens", type=clitools.positive_int, default=8192,
                       help="shuffle buffer when streaming")
    train.add_argument("--epochs", type=clitools.positive_int, default=1,
                       help="passes over the activations (above 1, they are collected in memory first)")
    train.add_argument("--max-tokens", type=clitools.positive_int, help="stop after this many activation tokens")
    train.add_argument("--progress", action="store_true", help="show a progress bar")
    train.add_argument("--out", required=True, type=clitools.output_file, help="where to write the .safetensors file")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser("eval", help="L0, FVU and CE loss recovered of a saved SAE")
    _common(evaluate)
    evaluate.add_argument("sae", type=clitools.input_file, help="a saved SAE (.safetensors)")
    evaluate.add_argument("--site", type=clitools.site_spec, help="override the site recorded in the SAE")
    evaluate.add_argument("--ablation", choices=("zero", "mean"), default="zero")
    evaluate.add_argument("--json", action="store_true", help="print the scores as JSON")
    evaluate.set_defaults(func=cmd_eval)
