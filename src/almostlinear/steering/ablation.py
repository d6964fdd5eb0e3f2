"""Directional ablation: remove a direction from the residual stream at every layer (arXiv 2406.11717).

Hooked: the direction is projected out of each block's input (``resid_pre``) and of what each
attention and MLP writes (``attn_out``, ``mlp_out``), so the residual stream never carries it.

Baked: the same edit made permanent by orthogonalising every matrix that writes into the residual
stream: token (and position) embeddings, attention output projections and MLP down projections,
with their biases. ``W <- (I - B^T B) W`` for an orthonormal basis ``B`` of the ablated span. With
all layers ablated the baked model computes what the hooked one does, up to rounding. A tied output
head is untied first (it keeps the original weights), since the final norm's gain can reintroduce
the direction before the head reads it.

Limitation: architectures that normalise a sublayer's output before adding it to the stream
(e.g. Gemma-2 post-sublayer norms) or normalise the stream itself after each addition (post-LN
encoders such as BERT, whose norm biases write into the stream) are not made exactly equivalent by
baking; the hooked form still removes the direction from every block input.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.artifact import Artifact, Provenance, Where
from ..core.errors import NonFiniteError, ShapeError
from ..core.hooks import Positions, intervene
from ..core.locate import Structure, linear_weight, locate
from ..core.sites import Site

OPERATION = "directional-ablation"
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


def project_out_rows(matrix: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``matrix - (matrix B^T) B``: remove the span of ``basis`` from each row (float64 maths)."""
    m = matrix.double()
    return m - (m @ basis.T) @ basis


def _module(model) -> nn.Module:
    """The ``nn.Module`` of a LoadedModel, or the module itself."""
    return model.model if not isinstance(model, nn.Module) and hasattr(model, "model") else model


def _layers(structure: Structure, layers) -> list[int]:
    if layers is None:
        return list(range(structure.n_layers))
    if isinstance(layers, int):
        layers = [layers]
    return sorted({structure.block(int(layer)).index for layer in layers})


