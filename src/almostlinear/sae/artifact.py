"""The fitted SAE and its latents, as levers on a model.

:class:`SparseAutoencoder` splices its reconstruction into the forward pass (``apply``, strength a
fraction of the way from the activation to its reconstruction); :meth:`SparseAutoencoder.direction`
turns one latent into a :class:`LatentDirection`, which adds the latent's typical contribution.
Both act through hooks and have no exact form in the weights, so ``bake_`` refuses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.artifact import Artifact, Provenance
from ..core.errors import LayerError, LeverError, NonFiniteError, ShapeError, SiteError, check_choice
from ..core.hooks import Positions, add, replace
from ..core.lever import Baked, as_model, check_fingerprint, check_strength
from ..core.sites import Site
from .autoencoder import ReluSAE, SparseAutoencoderModule, TopKSAE, check_activations, topk_activation

ACTIVATIONS = ("topk", "relu")
MODES = ("splice", "steer")


@dataclass(frozen=True)
class SparseAutoencoder(Artifact):
    """A sparse autoencoder working in the units of the activations at the site it was trained on.

    ``latent_mean`` is each latent's mean activation over the tokens where it fired and
    ``latent_frequency`` the share of tokens where it fired, both measured on training activations.
    As a lever, its strength is a fraction (see :meth:`apply`); ``mode="steer"`` takes "typical" units.
    """

    kind = "sae.autoencoder"
    strength_units = ("fraction", "typical")
    bakes = False

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
        check_choice(self.activation, ACTIVATIONS, "SAE activation")
        d, width = self.W_enc.shape
        expected = {"b_enc": (width,), "W_dec": (width, d), "b_dec": (d,), "latent_mean": (width,),
                    "latent_frequency": (width,)}
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ShapeError(f"SAE field {name} has shape {tuple(getattr(self, name).shape)}, expected {shape}")
        if self.activation == "topk" and not 1 <= self.k <= width:
            raise ShapeError(f"a TopK SAE needs 1 <= k <= width ({width}), got k={self.k}")
        broken = [name for name in ("W_enc", "b_enc", "W_dec", "b_dec")
                  if not bool(torch.isfinite(getattr(self, name)).all())]
        if broken:  # e.g. training diverged (too high a learning rate): refuse rather than save it
            raise NonFiniteError(f"the SAE's {', '.join(broken)} contain NaN or infinite values; training diverged "
                                 "(lower the learning rate)")
        _default_units(self)

    @property
    def d(self) -> int:
        return self.W_enc.shape[0]

    @property
    def width(self) -> int:
        return self.W_enc.shape[1]

    @property
    def site(self) -> Site | None:
        """The site it reads and writes, from ``provenance.where``."""
        return _site_of(self.provenance)

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
            raise SiteError("this SAE records no site: pass site='resid_post.LAYER'")
        return Site.parse(chosen) if isinstance(chosen, str) else chosen

    @contextlib.contextmanager
    def apply(self, model: Any, strength: float = 1.0, *, mode: str = "splice", latent: int | None = None,
              site=None, positions: Positions = "all", structure=None, strict: bool = False) -> Iterator[nn.Module]:
        """Splice the SAE into the forward pass (or steer along one latent) while the context is open.

        ``mode="splice"``: the activation ``x`` at the site becomes ``x + strength * (x_hat - x)``, so
        ``strength`` is a fraction: 1 replaces it by its reconstruction ``x_hat``, 0 leaves it alone.
        ``mode="steer"``: add ``strength`` times latent ``latent``'s typical contribution
        (:meth:`direction`; strength in "typical" units). Yields the module; the hooks go on exit.
        """
        check_choice(mode, MODES, "SAE mode")
        view = as_model(model, structure=structure)
        if mode == "steer":
            if latent is None:
                raise LeverError("mode='steer' adds one latent's direction: pass latent=INDEX")
            with self.direction(latent).apply(view, strength, site=site, positions=positions, strict=strict) as module:
                yield module
            return
        if latent is not None:
            raise LeverError("latent= is for mode='steer'; a splice reconstructs every latent")
        fraction = check_strength(strength, "fraction")
        check_fingerprint(self, view, strict=strict)
        chosen = self._site_for(site)

        def reconstruct(hidden: torch.Tensor) -> torch.Tensor:
            rebuilt = self.reconstruct(hidden)
            return rebuilt if fraction == 1.0 else hidden + fraction * (rebuilt - hidden)

        with replace(view.module, chosen, reconstruct, positions=positions, structure=view.structure):
            yield view.module

    def bake_(self, model: Any, strength: float = 1.0, **options: Any) -> Baked:
        """Refused: a splice is a non-linear function of the activation, with no exact form in the weights."""
        raise LeverError("an SAE splice is not linear in the activation, so no weight change reproduces it: "
                         "use `with sae.apply(model): ...` instead of bake_")

    def direction(self, latent: int) -> LatentDirection:
        """Latent ``latent`` as a steering lever: its unit decoder row and typical strength."""
        if isinstance(latent, bool) or not isinstance(latent, numbers.Integral):
            raise LayerError(f"a latent is an int index, got {latent!r}")
        if not -self.width <= latent < self.width:
            raise LayerError(f"latent {latent} is outside this SAE's {self.width} latents")
        latent = int(latent) % self.width
        row = self.W_dec[latent].double()
        norm = float(row.norm())
        source = self.provenance
        provenance = Provenance(model_fingerprint=source.model_fingerprint, where=source.where,
                                method=f"{source.method or 'sae'} latent", data_hash=source.data_hash,
                                units="typical", extra={"width": self.width})
        return LatentDirection(direction=(row / norm).float(), typical=float(self.latent_mean[latent]) * norm,
                               latent=latent, frequency=float(self.latent_frequency[latent]), provenance=provenance)

    def check_inputs(self, x: torch.Tensor) -> None:
        check_activations(x, self.d)


@dataclass(frozen=True)
class LatentDirection(Artifact):
    """One SAE latent as a steering lever: adds ``strength * typical * direction`` at the SAE's site.

    ``typical`` is the norm of what the latent writes when it fires (mean activation times
    decoder-row norm), so strength 1 adds one typical firing of the latent and one number means the
    same for every latent. ``frequency`` is the share of training tokens where it fired.
    """

    kind = "sae.latent_direction"
    strength_units = ("typical",)
    bakes = False

    direction: torch.Tensor  # [d], unit norm
    typical: float
    latent: int
    frequency: float

    def __post_init__(self) -> None:
        if self.direction.dim() != 1:
            raise ShapeError(f"a latent direction is a vector [d], got shape {tuple(self.direction.shape)}")
        _default_units(self)

    @property
    def site(self) -> Site | None:
        return _site_of(self.provenance)

    def vector(self, strength: float = 1.0) -> torch.Tensor:
        return self.direction * (strength * self.typical)

    @contextlib.contextmanager
    def apply(self, model: Any, strength: float = 1.0, *, site=None, positions: Positions = "all",
              structure=None, strict: bool = False) -> Iterator[nn.Module]:
        """Add ``strength`` typical firings of the latent at the site while the context is open."""
        value = check_strength(strength, "typical")
        view = as_model(model, structure=structure)
        check_fingerprint(self, view, strict=strict)
        chosen = site or self.site
        if chosen is None:
            raise SiteError("no site given for this latent direction: pass site='resid_post.LAYER'")
        with add(view.module, chosen, self.vector(value), positions=positions, structure=view.structure):
            yield view.module

    def footprint(self) -> dict:
        """What the latent writes: its decoder direction at the SAE's site (for interference reports)."""
        return {"where": self.provenance.where, "basis": self.direction[None], "role": "writes"}

    def bake_(self, model: Any, strength: float = 1.0, **options: Any) -> Baked:
        """Refused: a vector added at a site, on chosen positions, is not a bias of every architecture
        (norms after a sublayer, parallel blocks), so there is no exact bake."""
        raise LeverError("a latent direction has no exact bake: a vector added at a site is not a bias on every "
                         "architecture; use `with direction.apply(model, strength): ...`")


def _default_units(lever: Artifact) -> None:
    """Record the lever's default strength unit when its provenance names none."""
    if lever.provenance.units is None:
        object.__setattr__(lever, "provenance", dataclasses.replace(lever.provenance, units=lever.strength_units[0]))


def _site_of(provenance: Provenance) -> Site | None:
    where = provenance.where
    if where is None or where.site is None or where.layer is None:
        return None
    return Site(where.site, where.layer)
