"""The audit under torchrun: the shared forward passes are split across ranks, rank 0 does the rest.

Rank 0 plans the audit, builds the text sources and runs every section; for each shared pass it
sends the other ranks the texts and sites, and the pass's batches (the same batches of the same
texts that one process would run) go round-robin to the ranks. Each rank runs its batches and
sends rank 0 the activations the sections asked for; rank 0 hands every batch to the sections in
the original order. The sections therefore see exactly what they see in one process (the report's
numbers agree to rounding), whatever their state, and only rank 0 writes the report. Work a
section does on its own in ``finish`` (interventions, generation, training) runs on rank 0.

What travels per batch is the activations at the requested sites (and logits where a section
needs them), ``tokens × sites × d`` values, against a forward pass through the whole model: worth
it when the model is large and the sites few, as in the audit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from ..core.collect import Batch, model_device, stream
from .group import active, global_rank, rank_and_world


@dataclass
class _Serving:
    group: object = None  # set on rank 0 while the other ranks serve its passes


_SERVING = _Serving()


def audit_group():
    """The default process group when this is one rank of several (torchrun), else ``None``."""
    if not active():
        return None
    import torch.distributed as dist

    return dist.group.WORLD


def audit_rank(group) -> int:
    return rank_and_world(group)[0]


def audit_world(group) -> int:
    return rank_and_world(group)[1]


def is_worker(group) -> bool:
    return group is not None and rank_and_world(group)[0] != 0


@contextlib.contextmanager
def loading_in_turn(group) -> Iterator[None]:
    """Rank 0 loads the model first (filling any conversion cache), then the others read it."""
    import torch.distributed as dist

    if is_worker(group):
        dist.barrier(group=group)
    yield
    if group is not None and not is_worker(group):
        dist.barrier(group=group)


def run_shared(group, work: Callable[[], object], model, tokenizer, structure=None):
    """Rank 0: ``work()`` (the audit's sections) with the other ranks serving its forward passes.
    The other ranks: serve until rank 0 is done collecting; returns ``None`` there."""
    if group is None:
        return work()
    if is_worker(group):
        _serve(group, model, tokenizer, structure)
        return None
    _SERVING.group = group
    try:
        return work()
    finally:
        release_workers()


def release_workers() -> None:
    """Rank 0: no more shared passes; the other ranks stop serving (idempotent)."""
    group, _SERVING.group = _SERVING.group, None
    if group is not None:
        _broadcast(None, group)


def _broadcast(request, group):
    import torch.distributed as dist

    box = [request]
    dist.broadcast_object_list(box, src=global_rank(group, 0), group=group)
    return box[0]


def _chunks(n: int, batch_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def _portable(batch: Batch) -> Batch:
    """The batch with every tensor on the CPU, so it pickles the same from any device."""
    move = (lambda t: None if t is None else t.detach().cpu())
    return Batch(activations={s: move(t) for s, t in batch.activations.items()}, token_ids=batch.token_ids,
                 text_index=batch.text_index, position=batch.position, logits=move(batch.logits),
                 next_token_ids=batch.next_token_ids)


def _one_batch(model, tokenizer, texts: list[str], sites, options: dict, structure) -> Batch:
    (batch,) = stream(model, tokenizer, texts, sites, batch_size=len(texts), structure=structure, **options)
    return batch


def shared_stream(model, tokenizer, texts: Sequence[str], sites, *, batch_size: int = 8, progress=None,
                  structure=None, **options) -> Iterator[Batch]:
    """:func:`~almostlinear.core.collect.stream`, with the batches computed across the ranks while
    rank 0 runs :func:`run_shared`; on its own exactly ``stream``."""
    group = _SERVING.group
    if group is None:
        yield from stream(model, tokenizer, texts, sites, batch_size=batch_size, progress=progress,
                          structure=structure, **options)
        return
    import torch.distributed as dist

    texts = list(texts)
    _broadcast({"texts": texts, "sites": list(sites), "batch_size": batch_size, "options": options}, group)
    _, world = rank_and_world(group)
    device = model_device(model)
    for number, (start, stop) in enumerate(_chunks(len(texts), batch_size)):
        owner = number % world
        if owner == 0:
            batch = _one_batch(model, tokenizer, texts[start:stop], sites, options, structure)
        else:
            box = [None]
            dist.recv_object_list(box, src=global_rank(group, owner), group=group)
            batch = box[0]
            batch.activations = {s: t.to(device) for s, t in batch.activations.items()}
            if batch.logits is not None:
                batch.logits = batch.logits.to(device)
        batch.text_index += start
        if progress is not None:
            progress(stop - start)
        yield batch


def _serve(group, model, tokenizer, structure) -> None:
    """Run this rank's batches of every pass rank 0 announces, until it says there are no more."""
    import torch.distributed as dist

    rank, world = rank_and_world(group)
    while (request := _broadcast(None, group)) is not None:
        texts = request["texts"]
        for number, (start, stop) in enumerate(_chunks(len(texts), request["batch_size"])):
            if number % world != rank:
                continue
            batch = _one_batch(model, tokenizer, texts[start:stop], request["sites"], request["options"], structure)
            dist.send_object_list([_portable(batch)], dst=global_rank(group, 0), group=group)


__all__ = ["audit_group", "audit_rank", "audit_world", "is_worker", "loading_in_turn", "release_workers",
           "run_shared", "shared_stream"]
