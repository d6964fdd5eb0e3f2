"""Truth directions from contrast pairs, with and without labels, and the distractor sanity check.

Unsupervised: CCS (arXiv 2212.03827) and contrast-pair PCA. Supervised baselines on the same
pairs: mean difference and logistic regression. :func:`distractor_check` plants a feature that is
independent of truth and reports which one each method follows (arXiv 2312.10029).
"""

from .ccs import ccs_loss, credence, fit_ccs
from .direction import TruthDirection
from .distractor import ALL_METHODS, DistractorResult, distractor_check, fit_methods
from .methods import ContrastDirections, fit_contrast_pca, fit_logistic_difference, fit_mean_difference
from .normalise import PairNormaliser, balanced_accuracy, sign_free_accuracy
from .prompts import ContrastPrompt, contrast_prompts, whole_subjects

__all__ = [
    "ALL_METHODS", "ContrastDirections", "ContrastPrompt", "DistractorResult", "PairNormaliser",
    "TruthDirection", "balanced_accuracy", "ccs_loss", "contrast_prompts", "credence",
    "distractor_check", "fit_ccs", "fit_contrast_pca", "fit_logistic_difference", "fit_mean_difference",
    "fit_methods", "sign_free_accuracy", "whole_subjects",
]
