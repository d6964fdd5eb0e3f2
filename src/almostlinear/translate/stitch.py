"""Model stitching: run the bottom of one network, map its activation linearly, run the top of another.

``source`` runs up to ``source_site``; its activation there, mapped by a fitted map, replaces the
activation at ``target_site`` of ``target``, which then runs to its logits. The cost is the
next-token cross-entropy of the stitched network beside the target's own, and beside two
baselines: the identity map where the widths agree (for two layers of one model, that is skipping
the layers between them) and the target site's mean activation (all information there removed).
Both networks must tokenise the texts identically, since activations are paired token by token.

Stitching with a linear layer as a measure of representational compatibility: Lenc and Vedaldi
(arXiv 1411.5908), Bansal, Nakkiran and Barak (arXiv 2106.07682).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..core.collect import model_device, tokenize
from ..core.errors import EmptyDataError, ShapeError
from ..core.hooks import StopForward, position_mask, record, replace
from ..core.locate import Structure, locate
from ..core.sites import as_sites
from .artifact import LinearMap


@dataclass(frozen=True)
class Network:
    """A model, its tokenizer and structure, as one side of a stitch."""

    model: torch.nn.Module
    tokenizer: object
    structure: Structure

    @classmethod
    def of(cls, model, tokenizer, structure: Structure | None = None) -> Network:
        return cls(model, tokenizer, structure or locate(model))


def _batches(n: int, batch_size: int, progress: bool, what: str):
    starts = range(0, n, batch_size)
    if not progress:
        return starts
    from tqdm.auto import tqdm

    return tqdm(starts, desc=what, unit="batch", file=sys.stderr)


def _positions(skip_first: bool):
    if not skip_first:
        return "all"

    def policy(index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return position_mask("all", mask.long(), tuple(mask.shape), mask.device) & (index > 0)

    return policy


def _same_tokens(source: Network, target: Network, texts: list[str], max_length: int):
    device = model_device(target.model)
    inputs = tokenize(target.tokenizer, texts, max_length=max_length, device=device)
    if source.tokenizer is not target.tokenizer:
        other = tokenize(source.tokenizer, texts, max_length=max_length, device=model_device(source.model))
        if other["input_ids"].shape != inputs["input_ids"].shape or not torch.equal(
                other["input_ids"].cpu(), inputs["input_ids"].cpu()):
            raise ShapeError("the two models tokenise these texts differently; stitching pairs activations token by "
                             "token, so both must share a tokenizer")
    return inputs


def paired_activations(source: Network, target: Network, texts: Sequence[str], source_site, target_site, *,
                       skip_first: bool = True, batch_size: int = 8, max_length: int = 128,
                       progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``(source activation, target activation)`` at every real token of ``texts``."""
    texts = list(texts)
    if not texts:
        raise EmptyDataError("no texts to stitch on")
    (s_site,) = as_sites(source.structure, source_site)
    (t_site,) = as_sites(target.structure, target_site)
    policy = _positions(skip_first)
    xs, ys = [], []
    for start in _batches(len(texts), batch_size, progress, "paired activations"):
        chunk = texts[start:start + batch_size]
        inputs = _same_tokens(source, target, chunk, max_length)
        with torch.inference_mode():
            for net, site, out in ((source, s_site, xs), (target, t_site, ys)):
                with record(net.model, [site], positions=policy, stop_after=True, structure=net.structure) as rec:
                    try:
                        net.model(**{k: v.to(model_device(net.model)) for k, v in inputs.items()}, use_cache=False)
                    except StopForward:
                        pass
                out.append(rec[site].float().cpu())
    return torch.cat(xs), torch.cat(ys)


def _cross_entropy(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """Summed next-token cross-entropy over real positions, and how many there were."""
    valid = (mask[:, :-1] & mask[:, 1:]).bool()
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten(),
                                               reduction="none").reshape(valid.shape)
    return float(losses[valid].double().sum()), int(valid.sum())


