"""Key statistics ``C = E[k kᵀ]`` of the MLP keys (the down projection's input) at a layer.

Streamed in float64 from text: by default text the model generates itself
(:func:`almostlinear.data.neutral_texts`; no corpus is downloaded), or the caller's own texts.
Texts alternate between two halves whose moments are kept apart, so every result carries a
split-half stability figure ``‖C_A − C_B‖_F / ‖C‖_F``. Results are cached by content: model
fingerprint, layer, a hash of the source, token budget and context length, never a local path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..core.artifact import ArtifactError, Provenance, Where
from ..core.collect import stream
from ..core.digest import digest
from ..core.errors import EmptyDataError
from ..core.locate import Structure, locate
from ..core.paths import cache_dir
from ..core.sites import Site
from .access import refuse_moe, unpack
from .artifact import KeyStatistics
from .moments import SecondMoment

MAX_LENGTH = 128
NEUTRAL_NEW_TOKENS = 64


def _from_moments(a: SecondMoment, b: SecondMoment, layer: int, source: str, provenance: Provenance) -> KeyStatistics:
    if a.count == 0 or b.count == 0:
        raise EmptyDataError(
            "key statistics need at least two texts (one per half) with tokens; pass more texts"
        )
    n_a, n_b = a.count, b.count
    c = a.merge(b).moment_()  # C formed in place of the merged sum: no further d_mlp² float64 copy
    provenance = dataclasses.replace(provenance, where=Where.at("mlp_key", layer))
    # The halves serve the stability figures only, so float32 halves the file at no cost to C; each
    # half's float64 sum is divided in place and freed as soon as it is rounded.
    half_a = a.moment_().float()
    half_b = b.moment_().float()
    return KeyStatistics(c=c, half_a=half_a, half_b=half_b, n_a=n_a, n_b=n_b, source=source, provenance=provenance)


def accumulate(model: nn.Module, tokenizer, texts: Sequence[str], layers: Sequence[int], *, n_tokens: int,
               structure: Structure | None = None, batch_size: int = 8, max_length: int = MAX_LENGTH,
               progress: bool = False) -> dict[int, tuple[SecondMoment, SecondMoment]]:
    """Halves of ``Σ k kᵀ`` at each layer, until ``n_tokens`` tokens have been read.

    One forward pass serves every layer and stops after the deepest; texts alternate between the
    halves so that neither sees only the beginning of the source.
    """
    structure = structure or locate(model)
    sites = [Site("mlp_key", layer) for layer in layers]
    halves = {layer: (SecondMoment(structure.d_mlp), SecondMoment(structure.d_mlp)) for layer in layers}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_tokens, desc="key statistics", unit="tok")
    seen = 0
    for batch in stream(model, tokenizer, texts, sites, batch_size=batch_size, max_length=max_length,
                        structure=structure):
        take = min(len(batch), n_tokens - seen)
        odd = (batch.text_index[:take] % 2).bool()
        for site, layer in zip(sites, layers):
            keys = batch.activations[site][:take]
            halves[layer][0].update(keys[~odd.to(keys.device)])
            halves[layer][1].update(keys[odd.to(keys.device)])
        seen += take
        if bar is not None:
            bar.update(take)
        if seen >= n_tokens:
            break
    if bar is not None:
        bar.close()
    return halves


def _texts_hash(texts: Sequence[str]) -> str:
    return "texts:" + digest(*(part for text in texts for part in (text, b"\0")))


def _cache_path(fp: str, layer: int, source: str, n_tokens: int, max_length: int):
    # 20 hex digits of SHA-256, not the digest helper's 16: the names of files already cached
    ident = json.dumps([fp, layer, source, n_tokens, max_length, "v1"])
    return cache_dir("editing", "stats") / f"keys-{hashlib.sha256(ident.encode()).hexdigest()[:20]}.safetensors"


def default_texts(model: nn.Module, tokenizer, n_tokens: int, *, fp: str) -> tuple[list[str], str]:
    """Model-generated texts enough for ``n_tokens`` tokens, and the source's name."""
    from ..data.neutral import neutral_texts

    n_texts = max(2, math.ceil(n_tokens / (NEUTRAL_NEW_TOKENS * 0.75)))
    texts = neutral_texts(model, tokenizer, n_texts, max_new_tokens=NEUTRAL_NEW_TOKENS, cache_key=fp)
    return texts, f"neutral:n={n_texts}:new={NEUTRAL_NEW_TOKENS}:seed=0"


def key_statistics(model: Any, tokenizer, layer: int | Sequence[int], *, texts: Sequence[str] | None = None,
                   n_tokens: int = 20_000, max_length: int = MAX_LENGTH, batch_size: int = 8,
                   cache: bool = True, progress: bool = False) -> KeyStatistics | dict[int, KeyStatistics]:
    """``E[k kᵀ]`` of the MLP keys at ``layer`` (or a dict for a list of layers), cached by content.

    ``texts`` defaults to text the model generates itself (cached per model fingerprint);
    ``n_tokens`` caps the tokens read. The FastMEMIT study (arXiv 2506.04226) finds 2-10 × d_mlp
    keys enough for ROME/MEMIT; the default 20,000 is 13 × SmolLM2's 1536. ``model`` is a module
    or a ``LoadedModel`` (whose tokenizer serves when ``tokenizer`` is None).
    """
    view, tokenizer = unpack(model, tokenizer)
    model, structure = view.module, view.structure
    many = not isinstance(layer, int)
    layers = [structure.block(int(l)).index for l in (layer if many else [layer])]
    if not layers:
        raise EmptyDataError("no layers given")
    for l in layers:
        refuse_moe(structure, l)
    if n_tokens < 2:
        raise EmptyDataError(f"n_tokens must be at least 2, got {n_tokens}")
    fp = view.fingerprint  # statistics of the unedited model, also while edits are applied
    if texts is not None:
        texts = list(texts)
        if not texts:
            raise EmptyDataError("texts is empty: pass some texts or leave it None for generated ones")
        source = _texts_hash(texts)
    else:
        source = f"neutral:n={max(2, math.ceil(n_tokens / (NEUTRAL_NEW_TOKENS * 0.75)))}:new={NEUTRAL_NEW_TOKENS}:seed=0"
    found: dict[int, KeyStatistics] = {}
    for l in layers:
        path = _cache_path(fp, l, source, n_tokens, max_length)
        if cache and path.is_file():
            try:
                stats = KeyStatistics.load(path)
                if stats.provenance.model_fingerprint == fp and stats.layer == l:
                    found[l] = stats
            except ArtifactError:
                pass
    missing = [l for l in layers if l not in found]
    if missing:
        if texts is None:
            texts, source = default_texts(model, tokenizer, n_tokens, fp=fp)
        halves = accumulate(model, tokenizer, texts, missing, n_tokens=n_tokens, structure=structure,
                            batch_size=batch_size, max_length=max_length, progress=progress)
        for l in missing:
            provenance = Provenance(model_fingerprint=fp, method="uncentred second moment, float64",
                                    data_hash=source,
                                    extra={"n_tokens_requested": n_tokens, "max_length": max_length})
            stats = _from_moments(*halves[l], layer=l, source=source, provenance=provenance)
            found[l] = stats
            if cache:
                stats.save(_cache_path(fp, l, source, n_tokens, max_length))
    return {l: found[l] for l in layers} if many else found[layers[0]]
