"""scikit-learn's bundled 8x8 digits (1797 images), loaded once and cut into fixed, named splits.

===========  ====================================================================================
split        what it holds
===========  ====================================================================================
``mlp``      1200 train, 200 validation, 397 test images, shuffled by numpy's ``RandomState(seed)``,
             pixels scaled to ``[0, 1]`` and standardised with the training statistics (spread
             floored at 0.1): the split every digits MLP uses
``vae``      shuffled by a torch generator, a quarter to test and the rest to train (no validation),
             pixels in ``[0, 1]``: what the VAE and its digit classifier use
``tangent``  shuffled by a torch generator, 1200 train and 597 test images (no validation), grey
             levels standardised with the training mean and spread + 0.001: the tangent section's
             digits task arithmetic
===========  ====================================================================================

Each split is fixed by its seed (0 unless given) so that results compare across runs and machines,
and each stays as its first caller made it, because cached networks and reported numbers rest on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ..core.digest import PREFIX, digest
from ..core.errors import MissingDependencyError, check_choice

SPLITS = ("mlp", "vae", "tangent")
N_TRAIN = 1200
N_VAL = 200
SPLIT_SEED = 0
TEST_SHARE = 0.25  # of the "vae" split
# Some border pixels are (almost) always 0: a floor on the spread keeps standardisation finite.
MIN_STD = 0.1


@dataclass(frozen=True)
class DigitsSplit:
    """Float32 pixels and int64 labels 0..9 of one named split (``x_val`` is empty without validation)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    name: str = "mlp"
    digest: str = ""  # hex digits of a hash of all the raw pixels and labels, part of cache keys

    def subset(self, part: str, classes: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of ``part`` ("train", "val", "test"), optionally only the given classes."""
        check_choice(part, ("train", "val", "test"), "part of the digits split")
        x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
        if classes is None:
            return x, y
        keep = torch.isin(y, torch.tensor(classes))
        return x[keep], y[keep]


@lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``[1797, 64]`` as stored (grey levels 0..16) and labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise MissingDependencyError("the digits come with scikit-learn: pip install scikit-learn") from error
    bunch = load_digits()
    return bunch.data, bunch.target


def _mlp_split(data: np.ndarray, target: np.ndarray, seed: int, key: str) -> DigitsSplit:
    x = data.astype(np.float64) / 16.0
    y = target.astype(np.int64)
    order = np.random.RandomState(seed).permutation(len(y))
    x, y = x[order], y[order]
    mean = x[:N_TRAIN].mean(0)
    std = np.maximum(x[:N_TRAIN].std(0), MIN_STD)
    x = ((x - mean) / std).astype(np.float32)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    a, b = N_TRAIN, N_TRAIN + N_VAL
    return DigitsSplit(xt[:a], yt[:a], xt[a:b], yt[a:b], xt[b:], yt[b:], "mlp", key)


def _no_validation(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(0, x.shape[1], dtype=x.dtype), torch.zeros(0, dtype=y.dtype)


def _vae_split(x: torch.Tensor, y: torch.Tensor, seed: int, key: str) -> DigitsSplit:
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = round(len(y) * TEST_SHARE)
    test, train = order[:n_test], order[n_test:]
    return DigitsSplit(x[train], y[train], *_no_validation(x, y), x[test], y[test], "vae", key)


def _tangent_split(data: np.ndarray, target: np.ndarray, seed: int, key: str) -> DigitsSplit:
    x, y = torch.tensor(data, dtype=torch.float32), torch.tensor(target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    train, test = order[:N_TRAIN], order[N_TRAIN:]
    x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-3)
    return DigitsSplit(x[train], y[train], *_no_validation(x, y), x[test], y[test], "tangent", key)


def digits(split: str = "mlp", seed: int = SPLIT_SEED) -> DigitsSplit:
    """The digits cut into the named ``split`` (see the table above); the same object on every call."""
    return _split(check_choice(split, SPLITS, "digits split"), int(seed))


@lru_cache(maxsize=None)
def _split(name: str, seed: int) -> DigitsSplit:
    data, target = _raw()
    x = torch.tensor(data, dtype=torch.float32) / 16.0
    y = torch.tensor(target, dtype=torch.long)
    key = digest(x.numpy().tobytes(), y.numpy().tobytes())[len(PREFIX):]
    if name == "mlp":
        return _mlp_split(data, target, seed, key)
    if name == "vae":
        return _vae_split(x, y, seed, key)
    return _tangent_split(data, target, seed, key)
