"""The logit lens, with its final-norm convention explicit.

``logits_l = W_U · norm_f(h_l)``: the model's own final norm (learned scale included) and its
unembedding applied to the residual stream after block ``l``. This is the convention of the
tuned-lens library (arXiv 2303.08112); applying the head to un-normalised states, as some tools
do, gives different and much worse numbers. ``convention="no_norm"`` reproduces that variant.
For the last block the lens reproduces the model's logits exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import StructureError, check_choice
from ..core.locate import Structure
from ..core.sites import Site


def lens_sites(structure: Structure) -> list[Site]:
    """The residual states a lens reads, in order: the embeddings (``resid_pre.0``), then the output
    of every block (``resid_post.l``). State ``s`` is the input of block ``s``; the last is the
    residual that the model's own head decodes."""
    return [Site("resid_pre", 0)] + [Site("resid_post", i) for i in range(structure.n_layers)]


@dataclass(frozen=True)
class LogitLens:
    final_norm: nn.Module | None
    unembedding: nn.Module
    convention: str = "final_norm"

    @classmethod
    def from_structure(cls, structure: Structure, convention: str = "final_norm") -> LogitLens:
        if structure.unembedding is None:
            raise StructureError(f"{structure.model_type} has no output head: the logit lens needs one")
        check_choice(convention, ("final_norm", "no_norm"), "logit lens convention")
        if convention == "final_norm" and structure.final_norm is None:
            raise StructureError("this model has no final norm; use convention='no_norm'")
        return cls(structure.final_norm, structure.unembedding, convention)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``[.., vocab]`` for residual states ``[.., d_model]``."""
        weight = self.unembedding.weight
        h = hidden.to(device=weight.device, dtype=weight.dtype)
        if self.convention == "final_norm":
            h = self.final_norm(h)
        return self.unembedding(h)

    def logits(self, hidden: torch.Tensor, state: int | None = None) -> torch.Tensor:
        """The common lens interface: logits for residual states read at ``state`` (unused here)."""
        return self(hidden)


def kl_and_agreement(final_logits: torch.Tensor, lens_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: KL(p_final || p_lens) in nats, and whether the two top-1 tokens agree."""
    log_p = torch.log_softmax(final_logits.float(), dim=-1)
    log_q = torch.log_softmax(lens_logits.float(), dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    agree = final_logits.argmax(-1) == lens_logits.argmax(-1)
    return kl, agree
