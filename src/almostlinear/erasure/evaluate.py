"""How well an eraser guards a concept, and what it costs.

Guardedness is measured the way the LEACE paper (arXiv 2306.03819) frames it: a linear probe is
trained and tested on held-out data before and after erasure, and the accuracy after erasure is
compared with chance (the majority-class rate of the test set). The cost is the KL and
cross-entropy change on neutral text (:func:`almostlinear.steering.cost.side_effects`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ..core.collect import collect
from ..core.errors import EmptyDataError, ShapeError
from ..core.hooks import Positions
from ..core.lever import as_model
from ..probes.linear import accuracy, fit_linear
from ..steering.cost import SideEffects, side_effects
from .artifact import LeaceEraser


@dataclass(frozen=True)
class Guardedness:
    """Held-out linear-probe accuracy at ``site`` before and after erasure, and chance."""

    site: str
    accuracy_before: float
    accuracy_after: float
    chance: float
    n_train: int
    n_test: int

    @property
    def excess_after(self) -> float:
        """How far above chance the probe stays after erasure (0 is fully guarded)."""
        return self.accuracy_after - self.chance

    def as_dict(self) -> dict:
        return {**asdict(self), "excess_after": self.excess_after}


def probe_accuracy(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                   *, method: str = "logistic") -> float:
    """Accuracy on the test part of a linear probe fitted on the training part."""
    weight, bias = fit_linear(x_train.double(), y_train, method=method)
    return float(accuracy(weight, bias, x_test.double(), y_test))


def guardedness(model, tokenizer, eraser: LeaceEraser, train: tuple[Sequence[str], torch.Tensor],
                test: tuple[Sequence[str], torch.Tensor], *, site: str | None = None,
                positions: Positions = "last", apply_positions: Positions = "all", method: str = "logistic",
                batch_size: int = 8, max_length: int = 128) -> Guardedness:
    """Probe accuracy on ``test`` at ``site`` (default: the eraser's last site) with and without it.

    ``train`` and ``test`` are ``(texts, binary labels)``; the probe is refitted after erasure,
    so the number after is what a fresh linear probe can still read, not what the old one reads.
    """
    view = as_model(model)
    module, structure = view.module, view.structure
    tokenizer = tokenizer if tokenizer is not None else view.tokenizer
    site = site or eraser.sites[-1]
    y_train, y_test = torch.as_tensor(train[1]).long(), torch.as_tensor(test[1]).long()
    if len(train[0]) == 0 or len(test[0]) == 0:
        raise EmptyDataError("guardedness needs texts in both the training and the test part")
    if y_train.shape[0] != len(train[0]) or y_test.shape[0] != len(test[0]):
        raise ShapeError("each part needs one label per text")

    def read(texts, active: bool) -> torch.Tensor:
        kwargs = dict(positions=positions, batch_size=batch_size, max_length=max_length, structure=structure)
        if not active:
            return collect(module, tokenizer, texts, [site], **kwargs)[site]
        with eraser.apply(view, positions=apply_positions):
            return collect(module, tokenizer, texts, [site], **kwargs)[site]

    texts = [*train[0], *test[0]]
    n = len(train[0])
    before = read(texts, False)
    if before.shape[0] != len(texts):
        raise ShapeError(f"positions={positions!r} chose {before.shape[0]} tokens for {len(texts)} texts; "
                         "guardedness needs one token per text (e.g. 'last')")
    if eraser.sites == (str(site),) and apply_positions in ("all", positions):
        after = eraser(before, str(site))  # the hook would erase exactly these tokens at the site it reads
    else:
        after = read(texts, True)
    before_train, before_test, after_train, after_test = before[:n], before[n:], after[:n], after[n:]
    share = float(y_test.double().mean())
    return Guardedness(
        site=str(site),
        accuracy_before=probe_accuracy(before_train, y_train, before_test, y_test, method=method),
        accuracy_after=probe_accuracy(after_train, y_train, after_test, y_test, method=method),
        chance=max(share, 1 - share),
        n_train=len(train[0]),
        n_test=len(test[0]),
    )


def erasure_cost(model, tokenizer, eraser: LeaceEraser, texts: Sequence[str], *,
                 positions: Positions = "all", max_length: int = 128, batch_size: int = 8) -> SideEffects:
    """KL and cross-entropy change on ``texts`` with the eraser applied at ``positions``."""
    view = as_model(model)
    return side_effects(view.module, tokenizer if tokenizer is not None else view.tokenizer, texts,
                        lambda: eraser.apply(view, positions=positions),
                        max_length=max_length, batch_size=batch_size)
