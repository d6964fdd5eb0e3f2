"""LoRA arithmetic: PEFT adapter folders in and out, exact combination of ΔW = scale·BA, SVD to a
target rank with the error stated, and the distance of PEFT's own combinations from the exact sum."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

# Names resolve on first use: building the command-line parser imports this package to reach its
# cli module, and should not pay for torch.
_PUBLIC = {
    "combine": ("SvdCombination", "combine_exact", "combine_svd", "exact_sum", "linear_factor_mix",
        "relative_error"),
    "lora": ("LoraAdapter", "LoraFactors", "read_peft", "write_peft"),
    "peft_compare": ("peft_combination", "peft_error"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)


if TYPE_CHECKING:
    from .combine import (SvdCombination, combine_exact, combine_svd, exact_sum, linear_factor_mix,
                          relative_error)
    from .lora import LoraAdapter, LoraFactors, read_peft, write_peft
    from .peft_compare import peft_combination, peft_error
