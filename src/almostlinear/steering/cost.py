"""What a lever costs: KL divergence and cross-entropy change on neutral text.

Every lever that changes behaviour (steering, ablation, erasure, edits) reports this beside what
it achieved. :func:`side_effects` runs each batch of texts twice, once as the model is and once
with the intervention active, and compares the next-token distributions at every real token.

KL is ``KL(base || intervened)`` in nats per token, the direction used for steering side effects
in the literature (the intervened model is scored under the base model's predictions).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import ContextManager

import torch
from torch import nn

from ..core.collect import model_device, tokenize
from ..core.errors import EmptyDataError, NonFiniteError, ShapeError
from ..core.lever import as_model

Intervention = Callable[[], ContextManager]


@dataclass(frozen=True)
class SideEffects:
    """Side effects of an intervention on text, per predicted token (nats)."""

    kl: float  # mean KL(base || intervened) per token
    ce_base: float  # mean next-token cross-entropy without the intervention
    ce_intervened: float  # the same with the intervention active
    delta_ce: float  # ce_intervened - ce_base
    n_tokens: int  # predicted tokens scored
    kl_max: float = 0.0  # the largest per-token KL seen
    top1_agreement: float = 1.0  # share of tokens whose most likely next token is unchanged

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"KL {self.kl:.4f} nats/token, CE {self.ce_base:.4f} -> {self.ce_intervened:.4f} "
                f"(delta {self.delta_ce:+.4f}) over {self.n_tokens} tokens")


def token_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` per row from log-probabilities ``[n, vocab]`` (float32 or wider)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def next_token_nll(log_p: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of ``targets`` ``[n]`` under ``log_p`` ``[n, vocab]``."""
    return -log_p.gather(1, targets[:, None])[:, 0]


def scored_batches(model: nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int, max_length: int,
                   skip_first: bool = True):
    """``(inputs, valid)`` per batch of ``texts``: the tokenised batch on the model's input device and the
    positions whose next token is scored (both it and the next are real tokens; with ``skip_first``,
    never a text's first token, an attention sink with outlying logits)."""
    device = model_device(model)
    for start in range(0, len(texts), batch_size):
        inputs = tokenize(tokenizer, texts[start:start + batch_size], max_length=max_length, device=device)
        mask = inputs["attention_mask"].bool()
        valid = mask[:, :-1] & mask[:, 1:]
        if skip_first:
            valid[:, 0] = False
        yield inputs, valid


def log_probs(model: nn.Module, inputs: dict, valid: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities (float32) at the ``valid`` positions of ``inputs``."""
    logits = model(**inputs, use_cache=False).logits
    chosen = logits[:, :-1][valid].float()
    if not torch.isfinite(chosen).all():
        raise NonFiniteError("the model produced NaN or infinite logits")
    return torch.log_softmax(chosen, dim=-1)


def side_effects(model, tokenizer, texts: Sequence[str], intervention: Intervention | None, *,
                 max_length: int = 128, batch_size: int = 8, skip_first: bool = False,
                 progress: bool = False) -> SideEffects:
    """KL and cross-entropy change that ``intervention`` causes on ``texts``.

    ``intervention`` is a function returning a context manager (e.g. ``lambda: vec.apply(model)``);
    it is entered once per batch, around the intervened forward pass only. ``None`` means no change
    (KL 0, equal cross-entropies; the model runs once per batch). Texts are right-padded and only
    predictions from a real token to the next real token are scored; ``skip_first`` leaves out the
    prediction made at each text's first token. ``model`` is an ``nn.Module`` or a ``LoadedModel``
    (whose tokenizer serves when ``tokenizer`` is None).
    """
    return side_effects_many(model, tokenizer, texts, {"": intervention}, max_length=max_length,
                             batch_size=batch_size, skip_first=skip_first, progress=progress)[""]


@dataclass
class _Sums:
    kl: float = 0.0
    ce: float = 0.0
    kl_max: float = 0.0
    agree: int = 0


def side_effects_many(model, tokenizer, texts: Sequence[str], interventions: dict[str, Intervention | None], *,
                      max_length: int = 128, batch_size: int = 8, skip_first: bool = False,
                      progress: bool = False) -> dict[str, SideEffects]:
    """:func:`side_effects` of several interventions, sharing one unintervened pass per batch."""
    view = as_model(model)
    model, tokenizer = view.module, tokenizer if tokenizer is not None else view.tokenizer
    texts = list(texts)
    if not texts:
        raise EmptyDataError("no texts to measure side effects on: pass at least one non-empty string")
    if any(not isinstance(t, str) or not t for t in texts):
        raise EmptyDataError("every text must be a non-empty string")
    if batch_size < 1 or max_length < 2:
        raise ShapeError(f"batch_size must be >= 1 and max_length >= 2, got {batch_size} and {max_length}")
    if not interventions:
        raise EmptyDataError("no interventions given: pass at least one (None measures the model as it is)")
    sums = {name: _Sums() for name in interventions}
    ce_base, count = 0.0, 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(texts), desc="side effects", unit="text")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for inputs, valid in scored_batches(model, tokenizer, texts, batch_size=batch_size,
                                                max_length=max_length, skip_first=skip_first):
                ids = inputs["input_ids"]
                if valid.any():
                    targets = ids[:, 1:][valid]
                    log_p = log_probs(model, inputs, valid)
                    base_nll = next_token_nll(log_p, targets)
                    ce_base += float(base_nll.double().sum())
                    count += int(targets.numel())
                    top = log_p.argmax(-1)
                    for name, intervention in interventions.items():
                        acc = sums[name]
                        if intervention is None:
                            acc.ce += float(base_nll.double().sum())
                            acc.agree += int(targets.numel())
                            continue
                        with intervention():
                            log_q = log_probs(model, inputs, valid)
                        kl = token_kl(log_p, log_q).clamp_min(0.0)  # rounding can give tiny negatives
                        acc.kl += float(kl.double().sum())
                        acc.kl_max = max(acc.kl_max, float(kl.max()))
                        acc.ce += float(next_token_nll(log_q, targets).double().sum())
                        acc.agree += int((top == log_q.argmax(-1)).sum())
                if bar is not None:
                    bar.update(ids.shape[0])
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    if count == 0:
        raise EmptyDataError("the texts are too short to score any next-token prediction")
    base = ce_base / count
    return {name: SideEffects(kl=acc.kl / count, ce_base=base, ce_intervened=acc.ce / count,
                              delta_ce=acc.ce / count - base, n_tokens=count, kl_max=acc.kl_max,
                              top1_agreement=acc.agree / count)
            for name, acc in sums.items()}


@contextlib.contextmanager
def no_change():
    """An intervention that changes nothing (for comparisons and tests)."""
    yield
