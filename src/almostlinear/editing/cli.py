"""``almostlinear edit`` and ``almostlinear generate``: make a fact edit, save it, and see it at work.

``edit`` computes a ROME, MEMIT or AlphaEdit edit for one request, prints the target's probability
before and with the edit, and saves it as one ``.safetensors`` file. ``generate`` loads such a file,
checks it belongs to the model, and prints a continuation without and with the edit, one after the other.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

# torch and the editing maths are imported inside the commands: this module is imported whenever
# the command-line parser is built.
from .. import clitools
from ..clitools import load_artifact, load_model, say, set_threads
from ..core.errors import ArtifactError, check_choice
from .request import EditRequest, EditRequestError

METHODS = ("rome", "memit", "alphaedit")


def build_request(prompt: str, subject: str, target: str) -> EditRequest:
    """The request for ``prompt``: it holds ``{}`` where the subject goes, or the subject itself.

    ``"Paris is in"`` with subject ``"Paris"`` becomes ``"{} is in"``; a prompt with neither is an error.
    """
    if "{}" not in prompt:
        if not subject or subject not in prompt:
            raise EditRequestError(
                f"the subject {subject!r} is not in the prompt {prompt!r}: write the prompt with '{{}}' where the "
                f"subject goes (e.g. --prompt \"{{}} is located in\") or include the subject's exact text"
            )
        start = prompt.find(subject)
        prompt = prompt[:start] + "{}" + prompt[start + len(subject):]
    return EditRequest(prompt, subject, target)


def _make_edit(loaded, request: EditRequest, method: str, layer: int | None, stats_tokens: int | None,
               progress: bool):
    from . import hparams_for

    overrides = {} if stats_tokens is None else {"stats_tokens": stats_tokens}
    if method == "rome":
        from .rank_one import rome

        hp = hparams_for(loaded, **overrides)
        return rome(loaded, loaded.tokenizer, request, layer=layer, hparams=hp, progress=progress)
    if method in ("memit", "alphaedit"):
        from .multi_layer import alphaedit, memit

        solve = memit if method == "memit" else alphaedit
        layers = None if layer is None else [layer]
        hp = hparams_for(loaded, **overrides)
        return solve(loaded, loaded.tokenizer, [request], layers=layers, hparams=hp, progress=progress)
    check_choice(method, METHODS, "edit method")


def _target_probability(loaded, request: EditRequest) -> float:
    import math

    from .eval import target_nll

    nll = target_nll(loaded.model, loaded.tokenizer, [request.text], [request.target])
    return math.exp(-float(nll[0]))


def edit_command(model: str | Any, prompt: str, subject: str, target: str, *, method: str = "rome",
                 layer: int | None = None, out: str | None = None, stats_tokens: int | None = None,
                 progress: bool = False, stream=None):
    """Compute one edit, print its effect on the prompt, save it to ``out``; returns the edit."""
    stream = stream or sys.stdout
    request = build_request(prompt, subject, target)
    check_choice(method, METHODS, "edit method")
    loaded = load_model(model)
    before = _target_probability(loaded, request)
    say(f"computing a {method} edit of {request.text!r} → {request.target!r}")
    edit = _make_edit(loaded, request, method, layer, stats_tokens, progress)
    with edit.apply(loaded):
        after = _target_probability(loaded, request)
        edited = _greedy(loaded, request.text, 8)
    print(f"prompt: {request.text}", file=stream)
    print(f"P({request.target!r}) per token: {before:.4f} unedited, {after:.4f} edited "
          f"({method}, layer{'s' if len(edit.layers) > 1 else ''} {', '.join(map(str, edit.layers))})", file=stream)
    print(f"edited continuation: {edited}", file=stream)
    if out is not None:
        path = edit.save(out)
        print(f"saved the edit to {path}", file=stream)
    return edit


def _greedy(loaded, prompt: str, max_new_tokens: int) -> str:
    import torch

    tokenizer = loaded.tokenizer
    device = next(loaded.model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt").to(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        out = loaded.model.generate(**ids, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def load_edit(path: str):
    """Read an edit file; any other artifact kind is a clear error."""
    from .artifact import LowRankEdit

    artifact = load_artifact(path)
    if not isinstance(artifact, LowRankEdit):
        raise ArtifactError(f"{path} holds a {artifact.kind!r}, not an edit (make one with 'almostlinear edit')")
    return artifact


def generate_command(model: str | Any, edit_path: str, prompts: list[str], *, max_new_tokens: int = 30,
                     strict: bool = False, stream=None) -> list[tuple[str, str]]:
    """Greedy continuations of each prompt without and with the edit; returns ``[(without, with)]``."""
    from ..core.artifact import FingerprintWarning

    stream = stream or sys.stdout
    edit = load_edit(edit_path)
    loaded = load_model(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FingerprintWarning)
        edit.check_model(loaded.fingerprint, strict=strict)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    rows = []
    for prompt in prompts:
        without = _greedy(loaded, prompt, max_new_tokens)
        with edit.apply(loaded, strict=strict):
            edited = _greedy(loaded, prompt, max_new_tokens)
        rows.append((without, edited))
        print(f"prompt:    {prompt}", file=stream)
        print(f"unedited:  {without}", file=stream)
        print(f"edited:    {edited}", file=stream)
        print(file=stream)
    return rows


def cmd_edit(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    if args.progress and not getattr(args, "quiet", False):  # asked for: also off a terminal
        from ..core import progress

        progress.configure(enabled=True)
    edit_command(args.model, args.prompt, args.subject, args.target, method=args.method, layer=args.layer,
                 out=args.out, stats_tokens=args.stats_tokens,
                 progress=clitools.show_progress(getattr(args, "quiet", False), args.progress))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    generate_command(args.model, args.edit, args.prompt, max_new_tokens=args.max_new_tokens, strict=args.strict)
    return 0


def register(sub) -> None:
    """Add ``edit`` and ``generate`` to an argparse sub-parsers object."""
    from ..core.defaults import DEFAULT_MODEL

    edit = sub.add_parser("edit", help="rewrite one fact in the weights (ROME/MEMIT/AlphaEdit) and save the edit")
    edit.add_argument("--subject", required=True, type=clitools.nonempty_text, help='the subject, e.g. "Eiffel Tower"')
    edit.add_argument("--prompt", required=True, type=clitools.nonempty_text,
                      help='the prompt with {} for the subject, e.g. "{} is located in"')
    edit.add_argument("--target", required=True, type=clitools.nonempty_text, help='the new continuation, e.g. "Rome"')
    edit.add_argument("--method", choices=METHODS, default="rome")
    edit.add_argument("--layer", type=int, default=None, help="block to edit (default: 10 %% of the depth)")
    edit.add_argument("--model", default=DEFAULT_MODEL, help="embedded name, local folder, or hub id")
    edit.add_argument("--out", default=None, type=clitools.output_file, help="save the edit to this .safetensors file")
    edit.add_argument("--stats-tokens", type=clitools.positive_int, default=None,
                      help="tokens of model-generated text for the key statistics (cached per model)")
    edit.add_argument("--progress", action="store_true",
                      help="show progress bars also when standard error is not a terminal (a terminal shows them "
                           "unless --quiet)")
    clitools.add_threads(edit)
    edit.set_defaults(func=cmd_edit)

    gen = sub.add_parser("generate", help="continue prompts without and with a saved edit, side by side")
    gen.add_argument("--edit", required=True, type=clitools.input_file,
                     help="an edit file written by 'almostlinear edit'")
    gen.add_argument("--prompt", required=True, action="append", type=clitools.nonempty_text,
                     help="a prompt (repeat for several)")
    gen.add_argument("--model", default=DEFAULT_MODEL, help="the model the edit was made for")
    gen.add_argument("--max-new-tokens", type=clitools.positive_int, default=30)
    gen.add_argument("--strict", action="store_true",
                     help="refuse (instead of warning) an edit made for another model")
    clitools.add_threads(gen)
    gen.set_defaults(func=cmd_generate)
