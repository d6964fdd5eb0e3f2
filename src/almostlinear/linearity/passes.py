"""Sublayer moments from activation batches, and the forward passes the per-block measurements run.

:func:`stacked_pairs` reads a sublayer's input and output sites (``attn_in`` → ``attn_out``,
``mlp_in`` → ``mlp_out``) for many layers from one :class:`~almostlinear.core.collect.Batch`, ready
for per-kind :class:`PairMoments`, so the audit's shared collection pass serves the block fits;
:func:`sublayer_moments` runs such a pass on its own, for use outside the audit.
:func:`next_token_loss` is the mean next-token cross-entropy of texts, with optional sublayer
replacements active, for the loss cost of linearising a block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..core.collect import Batch, model_device, stream, tokenize
from ..core.errors import EmptyDataError
from ..core.locate import Structure
from ..core.sites import Site
from .blocks import PairMoments
from .sublayers import KINDS, Sublayer


def _batches(tokenizer, texts: Sequence[str], batch_size: int, max_length: int, device):
    texts = list(texts)
    if not texts:
        raise EmptyDataError("no texts to run")
    for start in range(0, len(texts), batch_size):
        yield start, tokenize(tokenizer, texts[start:start + batch_size], max_length=max_length, device=device)


def by_kind(parts: Sequence[Sublayer]) -> dict[str, list[Sublayer]]:
    """``parts`` grouped by kind, in the order given, kinds without parts left out."""
    groups = {kind: [p for p in parts if p.kind == kind] for kind in KINDS}
    return {kind: ps for kind, ps in groups.items() if ps}


def sublayer_sites(parts: Sequence[Sublayer]) -> tuple[Site, ...]:
    """The input and output sites of ``parts``."""
    return tuple(site for p in parts for site in (p.input, p.output))


def empty_moments(parts: Sequence[Sublayer], d_model: int) -> dict[str, PairMoments]:
    """Per kind, moments for that kind's layers of ``parts``."""
    return {kind: PairMoments(len(ps), d_model, d_model) for kind, ps in by_kind(parts).items()}


