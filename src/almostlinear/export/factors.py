"""Weight levers as LoRA factors: ``ΔW = B A`` per module, exact where the lever is low rank.

* ROME / MEMIT / AlphaEdit edits store ``B`` and ``A`` already: exact, rank ``r`` per edited layer.
* A directional ablation baked into the weights changes every residual-stream writer by
  ``ΔW = −s Pᵀ (P W)`` (``P`` the orthonormal basis ``[k, d]``): exact, rank ``k`` per writer, and the
  same for the embeddings (PEFT's embedding LoRA, which leaves a tied output head as it was, as the
  bake does when it unties the head).
* A task vector (a fine-tune or a merge relative to a base) is truncated by SVD to a chosen rank, or
  to the smallest rank meeting a target relative error (Eckart–Young; :mod:`.lowrank`). The norm
  weights and biases it changes cannot be factors: their modules are stored whole, exactly (PEFT's
  ``modules_to_save``).

Levers with no low-rank weight form are refused with the reason: a steering vector is a bias, a
permutation a full-rank reordering, hook-only levers act on activations. Several levers become one
adapter by concatenating their factors along the rank, which adds their ``ΔW`` exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.errors import LeverError, ShapeError
from ..core.lever import as_model, check_fingerprint, check_strength, parameter_value
from ..core.locate import is_conv1d, is_linear
from .lowrank import truncate

Tensor = torch.Tensor
# Relative size of a bias's component along an ablated direction below which it counts as none
BIAS_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Factors:
    """One module's update. Linear: ``ΔW [out, in] = B @ A``. Embedding: ``ΔE [vocab, d] = (B @ A)ᵀ``
    (``A`` ``[r, vocab]``, ``B`` ``[d, r]``, PEFT's ``lora_embedding_A/B``). Float64."""

    A: Tensor
    B: Tensor
    embedding: bool = False
    conv1d: bool = False  # GPT-2's Conv1D stores the weight as [in, out]; PEFT transposes for it

    def __post_init__(self) -> None:
        if self.A.dim() != 2 or self.B.dim() != 2 or self.A.shape[0] != self.B.shape[1]:
            raise ShapeError(f"factors do not fit: A {tuple(self.A.shape)}, B {tuple(self.B.shape)}")

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def delta(self) -> Tensor:
        """The change in the module's own orientation: ``[out, in]`` for linear, ``[vocab, d]`` for embeddings."""
        d = self.B.double() @ self.A.double()
        return d.T if self.embedding else d


@dataclass
class AdapterPlan:
    """Factors per module (names as in the model), the levers they came from and what was lost.

    ``errors`` holds the relative Frobenius error of each truncated module (absent: exact);
    ``total_error`` pools them over every module of the plan (``‖ΔW − ΔW_k‖ / ‖ΔW‖`` over all).
    """

    modules: dict[str, Factors] = field(default_factory=dict)
    saved: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # modules stored whole: parameter → value
    levers: list[dict] = field(default_factory=list)
    errors: dict[str, float] = field(default_factory=dict)
    lost: float = 0.0
    total: float = 0.0

    @property
    def total_error(self) -> float:
        return (self.lost / self.total) ** 0.5 if self.total > 0 else 0.0

    @property
    def exact(self) -> bool:
        return not self.errors or max(self.errors.values()) == 0.0

    def fold_into_saved(self) -> None:
        """A module stored whole takes the factors other levers put on it into its weight (exactly)."""
        for name in [n for n in self.modules if n in self.saved]:
            factors = self.modules.pop(name)
            weight = self.saved[name]["weight"]
            delta = factors.delta()
            delta = delta.T if factors.conv1d else delta  # the weight as stored
            self.saved[name]["weight"] = (weight.double() + delta).to(weight.dtype)

    def add(self, name: str, factors: Factors) -> None:
        """Add ``factors`` to module ``name``: concatenated along the rank, so the ΔW add exactly."""
        have = self.modules.get(name)
        if have is None:
            self.modules[name] = factors
            return
        if have.embedding != factors.embedding or have.A.shape[1] != factors.A.shape[1] \
                or have.B.shape[0] != factors.B.shape[0]:
            raise ShapeError(f"two levers change module {name!r} in incompatible ways")
        self.modules[name] = Factors(torch.cat([have.A, factors.A], 0), torch.cat([have.B, factors.B], 1),
                                     have.embedding, have.conv1d)


def module_names(root: nn.Module) -> dict[int, str]:
    """``id(module) → qualified name`` (the first name of a shared module)."""
    names: dict[int, str] = {}
    for name, module in root.named_modules():
        names.setdefault(id(module), name)
    return names


def _linear(module: nn.Module, A: Tensor, B: Tensor) -> Factors:
    return Factors(A.double(), B.double(), embedding=False, conv1d=is_conv1d(module))


# --- one lever → factors --------------------------------------------------------------------------


def edit_factors(edit, model, strength: float, *, strict: bool = True) -> dict[str, Factors]:
    """A ROME / MEMIT / AlphaEdit edit: its own factors on each edited down projection (exact)."""
    view = as_model(model)
    strength = check_strength(strength, edit.strength_units[0])
    modules = edit._targets(view, strict)  # the edit's own checks: shapes, base-weight hashes, MoE
    names = module_names(view.module)
    return {names[id(m)]: _linear(m, edit.a[i].double(), edit.b[i].double() * strength)
            for i, m in enumerate(modules)}


def ablation_factors(ablation, model, strength: float, *, strict: bool = False) -> dict[str, Factors]:
    """A directional ablation as its bake writes it: ``ΔW = −s Pᵀ(P W)`` on every residual writer (exact)."""
    from ..steering.ablation import _refuse, orthonormal_basis, residual_writers

    if ablation.layers:
        raise LeverError("only an all-layer ablation (layers=()) has a weight form; one limited to some layers "
                         "acts on their activations with hooks, which no adapter can carry")
    fraction = check_strength(strength, "fraction")
    view = as_model(model)
    check_fingerprint(ablation, view, strict=strict)
    structure = view.structure
    _refuse(structure)  # post-norm and mixture-of-experts models: the bake is not the hooked ablation there
    basis = orthonormal_basis(ablation.directions, structure.d_model)
    embeddings, projections = residual_writers(view.module, structure)
    names = module_names(view.module)
    out: dict[str, Factors] = {}
    for proj in projections:
        bias = getattr(proj, "bias", None)
        if bias is not None:
            b = bias.detach().double().to("cpu")
            along = float((basis @ b).norm())
            if along > BIAS_TOLERANCE * max(float(b.norm()), 1.0):
                raise LeverError(f"{names[id(proj)]} has a bias with a component along the ablated direction, and a "
                                 "LoRA adapter that also changes the embeddings cannot change biases (PEFT has no "
                                 "bias for embedding LoRA): export with --to hf (plain weights) instead")
        weight = parameter_value(view, proj.weight).detach().double().to("cpu")
        weight = weight.T if is_conv1d(proj) else weight  # [out = d_model, in]
        out[names[id(proj)]] = _linear(proj, basis @ weight, -fraction * basis.T)
    for emb in embeddings:
        table = parameter_value(view, emb.weight).detach().double().to("cpu")  # [vocab, d]
        out[names[id(emb)]] = Factors(basis @ table.T, -fraction * basis.T, embedding=True)
    return out


def task_vector_factors(vector, model, strength: float, *, rank: int | None = None,
                        target_error: float | None = None, strict: bool = False, full_modules: bool = True
                        ) -> tuple[dict[str, Factors], dict[str, tuple[float, float, float]],
                                   dict[str, dict[str, Tensor]]]:
    """A task vector's matrices truncated by SVD, and the modules it changes that factors cannot hold.

    Returns ``(factors, errors, saved)``: ``errors[name] = (relative error, lost, total)``;
    ``saved[module] = {parameter: new value}`` for each module with a changed vector (a norm weight
    or a bias), which PEFT stores whole (``modules_to_save``), exactly. With ``full_modules=False``
    such a task vector is refused instead. Without ``rank`` or ``target_error`` each matrix keeps
    its numerical rank (exact, possibly large). Tied parameters share one storage, which the task
    vector changes once (the first name it lists); every module that uses it receives the same factors.
    """
    view = as_model(model)
    strength = check_strength(strength, vector.strength_units[0])
    check_fingerprint(vector, view, strict=strict)
    module = view.module
    params = dict(module.named_parameters(remove_duplicate=False))
    owners: dict[int, list[nn.Module]] = {}  # storage → the modules whose weight it is
    for m in module.modules():
        w = m._parameters.get("weight") if hasattr(m, "_parameters") else None
        if w is not None:
            owners.setdefault(w.data_ptr(), []).append(m)
    names = module_names(module)
    changed: dict[str, Tensor] = {}  # parameter → delta, once per storage, untouched tensors left out
    seen: set[int] = set()
    for key, delta in vector.deltas.items():
        if key not in params:
            raise ShapeError(f"the model has no parameter {key!r} for this task vector")
        p = params[key]
        if tuple(p.shape) != tuple(delta.shape):
            raise ShapeError(f"tensor {key!r}: task vector {tuple(delta.shape)}, model {tuple(p.shape)}")
        if p.data_ptr() not in seen and bool(delta.ne(0).any()):
            changed[key] = delta
        seen.add(p.data_ptr())
    vectors = [key for key, delta in changed.items() if delta.dim() != 2 or not key.endswith(".weight")]
    if vectors and not full_modules:
        shown = ", ".join(repr(v) for v in vectors[:4]) + (f" and {len(vectors) - 4} more" if len(vectors) > 4 else "")
        raise LeverError(f"this task vector changes vectors ({shown}: norm weights or biases), which LoRA factors "
                         "cannot hold: store those modules whole (full_modules=True), export with --to hf (plain "
                         "weights), or drop those tensors from the task vector first")
    whole = {key.rpartition(".")[0] for key in vectors}
    saved: dict[str, dict[str, Tensor]] = {}
    for owner in sorted(whole):
        target = module.get_submodule(owner) if owner else module
        values = {}
        for leaf, p in target.named_parameters(recurse=False):
            if len(owners.get(p.data_ptr(), [target])) > 1:
                raise LeverError(f"{owner}.{leaf} is shared with another module, which a module stored whole would "
                                 "untie: export this task vector with --to hf (plain weights)")
            base = parameter_value(view, p).detach().to("cpu")
            delta = changed.get(f"{owner}.{leaf}" if owner else leaf)
            values[leaf] = base.clone() if delta is None else (base.double() + strength * delta.double()).to(base.dtype)
        saved[owner] = values
    out: dict[str, Factors] = {}
    errors: dict[str, tuple[float, float, float]] = {}
    for key, delta in changed.items():
        if key in vectors or key.rpartition(".")[0] in whole:
            continue  # held by a module stored whole
        p = params[key]
        targets = owners.get(p.data_ptr(), [])
        if not targets or not all(is_linear(t) or isinstance(t, nn.Embedding) for t in targets):
            kinds = sorted({type(t).__name__ for t in targets}) or ["no module"]
            raise LeverError(f"{key!r} belongs to {', '.join(kinds)}; LoRA factors exist for linear and embedding "
                             "layers only: export this task vector with --to hf (plain weights)")
        oriented = delta.double() * strength
        for t in targets:
            name = names[id(t)]
            if isinstance(t, nn.Embedding):
                # [d, vocab] = B A, PEFT's orientation for embedding factors
                cut = truncate(oriented.T, rank=rank, target_error=target_error, precision=delta.dtype)
                out[name] = Factors(cut.A, cut.B, embedding=True)
            else:
                cut = truncate(oriented.T if is_conv1d(t) else oriented, rank=rank, target_error=target_error,
                               precision=delta.dtype)
                out[name] = _linear(t, cut.A, cut.B)
            errors[name] = (cut.error, cut.lost, cut.total)
    return out, errors, saved


def lora_factors(adapter, model, strength: float) -> dict[str, Factors]:
    """A LoRA adapter read from a PEFT folder (or combined): its own factors, scale folded into ``B``."""
    strength = check_strength(strength, adapter.strength_units[0])
    view = as_model(model)
    adapter._weights(view.module)  # every module present, with the adapter's shape
    named = dict(view.module.named_modules())
    return {name: _linear(named[name], f.A.double(), f.B.double() * (f.scale * strength))
            for name, f in adapter.modules.items()}


REFUSALS = {
    "steering.vector": "a steering vector adds a constant vector, i.e. a bias, which LoRA factors cannot hold: "
                       "export it with --to gguf (llama.cpp control vector) or --to hf (a bias in plain weights)",
    "connectivity.permutation": "a permutation reorders hidden units, so its weight difference is full rank and a "
                                "low-rank adapter cannot hold it: apply it (bake_) and export with --to hf",
}


def plan_adapter(levers: Sequence[Any], model, *, strengths: Sequence[float] | None = None, rank: int | None = None,
                 target_error: float | None = None, strict: bool = False, full_modules: bool = True) -> AdapterPlan:
    """Factors of several levers in one adapter (ΔW of levers on the same module add exactly).

    Every lever is checked before anything is returned; a lever without a low-rank weight form is
    refused with the reason (:data:`REFUSALS`).
    """
    from ..adapters.lora import LoraAdapter
    from ..editing.artifact import LowRankEdit
    from ..merging.artifact import TaskVector
    from ..steering.artifact import DirectionalAblation

    strengths = [1.0] * len(levers) if strengths is None else list(strengths)
    if len(strengths) != len(levers):
        raise ShapeError(f"{len(strengths)} strengths for {len(levers)} levers")
    if not levers:
        raise LeverError("no levers to export")
    plan = AdapterPlan()
    for lever, strength in zip(levers, strengths):
        kind = getattr(lever, "kind", type(lever).__name__)
        if isinstance(lever, LowRankEdit):
            found = edit_factors(lever, model, strength, strict=strict)
        elif isinstance(lever, DirectionalAblation):
            found = ablation_factors(lever, model, strength, strict=strict)
        elif isinstance(lever, TaskVector):
            found, errors, saved = task_vector_factors(lever, model, strength, rank=rank, target_error=target_error,
                                                       strict=strict, full_modules=full_modules)
            for name, values in saved.items():
                if name in plan.saved:
                    raise LeverError(f"two task vectors change the vectors of module {name!r}; add them into one "
                                     "task vector first")
                plan.saved[name] = values
            for name, (error, lost, total) in errors.items():
                plan.errors[name] = error
                plan.lost += lost
                plan.total += total
        elif isinstance(lever, LoraAdapter):
            found = lora_factors(lever, model, strength)
        elif kind in REFUSALS:
            raise LeverError(f"{kind} cannot be a LoRA adapter: {REFUSALS[kind]}")
        else:
            raise LeverError(f"{kind} has no LoRA form: it acts on activations with hooks (or is not a lever); "
                             "only weight levers (edits, all-layer ablations, task vectors and merges) export to PEFT")
        for name, factors in found.items():
            plan.add(name, factors)
        plan.levers.append({"lever": lever, "strength": float(strength), "modules": sorted(found)})
    plan.fold_into_saved()
    return plan
