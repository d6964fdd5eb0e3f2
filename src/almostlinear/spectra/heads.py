"""Per-head OV circuits read from the weights of any HF attention, GQA and fused QKV included.

Convention (column vectors, as the weights are stored ``[out, in]``): query head ``h`` maps a residual
vector ``x`` it attends to into ``OV_h x`` with ``OV_h = W_O[:, h] · W_V[kv(h)]`` (``[d_model,
d_model]``, rank ≤ ``d_head``), where ``W_O[:, h]`` are the output projection's input columns of head
``h`` and ``W_V[g]`` the value rows of key/value head ``g``. This is the transpose of the row-vector
``W_V W_O`` of the circuits literature; singular values are the same and the left singular vectors
are what the head writes.

Grouped-query attention: ``kv(h) = h // (n_heads / n_kv_heads)``, the grouping of HF's ``repeat_kv``.

Where heads come from: ``n_heads`` from the config; ``d_head`` from the output projection's width;
``n_kv_heads`` from the value projection's height. Separate value projections are found by name
(``v_proj``, ``value``, ``v``, ...). A fused QKV projection has two layouts in the wild: *blocked*
(all queries, then all keys, then all values: GPT-2 ``c_attn``, Phi-3 ``qkv_proj``) and
*interleaved* (per key/value group: its queries, its key, its value: GPT-NeoX and BLOOM
``query_key_value``). Weights alone cannot tell them apart, so ``fused_layout="auto"`` runs block 0's
attention once on two single-token inputs (where attention is one-hot, so it computes exactly
``Σ_h OV_h x`` plus constant biases) and keeps the layout that reproduces it; pass the layout by
name to skip that check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import LayerError, StructureError, check_choice
from ..core.locate import Block, Structure, is_linear, linear_shape, linear_weight, locate

FUSED_LAYOUTS = ("blocked", "interleaved")
_HEAD_KEYS = ("num_attention_heads", "n_head", "num_heads", "n_heads", "encoder_attention_heads")
_KV_KEYS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_head_kv")
_VALUE_NAME = re.compile(r"(w_?)?v(_proj|_lin)?|values?(_proj)?")


@dataclass(frozen=True)
class HeadLayout:
    """How the attention's value and output projections split into heads (the same in every block)."""

    n_heads: int
    n_kv_heads: int
    head_dim: int
    value_path: str  # the value (or fused QKV) projection, relative to the attention module
    fused: str | None = None  # None, "blocked" or "interleaved"

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv_heads

    def kv_head(self, head: int) -> int:
        """The key/value head that query head ``head`` reads (GQA grouping)."""
        if not 0 <= head < self.n_heads:
            raise LayerError(f"head {head} is out of range: the model has {self.n_heads} query heads")
        return head // self.group_size

    def value_rows(self, kv_head: int) -> slice:
        """Rows of the value (or fused QKV) projection's ``[out, in]`` weight that form ``W_V[kv_head]``."""
        d, g = self.head_dim, kv_head
        if self.fused is None:
            start = g * d
        elif self.fused == "blocked":
            start = (self.n_heads + self.n_kv_heads + g) * d
        else:  # interleaved: per group, its queries, one key, one value
            start = (g * (self.group_size + 2) + self.group_size + 1) * d
        return slice(start, start + d)


def _config_int(config, keys) -> int | None:
    for source in (config, getattr(config, "text_config", None)):
        for key in keys:
            value = getattr(source, key, None) if source is not None else None
            if isinstance(value, int) and value > 0:
                return value
    return None


def _value_candidates(block: Block, d_model: int) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in block.attention.named_modules()
            if is_linear(m) and m is not block.attn_out_proj and linear_shape(m)[1] == d_model]