def stacked_pairs(parts: Sequence[Sublayer], batch: Batch, rows: torch.Tensor | None = None
                  ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per kind, the inputs and outputs of ``parts`` in ``batch`` (its ``rows``, else all), each
    ``[layers, n_tokens, d]``."""
    def stack(sites: list[Site]) -> torch.Tensor:
        acts = [batch.activations[site] for site in sites]
        return torch.stack(acts if rows is None else [a[rows.to(a.device)] for a in acts])

    return {kind: (stack([p.input for p in ps]), stack([p.output for p in ps])) for kind, ps in by_kind(parts).items()}


def sublayer_moments(model: nn.Module, tokenizer, structure: Structure, texts: Sequence[str],
                     parts: Sequence[Sublayer], *, batch_size: int = 8, max_length: int = 128,
                     skip_first: bool = True, progress: Callable[[int], None] | None = None
                     ) -> dict[str, PairMoments]:
    """Moments of (input, output) per kind of sublayer, all layers at once: ``{"attn": .., "mlp": ..}``.

    Every real token counts, except each text's first when ``skip_first`` (attention sinks have
    outlying norms). Layers appear in the order of ``parts`` within each kind.
    """
    moments = empty_moments(parts, structure.d_model)
    for batch in stream(model, tokenizer, texts, sublayer_sites(parts), batch_size=batch_size,
                        max_length=max_length, skip_first=skip_first, structure=structure, progress=progress):
        for kind, (x, y) in stacked_pairs(parts, batch).items():
            moments[kind].update(x, y)
    return moments


def next_token_loss(model: nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 8,
                    max_length: int = 128, skip_first: bool = True) -> tuple[float, int]:
    """Mean next-token cross-entropy (nats) over the texts' real tokens, and the number of tokens.

    With ``skip_first`` the prediction made at each text's first token is left out, matching
    measurements that exclude the first position.
    """
    device = model_device(model)
    total, count = 0.0, 0
    with torch.inference_mode():
        for _, inputs in _batches(tokenizer, texts, batch_size, max_length, device):
            logits = model(**inputs, use_cache=False).logits
            ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
            valid = mask[:, :-1] & mask[:, 1:]
            if skip_first:
                valid[:, 0] = False
            logp = torch.log_softmax(logits[:, :-1][valid].float(), dim=-1)
            target = ids[:, 1:][valid]
            total += float(-logp.gather(1, target[:, None]).sum())
            count += int(valid.sum())
    if count == 0:
        raise EmptyDataError("the texts are too short to score any next-token prediction")
    return total / count, count


class SplitMoments:
    """Sublayer moments of several splits of one text source, fed batch by batch from a shared pass.

    Texts go whole to a split by their index: text ``i`` belongs to the split whose ``residues``
    hold ``i % period``. Each split folds its texts in groups of ``texts_per_update``, in order, as a
    pass over that split alone with that batch size would, so the shared pass gives the numbers of
    one pass per split, and the float64 update (a fixed cost per call) runs once per group rather
    than once per batch and split.
    """

    def __init__(self, parts: Sequence[Sublayer], d_model: int, splits: dict[str, tuple[int, ...]],
                 texts_per_update: int, period: int = 4) -> None:
        self.parts, self.splits, self.period, self.per_update = list(parts), splits, period, texts_per_update
        self.moments = {name: empty_moments(self.parts, d_model) for name in splits}
        self._queue: dict[str, list[tuple[torch.Tensor, dict]]] = {name: [] for name in splits}

    def _groups(self, residues: tuple[int, ...], text_index: torch.Tensor) -> torch.Tensor:
        """Each text's group: its rank among the split's texts, in blocks of ``texts_per_update``."""
        rank = torch.full((self.period,), -1, dtype=torch.long)
        rank[list(residues)] = torch.arange(len(residues))
        return ((text_index // self.period) * len(residues) + rank[text_index % self.period]) // self.per_update

    def add(self, batch: Batch) -> None:
        """Queue the batch's rows by split; fold every group that no later batch can add to."""
        residue = batch.text_index % self.period
        for name, residues in self.splits.items():
            rows = torch.isin(residue, torch.tensor(residues)).nonzero()[:, 0]
            if len(rows):
                groups = self._groups(residues, batch.text_index[rows])
                self._queue[name].append((groups, stacked_pairs(self.parts, batch, rows)))
                self._fold(name, below=int(groups.max()))

    def result(self) -> dict[str, dict[str, PairMoments]]:
        """Per split, per kind, the moments of every batch added."""
        for name in self.splits:
            self._fold(name, below=None)
        return self.moments

    def _fold(self, name: str, below: int | None) -> None:
        """One update per complete group (every group below ``below``; all when it is None).

        Rows arrive in text order, so each group is a contiguous run of rows in each queued batch.
        """
        queue = self._queue[name]
        if not queue or (below is not None and int(queue[0][0].min()) >= below):
            return
        present = torch.cat([g for g, _ in queue]).unique().tolist()
        for group in (g for g in present if below is None or g < below):
            spans = [(pairs, int(torch.searchsorted(g, group)), int(torch.searchsorted(g, group, right=True)))
                     for g, pairs in queue]
            spans = [(pairs, a, b) for pairs, a, b in spans if b > a]
            for kind, moments in self.moments[name].items():
                x, y = (torch.cat([pairs[kind][i][:, a:b] for pairs, a, b in spans], 1).contiguous() for i in (0, 1))
                moments.update(x, y)
        kept = []
        for g, pairs in queue:
            cut = len(g) if below is None else int(torch.searchsorted(g, below))
            if cut < len(g):
                kept.append((g[cut:], {kind: (x[:, cut:], y[:, cut:]) for kind, (x, y) in pairs.items()}))
        self._queue[name] = kept
