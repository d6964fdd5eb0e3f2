"""``almostlinear lens``: the top token per layer and position for one prompt, as a table and a PNG.

The affine and tuned lenses are fitted on model-generated neutral text the first time and cached
per model fingerprint under ``cache_dir("lenses")``; later calls only read the file.
"""

from __future__ import annotations

from pathlib import Path

from ..clitools import load_model, say

FIT_TEXTS = 48  # the --quick audit's neutral text: the same call, so the same cached texts
FIT_NEW_TOKENS = 80
TUNED_TOKENS = 1024  # SGD tokens after the affine warm start: about a minute on 2 CPU cores for SmolLM2


def _cached_lens(loaded, kind: str, *, say=say):
    """The fitted lens of ``kind`` for this model: from the cache, or fitted now and cached."""
    from .. import data
    from ..core.artifact import load as load_artifact
    from ..core.errors import AlmostLinearError
    from ..core.paths import cache_dir
    from .affine import fit_affine_lens
    from .artifact import AffineLens, TunedLens
    from .tuned import train_tuned_lens

    expected = AffineLens if kind == "affine" else TunedLens
    path = cache_dir("lenses") / f"{kind}-{loaded.fingerprint.removeprefix('sha256:')}.safetensors"
    if path.is_file():
        try:
            lens = load_artifact(path)
            if isinstance(lens, expected):
                lens.check_structure(loaded.structure)
                say(f"using the cached {kind} lens {path}")
                return lens
        except AlmostLinearError as error:
            say(f"ignoring the cached lens {path}: {error}")
    model, tokenizer = loaded.model, loaded.tokenizer
    say(f"sampling {FIT_TEXTS} neutral texts to fit the lens on (cached after the first run)")
    texts = data.neutral_texts(model, tokenizer, FIT_TEXTS, max_new_tokens=FIT_NEW_TOKENS,
                               cache_key=loaded.fingerprint)
    say("fitting the affine lens (closed form)")
    lens = fit_affine_lens(model, tokenizer, texts, structure=loaded.structure)
    if kind == "tuned":
        say(f"training the tuned lens for {TUNED_TOKENS} tokens from the affine lens (SGD, arXiv 2303.08112)")
        lens = train_tuned_lens(model, tokenizer, texts, structure=loaded.structure, init=lens,
                                token_budget=TUNED_TOKENS)
    lens.save(path)
    say(f"cached the {kind} lens at {path}")
    return lens


def lens_command(model_name: str, prompt: str, kind: str = "logit", out: str | None = None) -> int:
    """Load ``model_name``, fit the lens if needed, print the table and write the PNG to ``out``."""
    from ..core.errors import StructureError, check_choice
    from .table import KINDS, format_lens_table, lens_table, plot_lens_table, prompt_tokens

    check_choice(kind, KINDS, "lens kind")
    loaded = load_model(model_name)
    if loaded.structure.unembedding is None:
        raise StructureError(f"{model_name} has no output head: a lens needs next-token logits")
    lens = None if kind == "logit" else _cached_lens(loaded, kind)
    rows = lens_table(loaded.model, loaded.tokenizer, prompt, kind, lens, structure=loaded.structure)
    inputs = prompt_tokens(loaded.tokenizer, prompt)
    print(f"{kind} lens of {loaded.name}: top-1 token per layer (rows, last block on top) and position (columns)")
    print(format_lens_table(rows, inputs))
    if out is not None:
        path = plot_lens_table(rows, inputs, Path(out), title=f"{kind} lens, {loaded.name}: top-1 token per layer")
        print(f"wrote {path}")
    return 0


def lens_args_command(args) -> int:
    from ..clitools import set_threads

    set_threads(args.threads)
    return lens_command(args.model, args.prompt, args.kind, args.out)


def register(sub) -> None:
    from .. import clitools
    from ..core.defaults import DEFAULT_MODEL

    lens = sub.add_parser("lens", help="the top token per layer and position of one prompt, through a lens")
    lens.add_argument("--prompt", required=True, type=clitools.nonempty_text, help="the text to read")
    lens.add_argument("--model", default=DEFAULT_MODEL, help="embedded name, local folder, or hub id")
    lens.add_argument("--kind", choices=("logit", "affine", "tuned"), default="logit",
                      help="affine and tuned lenses are fitted on neutral text once per model, then cached")
    lens.add_argument("--out", default=None, type=clitools.output_file,
                      help="also write the picture as a PNG to this file")
    clitools.add_threads(lens)
    lens.set_defaults(func=lens_args_command)
