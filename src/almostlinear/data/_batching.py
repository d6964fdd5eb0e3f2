"""Shared setup for batched runs of a causal LM: left padding and eval mode, undone afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..core.errors import AlmostLinearError


@contextmanager
def left_padded(model: Any, tokenizer: Any) -> Iterator[None]:
    """Pad on the left (last column = next-token position), borrow EOS as PAD if needed, eval mode.

    The caller's tokenizer and model are shared objects, so every change is reverted on exit.
    """
    saved = (tokenizer.padding_side, tokenizer.pad_token, model.training)
    try:
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise AlmostLinearError(
                    "The tokenizer has neither a pad nor an eos token; set tokenizer.pad_token."
                )
            tokenizer.pad_token = tokenizer.eos_token
        model.eval()
        yield
    finally:
        tokenizer.padding_side = saved[0]
        if saved[1] is None:
            tokenizer.pad_token = None
        model.train(saved[2])
