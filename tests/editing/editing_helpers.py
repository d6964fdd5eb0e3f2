"""Shared builders for the editing tests: random texts over the tiny vocabulary, fast hparams."""

from __future__ import annotations

import random

from tiny_models import WORDS

from almostlinear.editing import EditRequest, hparams_for


def random_texts(n: int = 60, length: int = 8, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = [w for w in WORDS if w not in ".,!?"]
    return [" ".join(rng.choice(words) for _ in range(length)) for _ in range(n)]


def fast_hparams(model, **changes):
    # Tiny random models write MLP outputs of norm ~0.01, so ROME's clamp (4 × that norm) would
    # forbid any visible effect; the tests check algebra, not the clamp.
    base = dict(v_steps=6, n_prefixes=2, prefix_lengths=(3,), clamp_norm_factor=1e4, v_weight_decay=0.0,
                z_clamp_norm_factor=1e4, ridge=0.0, v_lr=0.5)
    base.update(changes)
    return hparams_for(model, **base)


REQUEST = EditRequest("{} is the capital of", "Paris", "Italy")
OTHER = EditRequest("{} is the capital of", "Berlin", "Spain")
