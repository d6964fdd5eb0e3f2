"""Edits as objects: low-rank weight deltas on MLP down projections, small on disk, exactly undone.

An edit holds, per edited layer, factors ``B`` ``[d_out, r]`` and ``A`` ``[r, d_in]`` with
``ΔW = B A`` (``W`` as ``[out, in]``; GPT-2's transposed ``Conv1D`` is handled by
:func:`~almostlinear.core.locate.linear_weight`), the SHA-256 of each base weight it was computed
on and of the key statistics it used. ``apply`` adds the delta inside a context and copies the
saved weights back on exit, so the model is restored bit for bit, also on exceptions. ``bake_``
makes it permanent and keeps the replaced weights in memory so that ``undo_`` restores them bit
for bit (float addition is not exactly invertible, so subtracting the delta would not be).
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.artifact import Artifact, ArtifactError
from ..core.errors import NonFiniteError, ShapeError
from ..core.locate import Structure, linear_weight, locate
from ..core.models import fingerprint as model_fingerprint
from .identity import clear_base, mark_base

_UNDO_ATTR = "_almostlinear_baked_edits"


def weight_hash(weight: torch.Tensor) -> str:
    """SHA-256 of a weight's bytes (as stored), shape and dtype."""
    data = weight.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{tuple(data.shape)}:{data.dtype}".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return "sha256:" + digest.hexdigest()[:16]


