"""The editing family's artifacts: low-rank weight edits and the key statistics they are solved with.

An edit holds, per edited layer, factors ``B`` ``[d_out, r]`` and ``A`` ``[r, d_in]`` with
``ΔW = B A`` (``W`` as ``[out, in]``; GPT-2's transposed ``Conv1D`` is handled by
:func:`~almostlinear.core.locate.linear_weight`), the digest of each base weight it was computed on
and of the key statistics it used. Where it acts (the MLP down projections of its layers) is its
``provenance.where``. It is a lever (:mod:`almostlinear.core.lever`): ``apply`` adds
``strength · ΔW`` inside a context and copies the saved weights back on exit, bit for bit, also
on exceptions; ``bake_`` makes it permanent and returns the :class:`~almostlinear.core.lever.Baked`
record whose ``undo_()`` restores the replaced weights bit for bit (float addition is not exactly
invertible, so subtracting the delta would not be).

Half precision: a bfloat16 weight keeps 8 significant bits, so the small entries of ``ΔW`` round
away when ``W + ΔW`` is stored (a ROME edit with ``‖ΔW‖/‖W‖ ≈ 0.003`` loses about a tenth of its
change at the edited key). Half-precision writes round ``W + ΔW`` once, from float64;
:meth:`LowRankEdit.realised_error` measures what survives at the edit's keys, ``apply``/``bake_``
warn (:class:`EditRoundingWarning`) above :data:`REALISED_TOLERANCE`, and ``apply(model,
exact=True)`` adds ``B (A x)`` in float32 to the down projection's output by a hook instead of
writing the weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import InitVar, dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import nn

from ..core.artifact import Artifact, ArtifactError, FingerprintWarning, Where
from ..core.digest import digest, tensor_digest
from ..core.errors import NonFiniteError, ShapeError
from ..core.hooks import order_after_ours
from ..core.lever import (UNITS, Baked, ModelView, as_model, bake_weights, check_strength, parameter_name,
                          parameter_value, temporarily_changed)
from ..core.locate import Structure, linear_weight
from .access import dense_down_proj
from .moments import relative_difference

SITE = "mlp_down_proj"  # the weight role every edit of this family writes
HALF = (torch.bfloat16, torch.float16)
# Relative error at the edited keys above which writing an edit into half-precision weights warns
REALISED_TOLERANCE = 1e-2


class EditRoundingWarning(UserWarning):
    """An edit written into half-precision weights lost more than :data:`REALISED_TOLERANCE` of its
    change at the edited keys (``errors`` holds the relative error per edited layer)."""

    def __init__(self, message: str, errors: Sequence[float] = ()) -> None:
        super().__init__(message)
        self.errors = list(errors)


def written(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """The value an edit stores for ``weight + delta`` (``delta`` float64): one rounding of the exact
    sum for half-precision weights; for others, ``delta`` rounded to the weight's dtype and added
    there (as edits have always been written)."""
    delta = delta.to(weight.device)
    if weight.dtype in HALF:
        return (weight.double() + delta).to(weight.dtype)
    return weight + delta.to(weight.dtype)


def relative_error(realised: torch.Tensor, intended: torch.Tensor) -> float:
    """``‖realised − intended‖ / ‖intended‖`` (0 for a zero change realised exactly)."""
    scale = float(intended.norm())
    error = float((realised - intended).norm())
    return error / scale if scale > 0 else (0.0 if error == 0 else float("inf"))


@dataclass(frozen=True)
class LowRankEdit(Artifact):
    """``ΔW_l = b[i] @ a[i]`` on the down projection of ``layers[i]`` (``provenance.where.layers``).

    ``keys`` ``[L, n, d_in]`` are the (template-averaged) keys the edit was solved for, kept for
    diagnostics and for sequential AlphaEdit (earlier edits' keys are preserved); ``base_hashes``
    the digests of the weights it was computed on. ``requests`` are plain dicts. ``layers=`` at
    construction is folded into ``provenance.where`` (files written before where held them pass it).
    """

    kind = "editing.low_rank"
    strength_units = ("raw",)
    bakes = True

    a: torch.Tensor  # [L, r, d_in]
    b: torch.Tensor  # [L, d_out, r]
    keys: torch.Tensor  # [L, n, d_in]
    base_hashes: list[str]
    stats_hashes: list[str]
    requests: list[dict] = field(default_factory=list)
    method: str = "memit"
    diagnostics: dict = field(default_factory=dict)
    layers: InitVar[Sequence[int] | None] = field(default=None, kw_only=True)

    def __post_init__(self, layers: Sequence[int] | None) -> None:
        provenance = self.provenance
        if layers is not None:
            where = provenance.where
            provenance = dataclasses.replace(provenance, where=Where(SITE, tuple(layers),
                                                                     where.positions if where else "all"))
        if provenance.where is None or not provenance.where.layers:
            raise ShapeError("an edit needs its layers: pass layers=[...] or provenance=Provenance(where="
                             "Where('mlp_down_proj', layers))")
        if provenance.units not in UNITS:  # files from before the units vocabulary held prose here
            provenance = dataclasses.replace(provenance, units=self.strength_units[0])
        object.__setattr__(self, "provenance", provenance)
        n = len(self.layers)
        if self.a.dim() != 3 or self.b.dim() != 3 or self.a.shape[0] != n \
                or self.b.shape[0] != n or self.a.shape[1] != self.b.shape[2]:
            raise ShapeError(f"factors do not fit: {n} layers, a {tuple(self.a.shape)}, b {tuple(self.b.shape)}")
        if len(self.base_hashes) != n:
            raise ShapeError(f"{len(self.base_hashes)} base-weight hashes for {n} edited layers")
        if not (torch.isfinite(self.a).all() and torch.isfinite(self.b).all()):
            raise NonFiniteError("the edit's factors contain NaN or infinite values")

    @property
    def rank(self) -> int:
        return self.a.shape[1]

    def delta(self, index: int) -> torch.Tensor:
        """``ΔW`` of ``layers[index]`` as ``[d_out, d_in]`` float64."""
        return self.b[index].double() @ self.a[index].double()

    def shift(self, index: int, key: torch.Tensor) -> torch.Tensor:
        """``ΔW k`` for keys ``[..., d_in]`` at ``layers[index]``: exactly how the edit moves them."""
        return (key.double() @ self.a[index].double().T) @ self.b[index].double().T

    # --- the lever ------------------------------------------------------------------------------

    def _targets(self, view: ModelView, strict: bool) -> list[nn.Module]:
        """The down projections to write, after every check (nothing is changed before they pass)."""
        structure = view.structure
        modules = [dense_down_proj(structure, layer) for layer in self.layers]
        mismatched = []
        for i, (layer, module) in enumerate(zip(self.layers, modules)):
            weight = linear_weight(module)
            if tuple(weight.shape) != (self.b.shape[1], self.a.shape[2]):
                raise ShapeError(
                    f"this edit was made for a down projection [{self.b.shape[1]}, {self.a.shape[2]}] at layer "
                    f"{layer}, but the model's is {list(weight.shape)}: it belongs to another model"
                )
            if tensor_digest(parameter_value(view, module.weight)) != self.base_hashes[i]:  # offloaded too
                mismatched.append(layer)
        if mismatched:
            message = (
                f"the down projection weights at layers {mismatched} differ from those this {self.method} edit "
                f"was computed on (made for model {self.provenance.model_fingerprint}, this one is {view.fingerprint})"
            )
            if strict:
                raise ArtifactError(message + "; pass strict=False to apply it anyway (e.g. on top of other edits)")
            warnings.warn(message, FingerprintWarning, stacklevel=4)
        return modules

    def _realised(self, index: int, before: torch.Tensor, after: torch.Tensor, strength: float) -> float:
        """Relative error of the change ``after − before`` of layer ``index``'s weight at its keys."""
        keys = self.keys[index].double().to(before.device)
        realised = keys @ (after.double() - before.double()).T  # [n, d_out]
        return relative_error(realised, self.shift(index, keys) * strength)

    def _hook_term(self, index: int, strength: float, like: torch.Tensor):
        """``x ↦ strength · B (A x)`` in float32 (or wider), the exact mode's addition at layer ``index``."""
        dtype = torch.promote_types(like.dtype, torch.float32)
        a = self.a[index].to(device=like.device, dtype=dtype)
        b = (self.b[index].double() * strength).to(device=like.device, dtype=dtype)
        return lambda x: (x.to(dtype) @ a.T) @ b.T

    def _warn_rounding(self, errors: list[float], dtype: torch.dtype) -> None:
        worst = max(errors)
        if worst > REALISED_TOLERANCE:
            where = ", ".join(f"layer {layer}: {e:.3g}" for layer, e in zip(self.layers, errors))
            warnings.warn(EditRoundingWarning(
                f"this {self.method} edit, written into {str(dtype).removeprefix('torch.')} weights, realises its "
                f"change at the edited keys with relative error {worst:.3g} ({where}; tolerance "
                f"{REALISED_TOLERANCE:g}): rounding W + ΔW to the weights' dtype loses that much. apply(model, "
                "exact=True) adds the factors in float32 by a hook instead; or edit a float32 copy of the model",
                errors), stacklevel=5)

    def _change(self, modules: list[nn.Module], strength: float):
        def change() -> None:
            if strength == 0.0:
                return
            errors, dtype = [], None
            for i, module in enumerate(modules):
                weight = linear_weight(module)
                delta = self.delta(i) * strength if strength != 1.0 else self.delta(i)
                if weight.dtype not in HALF:
                    weight.add_(delta.to(device=weight.device, dtype=weight.dtype))
                    continue
                new = written(weight, delta)
                errors.append(self._realised(i, weight, new, strength))
                dtype = weight.dtype
                weight.copy_(new)
            if errors:
                self._warn_rounding(errors, dtype)

        return change

    def realised_error(self, model: Any, strength: float = 1.0, *, exact: bool = False, strict: bool = True,
                       structure: Structure | None = None) -> list[float]:
        """Per edited layer, the relative error ``‖realised − intended‖ / ‖intended‖`` of the change at
        the edit's keys (``intended = strength · ΔW k``), on ``model`` as it is (unedited).

        Without ``exact``: ``realised = (W' − W) k`` for the ``W'`` that ``apply``/``bake_`` write
        (in float32 about 1e-7; in bfloat16 it grows as ``‖ΔW‖/‖W‖`` shrinks). With ``exact``: the
        term the exact mode's hook adds, ``B (A k)`` in float32. The model is not changed.
        """
        strength = check_strength(strength, self.strength_units[0])
        modules = self._targets(as_model(model, structure=structure), strict)
        errors = []
        with torch.no_grad():
            for i, module in enumerate(modules):
                if strength == 0.0:
                    errors.append(0.0)
                    continue
                weight = linear_weight(module).detach()
                if exact:
                    keys = self.keys[i].to(weight.device)
                    realised = self._hook_term(i, strength, weight)(keys).double()
                    errors.append(relative_error(realised, self.shift(i, keys) * strength))
                else:
                    errors.append(self._realised(i, weight, written(weight, self.delta(i) * strength), strength))
        return errors

    def _prepare(self, model: Any, strength: float, strict: bool, structure: Structure | None):
        strength = check_strength(strength, self.strength_units[0])
        view = as_model(model, structure=structure)
        modules = self._targets(view, strict)
        names = [parameter_name(view.module, module.weight) for module in modules]
        return view, names, self._change(modules, strength)

    def apply(self, model: Any, strength: float = 1.0, *, strict: bool = True, exact: bool = False,
              structure: Structure | None = None) -> AbstractContextManager[nn.Module]:
        """Add ``strength · ΔW`` while the context is open; restore the weights bit for bit on exit.

        ``strength`` multiplies the stored delta (units ``"raw"``; ``0`` leaves the model as it is).
        With ``strict`` (the default) weights other than the ones the edit was computed on are an
        error; with ``strict=False`` a :class:`~almostlinear.core.artifact.FingerprintWarning`.
        Every check runs before anything is changed. Written into half-precision weights, an edit
        that loses more than :data:`REALISED_TOLERANCE` at its keys warns (:class:`EditRoundingWarning`).
        ``exact=True`` leaves the weights alone and adds ``strength · B (A x)``, computed in float32,
        to each edited down projection's output ``W x`` by a forward hook, removed on exit; the
        sum is rounded once to the model's dtype, like any activation.
        """
        if not exact:
            view, names, change = self._prepare(model, strength, strict, structure)
            return temporarily_changed(view, names, change)
        strength = check_strength(strength, self.strength_units[0])
        view = as_model(model, structure=structure)
        return self._hooked(view, self._targets(view, strict), strength)

    @contextlib.contextmanager
    def _hooked(self, view: ModelView, modules: list[nn.Module], strength: float) -> Iterator[nn.Module]:
        handles = []
        try:
            for i, module in enumerate(modules):
                if strength == 0.0:
                    break
                term = self._hook_term(i, strength, linear_weight(module))

                def hook(_module, args, output, term=term):
                    return (output.to(torch.promote_types(output.dtype, torch.float32)) + term(args[0])
                            ).to(output.dtype)

                hook._almostlinear = True  # type: ignore[attr-defined]
                handle = module.register_forward_hook(hook, prepend=True)
                order_after_ours(module._forward_hooks, handle.id)
                handles.append(handle)
            yield view.module
        finally:
            while handles:
                handles.pop().remove()

    def footprint(self) -> list[dict]:
        """Per edited layer: the keys it reads (rows of ``a``) and the residual directions it writes (columns of ``b``)."""
        out = []
        for i, layer in enumerate(self.layers):
            out.append({"where": Where("mlp_key", (layer,)), "basis": self.a[i], "role": "reads"})
            out.append({"where": Where("mlp_out", (layer,)), "basis": self.b[i].T, "role": "writes"})
        return out

    def bake_(self, model: Any, strength: float = 1.0, *, strict: bool = True,
              structure: Structure | None = None) -> Baked:
        """Make the edit permanent; the returned record's ``undo_()`` reverses it exactly.

        Edits baked later on the same layers must be undone first (last baked, first undone). The
        exact mode is a hook and has no permanent form: in half precision, :meth:`realised_error`
        says what the bake keeps.
        """
        view, names, change = self._prepare(model, strength, strict, structure)
        return bake_weights(view, names, change, kind=self.kind)


# The layers live in provenance.where; the dataclass default of the ``layers`` init argument is
# replaced by the property that reads them (assigned after the class is built, so that the
# constructor keeps ``layers=`` for edits built by hand and for files written before).
LowRankEdit.layers = property(lambda self: list(self.provenance.where.layers),
                              doc="The edited layers, from ``provenance.where``.")


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


@dataclass(frozen=True)
class KeyStatistics(Artifact):
    """Second moment of the keys at one layer (``provenance.where``), with the split-half stability.

    ``c`` is ``[d_mlp, d_mlp]`` float64, the per-token mean of ``k kᵀ``; ``half_a``/``half_b``
    (float32) are the moments of the two halves (texts alternate), for the stability figures.
    Not a lever: edits read it, nothing applies it to a model.
    """

    kind = "editing.key_statistics"

    c: torch.Tensor
    half_a: torch.Tensor
    half_b: torch.Tensor
    n_a: int
    n_b: int
    source: str

    def __post_init__(self) -> None:
        if self.c.dim() != 2 or self.c.shape[0] != self.c.shape[1]:
            raise ShapeError(f"C must be square, got {tuple(self.c.shape)}")
        if self.provenance.where is None or self.provenance.where.layer is None:
            raise ShapeError("key statistics need their layer: provenance=Provenance(where=Where.at('mlp_key', layer))")
        if self.provenance.units is not None and self.provenance.units not in UNITS:
            # files from before the units vocabulary described the moment's units here; it has no strength
            object.__setattr__(self, "provenance", dataclasses.replace(self.provenance, units=None))

    @property
    def layer(self) -> int:
        return self.provenance.where.layer

    @property
    def n_tokens(self) -> int:
        return self.n_a + self.n_b

    @property
    def dim(self) -> int:
        return self.c.shape[0]

    @property
    def stability(self) -> float:
        """``‖C_A − C_B‖_F / ‖C‖_F`` between the two halves; shrinks like ``1/√n``.

        For a near-isotropic ``C`` sampling noise alone gives about ``√(2 d / n)`` (0.55 for
        SmolLM2's d = 1536 from 10,000 tokens per half), so layers whose ``C`` is dominated by a
        few directions look steadier; what an edit needs is :meth:`whitening_agreement`.
        """
        return relative_difference(self.half_a.double(), self.half_b.double(), self.c)

    @cached_property
    def content_hash(self) -> str:
        """Digest of ``C`` itself, recorded in every edit made with it (computed once: at 8B scale C is
        1.6 GB)."""
        return digest(self.c.contiguous().numpy().tobytes())

    def condition_number(self) -> float:
        values = torch.linalg.eigvalsh(self.c)
        return float(values[-1] / values[0].clamp_min(1e-300))

    def whitening_agreement(self, keys: torch.Tensor, *, relative_ridge: float = 1e-4) -> torch.Tensor:
        """Cosine between ``C_A⁻¹k`` and ``C_B⁻¹k`` for each key row: does the edit direction
        ``u`` depend on which half of the text the statistics came from?"""
        from .solvers import whitened_key

        keys = keys.double().reshape(-1, self.dim)
        ua = torch.stack([whitened_key(self.half_a.double(), k, relative_ridge=relative_ridge) for k in keys])
        ub = torch.stack([whitened_key(self.half_b.double(), k, relative_ridge=relative_ridge) for k in keys])
        return torch.nn.functional.cosine_similarity(ua, ub, dim=-1)

    def merge(self, other: KeyStatistics) -> KeyStatistics:
        """Statistics of both sources together (token-weighted), halves merged pairwise."""
        if other.dim != self.dim or other.layer != self.layer:
            raise ShapeError(
                f"cannot merge statistics of layer {self.layer} width {self.dim} with layer {other.layer} "
                f"width {other.dim}"
            )
        na, nb = self.n_a + other.n_a, self.n_b + other.n_b
        half_a = (self.half_a.double() * self.n_a + other.half_a.double() * other.n_a) / max(na, 1)
        half_b = (self.half_b.double() * self.n_b + other.half_b.double() * other.n_b) / max(nb, 1)
        c = (self.c * self.n_tokens + other.c * other.n_tokens) / (self.n_tokens + other.n_tokens)
        return KeyStatistics(c=c, half_a=half_a.float(), half_b=half_b.float(), n_a=na, n_b=nb,
                             source=f"{self.source}+{other.source}", provenance=self.provenance)
