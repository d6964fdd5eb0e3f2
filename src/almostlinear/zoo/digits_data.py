"""scikit-learn's bundled 8x8 digits as a fixed, standardised train / validation / test split."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

N_TRAIN = 1200
N_VAL = 200
SPLIT_SEED = 0
# Some border pixels are (almost) always 0: a floor on the spread keeps standardisation finite.
MIN_STD = 0.1


@dataclass(frozen=True)
class DigitsSplit:
    """Float32 pixels standardised with training statistics, int64 labels 0..9."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def subset(self, part: str, classes: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of ``part`` ("train", "val", "test"), optionally only the given classes."""
        x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
        if classes is None:
            return x, y
        keep = torch.isin(y, torch.tensor(classes))
        return x[keep], y[keep]


@lru_cache(maxsize=1)
def digits() -> DigitsSplit:
    """The one split every digits network uses: 1200 train, 200 validation, 397 test images.

    The shuffle is fixed (seed 0), so results are comparable across runs and machines.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data.astype(np.float64) / 16.0
    y = bunch.target.astype(np.int64)
    order = np.random.RandomState(SPLIT_SEED).permutation(len(y))
    x, y = x[order], y[order]
    mean = x[:N_TRAIN].mean(0)
    std = np.maximum(x[:N_TRAIN].std(0), MIN_STD)
    x = ((x - mean) / std).astype(np.float32)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    a, b = N_TRAIN, N_TRAIN + N_VAL
    return DigitsSplit(xt[:a], yt[:a], xt[a:b], yt[a:b], xt[b:], yt[b:])
