"""LoRA arithmetic: PEFT adapter folders in and out, exact combination of ΔW = scale·BA, SVD to a
target rank with the error stated, and the distance of PEFT's own combinations from the exact sum."""

from __future__ import annotations

from .combine import (SvdCombination, combine_exact, combine_svd, exact_sum, linear_factor_mix,
                      relative_error)
from .lora import LoraAdapter, LoraFactors, read_peft, write_peft
from .peft_compare import peft_combination, peft_error

__all__ = [
    "LoraAdapter", "LoraFactors", "SvdCombination", "combine_exact", "combine_svd", "exact_sum",
    "linear_factor_mix", "peft_combination", "peft_error", "read_peft", "relative_error", "write_peft",
]
