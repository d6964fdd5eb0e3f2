"""Hyperparameters of ROME, MEMIT and AlphaEdit, with defaults scaled to the model's depth."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..core.lever import as_model
from ..core.locate import Structure

# Edit layers across published configurations sit at 15-35 % of the depth (GPT-J 5/28, Llama 5/32,
# GPT-2 XL 17/48, GPT-2 M 8/24; arXiv 2202.05262 and the released hparams). On SmolLM2-135M a sweep
# of layers 3, 6 and 9 (5 CounterFact-style cases each, benchmarks/results_editing.md) gave
# S = 98 at layer 3 against 69 at layer 6: deeper, the bare prompt's key drifts from the
# template-averaged one (uᵀk = 0.34 instead of 1 on a failed case), so the edit misses it.
DEFAULT_DEPTH = 0.1


@dataclass(frozen=True)
class EditHyperParams:
    """Everything an edit's result depends on besides the model, the request and the statistics.

    Value optimisation (ROME's ``compute_v``): ``v_steps`` Adam steps at ``v_lr`` on the target NLL
    plus ``kl_factor`` × KL on ``kl_prompt`` plus ``v_weight_decay`` × ‖δ‖/‖v‖² (the form of ROME's
    released code), the offset ``δ`` kept within ``clamp_norm_factor`` × ‖v‖ (``v`` = the unedited
    output there); stops early once the target's NLL is below ``early_stop_loss``. Keys and values
    are averaged over the bare prompt and generated prefixes (``n_prefixes`` of each length in
    ``prefix_lengths``).
    """

    layer: int | None = None
    layers: tuple[int, ...] | None = None
    prefix_lengths: tuple[int, ...] = (5, 10)
    n_prefixes: int = 5
    v_steps: int = 25
    v_lr: float = 0.5
    kl_factor: float = 0.0625
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    early_stop_loss: float = 0.05
    kl_prompt: str = "{} is a"
    ridge: float = 1e-4  # relative to tr(C)/d, added before inverting C
    z_lr: float = 0.5  # MEMIT/AlphaEdit: the offset on the last edited layer's residual stream
    z_clamp_norm_factor: float = 0.75
    mom2_update_weight: float = 15000.0  # MEMIT's λ (GPT-J's); hparams_for rescales it by d_mlp
    nullspace_energy: float = 1e-2  # AlphaEdit: share of tr(C) in the preserved-key null space
    l2: float = 10.0  # AlphaEdit's α
    stats_tokens: int = 20_000
    seed: int = 0

    def replace(self, **changes) -> EditHyperParams:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def _structure(model: Any) -> Structure:
    """A structure as given, or that of a module or ``LoadedModel``."""
    return model if isinstance(model, Structure) else as_model(model).structure


def default_layer(model: Any) -> int:
    """The ROME layer: ``DEFAULT_DEPTH`` of the depth (layer 3 of SmolLM2's 30)."""
    structure = _structure(model)
    return min(structure.n_layers - 1, max(0, round(DEFAULT_DEPTH * structure.n_layers)))


def default_layers(model: Any, width: int = 5) -> tuple[int, ...]:
    """MEMIT/AlphaEdit layers: ``width`` consecutive layers ending at the ROME layer, as MEMIT
    ends its range at the causal-tracing peak (GPT-J [3..8] with ROME at 5)."""
    structure = _structure(model)
    last = max(default_layer(structure), min(width - 1, structure.n_layers - 1))
    first = max(0, last - width + 1)
    return tuple(range(first, last + 1))


def hparams_for(model: Any, **overrides) -> EditHyperParams:
    """Defaults for this model's size (layers from its depth), with ``overrides`` applied."""
    structure = _structure(model)
    # MEMIT's λ weighs λ C against k kᵀ; for keys drawn like C's own, E[kᵀC⁻¹k] = d_mlp, so a layer
    # writes the share s / (1 + s), s ≈ d_mlp / λ, of its target. Keeping GPT-J's share (λ = 15,000
    # at d_mlp = 16,384, arXiv 2210.07229) means λ ∝ d_mlp; SmolLM2's 1536 gives 1,406.
    weight = 15000.0 * structure.d_mlp / 16384
    base = EditHyperParams(layer=default_layer(structure), layers=default_layers(structure),
                           mom2_update_weight=weight)
    return base.replace(**overrides) if overrides else base
