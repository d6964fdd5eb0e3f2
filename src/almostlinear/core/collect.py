"""Run texts through a model in batches and read activations at sites.

:func:`stream` yields one :class:`Batch` per forward pass (activations of the chosen positions
and, when asked, the model's logits there), so that callers can fold them into running statistics
without keeping everything. :func:`collect` concatenates the stream.

Only what is asked is computed: without ``logits=True`` the forward pass stops right after the
deepest requested site, which skips the later blocks, the final norm and the unembedding.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import EmptyDataError, NonFiniteError, ShapeError
from .hooks import Positions, StopForward, position_mask, record
from .locate import Structure, locate
from .offload import execution_device, is_offloaded
from .sites import Site, as_sites


@dataclass
class Batch:
    """Activations of one forward pass at the chosen positions, flattened to ``[n_tokens, d]``."""

    activations: dict[Site, torch.Tensor]
    token_ids: torch.Tensor  # [n_tokens]
    text_index: torch.Tensor  # [n_tokens], index into the list of texts
    position: torch.Tensor  # [n_tokens], index among the text's real tokens
    logits: torch.Tensor | None = None  # [n_tokens, vocab] when asked for
    next_token_ids: torch.Tensor | None = None  # [n_tokens], -1 where the text ends

    def __len__(self) -> int:
        return self.token_ids.shape[0]


@dataclass
class Activations:
    """All batches of :func:`stream` joined together."""

    activations: dict[Site, torch.Tensor]
    token_ids: torch.Tensor
    text_index: torch.Tensor
    position: torch.Tensor
    logits: torch.Tensor | None = None
    next_token_ids: torch.Tensor | None = None
    sites: list[Site] = field(default_factory=list)

    def __getitem__(self, site) -> torch.Tensor:
        key = Site.parse(site) if isinstance(site, str) else site
        return self.activations[key]

    def __len__(self) -> int:
        return self.token_ids.shape[0]


def model_device(model: nn.Module) -> torch.device:
    """Where inputs go: the input embedding's execution device.

    On a model dispatched with accelerate the first parameter may be offloaded (on the meta device)
    or on another GPU than the embedding, so the embedding's hook decides, then its weight.
    """
    embedding = None
    if hasattr(model, "get_input_embeddings"):
        try:
            embedding = model.get_input_embeddings()
        except (NotImplementedError, AttributeError):
            embedding = None
    for module in (embedding, model):
        if module is None:
            continue
        device = execution_device(module)
        if device is not None:
            return device
    if embedding is not None:
        weight = getattr(embedding, "weight", None)
        if isinstance(weight, torch.Tensor) and not is_offloaded(weight):
            return weight.device
    for parameter in model.parameters():
        if not is_offloaded(parameter):
            return parameter.device
    return next(model.parameters()).device


@contextlib.contextmanager
def _padding_side(tokenizer, side: str):
    previous = getattr(tokenizer, "padding_side", side)
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = previous


def tokenize(tokenizer, texts: Sequence[str], *, max_length: int, device) -> dict[str, torch.Tensor]:
    """Right-padded batch with an attention mask; sets a pad token when the tokenizer has none."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    with _padding_side(tokenizer, "right"):
        encoded = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True,
                            max_length=max_length)
    return {k: v.to(device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}


def _check_finite(batch: Batch) -> None:
    for site, tensor in batch.activations.items():
        # A NaN or inf anywhere makes the sum non-finite, so the sum is a cheap first check (30x
        # cheaper than isfinite over every element); the exact check runs only when it fails,
        # since a large float16 sum can overflow without any element being infinite.
        if not (torch.isfinite(tensor.sum()) or torch.isfinite(tensor).all()):
            raise NonFiniteError(
                f"NaN or infinite activations at {site}: the model overflowed (try float32 instead of "
                "float16) or its weights contain NaNs"
            )


def _skipping_first(positions: Positions):
    def policy(index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return position_mask(positions, mask.long(), tuple(mask.shape), mask.device) & (index > 0)

    return policy


def shard_bounds(n: int, shard: tuple[int, int] | None) -> tuple[int, int]:
    """``[start, stop)`` of process ``rank``'s share of ``n`` items for ``shard=(rank, world)``.

    Contiguous blocks whose sizes differ by at most one (the first ``n % world`` ranks take one
    more); a rank beyond the items gets an empty block. Joined in rank order the blocks are the
    whole list in its order, so statistics folded in rank order see the data as one process would.
    """
    if shard is None:
        return 0, n
    try:
        rank, world = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise ShapeError(f"shard must be a pair (rank, world) of ints, got {shard!r}") from None
    if world < 1 or not 0 <= rank < world:
        raise ShapeError(f"shard=(rank, world) needs 0 <= rank < world, got {shard!r}")
    size, extra = divmod(n, world)
    start = rank * size + min(rank, extra)
    return start, start + size + (rank < extra)


def shard_of(items: Sequence, shard: tuple[int, int] | None) -> list:
    """This process's block of ``items`` (see :func:`shard_bounds`)."""
    start, stop = shard_bounds(len(items), shard)
    return list(items[start:stop])


def stream(model: nn.Module, tokenizer, texts: Sequence[str], sites, *, positions: Positions = "all",
           logits: bool = False, batch_size: int = 8, max_length: int = 128, skip_first: bool = False,
           structure: Structure | None = None, progress=None,
           shard: tuple[int, int] | None = None) -> Iterator[Batch]:
    """Yield a :class:`Batch` per forward pass over ``texts``.

    ``skip_first`` drops each text's first token (often an attention sink with an outlying norm).
    ``progress`` is an optional callable receiving the number of texts done after each batch.
    ``shard=(rank, world)`` runs only this process's block of the texts (:func:`shard_bounds`);
    ``text_index`` still indexes the whole list, and an empty block yields no batch.
    """
    texts = list(texts)
    if not texts:
        raise EmptyDataError("no texts to run: pass at least one non-empty string")
    if any(not isinstance(t, str) or not t for t in texts):
        raise EmptyDataError("texts must be non-empty strings")
    offset, stop = shard_bounds(len(texts), shard)
    texts = texts[offset:stop]
    structure = structure or locate(model)
    sites = as_sites(structure, sites)
    if logits and structure.unembedding is None:
        raise EmptyDataError(f"{structure.model_type} has no output head, so there are no logits to read")
    if batch_size < 1:
        raise ShapeError(f"batch_size must be at least 1, got {batch_size}")
    device = model_device(model)
    policy = _skipping_first(positions) if skip_first else positions
    # A KV cache is useless for one pass over whole texts; building it costs time and memory.
    extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        inputs = tokenize(tokenizer, chunk, max_length=max_length, device=device)
        mask = inputs["attention_mask"].bool()
        out = None
        with torch.inference_mode(), record(model, sites, positions=policy, stop_after=not logits,
                                            structure=structure) as rec:
            try:
                out = model(**inputs, **extra)
            except StopForward:
                pass
        chosen = position_mask(policy, inputs["attention_mask"], mask.shape, device)
        real_index = mask.long().cumsum(-1) - 1
        acts = {site: rec[site] for site in sites}
        rows = torch.arange(len(chunk), device=device)[:, None].expand_as(mask)
        next_ids = torch.full_like(inputs["input_ids"], -1)
        next_ids[:, :-1] = torch.where(mask[:, 1:], inputs["input_ids"][:, 1:], -1)
        batch = Batch(
            activations=acts,
            token_ids=inputs["input_ids"][chosen].cpu(),
            text_index=(rows[chosen] + start + offset).cpu(),
            position=real_index[chosen].cpu(),
            logits=out.logits[chosen] if (logits and out is not None) else None,
            next_token_ids=next_ids[chosen].cpu(),
        )
        _check_finite(batch)
        if progress is not None:
            progress(len(chunk))
        yield batch


def collect(model: nn.Module, tokenizer, texts: Sequence[str], sites, *, positions: Positions = "all",
            logits: bool = False, batch_size: int = 8, max_length: int = 128, skip_first: bool = False,
            device: str | torch.device = "cpu", structure: Structure | None = None,
            progress=None, shard: tuple[int, int] | None = None) -> Activations:
    """Activations at ``sites`` for every chosen token of ``texts``, moved to ``device``.

    With ``shard=(rank, world)`` only this process's block of the texts (see :func:`stream`); an
    empty block gives zero rows of the right widths."""
    structure = structure or locate(model)
    sites = as_sites(structure, sites)
    parts: list[Batch] = list(stream(model, tokenizer, texts, sites, positions=positions, logits=logits,
                                     batch_size=batch_size, max_length=max_length, skip_first=skip_first,
                                     structure=structure, progress=progress, shard=shard))
    if not parts:
        parts = [_empty_batch(model, structure, sites, logits)]

    def cat(get):
        return torch.cat([get(b) for b in parts]).to(device)

    return Activations(
        activations={s: cat(lambda b, s=s: b.activations[s]) for s in sites},
        token_ids=cat(lambda b: b.token_ids),
        text_index=cat(lambda b: b.text_index),
        position=cat(lambda b: b.position),
        logits=cat(lambda b: b.logits) if logits else None,
        next_token_ids=cat(lambda b: b.next_token_ids),
        sites=sites,
    )


def _empty_batch(model: nn.Module, structure: Structure, sites: list[Site], logits: bool) -> Batch:
    """Zero rows of every field, for a shard that holds no texts."""
    dtype = next(model.parameters()).dtype
    index = torch.zeros(0, dtype=torch.long)
    vocab = getattr(getattr(structure.unembedding, "weight", None), "shape", (0,))[0] if logits else 0
    return Batch(activations={s: torch.zeros(0, s.width(structure), dtype=dtype) for s in sites},
                 token_ids=index, text_index=index, position=index,
                 logits=torch.zeros(0, vocab, dtype=dtype) if logits else None, next_token_ids=index)
