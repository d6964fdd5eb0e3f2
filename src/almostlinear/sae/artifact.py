"""The fitted SAE as a frozen artifact, and its latents as steering directions."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..core.artifact import Artifact
from ..core.errors import LayerError, ShapeError
from ..core.hooks import Positions, add, replace
from ..core.sites import Site
from .autoencoder import ReluSAE, SparseAutoencoderModule, TopKSAE, check_activations, topk_activation

ACTIVATIONS = ("topk", "relu")


@dataclass(frozen=True)
class SparseAutoencoder(Artifact):
    """A sparse autoencoder in the units of the site it was trained on.

    ``latent_mean`` is each latent's mean activation over the tokens where it fired and
    ``latent_frequency`` the share of tokens where it fired, both measured on training activations.
    """

    kind = "sae"

    W_enc: torch.Tensor  # [d, width]
    b_enc: torch.Tensor  # [width]
    W_dec: torch.Tensor  # [width, d]
    b_dec: torch.Tensor  # [d]
    latent_mean: torch.Tensor  # [width]
    latent_frequency: torch.Tensor  # [width]
    activation: str = "topk"
    k: int = 0  # TopK only
    l1: float = 0.0  # ReLU only
    tokens: int = 0  # training tokens seen (counting repeats)

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ShapeError(f"unknown SAE activation {self.activation!r}; use one of {ACTIVATIONS}")
        d, width = self.W_enc.shape
        expected = {"b_enc": (width,), "W_dec": (width, d), "b_dec": (d,), "latent_mean": (width,),
                    "latent_frequency": (width,)}
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ShapeError(f"SAE field {name} has shape {tuple(getattr(self, name).shape)}, expected {shape}")
        if self.activation == "topk" and not 1 <= self.k <= width:
            raise ShapeError(f"a TopK SAE needs 1 <= k <= width ({width}), got k={self.k}")

    @property
    def d(self) -> int:
        return self.W_enc.shape[0]

    @property
    def width(self) -> int:
        return self.W_enc.shape[1]

    @property
    def site(self) -> Site | None:
        return Site.parse(self.provenance.site) if self.provenance.site else None

    # -- maths on [n, d] activations -------------------------------------------------------------

    def _weights(self, like: torch.Tensor):
        return [t.to(dtype=like.dtype, device=like.device) for t in (self.W_enc, self.b_enc, self.W_dec, self.b_dec)]

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        w_enc, b_enc, _, b_dec = self._weights(x)
        return (x - b_dec) @ w_enc + b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents ``[..., width]`` of activations ``[..., d]``."""
        if x.shape[-1] != self.d:
            raise ShapeError(f"activations have width {x.shape[-1]} but this SAE reads width {self.d}")
        pre = self.pre_activations(x)
        return topk_activation(pre, self.k) if self.activation == "topk" else pre.relu()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        _, _, w_dec, b_dec = self._weights(z)
        return z @ w_dec + b_dec

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def module(self) -> SparseAutoencoderModule:
        """A trainable module holding copies of these weights (to fine-tune or to export)."""
        if self.activation == "topk":
            sae = TopKSAE(self.d, self.width, self.k)
        else:
            sae = ReluSAE(self.d, self.width, self.l1)
        with torch.no_grad():
            for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(sae, name).copy_(getattr(self, name))
        return sae

    # -- on a model -----------------------------------------------------------------------------

    def _site_for(self, site) -> Site:
        chosen = site or self.site
        if chosen is None:
            raise ShapeError("this SAE records no site: pass site='resid_post.LAYER'")
        return Site.parse(chosen) if isinstance(chosen, str) else chosen

    @contextlib.contextmanager
    def splice(self, model: nn.Module, *, site=None, positions: Positions = "all",
               structure=None) -> Iterator[None]:
        """Replace the site's activation by its reconstruction while the context is open."""
        chosen = self._site_for(site)

        def reconstruct(hidden: torch.Tensor) -> torch.Tensor:
            return self.reconstruct(hidden)

        with replace(model, chosen, reconstruct, positions=positions, structure=structure):
            yield

    def direction(self, latent: int) -> LatentDirection:
        """Latent ``latent`` as a steering direction: its unit decoder row and typical strength."""
        if not -self.width <= latent < self.width:
            raise LayerError(f"latent {latent} is outside this SAE's {self.width} latents")
        latent %= self.width
        row = self.W_dec[latent].double()
        norm = float(row.norm())
        return LatentDirection(direction=(row / norm).float(), typical=float(self.latent_mean[latent]) * norm,
                               latent=latent, frequency=float(self.latent_frequency[latent]),
                               site=self.provenance.site)

    @contextlib.contextmanager
    def steer(self, model: nn.Module, latent: int, strength: float = 1.0, *, site=None,
              positions: Positions = "all", structure=None) -> Iterator[None]:
        """Add ``strength`` times the latent's typical contribution at the site."""
        with self.direction(latent).apply(model, strength, site=site or self.provenance.site,
                                          positions=positions, structure=structure):
            yield

    def check_inputs(self, x: torch.Tensor) -> None:
        check_activations(x, self.d)


@dataclass(frozen=True)
class LatentDirection:
    """One latent as a steering direction. ``typical`` is the norm of what the latent writes when it
    fires (mean activation times decoder-row norm), the natural unit of steering strength."""

    direction: torch.Tensor  # [d], unit norm
    typical: float
    latent: int
    frequency: float
    site: str | None = None

    def vector(self, strength: float = 1.0) -> torch.Tensor:
        return self.direction * (strength * self.typical)

    @contextlib.contextmanager
    def apply(self, model: nn.Module, strength: float = 1.0, *, site=None, positions: Positions = "all",
              structure=None) -> Iterator[None]:
        chosen = site or self.site
        if chosen is None:
            raise ShapeError("no site given for this latent direction: pass site='resid_post.LAYER'")
        with add(model, chosen, self.vector(strength), positions=positions, structure=structure):
            yield
