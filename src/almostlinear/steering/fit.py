"""Fit steering vectors from contrast pairs: read activations once, extract a direction per layer.

A pair is ``(positive, negative)`` text (or an object with ``positive``/``negative``). Many pairs
averaged are contrastive activation addition (CAA, arXiv 2312.06681). One pair is the one-prompt
case of activation addition (ActAdd, arXiv 2308.10248), with one difference: ActAdd keeps the
difference at every token of the pair and adds it to the prompt's first tokens, while here each
text is read at its last real token (``read="last"``) or averaged over its tokens after the first
(``read="mean"``) and the single vector is added at the positions of the policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..core.collect import collect
from ..core.digest import data_hash
from ..core.errors import AlmostLinearError, EmptyDataError, check_choice
from ..core.lever import as_model
from ..core.sites import Site, as_sites
from .artifact import SteeringVector
from .choices import METHODS, READS
from .directions import extract, projection_spread


def as_pairs(pairs) -> list[tuple[str, str]]:
    """Validate contrast pairs into ``[(positive, negative), ...]`` with clear errors."""
    if pairs is None:
        raise EmptyDataError("no contrast pairs given")
    out = []
    for i, pair in enumerate(pairs):
        if hasattr(pair, "positive") and hasattr(pair, "negative"):
            pair = (pair.positive, pair.negative)
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise EmptyDataError(f"pair {i} is not a (positive, negative) pair: {pair!r}")
        pos, neg = pair
        for side, text in (("positive", pos), ("negative", neg)):
            if not isinstance(text, str) or not text.strip():
                raise EmptyDataError(f"pair {i} has no {side} text: the pair set is one-sided")
        out.append((pos, neg))
    if not out:
        raise EmptyDataError("no contrast pairs: pass at least one (positive, negative) pair")
    if all(p == n for p, n in out):
        raise EmptyDataError("every pair has the same positive and negative text: the pair set is one-sided")
    return out


@dataclass(frozen=True)
class PairActivations:
    """Activations of the pairs at several sites: ``pos[site]``/``neg[site]`` ``[n_pairs, d]``, and
    the norms of every token after the first at each site (for the strength unit)."""

    pos: dict[Site, torch.Tensor]
    neg: dict[Site, torch.Tensor]
    token_norms: dict[Site, torch.Tensor]
    pairs: list[tuple[str, str]]


def read_pairs(model, tokenizer, pairs, sites, *, read: str = "last", batch_size: int = 8,
               max_length: int = 128, progress=None) -> PairActivations:
    """One batched pass over both sides of every pair at all ``sites``."""
    view = as_model(model)
    module, structure, tokenizer = view.module, view.structure, tokenizer or view.tokenizer
    if tokenizer is None:
        raise AlmostLinearError("this needs the model's tokenizer: pass it, or pass a LoadedModel")
    check_choice(read, READS, "read")
    pairs = as_pairs(pairs)
    sites = as_sites(structure, sites)
    texts = [p for p, _ in pairs] + [n for _, n in pairs]
    acts = collect(module, tokenizer, texts, sites, positions="all", batch_size=batch_size,
                   max_length=max_length, structure=structure, progress=progress)
    n = len(texts)
    text_index, position = acts.text_index, acts.position
    later = position > 0
    out: dict[Site, torch.Tensor] = {}
    norms: dict[Site, torch.Tensor] = {}
    for site in sites:
        x = acts[site].double()
        if read == "last":
            last = torch.full((n,), -1, dtype=torch.long)
            last.scatter_reduce_(0, text_index, position, reduce="amax")
            rows = (position == last[text_index]).nonzero()[:, 0]
            per_text = torch.empty(n, x.shape[1], dtype=torch.float64)
            per_text[text_index[rows]] = x[rows]
        else:
            n_later = torch.zeros(n, dtype=torch.long).index_add_(0, text_index, later.long())
            keep = later | (n_later[text_index] == 0)  # a one-token text keeps its only token
            sums = torch.zeros(n, x.shape[1], dtype=torch.float64).index_add_(0, text_index[keep], x[keep])
            counts = torch.zeros(n, dtype=torch.float64).index_add_(0, text_index[keep],
                                                                    torch.ones(int(keep.sum()), dtype=torch.float64))
            per_text = sums / counts[:, None]
        out[site] = per_text
        norms[site] = x[later].norm(dim=-1) if bool(later.any()) else x.norm(dim=-1)
    half = len(pairs)
    return PairActivations({s: v[:half] for s, v in out.items()}, {s: v[half:] for s, v in out.items()},
                           norms, pairs)


def vectors_from_activations(acts: PairActivations, *, method: str = "mean_diff", positions="all",
                             solver: str = "exact", seed: int = 0, read: str = "last",
                             model_fingerprint: str | None = None) -> dict[Site, SteeringVector]:
    """A :class:`SteeringVector` per site from already-read pair activations."""
    check_choice(method, METHODS, "method")
    digest = data_hash([list(p) for p in acts.pairs])
    out = {}
    for site, pos in acts.pos.items():
        neg = acts.neg[site]
        direction = extract(pos, neg, method, solver=solver, seed=seed)
        token_norms = acts.token_norms[site]
        norms = {
            "residual_median": float(token_norms.median()),
            "residual_rms": float(token_norms.pow(2).mean().sqrt()),
            "diff_norm": float((pos - neg).mean(0).norm()),
            "projection_std": projection_spread(torch.cat([pos, neg]), direction),
            "n_pairs": len(acts.pairs),
        }
        out[site] = SteeringVector.from_direction(
            direction, site=site.name, layer=site.layer, method=method, norms=norms, positions=positions,
            model_fingerprint=model_fingerprint, data_hash=digest,
            extra={"read": read, "solver": solver if method.startswith("pca") else None, "seed": seed})
    return out


def fit_steering_layers(model, tokenizer=None, pairs=None, *, layers: Sequence[int], site: str = "resid_post",
                        method: str = "mean_diff", read: str = "last", positions="all", solver: str = "exact",
                        seed: int = 0, batch_size: int = 8, max_length: int = 128,
                        progress: bool = False) -> dict[int, SteeringVector]:
    """:func:`fit_steering` at several layers from one pass over the pairs; keyed by layer."""
    view = as_model(model)
    sites = as_sites(view.structure, [Site(site, layer) for layer in layers])
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=2 * len(as_pairs(pairs)), desc="reading contrast pairs", unit="text")
    try:
        acts = read_pairs(view, tokenizer, pairs, sites, read=read, batch_size=batch_size,
                          max_length=max_length, progress=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
    vectors = vectors_from_activations(acts, method=method, positions=positions, solver=solver, seed=seed,
                                       read=read, model_fingerprint=view.fingerprint)
    return {s.layer: v for s, v in vectors.items()}


def fit_steering(model, tokenizer=None, pairs=None, *, layer: int, site: str = "resid_post",
                 method: str = "mean_diff", read: str = "last", positions="all", solver: str = "exact",
                 seed: int = 0, batch_size: int = 8, max_length: int = 128,
                 progress: bool = False) -> SteeringVector:
    """Fit a steering vector at ``site``/``layer`` from contrast ``pairs``.

    ``model`` is an ``nn.Module`` (then pass ``tokenizer``) or a ``LoadedModel``. ``method`` is one
    of ``mean_diff`` (default), ``pca`` (centred), ``pca_uncentred`` or ``probe``; ``solver`` picks
    exact or seeded randomized PCA. ``positions`` is the vector's default application policy.
    """
    (vector,) = fit_steering_layers(model, tokenizer, pairs, layers=[layer], site=site, method=method, read=read,
                                    positions=positions, solver=solver, seed=seed, batch_size=batch_size,
                                    max_length=max_length, progress=progress).values()
    return vector
