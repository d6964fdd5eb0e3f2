"""How far PEFT's own ``add_weighted_adapter`` combinations are from the exact sum of ΔW."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

from ..core.errors import MissingDependencyError
from ..core.lever import as_model
from .combine import relative_error
from .lora import LoraAdapter, LoraFactors, read_peft


def peft_combination(model: Any, folders: Sequence[str | os.PathLike], weights: Sequence[float], *,
                     combination_type: str = "linear", **kwargs) -> LoraAdapter:
    """Load the adapter folders into a copy of ``model`` with PEFT, combine them with
    ``add_weighted_adapter(combination_type=...)`` and return the result as factors."""
    try:
        from peft import PeftModel
    except ImportError as error:  # pragma: no cover
        raise MissingDependencyError("comparing with PEFT needs the 'peft' package: pip install peft") from error
    names = [f"a{i}" for i in range(len(folders))]
    peft_model = PeftModel.from_pretrained(copy.deepcopy(as_model(model).module), str(folders[0]),
                                           adapter_name=names[0])
    for name, folder in zip(names[1:], folders[1:]):
        peft_model.load_adapter(str(folder), adapter_name=name)
    peft_model.add_weighted_adapter(names, list(weights), "combined", combination_type=combination_type, **kwargs)
    modules = {}
    for full, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "combined" in getattr(module, "lora_A", {}):
            name = full.removeprefix("base_model.model.")
            A = module.lora_A["combined"].weight.detach().clone()
            B = module.lora_B["combined"].weight.detach().clone()
            scale = float(module.scaling["combined"])
            modules[name] = LoraFactors(A, B, scale, bool(getattr(module, "fan_in_fan_out", False)))
    return LoraAdapter(modules, {})


def peft_error(model: Any, folders: Sequence[str | os.PathLike], weights: Sequence[float], *,
               combination_type: str = "linear", **kwargs) -> dict[str, float]:
    """Relative Frobenius error of PEFT's combination against Σ wᵢ ΔWᵢ (per module and ``"total"``)."""
    combined = peft_combination(model, folders, weights, combination_type=combination_type, **kwargs)
    return relative_error(combined, [read_peft(f) for f in folders], weights)
