"""Lenses: read a layer's residual stream as next-token predictions.

* :class:`LogitLens`: the model's own final norm and unembedding, no parameters.
* :class:`AffineLens`: per-state ridge regression to the last block's residual, in closed form from
  streamed moments (:func:`fit_affine_lens`, :class:`AffineLensFitter`); ``method="bias"`` is the
  bias-only baseline.
* :class:`TunedLens`: the same translators trained by SGD on the KL to the final distribution
  (arXiv 2303.08112; :func:`train_tuned_lens`), optionally warm-started from the affine lens.
* :func:`evaluate_lens` / :class:`LensScorer`: per-state KL and top-1 agreement; :func:`lens_table`
  and :func:`plot_lens_table`: the top token per layer and position for one prompt.
"""

from .affine import RIDGES, AffineLens, AffineLensFitter, fit_affine_lens
from .evaluate import LensEvaluation, LensScorer, evaluate_lens, evaluate_lenses, states_of
from .logit import LogitLens, kl_and_agreement, lens_sites
from .table import LensRow, format_lens_table, lens_table, plot_lens_table, prompt_tokens
from .translator import DecodedLens, Translators
from .tuned import TunedLens, TunedLensSettings, TunedLensTrainer, train_tuned_lens

__all__ = [
    "RIDGES", "AffineLens", "AffineLensFitter", "DecodedLens", "LensEvaluation", "LensRow", "LensScorer",
    "LogitLens", "Translators", "TunedLens", "TunedLensSettings", "TunedLensTrainer", "evaluate_lens",
    "evaluate_lenses", "fit_affine_lens", "format_lens_table", "kl_and_agreement", "lens_sites", "lens_table",
    "plot_lens_table", "prompt_tokens", "states_of", "train_tuned_lens",
]