@dataclass(frozen=True)
class LowRankEdit(Artifact):
    """``ΔW_l = b[i] @ a[i]`` on the down projection of ``layers[i]``.

    ``keys`` ``[L, n, d_in]`` are the (template-averaged) keys the edit was solved for and
    ``targets`` ``[L, n, d_out]`` the residuals it writes there, kept for diagnostics and for
    sequential AlphaEdit (earlier edits' keys are preserved). ``requests`` are plain dicts.
    """

    kind = "editing.low_rank"

    layers: list[int]
    a: torch.Tensor  # [L, r, d_in]
    b: torch.Tensor  # [L, d_out, r]
    keys: torch.Tensor  # [L, n, d_in]
    base_hashes: list[str]
    stats_hashes: list[str]
    requests: list[dict] = field(default_factory=list)
    method: str = "memit"
    diagnostics: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.a.dim() != 3 or self.b.dim() != 3 or self.a.shape[0] != len(self.layers) \
                or self.b.shape[0] != len(self.layers) or self.a.shape[1] != self.b.shape[2]:
            raise ShapeError(
                f"factors do not fit: {len(self.layers)} layers, a {tuple(self.a.shape)}, b {tuple(self.b.shape)}"
            )
        if len(self.base_hashes) != len(self.layers):
            raise ShapeError(f"{len(self.base_hashes)} base-weight hashes for {len(self.layers)} edited layers")
        if not (torch.isfinite(self.a).all() and torch.isfinite(self.b).all()):
            raise NonFiniteError("the edit's factors contain NaN or infinite values")

    @property
    def rank(self) -> int:
        return self.a.shape[1]

    @property
    def identity(self) -> str:
        """Content hash of the factors: tells baked edits apart for ``undo_``."""
        digest = hashlib.sha256()
        for t in (self.a, self.b):
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
        digest.update(repr(self.layers).encode())
        return digest.hexdigest()[:16]

    def delta(self, index: int) -> torch.Tensor:
        """``ΔW`` of ``layers[index]`` as ``[d_out, d_in]`` float64."""
        return self.b[index].double() @ self.a[index].double()

    def shift(self, index: int, key: torch.Tensor) -> torch.Tensor:
        """``ΔW k`` for keys ``[..., d_in]`` at ``layers[index]``: exactly how the edit moves them."""
        return (key.double() @ self.a[index].double().T) @ self.b[index].double().T

    # --- applying -------------------------------------------------------------------------------

    def _targets(self, model: nn.Module, structure: Structure | None, strict: bool) -> list[tuple[nn.Module, torch.Tensor]]:
        structure = structure or locate(model)
        out = []
        mismatched = []
        for i, layer in enumerate(self.layers):
            module = structure.block(layer).mlp_down_proj
            weight = linear_weight(module)
            if tuple(weight.shape) != (self.b.shape[1], self.a.shape[2]):
                raise ShapeError(
                    f"this edit was made for a down projection [{self.b.shape[1]}, {self.a.shape[2]}] at layer "
                    f"{layer}, but the model's is {list(weight.shape)}: it belongs to another model"
                )
            if weight_hash(module.weight) != self.base_hashes[i]:
                mismatched.append(layer)
            out.append((module, weight))
        if mismatched:
            expected = self.provenance.model_fingerprint
            message = (
                f"the down projection weights at layers {mismatched} differ from those this {self.method} edit "
                f"was computed on (made for model {expected}, this one is {model_fingerprint(model)})"
            )
            if strict:
                raise ArtifactError(message + "; pass strict=False to apply it anyway (e.g. on top of other edits)")
            warnings.warn(message, stacklevel=3)
        return out

    def _add(self, targets, scale: float) -> None:
        with torch.no_grad():
            for i, (_module, weight) in enumerate(targets):
                delta = self.delta(i) * scale if scale != 1.0 else self.delta(i)
                weight.add_(delta.to(device=weight.device, dtype=weight.dtype))

    @contextlib.contextmanager
    def apply(self, model: nn.Module, *, scale: float = 1.0, strict: bool = True,
              structure: Structure | None = None) -> Iterator[nn.Module]:
        """Edit the weights while the context is open; restore them bit for bit on exit.

        ``scale`` multiplies the delta (``0`` leaves the model as it is). With ``strict`` (the
        default) weights other than the ones the edit was computed on are an error; with
        ``strict=False`` a warning.
        """
        targets = self._targets(model, structure, strict)
        saved = [module.weight.detach().clone() for module, _ in targets]
        marked = mark_base(model)
        try:
            self._add(targets, scale)
            yield model
        finally:
            with torch.no_grad():
                for (module, _), original in zip(targets, saved):
                    module.weight.copy_(original)
            if marked:
                clear_base(model)

    def bake_(self, model: nn.Module, *, strict: bool = True, structure: Structure | None = None) -> nn.Module:
        """Make the edit permanent; :meth:`undo_` reverses it exactly (in this process)."""
        targets = self._targets(model, structure, strict)
        mark_base(model)
        for module, _ in targets:
            stack = getattr(module, _UNDO_ATTR, None)
            if stack is None:
                stack = []
                object.__setattr__(module, _UNDO_ATTR, stack)
            stack.append((self.identity, module.weight.detach().clone()))
        self._add(targets, 1.0)
        return model

    def undo_(self, model: nn.Module, *, structure: Structure | None = None) -> nn.Module:
        """Restore the weights this edit replaced when it was baked, bit for bit.

        Edits baked later on the same layers must be undone first (last baked, first undone).
        """
        structure = structure or locate(model)
        modules = [structure.block(layer).mlp_down_proj for layer in self.layers]
        for module in modules:
            stack = getattr(module, _UNDO_ATTR, None) or []
            if not any(ident == self.identity for ident, _ in stack):
                raise ArtifactError(
                    "this edit was not baked into this model in this process, so there is nothing exact to undo"
                )
            if stack[-1][0] != self.identity:
                raise ArtifactError("another edit was baked on the same layer after this one: undo that one first")
        with torch.no_grad():
            for module in modules:
                _, original = getattr(module, _UNDO_ATTR).pop()
                module.weight.copy_(original)
        if not any(getattr(block.mlp_down_proj, _UNDO_ATTR, None) for block in structure.blocks):
            clear_base(model)  # nothing baked any more: the model is its own base again
        return model


@dataclass(frozen=True)
class RankOneEdit(LowRankEdit):
    """A ROME edit: ``ΔW = v uᵀ`` at one layer, with ``uᵀk* = 1`` for the subject key ``k*``.

    ``value`` is what the edited layer now outputs for ``k*`` (``W k* + v``, bias included).
    """

    kind = "editing.rank_one"

    value: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    @property
    def layer(self) -> int:
        return self.layers[0]

    @property
    def u(self) -> torch.Tensor:
        """The key direction ``C⁻¹k*/(k*ᵀC⁻¹k*)``, ``[d_in]``."""
        return self.a[0, 0]

    @property
    def v(self) -> torch.Tensor:
        """The written value offset, ``[d_out]``."""
        return self.b[0, :, 0]

    @property
    def key(self) -> torch.Tensor:
        return self.keys[0, 0]
