"""Token bookkeeping for edits: where the subject ends, what the target tokenises to."""

from __future__ import annotations

import torch

from .request import EditRequestError


def subject_last_index(tokenizer, text: str, start: int, end: int) -> tuple[list[int], int]:
    """Token ids of ``text`` and the index of the last token overlapping ``text[start:end]``.

    Character offsets are used when the tokenizer gives them (every fast tokenizer), so leading
    spaces, BOS tokens and merges across the subject's boundary are all handled; otherwise the
    prefix up to the subject's end is tokenised on its own.
    """
    if text[start:end] == "" or start < 0:
        raise EditRequestError(f"the subject is empty or not in {text!r}")
    try:
        encoded = tokenizer(text, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        ids = tokenizer(text)["input_ids"]
        index = len(tokenizer(text[:end])["input_ids"]) - 1
        if index < 0:
            raise EditRequestError(f"the subject {text[start:end]!r} tokenises to nothing in {text!r}") from None
        return list(ids), index
    ids = list(encoded["input_ids"])
    hits = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
    if not hits:
        raise EditRequestError(f"no token of {text!r} covers the subject {text[start:end]!r}")
    return ids, hits[-1]


def locate_subject(tokenizer, text: str, subject: str) -> tuple[list[int], int]:
    """Like :func:`subject_last_index` for a subject found in ``text`` (its last occurrence)."""
    start = text.rfind(subject)
    if not subject or start < 0:
        raise EditRequestError(f"the subject {subject!r} does not occur in the prompt {text!r}")
    return subject_last_index(tokenizer, text, start, start + len(subject))


def target_ids(tokenizer, target: str) -> list[int]:
    """Ids of ``" " + target`` without special tokens; an error if that is nothing."""
    ids = tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"]
    if len(ids) == 0:
        raise EditRequestError(f"the target {target!r} tokenises to nothing")
    return list(ids)


def pad_right(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of right-padded rows."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, getattr(tokenizer, "unk_token_id", None)):
        if candidate is not None:
            return int(candidate)
    return 0
