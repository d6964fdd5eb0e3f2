"""Representational similarity: how alike are two layers, or two models, on the same examples?

All measures take activations ``x`` ``[n, d_x]`` and ``y`` ``[n, d_y]`` whose rows are the same
examples (tokens), an optional boolean ``mask`` ``[n]``, and work in float64:

* :func:`linear_cka` (plain or debiased) and :class:`StreamingCKA` for data that do not fit at once;
* :func:`procrustes_similarity` / :func:`procrustes_distance` (orthogonal Procrustes);
* :func:`mean_cca`, :func:`svcca`, :func:`pwcca`, :func:`canonical_correlations`;
* :func:`rdm` and :func:`rsa` (representational similarity analysis);
* :func:`encoding_r2` (held-out ridge regression from ``x`` to ``y``);
* :func:`layer_similarity` for a whole ``[layers, layers]`` matrix, within a model or across two.
"""

from .cca import canonical_correlations, mean_cca, pwcca, svcca
from .cka import linear_cka, linear_hsic
from .encoding import EncodingScore, encoding_r2
from .layers import MEASURES, KernelStats, adjacent, kernel_stats, layer_similarity
from .procrustes import procrustes_distance, procrustes_similarity
from .rsa import rdm, rsa
from .streaming import CKAEstimate, StreamingCKA

__all__ = [
    "MEASURES", "CKAEstimate", "EncodingScore", "KernelStats", "StreamingCKA", "adjacent",
    "canonical_correlations", "encoding_r2", "kernel_stats", "layer_similarity", "linear_cka", "linear_hsic",
    "mean_cca", "procrustes_distance", "procrustes_similarity", "pwcca", "rdm", "rsa", "svcca",
]
