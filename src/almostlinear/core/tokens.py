"""Which tokens an answer adds after its context, as the model sees them in running text.

An answer is encoded *inside* its context (``context + " " + answer``) and split where the ids stop
agreeing with the context alone, so byte-level BPE (" Paris" -> "ĠParis") and SentencePiece
("▁Paris") tokenizers both give the ids they produce in running text; encoding the answer alone
would give the ids of a string that starts without a space.
"""

from __future__ import annotations

from typing import Any

from .errors import AlmostLinearError


def _common_prefix(head: list[int], full: list[int]) -> int:
    i = 0
    while i < min(len(head), len(full)) and head[i] == full[i]:
        i += 1
    return i


def first_answer_token(tokenizer: Any, context: str, answer: str) -> int:
    """Id of the first token ``" " + answer`` contributes after ``context`` (no special tokens)."""
    head = tokenizer(context, add_special_tokens=False)["input_ids"]
    full = tokenizer(f"{context} {answer}", add_special_tokens=False)["input_ids"]
    i = _common_prefix(head, full)
    if i >= len(full):
        raise AlmostLinearError(f"the answer {answer!r} adds no token after {context!r}; pass a non-empty answer")
    return int(full[i])


def _strip_trailing(ids: list[int], special: set[int]) -> list[int]:
    while ids and ids[-1] in special:
        ids = ids[:-1]
    return ids


def continuation_ids(tokenizer: Any, context: str, answer: str) -> tuple[list[int], list[int]]:
    """``(context_ids, answer_ids)`` of ``context + " " + answer``, with the tokenizer's special tokens.

    A BOS token the tokenizer adds stays in the context; special tokens it appends (EOS, padding)
    are dropped from both ends, so the answer ids are what a model would be scored on.
    """
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    pad = getattr(tokenizer, "pad_token_id", None)
    special.discard(getattr(tokenizer, "bos_token_id", None))
    if pad is not None:
        special.add(pad)
    head = _strip_trailing(list(tokenizer(context)["input_ids"]), special)
    full = _strip_trailing(list(tokenizer(f"{context} {answer}")["input_ids"]), special)
    i = _common_prefix(head, full)
    if i >= len(full):
        raise AlmostLinearError(f"the target {answer!r} adds no token after {context!r}; pass a non-empty target")
    if i == 0:
        raise AlmostLinearError(f"the prompt {context!r} encodes to nothing the target can follow; pass a longer prompt")
    return full[:i], full[i:]
