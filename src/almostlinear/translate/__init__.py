"""Maps between representation spaces: affine, orthogonal and low-rank maps between models or layers,
held-out R² and retrieval, model stitching, and transfer of steering vectors and probes through a map."""

from .artifact import Evaluation, MapArtifact, MapScores, TrainingRowsError, evaluate, row_hashes, split_rows
from .cross import CrossModelScores, DirectionScores, cross_model_scores
from .maps import (
    Fitted,
    choose_ridge,
    fit_affine,
    fit_low_rank,
    fit_map,
    fit_orthogonal,
    fit_ridge,
    r2_score,
    retrieval_top1,
)
from .pool import pool_rows, text_vectors
from .stitch import Network, StitchResult, fit_stitch, paired_activations, stitched_loss
from .transfer import (
    SteeringTransfer,
    mean_difference,
    sentiment_shift,
    steering_transfer,
    transfer_probe,
    transfer_vector,
)

__all__ = [
    "CrossModelScores", "DirectionScores", "Evaluation", "Fitted", "MapArtifact", "MapScores", "Network",
    "SteeringTransfer", "StitchResult", "TrainingRowsError", "choose_ridge", "cross_model_scores", "evaluate",
    "fit_affine", "fit_low_rank", "fit_map", "fit_orthogonal", "fit_ridge", "fit_stitch", "mean_difference",
    "paired_activations", "pool_rows", "r2_score", "retrieval_top1", "row_hashes", "sentiment_shift", "split_rows",
    "steering_transfer", "stitched_loss", "text_vectors", "transfer_probe", "transfer_vector",
]
