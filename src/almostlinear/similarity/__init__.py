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

from __future__ import annotations

from ..core.lazy import lazy_exports

_PUBLIC = {
    "cca": ("canonical_correlations", "mean_cca", "pwcca", "svcca"),
    "cka": ("linear_cka", "linear_hsic"),
    "encoding": ("EncodingScore", "encoding_r2"),
    "layers": ("MEASURES", "KernelStats", "adjacent", "kernel_stats", "layer_similarity"),
    "procrustes": ("procrustes_distance", "procrustes_similarity"),
    "rdms": ("rdm", "rsa"),
    "streaming": ("CKAEstimate", "StreamingCKA"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)
