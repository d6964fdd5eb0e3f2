"""Steered generation: batched, left-padded, KV-cached, with prompt/generated positions exact."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from ..core.collect import model_device
from ..core.errors import AlmostLinearError, EmptyDataError, ShapeError
from ..core.lever import as_model
from ..data._batching import left_padded
from .artifact import SteeringVector, applied


def _as_list(vectors, strengths) -> tuple[list[SteeringVector], list[float]]:
    if isinstance(vectors, SteeringVector):
        vectors = [vectors]
    vectors = list(vectors or [])
    if isinstance(strengths, (int, float)):
        strengths = [float(strengths)] * len(vectors)
    strengths = list(strengths)
    if len(strengths) != len(vectors):
        raise ShapeError(f"{len(vectors)} vectors but {len(strengths)} strengths")
    return vectors, strengths


def chat_prompt(tokenizer, text: str) -> str:
    """``text`` as a user turn in the tokenizer's chat template, ready for the assistant's answer."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text


def generate_steered(model, tokenizer=None, prompts: Sequence[str] = (), vectors=None, strength=1.0, *,
                     positions=None, units: str | None = None, max_new_tokens: int = 32, do_sample: bool = False,
                     temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, batch_size: int = 8,
                     chat: bool = False, strict: bool = False, progress: bool = False) -> list[str]:
    """Continue each prompt with the vector(s) added; returns only the new text of each prompt.

    ``vectors`` is one :class:`SteeringVector`, a list of them (each with its own strength when
    ``strength`` is a list), or ``None`` for an unsteered baseline with the same settings. Prompts
    are left-padded in batches; the exact prompt length of every row is handed to the position
    policy, so ``"prompt"``/``"generated"`` are right with padding and the KV cache. Sampling is
    seeded per call so a steered and an unsteered run draw from the same random stream. A vector
    fitted on another model warns, or raises when ``strict``.
    """
    view = as_model(model)
    module, tokenizer = view.module, tokenizer or view.tokenizer
    if tokenizer is None:
        raise AlmostLinearError("this needs the model's tokenizer: pass it, or pass a LoadedModel")
    prompts = [chat_prompt(tokenizer, p) if chat else p for p in prompts]
    if not prompts or any(not isinstance(p, str) or not p for p in prompts):
        raise EmptyDataError("pass at least one non-empty prompt")
    vecs, strengths = _as_list(vectors, strength)
    device = model_device(module)
    outputs: list[str] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), desc="generating", unit="prompt")
    try:
        with left_padded(module, tokenizer), torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start:start + batch_size]
                enc = tokenizer(chunk, return_tensors="pt", padding=True,
                                add_special_tokens=not chat).to(device)
                lengths = enc["attention_mask"].sum(-1)
                steer = (applied(view, vecs, strengths, positions=positions, units=units, prompt_lengths=lengths,
                                 strict=strict) if vecs else contextlib.nullcontext())
                with steer:
                    out = seeded_generate(module, enc, seed=seed + start, do_sample=do_sample,
                                          max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                          temperature=temperature, top_p=top_p)
                new = out[:, enc["input_ids"].shape[1]:]
                outputs += tokenizer.batch_decode(new, skip_special_tokens=True)
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return outputs


def seeded_generate(module, enc, *, seed: int, do_sample: bool, max_new_tokens: int, pad_token_id,
                    temperature: float, top_p: float):
    """``module.generate`` from a fixed random stream that is restored afterwards, so a steered and
    an unsteered run of the same batch draw the same samples."""
    settings = {"do_sample": do_sample, "max_new_tokens": max_new_tokens, "pad_token_id": pad_token_id}
    if do_sample:
        settings.update(temperature=temperature, top_p=top_p)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return module.generate(**enc, **settings)
