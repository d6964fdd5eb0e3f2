"""Weight spectra: SVDs of OV circuits and MLP weights, their ranks, and their top directions as tokens.

Read-only levers on the weights; no forward pass (except one single-token check that tells the two
fused-QKV layouts apart, see :mod:`.heads`).
"""

from __future__ import annotations

from ..core.lazy import lazy_exports

_PUBLIC = {
    "coherence": ("Coherence", "CoherenceScorer", "auc_greater", "mean_pairwise_cosine"),
    "heads": ("FUSED_LAYOUTS", "HeadLayout", "head_layout", "ov_factors", "ov_matrix"),
    "ranks": ("effective_rank", "gram_svd", "product_svd", "stable_rank"),
    "spectrum": ("KINDS", "Spectrum", "mlp_matrices", "mlp_spectra", "ov_spectra", "weight_spectra"),
    "tokens": ("TokenDirection", "TokenReader", "decode_each"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)