def head_layout(model: nn.Module, structure: Structure | None = None, fused_layout: str = "auto") -> HeadLayout:
    """Derive the :class:`HeadLayout`; ``fused_layout`` is ``"auto"``, ``"blocked"`` or ``"interleaved"``."""
    check_choice(fused_layout, ("auto", *FUSED_LAYOUTS), "fused_layout")
    structure = structure or locate(model)
    config = getattr(model, "config", None)
    n_heads = _config_int(config, _HEAD_KEYS)
    if n_heads is None:
        raise StructureError("the config states no number of attention heads (num_attention_heads, n_head, ...)")
    block = structure.blocks[0]
    width = linear_shape(block.attn_out_proj)[1]
    if width % n_heads:
        raise StructureError(f"the output projection reads {width} features, not a multiple of {n_heads} heads")
    head_dim = width // n_heads
    candidates = _value_candidates(block, structure.d_model)
    named = [(n, m) for n, m in candidates if _VALUE_NAME.fullmatch(n.rsplit(".", 1)[-1].lower())]
    if len(named) == 1:
        path, module = named[0]
        rows, fused = linear_shape(module)[0], None
        n_kv = rows // head_dim
    elif len(candidates) == 1:
        path, module = candidates[0]
        rows = linear_shape(module)[0]
        n_kv = (rows // head_dim - n_heads) // 2
        fused = "blocked"  # provisional; resolved below
    else:
        raise StructureError(
            f"cannot tell the value projection among {[n for n, _ in candidates] or 'no projections'} of "
            f"{type(block.attention).__name__}")
    expected = n_kv * head_dim if fused is None else (n_heads + 2 * n_kv) * head_dim
    if n_kv < 1 or rows != expected or n_heads % n_kv:
        raise StructureError(f"projection {path!r} writes {rows} features, which does not split into "
                             f"heads of {head_dim} for {n_heads} query heads")
    stated = _config_int(config, _KV_KEYS)
    if stated is not None and stated != n_kv:
        raise StructureError(f"the config states {stated} key/value heads but {path!r} holds {n_kv}")
    layout = HeadLayout(n_heads, n_kv, head_dim, path, fused)
    if fused is None:
        return layout
    if fused_layout != "auto":
        return HeadLayout(n_heads, n_kv, head_dim, path, fused_layout)
    return _resolve_fused(model, structure, layout)


def ov_factors(structure: Structure, layout: HeadLayout, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_O per head [H, d_model, d_head], W_V per head [H, d_head, d_model])`` of block ``layer``.

    ``W_O[h] @ W_V[h]`` is head ``h``'s OV circuit; GQA heads of one group share ``W_V``.
    """
    block = structure.block(layer)
    w_o = linear_weight(block.attn_out_proj).detach()
    d_model = w_o.shape[0]
    w_o = w_o.reshape(d_model, layout.n_heads, layout.head_dim).permute(1, 0, 2)
    w_qkv = linear_weight(block.attention.get_submodule(layout.value_path)).detach()
    values = torch.stack([w_qkv[layout.value_rows(g)] for g in range(layout.n_kv_heads)])
    kv = torch.arange(layout.n_heads) // layout.group_size
    return w_o, values[kv]


def ov_matrix(structure: Structure, layout: HeadLayout, layer: int, head: int) -> torch.Tensor:
    """The dense OV circuit ``[d_model, d_model]`` of one head (for inspection; spectra use the factors)."""
    layout.kv_head(head)
    w_o, w_v = ov_factors(structure, layout, layer)
    return w_o[head] @ w_v[head]


class _Stop(Exception):
    pass


@torch.no_grad()
def _attention_io(model: nn.Module, structure: Structure) -> tuple[torch.Tensor, torch.Tensor]:
    """Input and output of block 0's attention for four one-token sequences."""
    captured: dict[str, torch.Tensor] = {}

    def before(_module, args, kwargs):
        captured["x"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    def after(_module, _args, output):
        captured["y"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    attention = structure.blocks[0].attention
    vocab = structure.embedding.weight.shape[0]
    device = structure.embedding.weight.device
    ids = torch.tensor([[vocab // 7], [vocab // 3], [vocab // 2], [vocab - 1]], device=device)
    handles = [attention.register_forward_pre_hook(before, with_kwargs=True),
               attention.register_forward_hook(after)]
    was_training = model.training
    model.eval()
    try:
        model(input_ids=ids)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if "y" not in captured:
        raise StructureError("block 0's attention did not run on a one-token input; pass fused_layout explicitly")
    return captured["x"][:, -1].double(), captured["y"][:, -1].double()


def _resolve_fused(model: nn.Module, structure: Structure, layout: HeadLayout) -> HeadLayout:
    x, y = _attention_io(model, structure)
    dx, dy = x[1:] - x[:1], y[1:] - y[:1]  # differences cancel the value and output biases
    errors = {}
    for name in FUSED_LAYOUTS:
        candidate = HeadLayout(layout.n_heads, layout.n_kv_heads, layout.head_dim, layout.value_path, name)
        w_o, w_v = ov_factors(structure, candidate, 0)
        predicted = torch.einsum("hdk,hke,ne->nd", w_o.double(), w_v.double(), dx)
        errors[name] = float((predicted - dy).norm() / dy.norm().clamp_min(1e-30))
    best = min(errors, key=errors.get)
    if errors[best] > 5e-2:  # a wrong layout is off by ~100%; this allows half precision
        raise StructureError(f"no known fused QKV layout reproduces block 0's attention (relative errors "
                             f"{errors}); pass fused_layout explicitly")
    return HeadLayout(layout.n_heads, layout.n_kv_heads, layout.head_dim, layout.value_path, best)