@dataclass(frozen=True)
class StitchResult:
    """Mean next-token cross-entropy (nats per token) on the evaluation texts."""

    target: float  # the target network unchanged
    stitched: float  # bottom of source, the map, top of target
    mean_ablation: float  # the target site replaced by its mean activation
    identity: float | None  # source activations passed unmapped (same width only)
    tokens: int
    source_site: str
    target_site: str


def stitched_loss(source: Network, target: Network, texts: Sequence[str], source_site, target_site,
                  mapping: LinearMap, *, target_mean: torch.Tensor | None = None, skip_first: bool = True,
                  batch_size: int = 8, max_length: int = 128, progress: bool = False) -> StitchResult:
    """Cross-entropy of the stitched network and its baselines on ``texts`` (use texts the map was not fitted on).

    With ``skip_first`` the first token keeps the target's own activation (its state depends on that
    token alone, and in most decoders it is an outlier the map is not fitted on).
    """
    texts = list(texts)
    if not texts:
        raise EmptyDataError("no texts to evaluate the stitch on")
    (s_site,) = as_sites(source.structure, source_site)
    (t_site,) = as_sites(target.structure, target_site)
    if mapping.d_in != s_site.width(source.structure) or mapping.d_out != t_site.width(target.structure):
        raise ShapeError(f"the map is {mapping.d_in} → {mapping.d_out} but the sites are "
                         f"{s_site.width(source.structure)} → {t_site.width(target.structure)} wide")
    same_width = s_site.width(source.structure) == t_site.width(target.structure)
    policy = _positions(skip_first)
    totals = {"target": 0.0, "stitched": 0.0, "mean_ablation": 0.0, "identity": 0.0}
    tokens = 0
    t_model = target.model
    device = model_device(t_model)
    for start in _batches(len(texts), batch_size, progress, "stitched loss"):
        chunk = texts[start:start + batch_size]
        inputs = _same_tokens(source, target, chunk, max_length)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        with torch.inference_mode():
            with record(source.model, [s_site], keep_full=True, stop_after=True, structure=source.structure) as rec:
                try:
                    source.model(**{k: v.to(model_device(source.model)) for k, v in inputs.items()}, use_cache=False)
                except StopForward:
                    pass
            bottom = rec.full(s_site)[0].to(device)
            mapped = mapping.transform(bottom.float()).to(device)
            # what replaces the target site in each run (None: the target runs unchanged)
            runs = {"target": None, "stitched": lambda hidden: mapped}
            if target_mean is not None:
                runs["mean_ablation"] = target_mean
            if same_width:
                runs["identity"] = lambda hidden: bottom
            for name, values in runs.items():
                if values is None:
                    logits = t_model(**inputs, use_cache=False).logits
                else:
                    with replace(t_model, t_site, values, positions=policy, structure=target.structure):
                        logits = t_model(**inputs, use_cache=False).logits
                loss, count = _cross_entropy(logits, ids, mask)
                totals[name] += loss
        tokens += count
    if tokens == 0:
        raise EmptyDataError("the texts have no next tokens to score: give texts of at least two tokens")
    return StitchResult(totals["target"] / tokens, totals["stitched"] / tokens,
                        totals["mean_ablation"] / tokens if target_mean is not None else float("nan"),
                        totals["identity"] / tokens if same_width else None, tokens, str(s_site), str(t_site))


def fit_stitch(source: Network, target: Network, texts: Sequence[str], source_site, target_site,
               method: str = "affine", *, skip_first: bool = True, batch_size: int = 8, max_length: int = 128,
               progress: bool = False, **options) -> tuple[LinearMap, torch.Tensor]:
    """A map from ``source_site`` to ``target_site`` fitted on every token of ``texts``, and the target's mean there."""
    x, y = paired_activations(source, target, texts, source_site, target_site, skip_first=skip_first,
                              batch_size=batch_size, max_length=max_length, progress=progress)
    mapping = LinearMap.fit(x, y, method, source=str(source_site), target=str(target_site), **options)
    return mapping, y.mean(0)
