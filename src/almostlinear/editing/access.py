"""How edits reach a model: a module or a ``LoadedModel`` alike, and the dense down projections they write.

ROME, MEMIT and AlphaEdit solve for one dense ``[d_out, d_in]`` down projection per layer. A
mixture-of-experts block has one per expert behind a router, and the key statistics and the
update of a single matrix do not describe it, so every entry point refuses such a block by name
before it reads or changes anything.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..core.errors import AlmostLinearError, LeverError, StructureError
from ..core.lever import ModelView, as_model
from ..core.locate import Structure


def unpack(model: Any, tokenizer: Any = None, *, structure: Structure | None = None) -> tuple[ModelView, Any]:
    """The model as a lever sees it, and the tokenizer (default: the ``LoadedModel``'s)."""
    view = as_model(model, structure=structure)
    tokenizer = tokenizer if tokenizer is not None else view.tokenizer
    if tokenizer is None:
        raise AlmostLinearError("this needs the model's tokenizer: pass it, or pass a LoadedModel")
    return view, tokenizer


def refuse_moe(structure: Structure, layer: int) -> None:
    """A :class:`LeverError` when block ``layer`` is a mixture of experts."""
    block = structure.block(layer)
    if block.moe:
        raise LeverError(
            f"ROME/MEMIT edit a dense MLP down projection; this block is a mixture of experts (block {block.index} "
            f"of {structure.model_type}), whose experts and router one rank-one update cannot describe: edit a "
            "dense model, or act on the residual stream instead (steering vectors, ablations)"
        )


def dense_down_proj(structure: Structure, layer: int) -> nn.Module:
    """The down projection of block ``layer``, refusing mixture-of-experts blocks."""
    refuse_moe(structure, layer)
    down = structure.block(layer).mlp_down_proj
    if down is None:
        raise StructureError(f"block {layer} of {structure.model_type} has no MLP down projection to edit")
    return down
