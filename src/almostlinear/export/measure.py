"""What the exported levers cost, measured before export so the card can state it.

All levers are applied together at their export strengths, as the exported file will act, and KL(base ||
levered) and the cross-entropy change are measured on neutral text (:mod:`almostlinear.steering.cost`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from ..core.lever import as_model


def measure_side_effects(levers: Sequence[Any], model: Any, texts: Sequence[str], *,
                         strengths: Sequence[float] | None = None, units: str | None = None, tokenizer: Any = None,
                         max_length: int = 128) -> dict[str, float]:
    """KL (nats per token), cross-entropy before and after and its change, top-1 agreement and tokens scored."""
    from ..steering.artifact import SteeringVector
    from ..steering.cost import side_effects

    view = as_model(model)
    strengths = [1.0] * len(levers) if strengths is None else list(strengths)

    @contextlib.contextmanager
    def all_applied():
        with contextlib.ExitStack() as stack:
            for lever, strength in zip(levers, strengths):
                options = {"units": units} if units is not None and isinstance(lever, SteeringVector) else {}
                stack.enter_context(lever.apply(view, strength, **options))
            yield view.module

    found = side_effects(view, tokenizer, texts, all_applied, max_length=max_length, skip_first=True)
    return {"kl": found.kl, "ce_base": found.ce_base, "ce_intervened": found.ce_intervened,
            "delta_ce": found.delta_ce, "top1_agreement": found.top1_agreement, "n_tokens": found.n_tokens}
