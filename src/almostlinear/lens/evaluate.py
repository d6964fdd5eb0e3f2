"""How well each lens predicts the model's final distribution, per state: KL and top-1 agreement.

Streaming: :class:`LensScorer` folds batches into per-state sums for several lenses at once, so
the final distribution (the costly softmax over the vocabulary) is computed once per token and
shared by every lens. A lens is anything with ``logits(hidden, state)``: :class:`LogitLens`, or a
translator bound to a decoder (``AffineLens.bind(structure)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ..core.collect import Batch
from ..core.errors import ArtifactError, EmptyDataError, ShapeError, SiteError, StructureError
from ..core.sites import Site
from .logit import LogitLens
from .artifact import Translators


class Lens(Protocol):
    def logits(self, hidden: torch.Tensor, state: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class LensEvaluation:
    """Per state (0 = embeddings, ``l + 1`` = after block ``l``): mean KL(final ‖ lens) in nats and
    the share of tokens whose top-1 token equals the model's."""

    kl: list[float]
    top1: list[float]
    tokens: int

    @property
    def layers(self) -> list[int]:
        """The block each state is read after (-1 = the embeddings)."""
        return list(range(-1, len(self.kl) - 1))


def states_of(batch: Batch) -> list[torch.Tensor]:
    """The lens states of a batch: ``resid_pre.0`` then ``resid_post.0..L-1``, as ``[n, d]`` tensors."""
    posts = sorted(s.layer for s in batch.activations if s.name == "resid_post")
    first = Site("resid_pre", 0)
    if first not in batch.activations or posts != list(range(len(posts))) or not posts:
        raise SiteError("a lens batch needs resid_pre.0 and resid_post.0..L-1 (collect lens_sites(structure))")
    return [batch.activations[first]] + [batch.activations[Site("resid_post", i)] for i in posts]


def _kl_top1(p: torch.Tensor, p_log_p: torch.Tensor, top_p: torch.Tensor,
             lens_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # KL = sum p log p - sum p log q, with the final distribution's part computed once per token
    log_q = torch.log_softmax(lens_logits.float(), dim=-1)
    kl = p_log_p - (p * log_q).sum(-1)
    return kl.double().sum(), (lens_logits.argmax(-1) == top_p).double().sum()


class LensScorer:
    """Accumulates per-state KL and top-1 agreement of several lenses against the final logits."""

    def __init__(self, lenses: Mapping[str, Lens], *, chunk: int = 256) -> None:
        if not lenses:
            raise EmptyDataError("no lenses to score")
        self.lenses = dict(lenses)
        self.chunk = chunk
        self.n = 0
        self.n_states: int | None = None
        self._kl: dict[str, torch.Tensor] = {}
        self._top1: dict[str, torch.Tensor] = {}

    @torch.inference_mode()
    def update(self, states: Sequence[torch.Tensor], final_logits: torch.Tensor) -> LensScorer:
        """Add tokens: ``states`` is one ``[n, d]`` tensor per state, ``final_logits`` is ``[n, vocab]``."""
        if self.n_states is None:
            self.n_states = len(states)
            for name in self.lenses:
                self._kl[name] = torch.zeros(self.n_states, dtype=torch.float64)
                self._top1[name] = torch.zeros(self.n_states, dtype=torch.float64)
        if len(states) != self.n_states:
            raise ShapeError(f"expected {self.n_states} states, got {len(states)}")
        n = final_logits.shape[0]
        if any(s.shape[0] != n for s in states):
            raise ShapeError(f"every state needs {n} rows, like the final logits")
        for start in range(0, n, self.chunk):
            rows = slice(start, start + self.chunk)
            final = final_logits[rows].float()
            log_p = torch.log_softmax(final, dim=-1)
            p, top_p = log_p.exp(), final.argmax(-1)
            p_log_p = (p * log_p).sum(-1)
            for name, lens in self.lenses.items():
                for s, hidden in enumerate(states):
                    kl, agree = _kl_top1(p, p_log_p, top_p, lens.logits(hidden[rows], s).to(final.device))
                    self._kl[name][s] += kl.cpu()
                    self._top1[name][s] += agree.cpu()
        self.n += n
        return self

    def update_batch(self, batch: Batch) -> LensScorer:
        if batch.logits is None:
            raise EmptyDataError("this batch has no logits: collect or stream it with logits=True")
        return self.update(states_of(batch), batch.logits)

    def result(self) -> dict[str, LensEvaluation]:
        if self.n == 0:
            raise EmptyDataError("no tokens were scored")
        return {name: LensEvaluation((self._kl[name] / self.n).tolist(), (self._top1[name] / self.n).tolist(), self.n)
                for name in self.lenses}


def _as_lens(lens, decoder: LogitLens | None) -> Lens:
    if isinstance(lens, Translators):
        if decoder is None:
            raise StructureError(f"a {type(lens).__name__} needs the model's decoder: pass decoder="
                                 "LogitLens.from_structure(structure), or lens.bind(structure)")
        return lens.bind(decoder)
    if not callable(getattr(lens, "logits", None)):
        raise ArtifactError(f"{type(lens).__name__} is not a lens: it has no logits(hidden, state); pass a "
                            "LogitLens, an AffineLens or TunedLens (with decoder=), or lens.bind(structure)")
    return lens


def evaluate_lenses(lenses: Mapping[str, object], batches: Iterable[Batch], *,
                    decoder: LogitLens | None = None) -> dict[str, LensEvaluation]:
    """Score several lenses in one pass over ``batches`` (from ``stream(..., lens_sites(s), logits=True)``)."""
    scorer = LensScorer({name: _as_lens(lens, decoder) for name, lens in lenses.items()})
    for batch in batches:
        scorer.update_batch(batch)
    return scorer.result()


def evaluate_lens(lens, batches: Iterable[Batch], *, decoder: LogitLens | None = None) -> LensEvaluation:
    """Per-state KL(final ‖ lens) and top-1 agreement of one lens over ``batches``."""
    return evaluate_lenses({"lens": lens}, batches, decoder=decoder)["lens"]
