"""Weight spectra: SVDs of OV circuits and MLP weights, their ranks, and their top directions as tokens.

Read-only levers on the weights; no forward pass (except one single-token check that tells the two
fused-QKV layouts apart, see :mod:`.heads`).
"""

from .coherence import Coherence, CoherenceScorer, auc_greater, mean_pairwise_cosine
from .heads import FUSED_LAYOUTS, HeadLayout, head_layout, ov_factors, ov_matrix
from .ranks import effective_rank, gram_svd, product_svd, stable_rank
from .spectrum import KINDS, Spectrum, mlp_matrices, mlp_spectra, ov_spectra, weight_spectra
from .tokens import TokenDirection, TokenReader, decode_each

__all__ = [
    "FUSED_LAYOUTS", "KINDS", "Coherence", "CoherenceScorer", "HeadLayout", "Spectrum", "TokenDirection",
    "TokenReader", "auc_greater", "decode_each", "effective_rank", "gram_svd", "head_layout",
    "mean_pairwise_cosine", "mlp_matrices", "mlp_spectra", "ov_factors", "ov_matrix", "ov_spectra", "product_svd",
    "stable_rank", "weight_spectra",
]
