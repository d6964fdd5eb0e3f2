"""Spectra of the weights that read from and write to the residual stream: OV heads and MLP matrices.

Which side of a matrix lives in the residual stream (and is projected to tokens, as in Millidge &
Black's post, LessWrong/AF, Nov 2022): the output side of an OV circuit (what the head writes) and
of the MLP down projection, the input side of the MLP input matrices (gate / up / fc: what the MLP
reads).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import ShapeError
from ..core.locate import Structure, is_linear, linear_shape, linear_weight, locate
from .heads import HeadLayout, head_layout, ov_factors
from .ranks import effective_rank, gram_svd, product_svd, stable_rank

KINDS = ("ov", "mlp_in", "mlp_out")


@dataclass(frozen=True, eq=False)  # holds tensors: compared by identity
class Spectrum:
    """One matrix's singular values and its top singular vectors (rows), ``W ≈ Σ σᵢ leftᵢ rightᵢᵀ``."""

    kind: str  # "ov", "mlp_in" or "mlp_out"
    layer: int
    name: str  # "head 3", "mlp.up_proj", ...
    singular_values: torch.Tensor  # descending
    left: torch.Tensor  # [n, out] top left singular vectors (output space)
    right: torch.Tensor  # [n, in] top right singular vectors (input space)

    @property
    def stable_rank(self) -> float:
        return float(stable_rank(self.singular_values))

    @property
    def effective_rank(self) -> float:
        return float(effective_rank(self.singular_values))

    @property
    def residual_directions(self) -> torch.Tensor:
        """The top singular vectors on the residual-stream side: what is written (OV, MLP out) or read (MLP in)."""
        return self.right if self.kind == "mlp_in" else self.left


def _check_directions(n_directions: int) -> None:
    if n_directions < 1:
        raise ShapeError(f"n_directions must be at least 1, got {n_directions}")


def _layers(structure: Structure, layers: Iterable[int] | None) -> list[int]:
    if layers is None:
        return list(range(structure.n_layers))
    return [structure.block(layer).index for layer in layers]


def ov_spectra(model: nn.Module, layers: Iterable[int] | None = None, n_directions: int = 2,
               layout: HeadLayout | None = None, structure: Structure | None = None) -> list[Spectrum]:
    """The OV circuit of every query head, decomposed through its thin factors in float64."""
    _check_directions(n_directions)
    structure = structure or locate(model)
    layout = layout or head_layout(model, structure)
    out = []
    for layer in _layers(structure, layers):
        w_o, w_v = ov_factors(structure, layout, layer)
        # [kv groups, heads per group, ..]: each shared W_V is factored once and broadcast over its group
        groups, size = layout.n_kv_heads, layout.group_size
        u, s, v = product_svd(w_o.double().unflatten(0, (groups, size)),
                              w_v.double()[::size].unsqueeze(1))
        u, s, v = u.flatten(0, 1), s.flatten(0, 1), v.flatten(0, 1)
        for head in range(layout.n_heads):
            out.append(Spectrum("ov", layer, f"head {head}", s[head], u[head, :n_directions],
                                v[head, :n_directions]))
    return out


def mlp_matrices(structure: Structure, layer: int) -> list[tuple[str, str, nn.Module]]:
    """``(kind, name, module)`` of the MLP's input matrices and its down projection in block ``layer``.

    Input matrices are the linear maps outside the attention that read ``d_model`` features and write
    a multiple of the down projection's width (gate, up, fc, or a fused gate-up).
    """
    block = structure.block(layer)
    d_mlp = linear_shape(block.mlp_down_proj)[1]
    attention = {id(m) for m in block.attention.modules()}
    found = []
    for name, module in block.module.named_modules():
        if not is_linear(module) or id(module) in attention:
            continue
        n_out, n_in = linear_shape(module)
        if module is block.mlp_down_proj:
            found.append(("mlp_out", name, module))
        elif n_in == structure.d_model and n_out % d_mlp == 0:
            found.append(("mlp_in", name, module))
    return found


def mlp_spectra(model: nn.Module, layers: Iterable[int] | None = None, n_directions: int = 2,
                dtype: torch.dtype = torch.float64, structure: Structure | None = None) -> list[Spectrum]:
    """Spectra of the MLP input matrices and down projection, from their ``d_model × d_model`` Grams.

    ``dtype=torch.float32`` is about twice as fast and still ample for ranks (see :func:`gram_svd`).
    """
    _check_directions(n_directions)
    structure = structure or locate(model)
    out = []
    for layer in _layers(structure, layers):
        for kind, name, module in mlp_matrices(structure, layer):
            w = linear_weight(module).detach().to(dtype)
            side = "in" if kind == "mlp_in" else "out"
            s, top = gram_svd(w, side, dtype, n_vectors=n_directions)
            sigma = s[:n_directions, None]
            safe = sigma.clamp_min(torch.finfo(dtype).tiny)
            if side == "in":  # W vᵢ = σᵢ uᵢ
                right, left = top, torch.where(sigma > 0, (top @ w.T) / safe, 0.0)
            else:  # Wᵀ uᵢ = σᵢ vᵢ
                left, right = top, torch.where(sigma > 0, (top @ w) / safe, 0.0)
            out.append(Spectrum(kind, layer, name, s, left, right))
    return out


def weight_spectra(model: nn.Module, layers: Iterable[int] | None = None, n_directions: int = 2,
                   dtype: torch.dtype = torch.float64, fused_layout: str = "auto") -> list[Spectrum]:
    """OV heads then MLP matrices of the chosen layers (all by default)."""
    structure = locate(model)
    layers = _layers(structure, layers)
    layout = head_layout(model, structure, fused_layout)
    return (ov_spectra(model, layers, n_directions, layout, structure)
            + mlp_spectra(model, layers, n_directions, dtype, structure))
