"""Fisher merging (arXiv 2111.09832): a per-parameter average weighted by each model's diagonal Fisher.

θ* = Σᵢ λᵢ Fᵢ ⊙ θᵢ / Σᵢ λᵢ Fᵢ, where Fᵢ is the diagonal of model i's Fisher information: the
expected squared gradient of the log-likelihood of labels drawn from the model's own predictions
(or, with ``empirical=True``, of the observed next tokens).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from ..core.errors import AlmostLinearError, EmptyDataError, NonFiniteError
from .compat import check_compatible

Tensor = torch.Tensor


def fisher_merge(state_dicts: Sequence[Mapping[str, Tensor]], fishers: Sequence[Mapping[str, Tensor]], *,
                 weights: Sequence[float] | None = None, eps: float = 1e-10) -> dict[str, Tensor]:
    """Fisher-weighted average; parameters without a Fisher (buffers) get the plain weighted average.

    ``eps`` is added to every Fisher so that entries no model is sensitive to fall back to the average.
    """
    keys = check_compatible(state_dicts)
    if len(fishers) != len(state_dicts):
        raise AlmostLinearError(f"{len(state_dicts)} state dicts but {len(fishers)} Fisher dicts")
    w = [1.0] * len(state_dicts) if weights is None else [float(x) for x in weights]
    out = {}
    for k in keys:
        ts = [sd[k] for sd in state_dicts]
        if not ts[0].is_floating_point():
            if any(not torch.equal(t, ts[0]) for t in ts[1:]):
                raise AlmostLinearError(f"non-float tensor {k!r} differs between models and cannot be merged")
            out[k] = ts[0].clone()
            continue
        has = [k in f for f in fishers]
        if any(has) and not all(has):
            raise AlmostLinearError(f"tensor {k!r} has a Fisher for some models but not for model {has.index(False)}")
        if all(has):
            num = sum(wi * (f[k].double() + eps) * t.double() for wi, f, t in zip(w, fishers, ts))
            den = sum(wi * (f[k].double() + eps) for wi, f in zip(w, fishers))
        else:
            num = sum(wi * t.double() for wi, t in zip(w, ts))
            den = torch.full_like(num, sum(w))
        merged = (num / den).to(ts[0].dtype)
        if not torch.isfinite(merged).all():
            raise NonFiniteError(f"Fisher merging tensor {k!r} gave NaN or infinite values (weights summing to 0?)")
        out[k] = merged
    return out


def diagonal_fisher(model: torch.nn.Module, batches: Iterable[Mapping[str, Tensor]], *, empirical: bool = False,
                    seed: int = 0) -> dict[str, Tensor]:
    """Diagonal Fisher of a causal LM per parameter name: the mean over sequences of the squared
    gradient of Σₜ log p(yₜ | x<t), with yₜ drawn from the model (or the observed tokens)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    g = torch.Generator().manual_seed(seed)
    count = 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            ids = batch["input_ids"]
            mask = batch.get("attention_mask", torch.ones_like(ids))
            for row in range(ids.shape[0]):
                x = ids[row][mask[row].bool()][None]  # real tokens only, whichever side the padding is on
                if x.shape[1] < 2:
                    continue
                model.zero_grad(set_to_none=True)
                logits = model(input_ids=x).logits[0, :-1].float()
                logp = torch.log_softmax(logits, -1)
                if empirical:
                    y = x[0, 1:]
                else:
                    y = torch.multinomial(logp.detach().exp(), 1, generator=g).squeeze(1)
                logp.gather(1, y[:, None]).sum().backward()
                for n, p in params.items():
                    if p.grad is not None:
                        fisher[n] += p.grad.detach().float().pow(2)
                count += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if count == 0:
        raise EmptyDataError("no sequence of two or more tokens to estimate the Fisher from")
    return {n: f / count for n, f in fisher.items()}
