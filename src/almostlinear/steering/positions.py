"""Where a steering vector is added: position policies that stay right under the KV cache.

A policy names token positions of the *whole* sequence, prompt and generated tokens together:

* ``"all"``: every real token, prompt and generated.
* ``"prompt"``: the prompt's tokens only; generated tokens run unsteered (their keys and values
  still see the steered prompt).
* ``"generated"``: only tokens produced by ``generate`` (never the prompt).
* ``("last", k)``: the last ``k`` real tokens of each forward pass over a full text, and every
  generated token (each one is the newest token when it is computed).
* anything :func:`almostlinear.core.hooks.position_mask` accepts (``"last"``, ints, a callable).

The hooks count positions among real tokens from the start of the whole sequence (padding
excluded, also with left padding), so ``index < prompt_length`` separates prompt from generated
tokens whether ``generate`` runs with a KV cache (one new token per forward) or not. The prompt
length is given explicitly (:func:`~almostlinear.steering.generate.generate_steered` does so) or
inferred: a forward pass whose positions start at 0 is a new sequence and all its tokens are
prompt; later passes that continue it (with a KV cache) hold generated tokens. Without a cache
every pass starts at 0, so pass ``prompt_lengths`` for ``"generated"`` in that case.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Sequence

import torch

from ..core.errors import ChoiceError, LeverError, ShapeError
from ..core.hooks import Positions

POLICY_NAMES = ("all", "prompt", "generated")


def describe(policy) -> str:
    """A policy as the one string an artifact's ``Where`` stores: ``"all"``, ``"last:3"``, ``"0,-1"``,
    or ``"callable:<name>"`` for a function (a file cannot hold the function itself)."""
    if isinstance(policy, str):
        return policy
    if isinstance(policy, (tuple, list)) and len(policy) == 2 and policy[0] == "last":
        return f"last:{int(policy[1])}"
    if callable(policy):
        return f"callable:{getattr(policy, '__name__', type(policy).__name__)}"
    if isinstance(policy, numbers.Integral):
        return str(int(policy))
    return ",".join(str(int(p)) for p in policy)


def from_header(value) -> Positions | tuple:
    """Inverse of :func:`describe` where possible (also the lists that files of format 1 hold). A
    function's record ``"callable:<name>"`` stays as it is and :func:`resolve` asks for the policy
    to be passed again (steering every position instead would silently change what the vector does)."""
    if isinstance(value, list):
        return ("last", int(value[1])) if len(value) == 2 and value[0] == "last" else [int(p) for p in value]
    if isinstance(value, str):
        if value.startswith("last:") and value[5:].isdigit():
            return ("last", int(value[5:]))
        if re.fullmatch(r"-?\d+(,-?\d+)*", value):
            return [int(p) for p in value.split(",")]
    return value


class _PromptSplit:
    """Stateful policy choosing prompt or generated tokens; see the module docstring."""

    def __init__(self, generated: bool, prompt_lengths: torch.Tensor | None) -> None:
        self.generated = generated
        self.fixed = prompt_lengths
        self.lengths: torch.Tensor | None = None
        self.__name__ = "generated" if generated else "prompt"

    def __call__(self, index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.fixed is not None:
            if self.fixed.shape[0] != index.shape[0]:
                raise ShapeError(f"prompt_lengths has {self.fixed.shape[0]} entries for a batch of {index.shape[0]}")
            lengths = self.fixed.to(index.device)
        else:
            real = torch.where(mask, index, torch.iinfo(index.dtype).max)
            starts_new = bool((real.amin(-1) == 0).all())
            if starts_new or self.lengths is None or self.lengths.shape[0] != index.shape[0]:
                self.lengths = torch.where(mask, index, -1).amax(-1) + 1
            lengths = self.lengths.to(index.device)
        in_prompt = index < lengths[:, None]
        return ~in_prompt if self.generated else in_prompt


def resolve(policy, prompt_lengths: Sequence[int] | torch.Tensor | None = None) -> Positions:
    """Turn a steering policy into what :mod:`almostlinear.core.hooks` accepts (a fresh object per call)."""
    lengths = None if prompt_lengths is None else torch.as_tensor(prompt_lengths, dtype=torch.long).reshape(-1)
    if isinstance(policy, str):
        if policy.startswith("callable:"):
            raise LeverError(f"this vector was made with the position function {policy[9:]!r}, which a file cannot "
                             "hold; pass positions=... (the function) when applying it")
        if policy == "prompt":
            return _PromptSplit(False, lengths)
        if policy == "generated":
            return _PromptSplit(True, lengths)
        if policy in ("all", "last", "first"):
            return policy
        raise ChoiceError(f"unknown position policy {policy!r}: use 'all', 'prompt', 'generated', ('last', k), "
                          "ints or a function")
    if isinstance(policy, (tuple, list)) and len(policy) == 2 and policy[0] == "last":
        k = policy[1]
        if not isinstance(k, numbers.Integral) or k < 1:
            raise ShapeError(f"('last', k) needs a positive integer k, got {k!r}")
        return list(range(-int(k), 0))
    return policy
