"""The saved form of a fitted map, which remembers its training rows so it cannot be scored on them by mistake.

A map acts on representations, not on a model, so it is not a lever: :meth:`LinearMap.transform` maps rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..core.artifact import Artifact, Provenance, Where
from ..core.errors import AlmostLinearError, EmptyDataError, ShapeError, SiteError
from ..core.sites import Site
from .maps import Fitted, fit_map, paired, r2_score, retrieval_top1


class TrainingRowsError(AlmostLinearError):
    """A held-out score was asked for on rows the map was fitted on."""


def row_hashes(x: torch.Tensor) -> torch.Tensor:
    """One 63-bit hash per row of ``x`` (float32 bytes), to recognise training rows later.

    A sketch of many rows, stored in the file and compared with ``isin``, not a provenance digest: it
    stays BLAKE2b, 8 bytes a row, so that maps saved earlier still recognise their rows.
    """
    rows = x.detach().to("cpu", torch.float32).contiguous().numpy()
    values = [int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little") >> 1 for r in rows]
    return torch.tensor(values, dtype=torch.int64)


@dataclass(frozen=True)
class MapScores:
    """Scores of a map on rows it was not fitted on."""

    r2: float
    top1: float
    n: int
    chance_top1: float


@dataclass(frozen=True)
class LinearMap(Artifact):
    """``y ≈ x @ weight + bias`` from a source space (``source``) to a target space (``target``).

    ``source`` and ``target`` name the spaces (a model, a site, or both); when ``source`` is a site
    (``"resid_post.3"``) it is also recorded as ``provenance.where``. No strength: ``provenance.units`` is None.
    """

    kind = "translate.linear_map"
    weight: torch.Tensor  # [dim_source, dim_target]
    bias: torch.Tensor  # [dim_target]
    train_rows: torch.Tensor  # int64 row hashes of the source-side training rows
    method: str = "affine"
    source: str = ""
    target: str = ""
    ridge: float | None = None
    rank: int | None = None
    train_r2: float | None = None  # in-sample, for comparison only; never the held-out score

    def __post_init__(self) -> None:
        if self.weight.dim() != 2 or self.bias.shape != (self.weight.shape[1],):
            raise ShapeError(f"weight must be [d_in, d_out] and bias [d_out]; got {tuple(self.weight.shape)} "
                             f"and {tuple(self.bias.shape)}")

    @property
    def d_in(self) -> int:
        return self.weight.shape[0]

    @property
    def d_out(self) -> int:
        return self.weight.shape[1]

    @classmethod
    def fit(cls, x: torch.Tensor, y: torch.Tensor, method: str = "affine", *, source: str = "", target: str = "",
            model_fingerprint: str | None = None, data_hash: str | None = None, **options) -> LinearMap:
        """Fit a map of ``method`` (``affine``, ``orthogonal``, ``low_rank``) on paired rows."""
        x64, y64 = paired(x, y)
        fitted: Fitted = fit_map(x64, y64, method, **options)
        train_r2 = r2_score(x64 @ fitted.weight + fitted.bias, y64)
        extra = {"n_train": int(x.shape[0])}
        if fitted.validation_r2:
            extra["validation_r2"] = {str(k): v for k, v in fitted.validation_r2.items()}
        if fitted.scale is not None:
            extra["scale"] = fitted.scale
        return cls(fitted.weight.float(), fitted.bias.float(), row_hashes(x), method=method, source=source,
                   target=target, ridge=fitted.ridge, rank=fitted.rank, train_r2=train_r2,
                   provenance=Provenance(model_fingerprint=model_fingerprint, where=_where(source), method=method,
                                         data_hash=data_hash, extra=extra))

    def _checked(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.d_in:
            raise ShapeError(f"this map takes {self.d_in}-wide inputs ({self.source or 'source'}), got {x.shape[-1]}")
        return x

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Map rows ``[..., d_in]`` to ``[..., d_out]`` in the input's dtype."""
        x = self._checked(x)
        return (x.to(torch.float32) @ self.weight.to(x.device) + self.bias.to(x.device)).to(x.dtype)

    __call__ = transform

    def push_direction(self, v: torch.Tensor) -> torch.Tensor:
        """The image in the target space of a direction (a difference of two inputs): ``v @ weight``.

        The bias cancels in differences, so a steering vector moves this way through the map.
        """
        return self._checked(v).to(torch.float32) @ self.weight.to(v.device)

    def pull_probe(self, w: torch.Tensor, b: float = 0.0) -> tuple[torch.Tensor, float]:
        """A target-space probe ``y·w + b`` read through the map, as a source-space probe (the adjoint).

        ``(x W + c)·w + b = x·(W w) + (c·w + b)``.
        """
        if w.shape[-1] != self.d_out:
            raise ShapeError(f"the probe is {w.shape[-1]} wide but this map's target is {self.d_out} wide")
        w = w.to(torch.float32)
        return self.weight @ w, float(self.bias @ w + b)

    def overlaps_training(self, x: torch.Tensor) -> int:
        """How many rows of ``x`` are rows this map was fitted on."""
        return int(torch.isin(row_hashes(x), self.train_rows).sum())

    def score(self, x: torch.Tensor, y: torch.Tensor) -> MapScores:
        """Held-out R² and retrieval top-1; refuses rows the map was fitted on."""
        x64, y64 = paired(x, y)
        overlap = self.overlaps_training(x)
        if overlap:
            raise TrainingRowsError(
                f"{overlap} of the {len(x)} rows given were used to fit this map; a held-out score needs rows it has "
                f"not seen (its in-sample R², {self.train_r2:.4f}, is stored as train_r2)"
            )
        pred = self.transform(x64.float()).double()
        return MapScores(r2_score(pred, y64), retrieval_top1(pred, y64), int(len(x)), 1.0 / len(x))


