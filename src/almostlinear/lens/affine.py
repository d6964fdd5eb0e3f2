"""The affine lens: a closed-form, ridge-regularised stand-in for the tuned lens.

For each state ``s`` a ridge regression predicts the last block's residual (before the final norm)
from ``h_s``. It is fitted in residual form, ``h_last - h_s ≈ h_s @ A + b``, so that the ridge
shrinks the map towards the identity plus a shift (the bias-only lens), as the tuned lens's weight
decay does, rather than towards a constant prediction that would ignore ``h_s``. Everything comes
from streamed float64 moments (:class:`RunningMoments`), so memory stays flat; the ridge of each
state is chosen by squared error on held-out validation tokens, then the map is refitted on
training + validation tokens.

The tuned lens of arXiv 2303.08112 trains the same residual affine translators by SGD on the KL
to the final distribution; this fit minimises squared error in the residual stream instead, which
is cheap (an eigendecomposition and a solve of ``d x d`` per state) and a good warm start for the
tuned lens.
"""

from __future__ import annotations

from collections.abc import Sequence
import torch

from ..core.artifact import Provenance
from ..core.collect import Batch, stream
from ..core.errors import EmptyDataError, ShapeError, check_choice
from ..core.locate import Structure, locate
from ..core.stats import RunningMoments
from ..linearity.affine import fit_affine
from .artifact import LENS_WHERE, AffineLens
from .evaluate import states_of
from .logit import lens_sites

RIDGES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # relative to the mean variance of h_s


def validation_errors(train: RunningMoments, validation: RunningMoments, ridges: Sequence[float]) -> torch.Tensor:
    """Mean squared error on ``validation`` of the ridge fit on ``train`` (as :func:`fit_affine`), per ridge.

    One eigendecomposition of the training covariance serves every ridge: with ``C = V E V^T`` the
    fit is ``A = V diag(1 / (e + lam)) V^T C_xy``, and each error term is a weighted sum over
    eigenvalue pairs, so each further ridge costs O(d^2) instead of a d x d solve and product.
    """
    cxx, cxy = train.cov_x(ddof=0), train.cross_cov(ddof=0)
    e, V = torch.linalg.eigh(cxx)
    e = e.clamp_min(0)
    M = V.T @ cxy  # A = V D M
    Q = M @ M.T
    W = (V.T @ validation.cov_x(ddof=0) @ V) * Q  # tr(A^T C_v A) = D^T W D
    r = ((V.T @ validation.cross_cov(ddof=0)) * M).sum(1)  # tr(A^T C_vy) = D . r
    dy = validation.mean_y - train.mean_y
    u = (validation.mean_x - train.mean_x) @ V  # shift = dy - (u * D) @ M
    m_dy = M @ dy
    base = torch.trace(validation.cov_y(ddof=0)) + dy @ dy
    scale = float(torch.trace(cxx)) / cxx.shape[0]
    out = []
    for ridge in ridges:
        D = 1.0 / (e + max(ridge, 1e-9) * scale)
        uD = u * D
        out.append(base - 2 * (D @ r) + D @ W @ D - 2 * (uD @ m_dy) + uD @ Q @ uD)
    return torch.stack(out)


