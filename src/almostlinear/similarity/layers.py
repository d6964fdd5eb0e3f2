"""Similarity matrices between all layers of one model, or between the layers of two models.

Each layer is prepared once (centred, its subspace or RDM computed), then pairs are compared. For
linear CKA the costly part is ``<K_a, K_b>`` for every pair of layers; it is computed either in
feature space, ``||X_aᵀX_b||²`` (cost ``n·d_a·d_b`` per pair), or from the ``n x n`` Gram matrices
(cost ``n²d/2`` per layer plus ``n²`` per pair), whichever is cheaper. With many layers the Gram
route wins even when ``n > d``: for 31 layers of width 576 it is cheaper up to ``n ≈ 9000``.
The Grams are formed in row blocks, using their symmetry, so memory stays near ``block_bytes``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..core.errors import EmptyDataError, ShapeError, check_choice
from ._inputs import as_rows, centred, check_mask, require_variance
from .cca import correlations_between, pwcca_between, subspace
from .cka import row_norms
from .procrustes import normalised, nuclear_alignment
from .rdms import rdm_vector

MEASURES = ("cka", "cka_debiased", "procrustes", "cca", "svcca", "pwcca", "rsa")
BLOCK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class KernelStats:
    """``<K_a, K_b>`` for every pair of centred layers, and each Gram's diagonal: all CKA needs."""

    inner: torch.Tensor  # [L, L] float64
    diagonals: torch.Tensor  # [L, n] squared norms of the centred rows
    n: int

    def cka(self) -> torch.Tensor:
        scale = self.inner.diagonal().sqrt()
        return self.inner / (scale[:, None] * scale[None, :])

    def cka_debiased(self) -> torch.Tensor:
        if self.n < 4:
            raise EmptyDataError(f"debiased CKA needs at least 4 examples, have {self.n}")
        k = self.diagonals
        dots = self.inner - self.n / (self.n - 2) * (k @ k.T)
        dots = dots + k.sum(1)[:, None] * k.sum(1)[None, :] / ((self.n - 1) * (self.n - 2))
        self_dots = dots.diagonal().clone()
        out = dots / (self_dots[:, None] * self_dots[None, :]).sqrt()
        bad = self_dots <= 0  # sampling noise can make a tiny self-similarity negative
        out[bad, :] = float("nan")
        out[:, bad] = float("nan")
        return out


def _check_layers(acts: Sequence[torch.Tensor] | torch.Tensor, mask, name: str) -> list[torch.Tensor]:
    if isinstance(acts, torch.Tensor) and acts.dim() != 3:
        raise ShapeError(f"{name} must be a list of [n, d] tensors or one [layers, n, d] tensor, "
                         f"got shape {tuple(acts.shape)}")
    layers = list(acts)
    if not layers:
        raise EmptyDataError(f"{name} holds no layers")
    n = layers[0].shape[0] if layers[0].dim() == 2 else -1
    if mask is not None:
        check_mask(mask, n)
    out = []
    for i, x in enumerate(layers):
        if x.dim() == 2 and x.shape[0] != n:
            raise ShapeError(f"{name}[{i}] has {x.shape[0]} examples but {name}[0] has {n}: "
                             "every layer must describe the same examples")
        x = as_rows(x, f"{name}[{i}]", mask=mask)
        require_variance(x, f"{name}[{i}]")
        out.append(x)
    return out


def kernel_stats(layers: Sequence[torch.Tensor], *, split: int | None = None, method: str = "auto",
                 centre: bool = True, block_bytes: int = BLOCK_BYTES) -> KernelStats:
    """:class:`KernelStats` of ``[n, d]`` layers over the same examples, in float64.

    Layers are centred here unless ``centre=False`` (saves a copy when they are centred already).

    With ``split``, the layers are two models' (``layers[:split]`` and ``layers[split:]``) and only
    the pairs across them and each layer with itself are needed; the feature route then skips the
    others (left NaN).
    """
    check_choice(method, ("auto", "features", "gram"), "method")
    xs = _check_layers(layers, None, "layers")
    xs = [centred(x) for x in xs] if centre else xs
    n = xs[0].shape[0]
    pairs = [(i, j) for i in range(len(xs)) for j in range(i, len(xs))
             if split is None or i == j or i < split <= j]
    feature_cost = sum(n * xs[i].shape[1] * xs[j].shape[1] for i, j in pairs)
    gram_cost = sum(n * n * x.shape[1] / 2 for x in xs) + len(xs) ** 2 * n * n / 2
    use_gram = method == "gram" or (method == "auto" and gram_cost < feature_cost)
    inner = _gram_inner(xs, block_bytes) if use_gram else _feature_inner(xs, pairs)
    return KernelStats(inner, torch.stack([row_norms(x) for x in xs]), n)


