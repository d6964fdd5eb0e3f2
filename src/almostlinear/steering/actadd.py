"""Activation addition (ActAdd, arXiv 2308.10248): fit from one prompt pair, generate with it.

The paper runs the two prompts of a pair (``" Love"`` and ``" Hate"``, or ``" weddings"`` and
``""``), pads the shorter one on the right with space tokens to the same length, reads the residual
stream before one block at every position, and adds ``c * (h_plus - h_minus)`` to the first
positions of the user's prompt. :func:`fit_activation_addition` does exactly that and returns an
:class:`~.artifact.ActivationAddition`; :func:`generate_with_addition` continues prompts with it in
place (batched, left-padded, KV-cached: positions count real tokens, so padding does not shift them).

The prompts are tokenized as the model's tokenizer does by default; GPT-2 in the paper had a
beginning-of-text token in front of both, whose difference is zero, so its first steered position
was the user's first token after that one. ``alignment`` in ``apply`` moves the addition to start
later in the prompt.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from ..core.collect import model_device
from ..core.errors import AlmostLinearError, EmptyDataError, ShapeError
from ..core.hooks import StopForward, record
from ..core.lever import as_model
from ..core.sites import Site, as_sites
from ..data._batching import left_padded
from .artifact import ActivationAddition
from .generate import seeded_generate

SOURCE = "arXiv 2308.10248"


def _token_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text)["input_ids"]) if text else []


def pad_token_id(tokenizer, pad: str | int = " ") -> int:
    """The id used to pad the shorter prompt: a token id as given, or the single token of ``pad``."""
    if isinstance(pad, int) and not isinstance(pad, bool):
        return pad
    ids = tokenizer(pad, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ShapeError(f"the padding text {pad!r} is {len(ids)} tokens for this tokenizer; "
                         "pass one token (or its id)")
    return int(ids[0])


def padded_pair(tokenizer, positive: str, negative: str, pad: str | int = " ") -> tuple[list[int], list[int]]:
    """Both prompts' token ids, the shorter padded on the right to the longer one's length."""
    if not isinstance(positive, str) or not isinstance(negative, str):
        raise EmptyDataError("an activation addition needs two prompts (strings); one of them may be empty")
    if positive == negative:
        raise EmptyDataError(f"both prompts are {positive!r}: their difference is zero")
    a, b = _token_ids(tokenizer, positive), _token_ids(tokenizer, negative)
    if not a and not b:
        raise EmptyDataError("both prompts are empty")
    n = max(len(a), len(b))
    if len(a) == len(b):
        return a, b
    fill = pad_token_id(tokenizer, pad)
    return a + [fill] * (n - len(a)), b + [fill] * (n - len(b))


def fit_activation_addition(model, tokenizer=None, positive: str = "", negative: str = "", *, layer: int,
                            site: str = "resid_pre", pad: str | int = " ") -> ActivationAddition:
    """The per-position difference of ``positive`` and ``negative`` at ``site``/``layer`` (one pass).

    The paper's default site is the residual stream before a block (``resid_pre``), its default
    padding the space token. ``model`` is an ``nn.Module`` (then pass ``tokenizer``) or a ``LoadedModel``.
    """
    view = as_model(model)
    tokenizer = tokenizer or view.tokenizer
    if tokenizer is None:
        raise AlmostLinearError("this needs the model's tokenizer: pass it, or pass a LoadedModel")
    (target,) = as_sites(view.structure, Site(site, layer))
    pos_ids, neg_ids = padded_pair(tokenizer, positive, negative, pad)
    ids = torch.tensor([pos_ids, neg_ids], device=model_device(view.module))
    with torch.inference_mode(), record(view.module, [target], stop_after=True, structure=view.structure) as rec:
        try:
            view.module(input_ids=ids, attention_mask=torch.ones_like(ids))
        except StopForward:  # the pass ends once the site is read
            pass
    acts = rec[target].double().reshape(2, len(pos_ids), -1)
    return ActivationAddition.from_difference(
        acts[0] - acts[1], site=target.name, layer=target.layer, prompts=(positive, negative),
        tokens=(pos_ids, neg_ids), model_fingerprint=view.fingerprint,
        extra={"pad": pad if isinstance(pad, str) else int(pad), "source": SOURCE})


def generate_with_addition(model, tokenizer=None, prompts: Sequence[str] = (),
                           addition: ActivationAddition | None = None, strength: float = 1.0, *,
                           alignment: int = 0, max_new_tokens: int = 32, do_sample: bool = False,
                           temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 8,
                           strict: bool = False) -> list[str]:
    """Continue each prompt with ``addition`` applied at ``strength`` (``None``: unsteered, same settings).

    Sampling is seeded per batch, so a steered and an unsteered run draw from the same random stream.
    Returns only the new text of each prompt.
    """
    view = as_model(model)
    module, tokenizer = view.module, tokenizer or view.tokenizer
    if tokenizer is None:
        raise AlmostLinearError("this needs the model's tokenizer: pass it, or pass a LoadedModel")
    prompts = list(prompts)
    if not prompts or any(not isinstance(p, str) or not p for p in prompts):
        raise EmptyDataError("pass at least one non-empty prompt")
    device = model_device(module)
    outputs: list[str] = []
    with left_padded(module, tokenizer), torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True).to(device)
            steer = (addition.apply(view, strength, alignment=alignment, strict=strict) if addition is not None
                     else contextlib.nullcontext())
            with steer:
                out = seeded_generate(module, enc, seed=seed + start, do_sample=do_sample,
                                      max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                      temperature=temperature, top_p=top_p)
            outputs += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return outputs
