"""Make a steering addition permanent: write the added vector into a bias of the writing module.

Adding ``v`` at every position of ``resid_post`` of block ``L`` equals adding ``v`` to the output
bias of that block's MLP down projection, in decoders whose block output is ``residual + attention
+ MLP`` (Llama, Qwen2, Gemma, GPT-2, GPT-NeoX with or without parallel residual). ``mlp_out`` and
``attn_out`` map to their own projection's bias, and ``resid_pre`` of block ``L > 0`` to the MLP
bias of block ``L - 1``. The baked model then steers with no hook at all (zero run-time overhead).
Unlike the hook, a bias also acts on padding positions; no real token attends to them, so real
tokens' outputs are the same.

A projection without a bias (Llama, Qwen2, Gemma) gets a new one. That is exact here and removed
again by ``undo_()``, but ``save_pretrained`` followed by a fresh load drops it unless the config
declares that bias (e.g. Llama's ``mlp_bias``); GPT-2 and GPT-NeoX keep it, having one already.

Post-norm blocks (BERT: no final norm after the blocks) and blocks that normalise a sublayer's
output before adding it (Gemma-2/3, OLMo-2) would rescale a bias, and a mixture of experts has no
single MLP bias, so :func:`bake_bias_` refuses them with a :class:`LeverError` before changing
anything; use the hooked form there.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import LeverError, ShapeError
from ..core.lever import Baked, as_model, bake_weights, get_parameter, set_parameter
from ..core.locate import Structure


def module_name(root: nn.Module, module: nn.Module) -> str:
    """The qualified name of ``module`` inside ``root`` (its first name, for a shared module)."""
    for name, candidate in root.named_modules():
        if candidate is module:
            return name
    raise LeverError(f"{type(module).__name__} is not part of this model")


def _writer(structure: Structure, site: str, layer: int) -> nn.Module:
    block = structure.block(layer)
    if structure.final_norm is None or block.post_norms:
        raise LeverError(f"{structure.model_type} normalises what its sublayers write (post-norm), so a bias "
                         "is not the same as adding the vector; steer with apply() instead")
    if site == "attn_out":
        return block.attn_out_proj
    if site in ("resid_post", "mlp_out", "resid_pre"):
        if site == "resid_pre":
            if block.index == 0:
                raise LeverError("resid_pre of block 0 is the embedding output; no bias writes it (use apply)")
            block = structure.block(block.index - 1)
        if block.moe:
            raise LeverError(f"block {block.index} is a mixture of experts: no single MLP bias writes {site}; "
                             "steer with apply(), or bake a vector at attn_out")
        return block.mlp_down_proj
    raise LeverError(f"a vector at {site} cannot be baked into a bias (bake resid_post, resid_pre, attn_out or "
                     "mlp_out, or steer with apply())")


def bake_bias_(model, site: str, layer: int, value: torch.Tensor, *, kind: str) -> Baked:
    """Add ``value`` ``[d]`` permanently to the bias that writes ``site`` of block ``layer``.

    Returns the :class:`~almostlinear.core.lever.Baked` record of the bias; a bias created here is
    removed again by its ``undo_()``.
    """
    view = as_model(model)
    writer = _writer(view.structure, site, layer)
    weight = writer.weight
    out_features = getattr(writer, "out_features", None) or getattr(writer, "nf", None)
    if out_features != value.shape[0]:
        raise ShapeError(f"the vector has {value.shape[0]} features but the writing module outputs {out_features}")
    name = f"{module_name(view.module, writer)}.bias"

    def change() -> None:
        bias = get_parameter(view.module, name)
        if bias is None:
            set_parameter(view.module, name, value.to(dtype=weight.dtype, device=weight.device))
            get_parameter(view.module, name).requires_grad_(weight.requires_grad)
        else:
            bias.add_(value.to(dtype=bias.dtype, device=bias.device))

    return bake_weights(view, [name], change, kind=kind)
