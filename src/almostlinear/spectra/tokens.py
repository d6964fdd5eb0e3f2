"""Read residual-stream directions as tokens through the model's own final norm and unembedding.

Convention: a direction ``v`` is read the way the output head reads a residual stream pointing along
``v``, keeping only what depends on ``v``'s sign::

    logits(v) = W_U · odd(v),   odd(v) = (norm_f(c·v) − norm_f(−c·v)) / 2 · rms(v)

with ``c`` chosen so that ``rms(c·v) = 10`` (the norm's ε is then negligible; the norm's output does
not depend on ``c``, and the factor ``rms(v)`` restores ``v``'s scale). For RMSNorm this is
exactly ``W_U (g ⊙ v)``, the final norm's scale folded into the unembedding; for LayerNorm it is
``W_U (g ⊙ (v − mean v))`` times ``rms(v)/std(v)``, its bias dropped. Calling the norm module instead
of reading its weight covers every variant (Gemma's ``1 + w`` scale, centring, biases) with no
architecture table. Output-head biases are left out: they do not depend on the direction.
Models without an output head (encoders) are read through their input embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import NonFiniteError, ShapeError
from ..core.locate import Structure

_PROBE_RMS = 10.0


@dataclass(frozen=True)
class TokenDirection:
    """The top tokens of ``+v`` and of ``−v`` (an SVD vector's sign is arbitrary, so both are shown)."""

    positive_ids: list[int]
    negative_ids: list[int]
    positive: list[str]
    negative: list[str]


@dataclass(frozen=True, eq=False)  # holds tensors: compared by identity
class TokenReader:
    unembedding: torch.Tensor  # [vocab, d_model]
    final_norm: nn.Module | None

    @classmethod
    def from_structure(cls, structure: Structure) -> TokenReader:
        head = structure.unembedding if structure.unembedding is not None else structure.embedding
        return cls(head.weight.detach(), structure.final_norm)

    def folded(self, directions: torch.Tensor) -> torch.Tensor:
        """``odd(v)`` for directions ``[n, d_model]`` (see the module docstring), in the head's dtype."""
        v = torch.as_tensor(directions)
        if v.dim() == 1:
            v = v[None]
        if v.dim() != 2 or v.shape[-1] != self.unembedding.shape[1]:
            raise ShapeError(f"expected directions [n, {self.unembedding.shape[1]}], got {tuple(v.shape)}")
        if not torch.isfinite(v).all():
            raise NonFiniteError("the directions contain NaN or infinite values")
        v = v.to(device=self.unembedding.device, dtype=self.unembedding.dtype)
        if self.final_norm is None:
            return v
        rms = v.double().pow(2).mean(-1, keepdim=True).sqrt()
        if (rms == 0).any():
            raise ShapeError("a zero vector has no direction to read")
        scaled = (v.double() * (_PROBE_RMS / rms)).to(v.dtype)
        with torch.no_grad():
            odd = (self.final_norm(scaled).double() - self.final_norm(-scaled).double()) / 2
        return (odd * rms).to(v.dtype)

    def logits(self, directions: torch.Tensor) -> torch.Tensor:
        """``[n, vocab]`` logits of each direction (no output bias)."""
        return self.folded(directions) @ self.unembedding.T

    def top_ids(self, directions: torch.Tensor, k: int = 10, chunk: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids ``[n, k]`` of the top tokens of ``+v`` and of ``−v``, computed in chunks to bound memory."""
        if not 1 <= k <= self.unembedding.shape[0]:
            raise ShapeError(f"k must be between 1 and the vocabulary size {self.unembedding.shape[0]}, got {k}")
        folded = self.folded(directions)
        positive, negative = [], []
        for start in range(0, len(folded), chunk):
            logits = folded[start:start + chunk] @ self.unembedding.T
            positive.append(logits.topk(k, dim=-1).indices)
            negative.append((-logits).topk(k, dim=-1).indices)
        return torch.cat(positive), torch.cat(negative)

    def top_tokens(self, directions: torch.Tensor, tokenizer, k: int = 10) -> list[TokenDirection]:
        """Top-``k`` tokens of ``±v`` for each direction, decoded one token at a time."""
        positive, negative = self.top_ids(directions, k)
        return [TokenDirection(p.tolist(), n.tolist(), decode_each(tokenizer, p), decode_each(tokenizer, n))
                for p, n in zip(positive, negative)]


def decode_each(tokenizer, ids) -> list[str]:
    """Each id decoded on its own (so byte-level BPE markers become spaces)."""
    return [tokenizer.decode([int(i)]) for i in ids]