def _feature_inner(xs: list[torch.Tensor], pairs: list[tuple[int, int]]) -> torch.Tensor:
    inner = torch.full((len(xs), len(xs)), float("nan"), dtype=torch.float64)
    for i, j in pairs:
        inner[i, j] = inner[j, i] = (xs[i].T @ xs[j]).square().sum()
    return inner


def _gram_inner(xs: list[torch.Tensor], block_bytes: int) -> torch.Tensor:
    # <K_a, K_b> = Σ over row blocks of the block's rows of K_a ∘ K_b. Each block pairs its rows with
    # itself and with all later rows only; the later part stands for its mirror image, so it counts twice.
    n, count = xs[0].shape[0], len(xs)
    rows = max(1, min(n, block_bytes // (8 * count * n)))
    inner = torch.zeros(count, count, dtype=torch.float64)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        square = torch.stack([(x[start:stop] @ x[start:stop].T).reshape(-1) for x in xs])
        inner += square @ square.T
        if stop < n:
            rest = torch.stack([(x[start:stop] @ x[stop:].T).reshape(-1) for x in xs])
            inner += 2.0 * (rest @ rest.T)
    return inner


def _pairwise(prepare: Callable, compare: Callable, a: list, b: list | None, symmetric: bool) -> torch.Tensor:
    pa = [prepare(x) for x in a]
    pb = pa if b is None else [prepare(x) for x in b]
    out = torch.empty(len(pa), len(pb), dtype=torch.float64)
    for i, p in enumerate(pa):
        for j, q in enumerate(pb):
            if b is None and symmetric and j < i:
                out[i, j] = out[j, i]
            else:
                out[i, j] = compare(p, q)
    return out


def layer_similarity(acts: Sequence[torch.Tensor] | torch.Tensor,
                     other: Sequence[torch.Tensor] | torch.Tensor | None = None, measure: str = "cka", *,
                     mask: torch.Tensor | None = None, method: str = "auto", keep_variance: float = 0.99,
                     rdm_metric: str = "correlation") -> torch.Tensor:
    """``[L1, L2]`` similarities between the layers of ``acts`` and of ``other`` (default: ``acts``).

    Every layer is ``[n, d_layer]`` over the same ``n`` examples (tokens), which ``mask`` selects.
    ``measure``: ``"cka"``, ``"cka_debiased"``, ``"procrustes"`` (similarity ``||XᵀY||_*``),
    ``"cca"`` (mean CCA), ``"svcca"``, ``"pwcca"`` (row layer's weights: not symmetric) or
    ``"rsa"`` (Spearman between RDMs). ``method`` picks the CKA route (``"features"``, ``"gram"``).
    """
    check_choice(measure, MEASURES, "measure")
    a = _check_layers(acts, mask, "acts")
    b = None if other is None else _check_layers(other, mask, "other")
    if b is not None and b[0].shape[0] != a[0].shape[0]:
        raise ShapeError(f"acts have {a[0].shape[0]} examples but other has {b[0].shape[0]}")
    if measure in ("cka", "cka_debiased"):
        stats = kernel_stats(a + (b or []), split=None if b is None else len(a), method=method)
        matrix = stats.cka() if measure == "cka" else stats.cka_debiased()
        return matrix if b is None else matrix[: len(a), len(a):].contiguous()
    if measure == "procrustes":
        return _pairwise(normalised, nuclear_alignment, a, b, True).clamp(max=1.0)
    if measure == "rsa":
        return _pairwise(lambda x: rdm_vector(x, rdm_metric, "spearman"), lambda p, q: float(p @ q), a, b, True)
    keep = keep_variance if measure == "svcca" else None
    if measure == "pwcca":
        return _pairwise(subspace, pwcca_between, a, b, False)
    return _pairwise(lambda x: subspace(x, keep), lambda p, q: float(correlations_between(p, q).mean()), a, b, True)


def adjacent(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix[l, l + 1]`` for each ``l``: similarity of each layer to the next."""
    return matrix.diagonal(offset=1).clone()

