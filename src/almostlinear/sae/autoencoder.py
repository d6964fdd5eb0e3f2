"""Sparse autoencoders as plain modules: TopK (arXiv 2406.04093) and ReLU with an L1 penalty.

Both encode ``z = act((x - b_dec) W_enc + b_enc)`` and decode ``x_hat = z W_dec + b_dec``, with
untied encoder and decoder and unit-norm decoder rows (the constraint that makes an L1 penalty
and a latent's activation mean the same thing for every latent). TopK keeps the ``k`` largest
pre-activations of each token (after a ReLU), so the sparsity is set, not tuned.

Nothing here imports transformers: the modules see ``[n, d]`` activations only.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..core.errors import NonFiniteError, ShapeError


def check_width(d: int, width: int) -> None:
    if not isinstance(d, int) or d < 1:
        raise ShapeError(f"the input width d must be a positive int, got {d!r}")
    if not isinstance(width, int) or width < 1:
        raise ShapeError(f"an SAE needs at least one latent: got width {width!r}; use e.g. width = 8 * d")


def check_activations(x: torch.Tensor, d: int, what: str = "activations") -> None:
    """``x`` must be ``[n, d]`` and finite."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ShapeError(f"{what} must be a [n_tokens, d] tensor, got {shape}")
    if x.shape[1] != d:
        raise ShapeError(f"{what} have width {x.shape[1]} but the SAE reads width {d}")
    if not torch.isfinite(x).all():
        raise NonFiniteError(f"{what} contain NaN or infinite values: drop those tokens or fix the model's dtype")


def topk_activation(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep each row's ``k`` largest entries (ReLU'd), zero the rest."""
    values, index = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, index, values.relu())


class SparseAutoencoderModule(nn.Module):
    """Shared parameters and maths; subclasses choose the activation and the sparsity loss."""

    activation = ""

    def __init__(self, d: int, width: int, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        check_width(d, width)
        self.d, self.width = d, width
        g = torch.Generator().manual_seed(seed)
        decoder = torch.randn(width, d, generator=g, dtype=dtype)
        decoder /= decoder.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(decoder)
        # Encoder starts as the decoder's transpose (arXiv 2406.04093, section 2.4), so each latent
        # initially reads the direction it writes.
        self.W_enc = nn.Parameter(decoder.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(width, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d, dtype=dtype))

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre_activations(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_hat, z, pre)``: reconstruction, latents and pre-activations."""
        pre = self.pre_activations(x)
        z = self.activate(pre)
        return self.decode(z), z, pre

    def sparsity_loss(self, z: torch.Tensor) -> torch.Tensor:
        return z.new_zeros(())

    @torch.no_grad()
    def normalise_decoder_(self) -> None:
        """Put every decoder row back on the unit sphere (after an optimiser step)."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def project_decoder_grad_(self) -> None:
        """Remove the part of the decoder gradient that would change row norms (arXiv 2406.04093)."""
        if self.W_dec.grad is not None:
            g, w = self.W_dec.grad, self.W_dec
            g -= (g * w).sum(1, keepdim=True) * w


class TopKSAE(SparseAutoencoderModule):
    """TopK sparse autoencoder: exactly (at most) ``k`` active latents per token."""

    activation = "topk"

    def __init__(self, d: int, width: int, k: int, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(d, width, seed=seed, dtype=dtype)
        if not isinstance(k, int) or not 1 <= k <= width:
            raise ShapeError(f"k must be an int between 1 and the width {width}, got {k!r}")
        self.k = k

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return topk_activation(pre, self.k)

    def sparse_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_hat, values [n, k], index [n, k], pre)``: the same maths as ``forward`` without the
        dense ``[n, width]`` latents. Decoding reads only the ``k`` chosen decoder rows of each token
        (an embedding-bag sum), so decoding and its gradient cost ``k / width`` of the dense matmuls."""
        pre = self.pre_activations(x)
        values, index = pre.topk(self.k, dim=-1)
        values = values.relu()
        return self.decode_sparse(values, index), values, index, pre

    def decode_sparse(self, values: torch.Tensor, index: torch.Tensor, *, bias: bool = True) -> torch.Tensor:
        out = F.embedding_bag(index, self.W_dec, per_sample_weights=values.to(self.W_dec.dtype), mode="sum")
        return out + self.b_dec if bias else out

    def aux_loss(self, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor, k_aux: int,
                 spread: torch.Tensor | float | None = None) -> torch.Tensor:
        """AuxK loss: the dead latents' top ``k_aux`` pre-activations must explain what the SAE missed.

        ``residual`` is ``x - x_hat`` (detached). Normalised by the residual's variance, so the loss
        is a fraction of variance unexplained (arXiv 2406.04093, appendix A.2). ``spread`` replaces
        the residual's own ``Σ‖r − mean‖²`` (data-parallel training passes the whole minibatch's).
        """
        n_dead = int(dead.sum())
        if n_dead == 0 or k_aux < 1:
            return pre.new_zeros(())
        masked = pre.masked_fill(~dead, -math.inf)
        values, index = masked.topk(min(k_aux, n_dead), dim=-1)
        estimate = self.decode_sparse(values.relu(), index, bias=False)
        if spread is None:
            spread = (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)
        return (estimate - residual).pow(2).sum() / spread


class ReluSAE(SparseAutoencoderModule):
    """ReLU sparse autoencoder with an L1 penalty ``l1 * sum_j z_j`` (unit decoder rows).

    The trainer scales inputs to mean squared spread ``d`` and divides the whole loss by ``d``, so
    ``l1`` is on the scale of the lambda (about 5) of Anthropic's April 2024 SAE update.
    """

    activation = "relu"

    def __init__(self, d: int, width: int, l1: float = 5.0, *, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(d, width, seed=seed, dtype=dtype)
        if not l1 >= 0:
            raise ShapeError(f"the L1 coefficient must be non-negative, got {l1}")
        self.l1 = float(l1)

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        return pre.relu()

    def sparsity_loss(self, z: torch.Tensor) -> torch.Tensor:
        return self.l1 * z.sum(-1).mean()
