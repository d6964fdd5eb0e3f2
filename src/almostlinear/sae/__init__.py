"""Superposition: sparse autoencoders (TopK, arXiv 2406.04093, and ReLU with an L1 penalty) trained on
streamed activations, their standard scores (L0, FVU, cross-entropy recovered), and their latents as
steering levers."""

from __future__ import annotations

from ..core.lazy import lazy_exports

# Names resolve on first use, so importing ``almostlinear.sae.cli`` to build the parser does not import torch.
_PUBLIC = {
    "artifact": ("LatentDirection", "SparseAutoencoder"),
    "autoencoder": ("ReluSAE", "SparseAutoencoderModule", "TopKSAE", "topk_activation"),
    "evaluate": ("SaeEvaluation", "evaluate_sae"),
    "metrics": ("ce_recovered", "dead_fraction", "fvu", "l0"),
    "train": ("SAETrainer", "TrainingLog", "default_lr", "fit_sae", "train_sae"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)
