"""Superposition: sparse autoencoders (TopK, arXiv 2406.04093, and ReLU with an L1 penalty) trained on
streamed activations, their standard scores (L0, FVU, cross-entropy recovered), and their latents as
steering directions."""

from .artifact import LatentDirection, SparseAutoencoder
from .autoencoder import ReluSAE, SparseAutoencoderModule, TopKSAE, topk_activation
from .evaluate import SaeEvaluation, evaluate_sae
from .metrics import ce_recovered, dead_fraction, fvu, l0
from .train import SAETrainer, TrainingLog, default_lr, fit_sae, train_sae

__all__ = [
    "LatentDirection",
    "ReluSAE",
    "SAETrainer",
    "SaeEvaluation",
    "SparseAutoencoder",
    "SparseAutoencoderModule",
    "TopKSAE",
    "TrainingLog",
    "ce_recovered",
    "dead_fraction",
    "default_lr",
    "evaluate_sae",
    "fit_sae",
    "fvu",
    "l0",
    "topk_activation",
    "train_sae",
]
