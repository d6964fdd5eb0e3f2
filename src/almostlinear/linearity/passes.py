"""Forward passes that the per-block linearity measurements run themselves.

Sublayer inputs are not core sites (yet), so the audit's shared collection pass cannot serve
them: :func:`sublayer_moments` runs its own pass, stopped after the last sublayer it reads.
:func:`next_token_loss` is the mean next-token cross-entropy of texts, with optional sublayer
replacements active, for the loss cost of linearising a block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..core.collect import model_device, tokenize
from ..core.errors import EmptyDataError
from ..core.hooks import StopForward
from ..core.locate import Structure
from .blocks import PairMoments
from .sublayers import KINDS, Sublayer, record_sublayers


def _batches(tokenizer, texts: Sequence[str], batch_size: int, max_length: int, device):
    texts = list(texts)
    if not texts:
        raise EmptyDataError("no texts to run")
    for start in range(0, len(texts), batch_size):
        yield start, tokenize(tokenizer, texts[start:start + batch_size], max_length=max_length, device=device)


def sublayer_moments(model: nn.Module, tokenizer, structure: Structure, texts: Sequence[str],
                     parts: Sequence[Sublayer], *, batch_size: int = 8, max_length: int = 128,
                     skip_first: bool = True, progress: Callable[[int], None] | None = None
                     ) -> dict[str, PairMoments]:
    """Moments of (input, output) per kind of sublayer, all layers at once: ``{"attn": .., "mlp": ..}``.

    Every real token counts, except each text's first when ``skip_first`` (attention sinks have
    outlying norms). Layers appear in the order of ``parts`` within each kind.
    """
    by_kind = {kind: [p for p in parts if p.kind == kind] for kind in KINDS}
    d = structure.d_model
    moments = {kind: PairMoments(len(ps), d, d) for kind, ps in by_kind.items() if ps}
    device = model_device(model)
    with torch.inference_mode(), record_sublayers(model, structure, parts, stop_after=True) as reading:
        for _, inputs in _batches(tokenizer, texts, batch_size, max_length, device):
            reading.clear()
            with contextlib.suppress(StopForward):
                model(**inputs, use_cache=False)
            chosen = inputs["attention_mask"].bool()
            if skip_first:
                chosen[:, 0] = False
            for kind, ps in by_kind.items():
                if not ps:
                    continue
                x = torch.stack([reading.inputs[(p.layer, kind)][chosen] for p in ps])
                y = torch.stack([reading.outputs[(p.layer, kind)][chosen] for p in ps])
                moments[kind].update(x, y)
            if progress is not None:
                progress(inputs["input_ids"].shape[0])
    return moments


def next_token_loss(model: nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 8,
                    max_length: int = 128, skip_first: bool = True) -> tuple[float, int]:
    """Mean next-token cross-entropy (nats) over the texts' real tokens, and the number of tokens.

    With ``skip_first`` the prediction made at each text's first token is left out, matching
    measurements that exclude the first position.
    """
    device = model_device(model)
    total, count = 0.0, 0
    with torch.inference_mode():
        for _, inputs in _batches(tokenizer, texts, batch_size, max_length, device):
            logits = model(**inputs, use_cache=False).logits
            ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
            valid = mask[:, :-1] & mask[:, 1:]
            if skip_first:
                valid[:, 0] = False
            logp = torch.log_softmax(logits[:, :-1][valid].float(), dim=-1)
            target = ids[:, 1:][valid]
            total += float(-logp.gather(1, target[:, None]).sum())
            count += int(valid.sum())
    if count == 0:
        raise EmptyDataError("the texts are too short to score any next-token prediction")
    return total / count, count
