"""Fit LEACE erasers on a model's activations: at one site, or at many (e.g. every layer).

Erasing at several layers is done in order ("concept scrubbing", arXiv 2306.03819): the eraser of
each layer is fitted on activations computed with the erasers of all earlier layers already in
place, so each one removes what the earlier erasures left or let the model rebuild. With
``sequential=False`` all erasers are fitted from one pass of the unerased model (cheaper; exact at
the first site only).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from ..core.collect import stream
from ..core.errors import AlmostLinearError, EmptyDataError, ShapeError
from ..core.hooks import Positions, execution_order
from ..core.lever import as_model
from ..core.sites import as_sites
from .artifact import LeaceEraser, stack, where_of
from .leace import DEFAULT_SVD_TOL, LeaceFitter


def _labels_per_token(labels: torch.Tensor, text_index: torch.Tensor) -> torch.Tensor:
    return labels[text_index.to(labels.device)]


def fit_eraser(model, tokenizer, texts: Sequence[str], labels, sites, *, n_classes: int = 1,
               positions: Positions = "last", apply_positions: Positions = "all", sequential: bool = True,
               method: str = "leace", shrinkage: bool = False, svd_tol: float = DEFAULT_SVD_TOL,
               batch_size: int = 8, max_length: int = 128, data_hash: str | None = None, progress: bool = False
               ) -> LeaceEraser:
    """Fit a :class:`LeaceEraser` for ``labels`` (one per text) at ``sites`` (one site name, any layers).

    ``positions`` chooses the tokens fitted on (each carries its text's label); ``"last"`` suits
    labels of whole statements. ``apply_positions`` is where the erasers of earlier sites act while
    later ones are fitted; apply the result with the same positions for exact guardedness.
    ``model`` may be a ``LoadedModel`` (then ``tokenizer`` may be None); its fingerprint is recorded.
    """
    view = as_model(model)
    module, tokenizer = view.module, tokenizer if tokenizer is not None else view.tokenizer
    if tokenizer is None:
        raise AlmostLinearError("this needs the model's tokenizer: pass it, or pass a LoadedModel")
    texts = list(texts)
    if not texts:
        raise EmptyDataError("no texts to fit an eraser on")
    labels = torch.as_tensor(labels)
    if labels.shape[0] != len(texts):
        raise ShapeError(f"{len(texts)} texts but {labels.shape[0]} labels")
    if torch.unique(labels.reshape(labels.shape[0], -1), dim=0).shape[0] < 2:
        raise EmptyDataError("all labels are equal (a single class): there is no concept to erase")
    structure = view.structure
    sites = sorted(as_sites(structure, sites), key=execution_order)
    where_of(sites)  # one site name: refused here, before any pass
    d = sites[0].width(structure)
    fingerprint = view.fingerprint
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(texts) * (len(sites) if sequential else 1), desc="fit eraser", unit="text")
    tick = bar.update if bar is not None else None

    def fitters_from_pass(chosen_sites, active: LeaceEraser | None) -> dict:
        fitters = {s: LeaceFitter(d, n_classes, method, shrinkage, svd_tol) for s in chosen_sites}
        scope = active.apply(view, positions=apply_positions) if active else contextlib.nullcontext()
        with scope:
            for batch in stream(module, tokenizer, texts, chosen_sites, positions=positions, batch_size=batch_size,
                                max_length=max_length, structure=structure, progress=tick):
                z = _labels_per_token(labels, batch.text_index)
                for s in chosen_sites:
                    fitters[s].update(batch.activations[s], z)
        return fitters

    try:
        if not sequential or len(sites) == 1:
            fitters = fitters_from_pass(sites, None)
            return LeaceEraser.from_fitters(fitters, model_fingerprint=fingerprint, data_hash=data_hash,
                                            extra={"positions": str(positions), "sequential": sequential})
        done: list[LeaceEraser] = []
        for site in sites:
            active = stack(done) if done else None
            fitters = fitters_from_pass([site], active)
            done.append(LeaceEraser.from_fitters(fitters, model_fingerprint=fingerprint, data_hash=data_hash))
        joined = stack(done)
        extra = {**joined.provenance.extra, "positions": str(positions), "sequential": True,
                 "apply_positions": str(apply_positions), "shrinkage": shrinkage, "svd_tol": svd_tol}
        return LeaceEraser.from_factors(
            {s: (joined.left[i, :, :joined.ranks[i]], joined.right[i, :joined.ranks[i]], joined.mean[i])
             for i, s in enumerate(joined.sites)},
            method=method, model_fingerprint=fingerprint, data_hash=data_hash, extra=extra)
    finally:
        if bar is not None:
            bar.close()
