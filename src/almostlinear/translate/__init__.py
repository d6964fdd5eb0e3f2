"""Maps between representation spaces: affine, orthogonal and low-rank maps between models or layers,
held-out R² and retrieval, model stitching, and transfer of steering vectors and probes through a map."""

from __future__ import annotations

from ..core.lazy import lazy_exports

# Names resolve on first use, so importing ``almostlinear.translate.cli`` to build the parser does not import torch.
_PUBLIC = {
    "artifact": ("Evaluation", "LinearMap", "MapScores", "TrainingRowsError", "evaluate", "row_hashes", "split_rows"),
    "cross": ("CrossModelScores", "DirectionScores", "cross_model_scores"),
    "maps": ("Fitted", "choose_ridge", "fit_affine", "fit_low_rank", "fit_map", "fit_orthogonal", "fit_ridge",
             "r2_score", "retrieval_top1"),
    "pool": ("pool_rows", "text_vectors"),
    "stitch": ("Network", "StitchResult", "fit_stitch", "paired_activations", "stitched_loss"),
    "transfer": ("SteeringTransfer", "mean_difference", "sentiment_shift", "steering_transfer", "transfer_probe",
                 "transfer_vector"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)
