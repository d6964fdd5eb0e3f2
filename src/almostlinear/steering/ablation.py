"""Directional ablation: remove a direction from the residual stream at every layer (arXiv 2406.11717).

Hooked: the direction is projected out of each block's input (``resid_pre``) and of what each
attention and MLP writes (``attn_out``, ``mlp_out``), so the residual stream never carries it.

Baked: the same edit made permanent by orthogonalising every matrix that writes into the residual
stream: token (and position) embeddings, attention output projections and MLP down projections,
with their biases. ``W <- (I - B^T B) W`` for an orthonormal basis ``B`` of the ablated span. With
all layers ablated the baked model computes what the hooked one does, up to rounding. A tied output
head is untied first (it keeps the original weights), since the final norm's gain can reintroduce
the direction before the head reads it.

A strength ``s`` between 0 and 1 removes that share of the component. Hooked, every ablated site
removes ``s`` of what reaches it, so the shares compound along the stream; baked, each writer loses
``s`` of its component once. The two agree at ``s = 1`` (and ``s = 0``) only.

The bake refuses, before changing anything, architectures that normalise a sublayer's output before
adding it to the stream (Gemma-2/3, OLMo-2) or the stream itself after each addition (post-LN
encoders such as BERT, whose norm biases write into the stream), where orthogonal writers would not
keep the direction out, and mixtures of experts, whose experts it does not orthogonalise; the
hooked form works on all of them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..core.errors import LeverError, NonFiniteError, ShapeError
from ..core.hooks import Positions, intervene
from ..core.lever import Baked, as_model, bake_weights, check_strength
from ..core.locate import Structure, linear_weight
from ..core.sites import Site
from .bake import module_name

KIND = "steering.ablation"
ABLATED_SITES = ("resid_pre", "attn_out", "mlp_out")


def orthonormal_basis(directions: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """Orthonormal rows ``[k, d]`` (float64) spanning ``directions`` (``[d]`` or ``[k, d]``)."""
    directions = torch.as_tensor(directions).detach()
    if directions.dim() == 1:
        directions = directions[None]
    if directions.dim() != 2 or directions.shape[0] == 0:
        raise ShapeError(f"expected a direction [d] or directions [k, d], got shape {tuple(directions.shape)}")
    if width is not None and directions.shape[1] != width:
        raise ShapeError(f"the direction has {directions.shape[1]} features but the residual stream has {width}")
    if not torch.isfinite(directions).all():
        raise NonFiniteError("the direction contains NaN or infinite values")
    directions = directions.double()
    q, r = torch.linalg.qr(directions.T)
    scale = r.diagonal().abs().max()
    if scale == 0:
        raise ShapeError("the direction is zero: there is nothing to ablate")
    keep = r.diagonal().abs() > 1e-10 * scale
    return q[:, keep].T.contiguous()


def project_out_rows(matrix: torch.Tensor, basis: torch.Tensor, fraction: float = 1.0) -> torch.Tensor:
    """``matrix - s (matrix B^T) B``: remove the share ``s`` of each row's component in the span of
    ``basis`` (all of it by default; float64 maths)."""
    m = matrix.double()
    return m - fraction * ((m @ basis.T) @ basis)


def _layers(structure: Structure, layers) -> list[int]:
    if layers is None:
        return list(range(structure.n_layers))
    if isinstance(layers, int):
        layers = [layers]
    return sorted({structure.block(int(layer)).index for layer in layers})


@contextlib.contextmanager
def ablate(model, direction: torch.Tensor, *, strength: float = 1.0, layers: Sequence[int] | int | None = None,
           positions: Positions = "all", structure: Structure | None = None) -> Iterator[nn.Module]:
    """Project ``direction`` (``[d]`` or a span ``[k, d]``) out of the residual stream while open.

    At each chosen layer: the block's input and its attention and MLP outputs. ``strength`` is the
    fraction of the component removed at each of those sites (1: all of it, 0: nothing).
    ``layers=None`` is every layer (the setting in which :func:`bake_ablation_` is equivalent).
    ``model`` is an ``nn.Module`` or a ``LoadedModel``; yields the module.
    """
    view = as_model(model, structure=structure)
    fraction = check_strength(strength, "fraction")
    basis = orthonormal_basis(direction, view.structure.d_model)
    cache: dict = {}

    def edit(hidden: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        key = (hidden.dtype, hidden.device)
        if key not in cache:
            cache[key] = basis.to(dtype=hidden.dtype, device=hidden.device)
        b = cache[key]
        return hidden - (chosen[..., None].to(hidden.dtype) * fraction) * ((hidden @ b.T) @ b)

    edits = {Site(name, layer): edit for layer in _layers(view.structure, layers) for name in ABLATED_SITES}
    with intervene(view.module, edits, positions=positions, structure=view.structure):
        yield view.module


def residual_writers(model: nn.Module, structure: Structure) -> tuple[list[nn.Module], list[nn.Module]]:
    """``(embeddings, projections)`` that write into the residual stream.

    Embeddings: the token embedding and any other ``nn.Embedding`` of width ``d_model`` outside the
    blocks (learned positions, token types). Projections: each block's attention output projection
    and MLP down projection.
    """
    in_blocks = {id(m) for block in structure.blocks for m in block.module.modules()}
    head = structure.unembedding
    embeddings = [structure.embedding]
    for m in model.modules():
        if (isinstance(m, nn.Embedding) and id(m) not in in_blocks and m is not structure.embedding
                and m is not head and m.weight.shape[1] == structure.d_model):
            embeddings.append(m)
    projections = [p for block in structure.blocks for p in (block.attn_out_proj, block.mlp_down_proj)]
    return embeddings, projections


def _refuse(structure: Structure) -> None:
    """Refuse, before any change, the models on which the baked form is not the hooked one."""
    if structure.final_norm is None or any(block.post_norms for block in structure.blocks):
        raise LeverError(f"{structure.model_type} normalises what its sublayers write (post-norm), so "
                         "orthogonalising the writers does not keep the direction out of the stream; "
                         "ablate with apply() (hooks) instead")
    moe = [block.index for block in structure.blocks if block.moe]
    if moe:
        raise LeverError(f"blocks {moe} are mixtures of experts, whose experts' down projections this bake does "
                         "not orthogonalise; ablate with apply() (hooks) instead")


def bake_ablation_(model, direction: torch.Tensor, *, strength: float = 1.0,
                   structure: Structure | None = None) -> Baked:
    """Orthogonalise every residual-stream writer against ``direction``, in place.

    ``W <- W - s B^T B W`` for each writer (``s`` = ``strength``, 1 removes the whole component).
    Returns a :class:`~almostlinear.core.lever.Baked` whose ``undo_()`` restores the original
    weights exactly. A tied output head is given its own copy of the weights (and
    ``config.tie_word_embeddings`` is set to False so a saved checkpoint keeps them apart); the undo
    ties it again.
    """
    view = as_model(model, structure=structure)
    module, found = view.module, view.structure
    fraction = check_strength(strength, "fraction")
    basis = orthonormal_basis(direction, found.d_model)
    _refuse(found)
    embeddings, projections = residual_writers(module, found)
    names = [f"{module_name(module, emb)}.weight" for emb in embeddings]
    for proj in projections:
        prefix = module_name(module, proj)
        names += [f"{prefix}.weight"] + ([f"{prefix}.bias"] if getattr(proj, "bias", None) is not None else [])
    untie, retie = _untying(module, found)

    def change() -> None:
        untie()
        try:
            for emb in embeddings:
                b = basis.to(emb.weight.device)
                emb.weight.copy_(project_out_rows(emb.weight, b, fraction).to(emb.weight.dtype))
            for proj in projections:
                weight = linear_weight(proj)  # [out = d_model, in], a view for Conv1D
                b = basis.to(weight.device)
                weight.copy_((weight.double() - fraction * (b.T @ (b @ weight.double()))).to(weight.dtype))
                bias = getattr(proj, "bias", None)
                if bias is not None:
                    bias.copy_(project_out_rows(bias[None], b, fraction)[0].to(bias.dtype))
        except BaseException:
            retie()
            raise

    return bake_weights(view, names, change, kind=KIND, on_undo=retie if found.tied_embeddings else None)


def _untying(module: nn.Module, structure: Structure):
    """``(untie, retie)``: give a tied output head its own copy of the weights, and tie it again."""
    head = structure.unembedding
    if not structure.tied_embeddings or head is None:
        return (lambda: None), (lambda: None)
    shared = head.weight
    config = getattr(module, "config", None)
    flag = getattr(config, "tie_word_embeddings", None)

    def untie() -> None:
        head.weight = nn.Parameter(shared.detach().clone(), requires_grad=shared.requires_grad)
        if flag is not None:
            config.tie_word_embeddings = False

    def retie() -> None:
        head.weight = shared
        if flag is not None:
            config.tie_word_embeddings = flag

    return untie, retie


@contextlib.contextmanager
def baked_ablation(model, direction: torch.Tensor, *, strength: float = 1.0,
                   structure: Structure | None = None) -> Iterator[nn.Module]:
    """:func:`bake_ablation_` for the duration of the context, undone on exit (also on errors)."""
    record = bake_ablation_(model, direction, strength=strength, structure=structure)
    try:
        yield as_model(model).module
    finally:
        record.undo_()
