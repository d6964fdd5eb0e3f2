"""The plan: every check that can fail, done before any arithmetic or any byte is written.

:func:`plan_merge` opens each input's safetensors headers (no tensor data), then checks that the
models share an architecture and a vocabulary, that every tensor exists in every model with one
shape, and that the output dtype can hold the inputs. Each refusal names the tensor or key and
the models involved. The result lists, per output tensor, its sources, shape, dtypes and action.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from ..core.errors import AlmostLinearError, ShapeError
from .recipe import Recipe, layer_position, tensor_options
from .registry import lookup
from .stream import Checkpoint
from .writer import OutputTensor

ARCH_KEYS = ("architectures", "model_type")
SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "intermediate_size", "n_embd", "n_layer", "n_head")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


class PlanError(AlmostLinearError):
    """The inputs of a merge do not fit together; nothing was computed or written."""


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    in_dtypes: tuple[torch.dtype, ...]
    out_dtype: torch.dtype
    action: str  # the merge method, or "copy" for integer buffers


@dataclass
class MergePlan:
    recipe: Recipe
    base: Checkpoint | None
    models: list[Checkpoint]
    tensors: list[PlannedTensor]
    n_layers: int
    warnings: list[str] = field(default_factory=list)

    @property
    def inputs(self) -> list[Checkpoint]:
        return ([self.base] if self.base is not None else []) + self.models

    @property
    def layout(self) -> list[OutputTensor]:
        return [OutputTensor(t.name, t.shape, t.out_dtype) for t in self.tensors]

    @property
    def parameters(self) -> int:
        n = 0
        for t in self.tensors:
            k = 1
            for s in t.shape:
                k *= s
            n += k
        return n

    def summary(self) -> str:
        lines = [f"{self.recipe.method} merge of {len(self.models)} model(s)"
                 + (f" onto base {self.recipe.base}" if self.base is not None else ""),
                 f"{len(self.tensors)} tensors, {self.parameters:,} parameters, written as "
                 f"{sorted({str(t.out_dtype).replace('torch.', '') for t in self.tensors})}"]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _vocab(config: dict) -> int | None:
    v = config.get("vocab_size")
    if v is None and isinstance(config.get("text_config"), dict):
        v = config["text_config"].get("vocab_size")
    return v


def _check_configs(inputs: list[Checkpoint]) -> None:
    ref = inputs[0]
    ref_config = ref.config()
    for other in inputs[1:]:
        config = other.config()
        if not ref_config or not config:
            continue
        for key in ARCH_KEYS:
            if key in ref_config and key in config and ref_config[key] != config[key]:
                raise PlanError(f"different architectures: config key {key!r} is {config[key]!r} in "
                                f"{other.label} but {ref_config[key]!r} in {ref.label}")
        va, vb = _vocab(ref_config), _vocab(config)
        if va is not None and vb is not None and va != vb:
            raise PlanError(f"different vocabularies: vocab_size {vb} in {other.label} but {va} in {ref.label}; "
                            "resize the embeddings to one tokenizer first")
        for key in SHAPE_KEYS:
            if key in ref_config and key in config and ref_config[key] != config[key]:
                raise PlanError(f"different model shapes: config key {key!r} is {config[key]!r} in "
                                f"{other.label} but {ref_config[key]!r} in {ref.label}")


def _max_abs(checkpoint: Checkpoint, name: str) -> float:
    t = checkpoint.read(name)
    return float(t.abs().max()) if t.numel() else 0.0


def plan_merge(recipe: Recipe, *, check_overflow: bool = True) -> MergePlan:
    """Check the recipe's inputs against each other and lay out the output; raises :class:`PlanError`."""
    base = Checkpoint(recipe.base, label=f"base model {recipe.base}") if recipe.base is not None else None
    models = [Checkpoint(e.path, label=f"model {e.path}") for e in recipe.models]
    inputs = ([base] if base is not None else []) + models
    _check_configs(inputs)
    ref = inputs[0]
    config = ref.config()
    vocab = _vocab(config)
    names = ref.keys()
    for other in inputs[1:]:
        missing = [n for n in names if n not in other]
        if missing:
            raise PlanError(f"tensor {missing[0]!r} is missing from {other.label}"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        extra = [n for n in other.keys() if n not in ref]
        if extra:
            raise PlanError(f"tensor {extra[0]!r} of {other.label} is missing from {ref.label}"
                            + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    read_dtype = DTYPES[recipe.dtype] if recipe.dtype else None
    wanted_out = recipe.out_dtype or recipe.dtype
    tensors: list[PlannedTensor] = []
    warnings: list[str] = []
    for name in names:
        infos = [c.info(name) for c in inputs]
        shape = infos[0].shape
        for c, info in zip(inputs[1:], infos[1:]):
            if info.shape != shape:
                hint = ""
                if vocab is not None and shape and (shape[0] == vocab or info.shape[0] == vocab):
                    hint = " (a vocabulary mismatch: the embedding or output rows differ)"
                raise ShapeError(f"tensor {name!r} has shape {info.shape} in {c.label} but {shape} in "
                                 f"{inputs[0].label}{hint}")
        floats = [i.dtype.is_floating_point for i in infos]
        if not all(floats):
            if any(floats) or len({i.dtype for i in infos}) > 1:
                raise PlanError(f"tensor {name!r} has dtypes {[str(i.dtype) for i in infos]}; "
                                "integer tensors can only be copied when every model stores them alike")
            tensors.append(PlannedTensor(name, shape, tuple(i.dtype for i in infos), infos[0].dtype, "copy"))
            continue
        out = DTYPES[wanted_out] if wanted_out else infos[0].dtype
        if check_overflow:
            out_max = torch.finfo(out).max
            for c, info in zip(inputs, infos):
                source = read_dtype or info.dtype
                if torch.finfo(source).max > out_max or torch.finfo(info.dtype).max > out_max:
                    peak = _max_abs(c, name)
                    if peak > out_max:
                        raise PlanError(f"tensor {name!r} of {c.label} holds |x| = {peak:.4g}, beyond the "
                                        f"largest {out} ({out_max:.4g}): writing it as {out} would overflow; "
                                        "choose a wider out_dtype")
        tensors.append(PlannedTensor(name, shape, tuple(i.dtype for i in infos), out, recipe.method))
    n_layers = int(config.get("num_hidden_layers") or config.get("n_layer") or 0)
    if not n_layers:
        layers = {int(m) for n in names for m in re.findall(r"\.(\d+)\.", n)[:1]}
        n_layers = max(layers) + 1 if layers else 1
    _check_values(recipe, [t.name for t in tensors], n_layers)
    return MergePlan(recipe, base, models, tensors, n_layers, warnings)


def _check_values(recipe: Recipe, names: list[str], n_layers: int) -> None:
    """Every parameter value every tensor will get, resolved now: a value that is not a finite number
    where the method needs one (``weight: abc``) is refused here, not half way through the merge."""
    numeric = {option for option, p in lookup(recipe.method).params.items()
               if isinstance(p.default, (int, float)) and not isinstance(p.default, bool) or option == "weight"}
    for name in names:
        try:
            weights, options = tensor_options(recipe, name, layer_position(name, n_layers))
        except (TypeError, ValueError) as error:
            raise PlanError(f"tensor {name!r}: a parameter value cannot be read: {error}") from error
        values = {"weight": weights, **{k: v for k, v in options.items() if k in numeric}}
        for key, value in values.items():
            for item in value if isinstance(value, list) else [value]:
                if item is None:
                    continue
                if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
                    raise PlanError(f"tensor {name!r}: parameter {key!r} is {item!r}; it must be a finite number")