@contextlib.contextmanager
def ablate(model, direction: torch.Tensor, *, layers: Sequence[int] | int | None = None,
           positions: Positions = "all", structure: Structure | None = None) -> Iterator[None]:
    """Project ``direction`` (``[d]`` or a span ``[k, d]``) out of the residual stream while open.

    At each chosen layer: the block's input and its attention and MLP outputs. ``layers=None``
    is every layer (the setting in which :func:`bake_ablation_` is equivalent).
    """
    module = _module(model)
    structure = structure or getattr(model, "structure", None) or locate(module)
    basis = orthonormal_basis(direction, structure.d_model)
    cache: dict = {}

    def edit(hidden: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        key = (hidden.dtype, hidden.device)
        if key not in cache:
            cache[key] = basis.to(dtype=hidden.dtype, device=hidden.device)
        b = cache[key]
        return hidden - chosen[..., None].to(hidden.dtype) * ((hidden @ b.T) @ b)

    edits = {Site(name, layer): edit for layer in _layers(structure, layers) for name in ABLATED_SITES}
    with intervene(module, edits, positions=positions, structure=structure):
        yield


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


@dataclass
class BakedAblation:
    """What :func:`bake_ablation_` changed, kept so :meth:`undo` restores the model bit for bit."""

    saved: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (parameter, original copy)
    untied_head: nn.Module | None = None
    shared_weight: nn.Parameter | None = None
    config: object | None = None
    tie_flag: object = None
    done: bool = False

    def undo(self) -> None:
        """Put back every original weight (and re-tie the head); calling twice does nothing."""
        if self.done:
            return
        with torch.no_grad():
            for parameter, original in self.saved:
                parameter.copy_(original)
        if self.untied_head is not None:
            self.untied_head.weight = self.shared_weight
        if self.config is not None:
            self.config.tie_word_embeddings = self.tie_flag
        self.done = True


def bake_ablation_(model, direction: torch.Tensor, *, structure: Structure | None = None) -> BakedAblation:
    """Orthogonalise every residual-stream writer against ``direction``, in place.

    Returns a :class:`BakedAblation` whose ``undo()`` restores the original weights exactly. A tied
    output head is given its own copy of the weights (and ``config.tie_word_embeddings`` is set to
    False so a saved checkpoint keeps them apart).
    """
    module = _module(model)
    structure = structure or locate(module)
    basis = orthonormal_basis(direction, structure.d_model)
    record = BakedAblation()
    embeddings, projections = residual_writers(module, structure)
    try:
        with torch.no_grad():
            if structure.tied_embeddings and structure.unembedding is not None:
                head = structure.unembedding
                record.untied_head, record.shared_weight = head, head.weight
                head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
                config = getattr(module, "config", None)
                if config is not None and hasattr(config, "tie_word_embeddings"):
                    record.config, record.tie_flag = config, config.tie_word_embeddings
                    config.tie_word_embeddings = False
            for emb in embeddings:
                _save(record, emb.weight)
                emb.weight.copy_(project_out_rows(emb.weight, basis.to(emb.weight.device)).to(emb.weight.dtype))
            for proj in projections:
                weight = linear_weight(proj)  # [out = d_model, in], a view for Conv1D
                _save(record, proj.weight)
                b = basis.to(weight.device)
                weight.copy_((weight.double() - b.T @ (b @ weight.double())).to(weight.dtype))
                bias = getattr(proj, "bias", None)
                if bias is not None:
                    _save(record, bias)
                    bias.copy_(project_out_rows(bias[None], b)[0].to(bias.dtype))
    except BaseException:
        record.undo()
        raise
    return record


def _save(record: BakedAblation, parameter: torch.Tensor) -> None:
    if not any(p is parameter for p, _ in record.saved):
        record.saved.append((parameter, parameter.detach().clone()))


@contextlib.contextmanager
def baked_ablation(model, direction: torch.Tensor, *, structure: Structure | None = None) -> Iterator[BakedAblation]:
    """:func:`bake_ablation_` for the duration of the context, undone on exit (also on errors)."""
    record = bake_ablation_(model, direction, structure=structure)
    try:
        yield record
    finally:
        record.undo()


@dataclass(frozen=True)
class DirectionalAblation(Artifact):
    """A direction (or span, ``[k, d]``) to ablate from the residual stream at ``layers`` (empty = all)."""

    kind = "directional-ablation"
    directions: torch.Tensor
    layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        if self.directions.dim() != 2:
            raise ShapeError("directions must be [k, d]")

    @classmethod
    def from_direction(cls, direction: torch.Tensor, *, layers: Sequence[int] | None = None,
                       model_fingerprint: str | None = None, method: str | None = None,
                       data_hash: str | None = None, site: str | None = None) -> DirectionalAblation:
        """Store the orthonormalised span of ``direction``; ``site``/``method`` record where it came from."""
        basis = orthonormal_basis(direction).float()
        name, layer = (Site.parse(site).name, Site.parse(site).layer) if site else (None, None)
        provenance = Provenance(model_fingerprint=model_fingerprint, where=Where.at(name, layer), method=method,
                                data_hash=data_hash, units="unit directions in the residual stream",
                                extra={"operation": OPERATION, "ablated_sites": list(ABLATED_SITES)})
        return cls(basis, tuple(layers or ()), provenance=provenance)

    def _check(self, model) -> nn.Module:
        module = _module(model)
        if self.provenance.model_fingerprint is not None:
            from ..core.models import fingerprint

            self.check_model(getattr(model, "fingerprint", None) or fingerprint(module))
        return module

    @contextlib.contextmanager
    def apply(self, model, *, positions: Positions = "all", structure: Structure | None = None) -> Iterator[None]:
        """Hooked ablation while the context is open; the model is untouched on exit."""
        module = self._check(model)
        with ablate(module, self.directions, layers=self.layers or None, positions=positions,
                    structure=structure or getattr(model, "structure", None)):
            yield

    def bake_(self, model, *, structure: Structure | None = None) -> BakedAblation:
        """Permanent (until ``undo()``) weight orthogonalisation; only for all-layer ablations."""
        if self.layers:
            raise ShapeError("only an all-layer ablation can be baked into the weights (layers=())")
        module = self._check(model)
        return bake_ablation_(module, self.directions, structure=structure or getattr(model, "structure", None))
