"""The lens artifacts: per-state affine translators read through the logit lens.

A translator moves the residual stream read at state ``s`` (0 = the embeddings, ``l + 1`` = after
block ``l``) towards the last block's residual (before the final norm), in residual form as in the tuned lens
(arXiv 2303.08112)::

    translate(h, s) = h + h @ A[s] + b[s]

and the model's own final norm and unembedding decode the result. With ``A = 0`` and ``b = 0`` the
translator is the identity and the lens is the logit lens, exactly. ``A`` may be ``None``: a
bias-only lens (one shift per state). The last state is always left as the identity, so every
lens reproduces the model's logits there.

Lenses read a model and never change it: read-only artifacts with no strength (``provenance.units``
is None) and no ``apply``. They read every layer's residual stream, so ``provenance.where`` is
:data:`LENS_WHERE`. Fitting lives in :mod:`.affine` (closed form) and :mod:`.tuned` (SGD).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..core.artifact import Artifact, Where
from ..core.errors import LayerError, NonFiniteError, ShapeError
from ..core.locate import Structure
from .logit import LogitLens

LENS_WHERE = Where("resid_post", ())  # every layer (and the embeddings, state 0)


@dataclass(frozen=True)
class Translators(Artifact):
    """``A`` is ``[S, d, d]`` (or ``None`` for bias only), ``b`` is ``[S, d]``; ``S`` = blocks + 1."""

    A: torch.Tensor | None
    b: torch.Tensor

    def __post_init__(self) -> None:
        if self.b.dim() != 2:
            raise ShapeError(f"b must be [states, d_model], got {tuple(self.b.shape)}")
        if self.A is not None and tuple(self.A.shape) != (*self.b.shape, self.b.shape[1]):
            raise ShapeError(f"A must be [states, d, d] = {(*self.b.shape, self.b.shape[1])}, got {tuple(self.A.shape)}")
        for name, tensor in (("A", self.A), ("b", self.b)):
            if tensor is not None and not torch.isfinite(tensor).all():
                raise NonFiniteError(f"the translators' {name} contains NaN or infinite values")

    @property
    def n_states(self) -> int:
        return self.b.shape[0]

    @property
    def d_model(self) -> int:
        return self.b.shape[1]

    def _state(self, state: int) -> int:
        if not -self.n_states <= state < self.n_states:
            raise LayerError(f"state {state} is out of range: this lens has {self.n_states} states "
                             f"(0 = embeddings, l + 1 = after block l)")
        return state % self.n_states

    def translate(self, hidden: torch.Tensor, state: int) -> torch.Tensor:
        """``h + h @ A[state] + b[state]`` for residual states ``[.., d_model]`` read at ``state``."""
        if hidden.shape[-1] != self.d_model:
            raise ShapeError(f"this lens expects {self.d_model} features, got {hidden.shape[-1]}")
        s = self._state(state)
        # half-precision states are translated in float32 (the translators' own precision); the decoder
        # rounds the result once to the model's dtype
        hidden = hidden.to(torch.promote_types(hidden.dtype, torch.float32))
        b = self.b[s].to(device=hidden.device, dtype=hidden.dtype)
        if self.A is None:
            return hidden + b
        A = self.A[s].to(device=hidden.device, dtype=hidden.dtype)
        return torch.addmm(hidden.reshape(-1, self.d_model) + b, hidden.reshape(-1, self.d_model), A
                           ).reshape(hidden.shape)

    def check_structure(self, structure: Structure) -> None:
        """Refuse a model whose depth or width differs from the one the lens was fitted on."""
        if (structure.n_layers + 1, structure.d_model) != (self.n_states, self.d_model):
            raise ShapeError(
                f"this lens has {self.n_states} states of width {self.d_model}; the model has "
                f"{structure.n_layers + 1} states (blocks + 1) of width {structure.d_model}: fit a lens for this model"
            )

    def bind(self, decoder: LogitLens | Structure) -> DecodedLens:
        """This translator decoded by the model's final norm and unembedding (the logit lens)."""
        if isinstance(decoder, Structure):
            self.check_structure(decoder)
            decoder = LogitLens.from_structure(decoder)
        return DecodedLens(self, decoder)


@dataclass(frozen=True)
class DecodedLens:
    """A translator and the decoder that turns translated states into logits."""

    translators: Translators
    decoder: LogitLens

    def logits(self, hidden: torch.Tensor, state: int) -> torch.Tensor:
        return self.decoder(self.translators.translate(hidden, state))


@dataclass(frozen=True)
class AffineLens(Translators):
    """Per-state affine translators fitted in closed form; ``method`` is "ridge" or "bias"."""

    kind = "lens.affine"
    method: str = "ridge"
    ridge: list[float | None] | None = None  # the relative ridge chosen for each state (last: None)
    tokens: int = 0


@dataclass(frozen=True)
class TunedLens(Translators):
    """Translators trained by SGD on the KL to the final distribution; ``history`` holds the mean
    training KL over states (nats) before each step."""

    kind = "lens.tuned"
    steps: int = 0
    tokens: int = 0
    history: list[float] = field(default_factory=list)

    @classmethod
    def zeros(cls, n_states: int, d_model: int) -> TunedLens:
        """The untrained lens: identical to the logit lens."""
        return cls(torch.zeros(n_states, d_model, d_model), torch.zeros(n_states, d_model))