class AffineLensFitter:
    """Streaming fitter: ``update`` with the states of some tokens, then ``result()`` (or ``bias_only()``).

    Moments of ``(h_s, h_last - h_s)`` are kept per state for training and validation tokens.
    """

    def __init__(self, n_states: int, d_model: int, *, batch_dtype: torch.dtype = torch.float32) -> None:
        if n_states < 2:
            raise ShapeError(f"a lens needs at least 2 states (embeddings and one block), got {n_states}")
        self.n_states, self.d_model = n_states, d_model

        def moments() -> list[RunningMoments]:
            return [RunningMoments(d_model, d_model, batch_dtype=batch_dtype) for _ in range(n_states - 1)]

        self.train, self.validation = moments(), moments()

    def update(self, states: Sequence[torch.Tensor], *, validation: torch.Tensor | None = None) -> AffineLensFitter:
        """Add tokens: one ``[n, d]`` tensor per state (the last is the target); ``validation`` marks
        rows kept for choosing the ridge (a bool ``[n]`` mask; none by default)."""
        if len(states) != self.n_states:
            raise ShapeError(f"expected {self.n_states} states (embeddings + blocks), got {len(states)}")
        target = states[-1].float().cpu()
        n = target.shape[0]
        mask = torch.zeros(n, dtype=torch.bool) if validation is None else validation.bool().cpu()
        if mask.shape != (n,):
            raise ShapeError(f"validation must be a bool mask of {n} rows, got {tuple(mask.shape)}")
        parts = [(rows, split) for rows, split in ((~mask, self.train), (mask, self.validation)) if rows.any()]
        for s in range(self.n_states - 1):
            x = states[s].float().cpu()
            if x.shape != target.shape:
                raise ShapeError(f"state {s} is {tuple(x.shape)}, the last state {tuple(target.shape)}")
            delta = target - x
            for rows, split in parts:
                split[s].update(x[rows], delta[rows])
        return self

    def update_batch(self, batch: Batch, *, validation_every: int = 4) -> AffineLensFitter:
        """Add a collected batch; whole texts with ``text_index % validation_every == validation_every - 1``
        go to validation, so that neighbouring tokens of one text never straddle the split."""
        mask = batch.text_index % validation_every == validation_every - 1 if validation_every else None
        return self.update(states_of(batch), validation=mask)

    @property
    def tokens(self) -> int:
        return self.train[0].n + self.validation[0].n

    def _both(self, s: int) -> RunningMoments:
        return self.train[s].merge(self.validation[s])

    def choose_ridge(self, s: int, ridges: Sequence[float] = RIDGES) -> float:
        """The ridge with the least squared error on validation tokens, fitted on training tokens."""
        if self.validation[s].n < 2 or self.train[s].n < 2:
            raise EmptyDataError(
                f"choosing the ridge needs training and validation tokens (have {self.train[s].n} and "
                f"{self.validation[s].n}): mark validation rows in update(), or pass a fixed ridge"
            )
        errors = validation_errors(self.train[s], self.validation[s], ridges)
        return float(ridges[int(torch.argmin(errors))])

    def result(self, *, ridge: float | None = None, ridges: Sequence[float] = RIDGES) -> AffineLens:
        """Ridge-regularised translators; ``ridge=None`` picks each state's ridge on validation tokens."""
        if self.tokens < 2:
            raise EmptyDataError(f"need at least 2 tokens to fit an affine lens, have {self.tokens}")
        d, S = self.d_model, self.n_states
        A = torch.zeros(S, d, d, dtype=torch.float32)
        b = torch.zeros(S, d, dtype=torch.float32)
        chosen: list[float | None] = []
        for s in range(S - 1):
            lam = self.choose_ridge(s, ridges) if ridge is None else float(ridge)
            fit = fit_affine(self._both(s), ridge=lam)
            A[s] = fit.A.float()
            b[s] = (fit.y_mean - fit.x_mean @ fit.A).float()
            chosen.append(lam)
        return AffineLens(A, b, method="ridge", ridge=chosen + [None], tokens=self.tokens,
                          provenance=Provenance(where=LENS_WHERE, method="affine lens (ridge)"))

    def bias_only(self) -> AffineLens:
        """The bias-only lens: each state shifted by the mean of ``h_last - h_s`` (no matrix)."""
        if self.tokens < 1:
            raise EmptyDataError("no tokens to average")
        b = torch.zeros(self.n_states, self.d_model, dtype=torch.float32)
        for s in range(self.n_states - 1):
            b[s] = self._both(s).mean_y.float()
        return AffineLens(None, b, method="bias", tokens=self.tokens,
                          provenance=Provenance(where=LENS_WHERE, method="affine lens (bias)"))


def fit_affine_lens(model, tokenizer, texts: Sequence[str], *, structure: Structure | None = None,
                    ridge: float | None = None, ridges: Sequence[float] = RIDGES, validation_every: int = 4,
                    method: str = "ridge", batch_size: int = 8, max_length: int = 128, skip_first: bool = True,
                    progress=None) -> AffineLens:
    """Fit an affine (or, with ``method="bias"``, bias-only) lens on ``texts``.

    One forward pass per batch, stopped after the last block (no logits are needed). The first
    token of each text is skipped by default: attention sinks carry outlying norms.
    """
    from ..core.models import fingerprint
    from ..core.digest import data_hash

    check_choice(method, ("ridge", "bias"), "affine lens method")
    texts = list(texts)
    if ridge is None and method == "ridge" and len(texts) < validation_every:
        raise EmptyDataError(f"choosing the ridge needs at least {validation_every} texts (one for validation), "
                             f"got {len(texts)}; pass more texts or a fixed ridge")
    structure = structure or locate(model)
    fitter = AffineLensFitter(structure.n_layers + 1, structure.d_model)
    for batch in stream(model, tokenizer, texts, lens_sites(structure), batch_size=batch_size,
                        max_length=max_length, skip_first=skip_first, structure=structure, progress=progress):
        fitter.update_batch(batch, validation_every=validation_every)
    lens = fitter.result(ridge=ridge, ridges=ridges) if method == "ridge" else fitter.bias_only()
    provenance = Provenance(model_fingerprint=fingerprint(model), where=LENS_WHERE,
                            method=f"affine lens ({method})", data_hash=data_hash(texts),
                            extra={"texts": len(texts), "tokens": fitter.tokens})
    return AffineLens(lens.A, lens.b, method=lens.method, ridge=lens.ridge, tokens=lens.tokens, provenance=provenance)
