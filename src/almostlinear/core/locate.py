"""Find the parts of any HF transformer from the model itself, with no per-architecture tables.

The rules, each checked on tiny configs of every architecture in the tests (Llama, GPT-2, GPT-NeoX,
Qwen2/3, Gemma 1/2/3, Mistral, Phi-3, OLMo 2, GPT-J, Falcon, StableLM, Mixtral, Qwen2/3-MoE, BERT):

* blocks: the ``ModuleList`` whose length is the configured number of layers and whose members
  share one class (the one with the most parameters, if several qualify);
* attention: the block's child whose name mentions ``attn`` or ``attention`` and that holds linear
  maps (norms and dropouts named after the attention are skipped);
* the attention's output projection: the last linear map inside the attention that writes
  ``d_model`` features (``o_proj``, ``c_proj``, ``dense``, ``out_proj``, ``output.dense`` are all
  registered last among those; fused ``qkv_proj``/``query_key_value`` maps are wider);
* a mixture of experts: outside the attention, the first module holding an experts container (a
  ``ModuleList`` of identical experts, or 3-D parameters ``[n_experts, ., .]`` as transformers 5
  fuses them) beside a router whose weight is ``[n_experts, d_model]``; that module is the block's
  MLP and its width is the experts' hidden width;
* otherwise the MLP's down projection: the linear map of the block, outside the attention, that
  writes ``d_model`` features from a wider input; its input is the MLP "keys" that ROME edits, and
  the block's child holding it and an up projection is the MLP;
* post-sublayer norms (a bias added to what a sublayer writes gets normalised): more block-level
  norms than sublayers (Gemma 2/3's sandwich norms), a block-level norm named for the point after
  the MLP (OLMo 2's ``post_feedforward_layernorm``), or a norm beside an output projection that is
  the only linear map of its parent (post-LN encoders: BERT's ``output.LayerNorm``);
* final norm: a norm module registered beside the blocks, after them;
* embeddings and head: ``get_input_embeddings`` / ``get_output_embeddings``; tied when both hold the
  same tensor (on the meta device, where storage cannot be compared, as the config says).

GPT-2's ``Conv1D`` stores its weight as ``[in, out]``; :func:`linear_weight` always returns
``[out, in]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import LayerError, StructureError

_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_WIDTH_KEYS = ("hidden_size", "n_embd", "d_model", "dim")


def is_linear(module: nn.Module) -> bool:
    """True for ``nn.Linear`` and GPT-2 style ``Conv1D`` (weight stored ``[in, out]``)."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """``(out_features, in_features)`` of a linear-like module."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if is_conv1d(module):
        return module.weight.shape[1], module.weight.shape[0]
    raise StructureError(f"{type(module).__name__} is not a linear layer")


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight as ``[out, in]`` (a view; transposed for ``Conv1D``)."""
    if isinstance(module, nn.Linear):
        return module.weight
    if is_conv1d(module):
        return module.weight.T
    raise StructureError(f"{type(module).__name__} is not a linear layer")


def is_norm(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    return isinstance(module, nn.LayerNorm) or "norm" in name


@dataclass(frozen=True)
class Block:
    """One residual block and the parts of it that levers touch."""

    index: int
    module: nn.Module
    attention: nn.Module
    attn_out_proj: nn.Module
    mlp_down_proj: nn.Module | None  # None in mixture-of-experts blocks (see ``moe``)
    norms: tuple[nn.Module, ...]
    path: str
    # The whole MLP, or the sparse MoE block; None where the MLP is split over several children of
    # the block (BERT's ``intermediate`` and ``output``).
    mlp: nn.Module | None = None
    moe: bool = False  # a mixture-of-experts MLP: weight levers that touch the MLP refuse or handle experts
    experts: nn.Module | None = None  # MoE only: the experts container (ModuleList or fused 3-D weights)
    router: nn.Module | None = None  # MoE only: the module whose weight [n_experts, d_model] routes tokens
    # A norm acts on what a sublayer writes before it reaches the stream (Gemma 2/3, OLMo 2, post-LN
    # encoders), so a bias on an output projection is not the same as adding to the residual stream.
    post_norms: bool = False


@dataclass(frozen=True)
class Structure:
    """What :func:`locate` found in a model. Module objects, not names, so no string lookups later."""

    model_type: str
    d_model: int
    d_mlp: int
    n_layers: int
    blocks_path: str
    blocks: tuple[Block, ...]
    final_norm: nn.Module | None
    final_norm_path: str | None
    embedding: nn.Module
    unembedding: nn.Module | None
    tied_embeddings: bool
    transposed_weights: bool
    n_params: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    def block(self, layer: int) -> Block:
        """Block ``layer``; negative indices count from the end; out of range raises ``LayerError``."""
        if not -self.n_layers <= layer < self.n_layers:
            raise LayerError(
                f"layer {layer} is out of range: this model has {self.n_layers} blocks "
                f"(valid layers 0..{self.n_layers - 1}, or negative from the end)"
            )
        return self.blocks[layer]

    def summary(self) -> dict:
        """JSON-ready description, for model cards and artifact headers."""
        first = self.blocks[0]
        return {
            "model_type": self.model_type,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "d_mlp": self.d_mlp,
            "n_params": self.n_params,
            "blocks": f"{self.blocks_path}[0..{self.n_layers - 1}]",
            "attention": type(first.attention).__name__,
            "attn_out_proj": _relpath(first.path, first.module, first.attn_out_proj),
            "mlp_down_proj": _relpath(first.path, first.module, first.mlp_down_proj),
            "mlp": _relpath(first.path, first.module, first.mlp),
            "moe": any(b.moe for b in self.blocks),
            "post_norms": any(b.post_norms for b in self.blocks),
            "final_norm": self.final_norm_path,
            "embedding": type(self.embedding).__name__,
            "unembedding": type(self.unembedding).__name__ if self.unembedding is not None else None,
            "tied_embeddings": self.tied_embeddings,
            "transposed_weights (Conv1D)": self.transposed_weights,
            "notes": list(self.notes),
        }


def _relpath(prefix: str, root: nn.Module, target: nn.Module | None) -> str | None:
    if target is None:
        return None
    for name, module in root.named_modules():
        if module is target:
            return f"{prefix}.{name}" if name else prefix
    return "?"


def _config_int(config, keys) -> int | None:
    for source in (config, getattr(config, "text_config", None)):
        if source is None:
            continue
        for key in keys:
            value = getattr(source, key, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def _find_blocks(model: nn.Module, n_layers: int | None) -> tuple[str, nn.ModuleList]:
    candidates = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        if n_layers is not None and len(module) != n_layers:
            continue
        size = sum(p.numel() for p in module.parameters())
        candidates.append((size, name, module))
    if not candidates:
        raise StructureError(
            f"no list of {n_layers if n_layers else 'identical'} blocks found in "
            f"{type(model).__name__}; pass a transformer whose config states its layer count"
        )
    _, name, module = max(candidates, key=lambda c: c[0])
    return name, module


def _linears(module: nn.Module, exclude: nn.Module | None = None) -> list[tuple[str, nn.Module]]:
    excluded = {id(m) for m in exclude.modules()} if exclude is not None else set()
    return [(n, m) for n, m in module.named_modules() if is_linear(m) and id(m) not in excluded]


def _find_attention(block: nn.Module) -> nn.Module:
    for name, child in block.named_children():
        lowered = name.lower()
        if "attn" in lowered or "attention" in lowered:
            # Skip norms and parameter-free wrappers named after the attention (GPT-NeoX has
            # ``post_attention_layernorm`` and ``post_attention_dropout`` beside ``attention``).
            if "norm" not in lowered and not is_norm(child) and _linears(child):
                return child
    raise StructureError(
        f"no attention submodule in {type(block).__name__} (children: "
        f"{[n for n, _ in block.named_children()]})"
    )


def _experts(module: nn.Module) -> tuple[nn.Module, int] | None:
    """A child of ``module`` holding experts, and their number: a ``ModuleList`` of identical modules
    with linear maps, or a module whose own parameters are 3-D with a shared leading dimension."""
    for child in module.children():
        if isinstance(child, nn.ModuleList):
            if len(child) > 1 and len({type(m) for m in child}) == 1 and _linears(child[0]):
                return child, len(child)
            continue
        stacked = {p.shape[0] for p in child.parameters(recurse=False) if p.dim() == 3}
        if len(stacked) == 1 and (n := stacked.pop()) > 1:
            return child, n
    return None


def _router(module: nn.Module, experts: nn.Module, n_experts: int, d_model: int) -> nn.Module | None:
    """The child of ``module`` (not the experts) whose weight maps ``d_model`` features to one score
    per expert: an ``nn.Linear`` or a router module owning such a weight."""
    for child in module.children():
        weight = getattr(child, "weight", None)
        if child is not experts and isinstance(weight, torch.Tensor) and tuple(weight.shape) == (n_experts, d_model):
            return child
    return None


def _expert_width(experts: nn.Module, d_model: int) -> int:
    """The hidden width of one expert: the input of a map to ``d_model`` (fused gate/up maps are wider
    than the down map, so the smallest width found is the expert's)."""
    if isinstance(experts, nn.ModuleList):
        widths = [linear_shape(m)[1] for _, m in _linears(experts[0]) if linear_shape(m)[0] == d_model]
    else:
        widths = []
        for p in experts.parameters(recurse=False):
            if p.dim() == 3 and d_model in p.shape[1:]:
                a, b = p.shape[1:]
                widths.append(b if a == d_model else a)
    if not widths:
        raise StructureError(f"cannot tell the width of the experts in {type(experts).__name__}")
    return min(widths)


def _find_moe(block: nn.Module, attention: nn.Module, d_model: int):
    """``(sparse block, experts, router)`` of a mixture-of-experts MLP, or ``None`` in a dense block."""
    inside_attention = {id(m) for m in attention.modules()}
    for module in block.modules():
        if id(module) in inside_attention:
            continue
        found = _experts(module)
        if found is None:
            continue
        router = _router(module, found[0], found[1], d_model)
        if router is not None:
            return module, found[0], router
    return None


_AFTER_MLP = ("mlp", "ffn", "feedforward", "feed_forward")


def _has_post_norms(block: nn.Module, norms: list[tuple[str, nn.Module]], writers: list[nn.Module],
                    d_model: int) -> bool:
    """Whether a norm acts on what a sublayer writes (see the module docstring for the three rules).

    ``norms`` are the block's own ``d_model``-wide norms with their names; ``writers`` the output
    projections whose parent may be a post-LN wrapper.
    """
    if len(norms) > 2:
        return True
    if any("post" in name.lower() and any(k in name.lower() for k in _AFTER_MLP) for name, _ in norms):
        return True
    modules = dict(block.named_modules())
    for name, module in modules.items():
        if "." not in name or not any(module is w for w in writers):
            continue
        parent = modules[name.rsplit(".", 1)[0]]
        if len(_linears(parent)) == 1 and any(is_norm(m) and _width(m) == d_model for m in parent.children()):
            return True
    return False


def _width(norm: nn.Module) -> int | None:
    shape = getattr(norm, "normalized_shape", None)
    if shape:
        return int(shape[-1])
    weight = getattr(norm, "weight", None)
    return int(weight.shape[-1]) if isinstance(weight, torch.Tensor) and weight.dim() >= 1 else None


def _dense_mlp(block: nn.Module, down: nn.Module, d_model: int) -> nn.Module | None:
    """The block's child that holds the down projection and a map reading ``d_model`` features."""
    for child in block.children():
        members = {id(m) for m in child.modules()}
        if id(down) in members:
            if child is down:
                return None
            readers = [m for _, m in _linears(child) if m is not down and linear_shape(m)[1] == d_model]
            return child if readers else None
    return None


def _locate_block(index: int, path: str, block: nn.Module, d_model: int) -> tuple[Block, int]:
    attention = _find_attention(block)
    writers = [m for _, m in _linears(attention) if linear_shape(m)[0] == d_model]
    if not writers:
        raise StructureError(f"attention of block {index} has no projection back to d_model={d_model}")
    named_norms = [(n, m) for n, m in block.named_children() if is_norm(m)]
    norms = tuple(m for _, m in named_norms)
    wide_norms = [(n, m) for n, m in named_norms if _width(m) in (None, d_model)]
    moe = _find_moe(block, attention, d_model)
    if moe is not None:
        sparse, experts, router = moe
        post = _has_post_norms(block, wide_norms, [writers[-1]], d_model)
        found = Block(index, block, attention, writers[-1], None, norms, path, mlp=sparse, moe=True,
                      experts=experts, router=router, post_norms=post)
        return found, _expert_width(experts, d_model)
    down = [
        (n, m)
        for n, m in _linears(block, exclude=attention)
        if linear_shape(m)[0] == d_model and linear_shape(m)[1] > d_model
    ]
    if len(down) != 1:
        found = [n for n, _ in down]
        raise StructureError(
            f"expected one MLP down projection (d_mlp -> d_model={d_model}) in block {index}, "
            f"found {found or 'none'}, and no mixture of experts (experts beside a router)"
        )
    down_proj = down[0][1]
    post = _has_post_norms(block, wide_norms, [writers[-1], down_proj], d_model)
    found = Block(index, block, attention, writers[-1], down_proj, norms, path,
                  mlp=_dense_mlp(block, down_proj, d_model), post_norms=post)
    return found, linear_shape(down_proj)[1]


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    if "." not in path:
        return model, path
    parent_path, child = path.rsplit(".", 1)
    return model.get_submodule(parent_path), child


def _find_final_norm(model: nn.Module, blocks_path: str) -> tuple[nn.Module | None, str | None]:
    parent, list_name = _parent(model, blocks_path)
    prefix = blocks_path.rsplit(".", 1)[0] + "." if "." in blocks_path else ""
    after = False
    for name, child in parent.named_children():
        if name == list_name:
            after = True
            continue
        if after and is_norm(child):
            return child, prefix + name
    return None, None


def _tied(embedding: nn.Module, unembedding: nn.Module | None, config) -> bool:
    """Whether the head reads the embedding matrix: the same tensor, or the same storage; on the meta
    device (offloaded weights) storage says nothing, so the config's ``tie_word_embeddings`` decides."""
    if unembedding is None:
        return False
    a, b = embedding.weight, unembedding.weight
    if a is b:
        return True
    if a.is_meta or b.is_meta:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        return bool(getattr(text, "tie_word_embeddings", False)) and a.shape == b.shape
    return a.shape == b.shape and a.device == b.device and a.data_ptr() == b.data_ptr()


def locate(model: nn.Module) -> Structure:
    """Derive the :class:`Structure` of a transformer (decoder or encoder) from its modules."""
    config = getattr(model, "config", None)
    n_layers = _config_int(config, _LAYER_COUNT_KEYS) if config is not None else None
    blocks_path, module_list = _find_blocks(model, n_layers)
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embedding is None:
        raise StructureError(f"{type(model).__name__} exposes no input embedding")
    d_model = (_config_int(config, _WIDTH_KEYS) if config is not None else None) or embedding.weight.shape[1]
    blocks, widths = [], set()
    for i, block in enumerate(module_list):
        found, d_mlp = _locate_block(i, f"{blocks_path}.{i}", block, d_model)
        blocks.append(found)
        widths.add(d_mlp)
    unembedding = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = _tied(embedding, unembedding, config)
    final_norm, final_norm_path = _find_final_norm(model, blocks_path)
    notes = []
    if final_norm is None:
        notes.append("no final norm after the blocks (post-norm or encoder architecture)")
    if unembedding is None:
        notes.append("no output head: logit-based measurements are unavailable")
    return Structure(
        model_type=getattr(config, "model_type", type(model).__name__),
        d_model=d_model,
        d_mlp=max(widths),
        n_layers=len(blocks),
        blocks_path=blocks_path,
        blocks=tuple(blocks),
        final_norm=final_norm,
        final_norm_path=final_norm_path,
        embedding=embedding,
        unembedding=unembedding,
        tied_embeddings=tied,
        transposed_weights=is_conv1d(blocks[0].attn_out_proj) or is_conv1d(blocks[0].mlp_down_proj),
        n_params=sum(p.numel() for p in model.parameters()),
        notes=tuple(notes),
    )
