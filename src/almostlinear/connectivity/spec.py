"""Which axes of which tensors a hidden-unit permutation moves, derived from the model itself.

A permutation ``p`` of ``n`` units means: unit ``i`` of the permuted network is unit ``p[i]`` of the
original. Every tensor axis it touches is described by an :class:`AxisPerm`: the slice
``[offset, offset + length)`` of that axis, viewed as ``shape``, is reindexed along ``shape[dim]``.
One axis may carry several permutations acting on different sub-axes (kv-heads, query heads inside a
grouped-query group, RoPE pairs inside a head); they commute, so the order of application is free.

Two derivations are offered:

* :func:`feedforward_spec` for plain feed-forward stacks (MLPs, CNNs without skips): each hidden
  layer's outputs, with the norms after it and the next layer's inputs (also through a flatten);
* :func:`transformer_spec` for decoder transformers found by :func:`almostlinear.core.locate.locate`:
  one residual-stream permutation shared by embeddings, every norm, every reader and writer of the
  stream and the head; per block the MLP hidden units, the kv-heads, the query heads inside each
  grouped-query group, the value/output dimensions inside a head, and, without rotary embeddings,
  the query/key dimensions inside a head. Rotary embeddings (RoPE) give each pair of query/key
  dimensions ``(j, j + head_dim/2)`` its own frequency, so no permutation of those dimensions
  preserves the function (only a rotation inside each pair does): under RoPE they stay in place.

A permuted network computes the same function as the original; :func:`.artifact.check_spec` measures it.
Mixture-of-experts blocks are refused by name: their experts and router need rules of their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.errors import LeverError, ShapeError, StructureError
from ..core.locate import Structure, is_conv1d, is_norm, is_linear, linear_shape, locate


@dataclass(frozen=True)
class AxisPerm:
    """Permutation ``perm`` acting on ``axis`` of a tensor, on the slice viewed as ``shape``, along ``dim``."""

    perm: str
    axis: int
    shape: tuple[int, ...]
    dim: int
    offset: int = 0

    @property
    def length(self) -> int:
        return math.prod(self.shape)

    def gather(self, order: torch.Tensor, axis_size: int) -> torch.Tensor:
        """Index along the whole axis that applies ``order`` (a permutation of ``shape[dim]``)."""
        inner = torch.arange(self.length).view(self.shape).index_select(self.dim, order).reshape(-1)
        index = torch.arange(axis_size)
        index[self.offset:self.offset + self.length] = inner + self.offset
        return index

    def units(self, tensor: torch.Tensor) -> torch.Tensor:
        """The slice of ``tensor`` this acts on, as ``[n_units, everything else]``."""
        t = tensor.movedim(self.axis, 0)[self.offset:self.offset + self.length]
        t = t.reshape(*self.shape, *t.shape[1:]).movedim(self.dim, 0)
        return t.reshape(self.shape[self.dim], -1)


@dataclass(frozen=True)
class PermutationSpec:
    """Permutation names with their sizes, and for each state-dict entry the axes they move.

    ``producers`` names, for permutations that activation matching can use, the module, the end
    ("input" or "output") where the permuted units appear, and the dimension that holds them
    (``-1`` for features last, ``1`` for convolution channels).
    """

    sizes: dict[str, int]
    axes: dict[str, tuple[AxisPerm, ...]]
    producers: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, perms in self.axes.items():
            for ap in perms:
                if ap.perm not in self.sizes:
                    raise StructureError(f"{name} refers to unknown permutation {ap.perm!r}")
                if ap.shape[ap.dim] != self.sizes[ap.perm]:
                    raise StructureError(f"{name}: axis {ap.axis} slices {ap.shape[ap.dim]} units of "
                                         f"{ap.perm!r}, which has {self.sizes[ap.perm]}")

    def touching(self, perm: str) -> list[tuple[str, AxisPerm]]:
        """Every (tensor name, axis perm) that ``perm`` moves."""
        return [(name, ap) for name, aps in self.axes.items() for ap in aps if ap.perm == perm]

    def to_json(self) -> dict:
        return {"sizes": dict(self.sizes),
                "axes": {k: [[a.perm, a.axis, list(a.shape), a.dim, a.offset] for a in v]
                         for k, v in self.axes.items()},
                "producers": {k: list(v) for k, v in self.producers.items()}, "notes": list(self.notes)}

    @classmethod
    def from_json(cls, data: dict) -> PermutationSpec:
        return cls(sizes={k: int(v) for k, v in data["sizes"].items()},
                   axes={k: tuple(AxisPerm(p, a, tuple(s), d, o) for p, a, s, d, o in v)
                         for k, v in data["axes"].items()},
                   producers={k: (v[0], v[1], int(v[2])) for k, v in data.get("producers", {}).items()},
                   notes=tuple(data.get("notes", ())))


def permute_tensor(tensor: torch.Tensor, aps, perms: dict[str, torch.Tensor], skip: AxisPerm | None = None
                   ) -> torch.Tensor:
    """``tensor`` with every axis perm in ``aps`` applied (except ``skip``)."""
    out = tensor
    for ap in aps:
        if ap is skip or ap.perm not in perms:
            continue
        if ap.offset + ap.length > out.shape[ap.axis]:
            raise ShapeError(f"axis {ap.axis} of a tensor of shape {tuple(out.shape)} is too short for "
                             f"permutation {ap.perm!r} (needs {ap.offset + ap.length})")
        out = out.index_select(ap.axis, ap.gather(perms[ap.perm], out.shape[ap.axis]).to(out.device))
    return out


def permute_state_dict(spec: PermutationSpec, state: dict[str, torch.Tensor], perms: dict[str, torch.Tensor]
                       ) -> dict[str, torch.Tensor]:
    """A new state dict with ``perms`` applied; entries the spec does not mention are shared, not copied."""
    missing = [name for name in spec.axes if name not in state]
    if missing:
        raise StructureError(f"the state dict lacks {missing[:5]} named by the permutation spec")
    return {name: permute_tensor(t, spec.axes[name], perms) if name in spec.axes else t
            for name, t in state.items()}


def random_perms(spec: PermutationSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randperm(n, generator=generator) for name, n in spec.sizes.items()}


def identity_perms(spec: PermutationSpec) -> dict[str, torch.Tensor]:
    return {name: torch.arange(n) for name, n in spec.sizes.items()}


# ------------------------------------------------------------------------------------------------
# feed-forward stacks

_CHANNEL_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)
_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _entries(prefix: str, module: nn.Module) -> list[str]:
    return [f"{prefix}.{n}" if prefix else n for n, _ in
            list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))]


def feedforward_spec(model: nn.Module) -> PermutationSpec:
    """The spec of a feed-forward stack whose modules run in registration order.

    Weight layers are ``Linear`` and ``Conv``; between two of them only parameter-free elementwise
    modules (activations, dropout, pooling, flatten) and channel norms (BatchNorm, LayerNorm over the
    channels) may appear. Skip connections cannot be seen from the module list; such models must be
    checked with :func:`check_spec` (a residual model gives a large difference and needs its own spec).
    """
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    weights = [(i, n, m) for i, (n, m) in enumerate(leaves) if isinstance(m, _WEIGHT_LAYERS)]
    if len(weights) < 2:
        raise StructureError(f"{type(model).__name__} has {len(weights)} Linear/Conv layer(s); a hidden-unit "
                             "permutation needs at least two in a row")
    for n, m in leaves:
        owns = list(m.parameters(recurse=False))
        if owns and not isinstance(m, _WEIGHT_LAYERS + _CHANNEL_NORMS):
            raise StructureError(f"cannot tell how {n} ({type(m).__name__}) transforms hidden units; "
                                 "only Linear, Conv, BatchNorm and LayerNorm layers hold parameters here")
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d) and m.groups != 1:
            raise StructureError(f"{n}: grouped convolutions are not supported")
    sizes: dict[str, int] = {}
    axes: dict[str, list[AxisPerm]] = {}
    producers: dict[str, tuple[str, str, int]] = {}
    for k in range(len(weights) - 1):
        i, name, layer = weights[k]
        j, next_name, next_layer = weights[k + 1]
        perm = f"hidden.{k}"
        n = layer.weight.shape[0]
        sizes[perm] = n
        axes.setdefault(f"{name}.weight" if name else "weight", []).append(AxisPerm(perm, 0, (n,), 0))
        if layer.bias is not None:
            axes.setdefault(f"{name}.bias", []).append(AxisPerm(perm, 0, (n,), 0))
        between = leaves[i + 1:j]
        for norm_name, norm in between:
            if isinstance(norm, _CHANNEL_NORMS):
                if isinstance(norm, nn.LayerNorm) and tuple(norm.normalized_shape) != (n,):
                    raise StructureError(f"{norm_name} normalises over {tuple(norm.normalized_shape)}, not the "
                                         f"{n} channels of {name}")
                for entry in _entries(norm_name, norm):
                    if not entry.endswith("num_batches_tracked"):
                        axes.setdefault(entry, []).append(AxisPerm(perm, 0, (n,), 0))
        fan_in = next_layer.weight.shape[1]
        if fan_in % n:
            raise StructureError(f"{next_name} reads {fan_in} inputs, not a multiple of the {n} outputs of {name}")
        shape = (n,) if fan_in == n else (n, fan_in // n)  # a flatten of [C, H, W] is channel-major
        axes.setdefault(f"{next_name}.weight", []).append(AxisPerm(perm, 1, shape, 0))
        channels = 1 if isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d) else -1
        producers[perm] = (between[-1][0] if between else name, "output", channels)
    return PermutationSpec(sizes, {k: tuple(v) for k, v in axes.items()}, producers)


# ------------------------------------------------------------------------------------------------
# transformers


def _config_value(config, *keys, default=None):
    for source in (config, getattr(config, "text_config", None)):
        for key in keys:
            value = getattr(source, key, None) if source is not None else None
            if value is not None:
                return value
    return default


def _has_rotary(model: nn.Module) -> bool:
    return any("rotary" in type(m).__name__.lower() for m in model.modules())


@dataclass
class _Builder:
    names: dict[int, str]
    sizes: dict[str, int] = field(default_factory=dict)
    axes: dict[str, list[AxisPerm]] = field(default_factory=dict)
    producers: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, module: nn.Module, pname: str, ap: AxisPerm) -> None:
        self.sizes.setdefault(ap.perm, ap.shape[ap.dim])
        self.axes.setdefault(f"{self.names[id(module)]}.{pname}", []).append(ap)

    def linear_in(self, module: nn.Module, ap_shape, dim, perm, offset=0):
        """Permute the input features of a Linear / Conv1D."""
        axis = 0 if is_conv1d(module) else 1
        self.add(module, "weight", AxisPerm(perm, axis, ap_shape, dim, offset))

    def linear_out(self, module: nn.Module, ap_shape, dim, perm, offset=0):
        axis = 1 if is_conv1d(module) else 0
        self.add(module, "weight", AxisPerm(perm, axis, ap_shape, dim, offset))
        if getattr(module, "bias", None) is not None:
            self.add(module, "bias", AxisPerm(perm, 0, ap_shape, dim, offset))


def transformer_spec(model: nn.Module, structure: Structure | None = None, *, heads: bool = True,
                     within_heads: bool = True) -> PermutationSpec:
    """The permutation spec of a decoder transformer, from :func:`locate` and its config.

    ``heads`` adds per-block kv-head and grouped-query permutations; ``within_heads`` adds the
    value/output and query/key dimension permutations inside heads (query/key in RoPE pairs).
    Fused query-key-value projections are read as ``[q | k | v]`` (GPT-2's ``Conv1D``) or as
    per-head ``[q k v]`` (an ``nn.Linear`` such as GPT-NeoX's); for the per-head layout only whole
    heads are permuted. Parameters the rules do not place raise :class:`StructureError`.
    """
    structure = structure or locate(model)
    moe = [blk.index for blk in structure.blocks if blk.moe]
    if moe:
        raise LeverError(f"permutation specs cover dense MLPs; blocks {moe} of {structure.model_type} are mixtures "
                         "of experts, whose experts and router these rules do not permute: align dense models")
    config = getattr(model, "config", None)
    d = structure.d_model
    names = {id(m): n for n, m in model.named_modules()}
    b = _Builder(names)
    R = "residual"
    b.sizes[R] = d
    covered: set[int] = set()

    def cover(module):
        covered.update(id(p) for p in module.parameters(recurse=False))

    emb = structure.embedding
    b.add(emb, "weight", AxisPerm(R, 1, (d,), 0))
    cover(emb)
    for m in model.modules():
        if isinstance(m, nn.Embedding) and m is not emb and m.weight.shape[1] == d:
            b.add(m, "weight", AxisPerm(R, 1, (d,), 0))  # learned positions
            cover(m)
    attentions = {id(blk.attention) for blk in structure.blocks}
    inside_attention = {id(m) for blk in structure.blocks for m in blk.attention.modules()}
    for m in model.modules():
        if id(m) in inside_attention or not is_norm(m) or is_linear(m):
            continue
        own = dict(m.named_parameters(recurse=False))
        if own and all(p.shape == (d,) for p in own.values()):
            for pname in own:
                b.add(m, pname, AxisPerm(R, 0, (d,), 0))
            cover(m)
    head = structure.unembedding
    if head is not None:
        # Tied heads are named too, so a permuted state dict stays consistent under both names.
        b.add(head, "weight", AxisPerm(R, 1, (d,), 0))
        cover(head)
    n_heads = int(_config_value(config, "num_attention_heads", "n_head", default=0))
    n_kv = int(_config_value(config, "num_key_value_heads", default=n_heads) or n_heads)
    rotary = _has_rotary(model)
    for blk in structure.blocks:
        i = blk.index
        readers = [(n, m) for n, m in blk.attention.named_modules() if is_linear(m) and linear_shape(m)[1] == d
                   and m is not blk.attn_out_proj]
        for _, m in readers:
            b.linear_in(m, (d,), 0, R)
            cover(m)
        o = blk.attn_out_proj
        b.linear_out(o, (d,), 0, R)
        cover(o)
        if heads and n_heads:
            _head_perms(b, blk, readers, n_heads, n_kv, rotary, within_heads, cover)
        attn_ids = {id(m) for m in blk.attention.modules()}
        mlp = [m for m in blk.module.modules() if is_linear(m) and id(m) not in attn_ids]
        down = blk.mlp_down_proj
        d_mlp = linear_shape(down)[1]
        perm = f"mlp.{i}"
        b.linear_out(down, (d,), 0, R)
        b.linear_in(down, (d_mlp,), 0, perm)
        cover(down)
        b.producers[perm] = (names[id(down)], "input", -1)
        for m in mlp:
            if m is down:
                continue
            if linear_shape(m) != (d_mlp, d):
                raise StructureError(f"{names[id(m)]} maps {linear_shape(m)[1]} -> {linear_shape(m)[0]}; expected "
                                     f"an MLP input projection {d} -> {d_mlp}")
            b.linear_in(m, (d,), 0, R)
            b.linear_out(m, (d_mlp,), 0, perm)
            cover(m)
    del attentions
    widths = {d, structure.d_mlp}
    missed = [n for n, p in model.named_parameters() if id(p) not in covered and widths & set(p.shape)]
    if missed:
        raise StructureError(f"no permutation rule for {missed[:6]}: the residual stream would be mixed up; "
                             "this architecture needs its own spec")
    return PermutationSpec(dict(b.sizes), {k: tuple(v) for k, v in b.axes.items()}, dict(b.producers),
                           tuple(b.notes))


def _head_perms(b: _Builder, blk, readers, n_heads, n_kv, rotary, within, cover) -> None:
    i = blk.index
    o = blk.attn_out_proj
    o_in = linear_shape(o)[1]
    hd = o_in // n_heads
    if n_heads % n_kv or o_in % n_heads:
        raise StructureError(f"block {i}: {n_heads} heads, {n_kv} kv-heads and {o_in} features do not fit")
    g = n_heads // n_kv
    H, K = f"heads.{i}", f"group.{i}"
    VO, QK = f"vo.{i}", f"qk.{i}"
    # RoPE pins each query/key dimension pair to its frequency: permuting them changes the function.
    qk_ok = within and not rotary
    if within and rotary and i == 0:
        b.notes.append("rotary embeddings: query/key dimensions inside heads stay in place (each RoPE pair has "
                       "its own frequency); heads, query groups and value/output dimensions are permuted")

    def q_like(kv: int, groups: int):
        """(shape, [(perm, dim)]) for a query (groups = g) or key (groups = 1) block of rows."""
        if qk_ok:
            shape, dims = (kv, groups, hd), [(H, 0), (QK, 2)]
        else:
            shape, dims = (kv, groups, hd), [(H, 0)]
        if groups > 1:
            dims.append((K, 1))
        return shape, dims

    def v_like():
        return (n_kv, hd), [(H, 0)] + ([(VO, 1)] if within else [])

    def place(module, offset, shape_dims):
        shape, dims = shape_dims
        for perm, dim in dims:
            b.linear_out(module, shape, dim, perm, offset)

    named = {n.rsplit(".", 1)[-1].lower(): m for n, m in readers}
    if len(readers) == 3:
        role = {}
        for n, m in named.items():
            role[n[0]] = m
        if set(role) != {"q", "k", "v"}:
            raise StructureError(f"block {i}: cannot tell query, key and value apart among {sorted(named)}")
        place(role["q"], 0, q_like(n_kv, g))
        place(role["k"], 0, q_like(n_kv, 1))
        place(role["v"], 0, v_like())
    elif len(readers) == 1:
        fused = readers[0][1]
        if linear_shape(fused)[0] != (n_heads + 2 * n_kv) * hd:
            raise StructureError(f"block {i}: fused projection of {linear_shape(fused)[0]} features does not hold "
                                 f"{n_heads} query and {n_kv} key/value heads of {hd}")
        if is_conv1d(fused):  # [q | k | v], each head-major
            place(fused, 0, q_like(n_kv, g))
            place(fused, n_heads * hd, q_like(n_kv, 1))
            place(fused, (n_heads + n_kv) * hd, v_like())
        else:  # per head [q k v]: whole heads only
            if n_kv != n_heads:
                raise StructureError(f"block {i}: a per-head fused projection with grouped-query heads is not "
                                     "supported")
            b.linear_out(fused, (n_heads, 3 * hd), 0, H)
            within = False
            b.notes.append(f"block {i}: per-head fused query/key/value; only whole heads are permuted")
    else:
        raise StructureError(f"block {i}: expected 1 or 3 projections reading the residual stream in the "
                             f"attention, found {len(readers)}")
    o_shape, o_dims = (n_kv, g, hd), [(H, 0)] + ([(K, 1)] if g > 1 else []) + ([(VO, 2)] if within else [])
    for perm, dim in o_dims:
        b.linear_in(o, o_shape, dim, perm)
    for m in blk.attention.modules():  # per-head q/k norms (Qwen3, Gemma 3): weights over head_dim
        if is_norm(m) and not is_linear(m):
            for pname, p in m.named_parameters(recurse=False):
                if p.shape != (hd,):
                    raise StructureError(f"block {i}: norm {b.names[id(m)]} of shape {tuple(p.shape)} inside the "
                                         "attention is not supported")
                if qk_ok:
                    b.add(m, pname, AxisPerm(QK, 0, (hd,), 0))
            cover(m)


def permutation_spec(model: nn.Module, **kwargs) -> PermutationSpec:
    """:func:`transformer_spec` when :func:`locate` finds blocks, else :func:`feedforward_spec`."""
    if getattr(model, "config", None) is not None:
        return transformer_spec(model, **kwargs)
    return feedforward_spec(model)
