"""LoRA arithmetic: PEFT adapter folders in and out, exact combination of ΔW = scale·BA, SVD to a
target rank with the error stated, and the distance of PEFT's own combinations from the exact sum."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_HOMES = {  # public name -> module: imported on first use, so that the CLI parser (which
    # imports this package to reach its cli module) does not pay for torch
    "LoraAdapter": "lora",
    "LoraFactors": "lora",
    "SvdCombination": "combine",
    "combine_exact": "combine",
    "combine_svd": "combine",
    "exact_sum": "combine",
    "linear_factor_mix": "combine",
    "peft_combination": "peft_compare",
    "peft_error": "peft_compare",
    "read_peft": "lora",
    "relative_error": "combine",
    "write_peft": "lora",
}

__all__ = [
    "LoraAdapter", "LoraFactors", "SvdCombination", "combine_exact", "combine_svd", "exact_sum",
    "linear_factor_mix", "peft_combination", "peft_error", "read_peft", "relative_error", "write_peft",
]


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .combine import (SvdCombination, combine_exact, combine_svd, exact_sum, linear_factor_mix,
                          relative_error)
    from .lora import LoraAdapter, LoraFactors, read_peft, write_peft
    from .peft_compare import peft_combination, peft_error
