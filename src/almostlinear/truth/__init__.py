"""Truth directions from contrast pairs, with and without labels, and the distractor sanity check.

Unsupervised: CCS (arXiv 2212.03827) and contrast-pair PCA. Supervised baselines on the same
pairs: mean difference and logistic regression. :func:`distractor_check` plants a feature that is
independent of truth and reports which one each method follows (arXiv 2312.10029).
"""

from __future__ import annotations

from ..core.lazy import lazy_exports

# Names resolve on first use, so importing the package does not import torch.
_PUBLIC = {
    "artifact": ("TruthDirection",),
    "ccs": ("ccs_loss", "credence", "fit_ccs"),
    "distractor": ("ALL_METHODS", "DistractorResult", "distractor_check", "fit_methods"),
    "methods": ("ContrastDirections", "fit_contrast_pca", "fit_logistic_difference", "fit_mean_difference"),
    "normalise": ("PairNormaliser", "balanced_accuracy", "sign_free_accuracy"),
    "prompts": ("ContrastPrompt", "contrast_prompts", "whole_subjects"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)
