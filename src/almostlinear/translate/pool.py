"""One vector per text from a model: pooled activations at a site, the shared inputs of cross-model maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.collect import collect
from ..core.errors import EmptyDataError, ShapeError, check_choice
from ..core.locate import Structure, locate
from ..core.sites import Site

POOLS = ("mean", "last")


def pool_rows(acts: torch.Tensor, text_index: torch.Tensor, n_texts: int, how: str = "mean") -> torch.Tensor:
    """``[n_texts, d]`` float32 from token rows ``[n_tokens, d]`` tagged with their text: mean or last row.

    Rows are in reading order within each text. A text without any row (e.g. a one-token text whose
    first token was skipped) is an error rather than a zero vector.
    """
    check_choice(how, POOLS, "pooling")
    index = text_index.to(torch.long).cpu()
    if acts.dim() != 2 or index.shape != (acts.shape[0],):
        raise ShapeError(f"need rows [n_tokens, d] and one text index per row; got {tuple(acts.shape)} and "
                         f"{tuple(index.shape)}")
    if len(index) and not 0 <= int(index.min()) <= int(index.max()) < n_texts:
        raise ShapeError(f"text indices must lie in [0, {n_texts}), got {int(index.min())}..{int(index.max())}")
    acts = acts.cpu()
    counts = torch.bincount(index, minlength=n_texts)
    if bool((counts == 0).any()):
        empty = (counts == 0).nonzero()[:, 0].tolist()
        raise EmptyDataError(f"{len(empty)} text(s) have no token rows to pool (e.g. text {empty[0]}): "
                             "a text needs at least one token besides any skipped first token")
    if how == "mean":
        sums = torch.zeros(n_texts, acts.shape[1], dtype=torch.float64).index_add_(0, index, acts.double())
        return (sums / counts[:, None]).float()
    # the highest row number of each text is its last token
    rows = torch.arange(len(index))
    last = torch.full((n_texts,), -1, dtype=torch.long).scatter_reduce_(0, index, rows, "amax")
    return acts[last].float()


def default_site(structure: Structure, kind: str) -> Site:
    """The last block's output for encoders (sentence-transformers' input to pooling), the middle one for decoders."""
    layer = structure.n_layers - 1 if kind == "encoder" else structure.n_layers // 2
    return Site("resid_post", layer)


def text_vectors(model, tokenizer, texts: Sequence[str], site: Site | str | None = None, *, kind: str = "causal-lm",
                 pool: str = "mean", normalise: bool | None = None, skip_first: bool | None = None,
                 batch_size: int = 16, max_length: int = 128, structure: Structure | None = None) -> torch.Tensor:
    """One vector per text: ``pool`` of the activations at ``site`` over the text's real tokens.

    Defaults follow each kind of model: an encoder is mean-pooled over all tokens at its last block and
    L2-normalised, as sentence-transformers pools all-MiniLM; a decoder is mean-pooled at its middle
    block without its first token, whose activation is an outlier (an attention sink) in most decoders.
    Texts are cut at ``max_length`` tokens (sentence-transformers cuts all-MiniLM-L6-v2 at 256).
    """
    structure = structure or locate(model)
    site = default_site(structure, kind) if site is None else (Site.parse(site) if isinstance(site, str) else site)
    encoder = kind == "encoder"
    normalise = encoder if normalise is None else normalise
    skip_first = (not encoder) if skip_first is None else skip_first
    acts = collect(model, tokenizer, list(texts), [site], positions="last" if pool == "last" else "all",
                   batch_size=batch_size, max_length=max_length, skip_first=skip_first and pool == "mean",
                   structure=structure)
    vectors = pool_rows(acts[site], acts.text_index, len(texts), pool)
    if normalise:
        vectors = torch.nn.functional.normalize(vectors, dim=1)
    return vectors
