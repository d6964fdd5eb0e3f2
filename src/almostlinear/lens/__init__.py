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

from __future__ import annotations

from ..core.lazy import lazy_exports

# Names resolve on first use, so importing ``almostlinear.lens.cli`` to build the parser does not import torch.
_PUBLIC = {
    "affine": ("RIDGES", "AffineLensFitter", "fit_affine_lens"),
    "artifact": ("AffineLens", "DecodedLens", "Translators", "TunedLens"),
    "evaluate": ("LensEvaluation", "LensScorer", "evaluate_lens", "evaluate_lenses", "states_of"),
    "logit": ("LogitLens", "kl_and_agreement", "lens_sites"),
    "table": ("LensRow", "format_lens_table", "lens_table", "plot_lens_table", "prompt_tokens"),
    "tuned": ("TunedLensSettings", "TunedLensTrainer", "train_tuned_lens"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)
