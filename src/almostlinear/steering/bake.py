"""Make a steering addition permanent: write the added vector into a bias of the writing module.

Adding ``v`` at every position of ``resid_post`` of block ``L`` equals adding ``v`` to the output
bias of that block's MLP down projection, in decoders whose block output is ``residual + attention
+ MLP`` (Llama, Qwen2, Gemma, GPT-2, GPT-NeoX with or without parallel residual). ``mlp_out`` and
``attn_out`` map to their own projection's bias, and ``resid_pre`` of block ``L > 0`` to the MLP
bias of block ``L - 1``. The baked model then steers with no hook at all (zero run-time overhead).
Unlike the hook, a bias also acts on padding positions; no real token attends to them, so real
tokens' outputs are the same.

A projection without a bias (Llama, Qwen2, Gemma) gets a new one. That is exact here and undone
by ``restore_()``, but ``save_pretrained`` followed by a fresh load drops it unless the config
declares that bias (e.g. Llama's ``mlp_bias``); GPT-2 and GPT-NeoX keep it, having one already.

Post-norm blocks (BERT: no final norm after the blocks) and blocks that normalise a sublayer's
output before adding it (Gemma-2/3, OLMo-2: a ``post_feedforward_layernorm``) would rescale a bias,
so :func:`bake_steering_` refuses them with a :class:`ShapeError`; use the hooked form there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import ShapeError
from ..core.locate import Structure
from .vector import SteeringVector, unpack


@dataclass
class BakedSteering:
    """What :func:`bake_steering_` changed, so that :meth:`restore_` can undo it exactly."""

    module: nn.Module
    previous_bias: torch.Tensor | None
    added: torch.Tensor

    def restore_(self) -> None:
        if self.previous_bias is None:
            self.module.bias = None
        else:
            with torch.no_grad():
                self.module.bias.copy_(self.previous_bias)


def _writer(structure: Structure, site: str, layer: int) -> nn.Module:
    block = structure.block(layer)
    if structure.final_norm is None or hasattr(block.module, "post_feedforward_layernorm"):
        raise ShapeError(f"{structure.model_type} normalises what its sublayers write (post-norm), so a bias "
                         "is not the same as adding the vector; steer with apply() instead")
    if site in ("resid_post", "mlp_out"):
        return block.mlp_down_proj
    if site == "attn_out":
        return block.attn_out_proj
    if site == "resid_pre":
        if block.index == 0:
            raise ShapeError("resid_pre of block 0 is the embedding output; no bias writes it (use apply)")
        return structure.block(block.index - 1).mlp_down_proj
    raise ShapeError(f"a vector at {site} cannot be baked into a bias")


def bake_steering_(model, vector: SteeringVector, strength: float = 1.0, *, units: str = "residual") -> BakedSteering:
    """Add ``vector`` at ``strength`` permanently, as a bias. Only the ``"all"`` position policy can be
    baked (a bias acts at every position)."""
    if vector.positions != "all":
        raise ShapeError(f"only position policy 'all' can be baked, this vector uses {vector.positions!r}")
    module, _, structure, _ = unpack(model)
    module_to_edit = _writer(structure, vector.site, vector.layer)
    value = vector.added(strength, units)
    out_features = getattr(module_to_edit, "out_features", None) or getattr(module_to_edit, "nf", None)
    if out_features != value.shape[0]:
        raise ShapeError(f"the vector has {value.shape[0]} features but the writing module outputs {out_features}")
    weight = next(module_to_edit.parameters())
    bias = getattr(module_to_edit, "bias", None)
    previous = None if bias is None else bias.detach().clone()
    with torch.no_grad():
        if bias is None:
            module_to_edit.bias = nn.Parameter(value.to(dtype=weight.dtype, device=weight.device).clone(),
                                               requires_grad=weight.requires_grad)
        else:
            bias.add_(value.to(dtype=bias.dtype, device=bias.device))
    return BakedSteering(module_to_edit, previous, value)