def _where(source: str) -> Where | None:
    """``source`` as a site record when it names one (``"resid_post.3"``), else None (a model name)."""
    try:
        Site.parse(source)
    except SiteError:
        return None
    return Where.at(source)


def split_rows(n: int, test: float = 0.3, *, seed: int = 0, groups=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint train/test row indices; with ``groups`` every group falls wholly on one side."""
    if n < 4:
        raise ShapeError(f"need at least 4 rows to split into train and test, have {n}")
    g = torch.Generator().manual_seed(seed)
    if groups is None:
        order = torch.randperm(n, generator=g)
        n_test = min(max(2, round(n * test)), n - 2)
        return order[n_test:].sort().values, order[:n_test].sort().values
    if len(groups) != n:
        raise ShapeError(f"{len(groups)} group keys for {n} rows: give one key per row")
    keys = list(dict.fromkeys(groups))
    if len(keys) < 2:
        raise EmptyDataError("all rows are in one group, so no group is left to test on: give at least two groups")
    order = torch.randperm(len(keys), generator=g).tolist()
    n_test = min(max(1, round(len(keys) * test)), len(keys) - 1)
    test_keys = {keys[i] for i in order[:n_test]}
    is_test = torch.tensor([k in test_keys for k in groups])
    return (~is_test).nonzero()[:, 0], is_test.nonzero()[:, 0]


@dataclass(frozen=True)
class Evaluation:
    """A map fitted on the train rows and scored on disjoint test rows."""

    map: LinearMap
    held_out: MapScores
    train_r2: float


def evaluate(x: torch.Tensor, y: torch.Tensor, method: str = "affine", *, test: float = 0.3, seed: int = 0,
             groups=None, source: str = "", target: str = "", **options) -> Evaluation:
    """Split the rows, fit on one part, score on the other. The held-out numbers never see the fit rows."""
    paired(x, y, min_rows=4)
    train, held = split_rows(x.shape[0], test, seed=seed, groups=groups)
    if method != "orthogonal":
        options.setdefault("seed", seed)  # the validation split that picks the ridge
        if groups is not None:
            options.setdefault("groups", [groups[i] for i in train.tolist()])  # whole groups in validation too
    fitted = LinearMap.fit(x[train], y[train], method, source=source, target=target, **options)
    return Evaluation(fitted, fitted.score(x[held], y[held]), fitted.train_r2)
