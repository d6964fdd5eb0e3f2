"""Merge recipes in YAML: the common subset of mergekit's configuration format.

Accepted (mergekit's meaning)::

    merge_method: linear | slerp | task_arithmetic | ties | dare_linear | dare_ties
    base_model: path            # required by every method except linear
    models:
      - model: path
        parameters: {weight: 0.5, density: 0.2}
    parameters: {normalize: true, lambda: 1.0, t: 0.5, int8_mask: true, rescale: true}
    dtype: float32              # the dtype inputs are read as
    out_dtype: bfloat16         # the dtype written (default: dtype, else the base model's)
    tokenizer_source: base      # or a model path: whose tokenizer files are copied
    chat_template: auto

A parameter value is a scalar, a gradient list (interpolated over the layers, a tensor in layer i
of L getting position i/(L−1); tensors outside the layers take the first value) or a list of
``{filter: substring, value: ...}`` (the first entry whose filter occurs in the tensor name wins).
Two additions: ``election: paper | weighted`` (TIES sign rule; default ``paper``, the rule of
arXiv 2306.01708; mergekit elects on weighted deltas) and ``seed`` (DARE's random drops).
``slerp`` interpolates each whole tensor (the original SLERP of two flattened vectors); mergekit's
current ``slerp`` works row by row, so its output differs. Anything else (``slices``, ``modules``, ``tokenizer``, ``tokenizer_source: union``, unknown keys)
is refused with a message naming the key, never silently ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import AlmostLinearError, ModelNotFoundError
from .dispatch import METHODS

TOP_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "tokenizer_source",
            "chat_template", "name"}
UNSUPPORTED_TOP = {
    "slices": "layer slicing (frankenmerges) is not supported; list whole models under 'models'",
    "modules": "multi-module (vision-language) recipes are not supported",
    "tokenizer": "tokenizer surgery is not supported; use tokenizer_source: base or a model path",
}
MODEL_KEYS = {"model", "parameters"}
PER_MODEL = {"weight", "density"}
SHARED = {"normalize", "lambda", "t", "int8_mask", "rescale", "election", "seed"}
# mergekit's defaults per method, so that a recipe means here what it means there
RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "linear": {"normalize": True},
    "slerp": {},
    "task_arithmetic": {"normalize": False, "lambda": 1.0},
    "ties": {"normalize": True, "lambda": 1.0, "density": 1.0, "election": "paper"},
    "dare_linear": {"normalize": False, "lambda": 1.0, "density": 1.0, "rescale": True, "seed": 0},
    "dare_ties": {"normalize": False, "lambda": 1.0, "density": 1.0, "rescale": True, "seed": 0,
                  "election": "paper"},
}
ALLOWED: dict[str, set[str]] = {
    "linear": {"weight", "normalize", "int8_mask"},
    "slerp": {"t"},
    "task_arithmetic": {"weight", "normalize", "lambda", "int8_mask"},
    "ties": {"weight", "density", "normalize", "lambda", "int8_mask", "election"},
    "dare_linear": {"weight", "density", "normalize", "lambda", "int8_mask", "rescale", "seed"},
    "dare_ties": {"weight", "density", "normalize", "lambda", "int8_mask", "rescale", "seed", "election"},
}
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16",
               "bfloat16": "bfloat16", "bf16": "bfloat16", "float64": "float64"}
_LAYER = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class ModelEntry:
    path: Path
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    """A parsed, validated recipe. ``models`` excludes the base model."""

    method: str
    models: list[ModelEntry]
    base: Path | None
    parameters: dict[str, Any]
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: Path | None = None
    source_text: str = ""

    def value(self, key: str, tensor: str, position: float, model: int | None = None) -> Any:
        """The parameter ``key`` for one tensor (and one model, for per-model keys)."""
        setting = None
        if model is not None and key in self.models[model].parameters:
            setting = self.models[model].parameters[key]
        elif key in self.parameters:
            setting = self.parameters[key]
        elif key in RECIPE_DEFAULTS[self.method]:
            return RECIPE_DEFAULTS[self.method][key]
        elif key == "weight":
            return 1.0
        else:
            raise AlmostLinearError(f"{self.method} needs parameter {key!r} and the recipe does not give it")
        return evaluate(setting, tensor, position, key)


def evaluate(setting: Any, tensor: str, position: float, key: str) -> Any:
    """Resolve a scalar, a gradient list or a filter list for one tensor at layer position ``position``."""
    if isinstance(setting, Mapping):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return setting
    if isinstance(setting, list) and setting:
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in setting):
            scaled = position * (len(setting) - 1)
            i0 = int(scaled)
            i1 = min(len(setting) - 1, i0 + 1)
            frac = scaled - i0
            return (1 - frac) * float(setting[i0]) + frac * float(setting[i1])
        if all(isinstance(v, Mapping) for v in setting):
            for cond in setting:
                extra = set(cond) - {"filter", "value"}
                if extra or "value" not in cond:
                    raise AlmostLinearError(f"parameter {key!r}: a filter entry needs 'filter' and 'value' "
                                            f"only, got keys {sorted(cond)}")
                f = cond.get("filter")
                if f is None or f == "*" or f in tensor:
                    return evaluate(cond["value"], tensor, position, key)
            return None
        if all(isinstance(v, (bool, str)) for v in setting):
            return setting[int(position * (len(setting) - 1))]
    raise AlmostLinearError(f"parameter {key!r} has a value this reader does not understand: {setting!r}")


def layer_position(name: str, n_layers: int) -> float:
    """Where a tensor sits for gradient parameters: i/(L−1) in layer i, 0 outside the layers."""
    m = _LAYER.search(name)
    if m is None or n_layers <= 1:
        return 0.0 if m is None else 1.0
    return min(1.0, int(m.group(1)) / (n_layers - 1))


def resolve_model(ref: str, root: Path | None = None) -> Path:
    """A model reference: a folder (absolute, relative to the cwd or to the recipe), or an embedded model name."""
    path = Path(os.path.expanduser(str(ref)))
    if path.exists():
        return path
    if root is not None and (root / path).exists():
        return root / path
    from ..core import models as core_models

    if str(ref) in core_models.EMBEDDED:
        return core_models._embedded_folder(core_models.EMBEDDED[str(ref)])
    raise ModelNotFoundError(f"model {ref!r} in the recipe is not a folder here (nor an embedded model name)")


def _model_ref(entry: Any, where: str) -> str:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, Mapping) and "model" in entry and isinstance(entry["model"], str):
        return entry["model"]
    raise AlmostLinearError(f"{where}: expected a model path, got {entry!r}")


def _check_params(params: Any, allowed: set[str], where: str, method: str) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise AlmostLinearError(f"{where}: 'parameters' must be a mapping, got {params!r}")
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise AlmostLinearError(f"{where}: unknown parameter {unknown[0]!r} for merge_method {method!r} "
                                f"(accepted: {', '.join(sorted(allowed))})")
    return dict(params)


def parse_recipe(source: str | os.PathLike | Mapping[str, Any], *, root: str | os.PathLike | None = None,
                 resolve: bool = True) -> Recipe:
    """Parse a recipe from a YAML file path, YAML text, or an already-loaded mapping."""
    text = ""
    if isinstance(source, Mapping):
        data = dict(source)
    else:
        p = Path(source) if not (isinstance(source, str) and "\n" in source) else None
        if p is not None and not p.is_file() and p.suffix in (".yaml", ".yml"):
            raise AlmostLinearError(f"no recipe file at {p}")
        if p is not None and p.is_file():
            text = p.read_text()
            root = root or p.parent
        else:
            text = str(source)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise AlmostLinearError(f"the recipe is not valid YAML: {error}") from error
    if not isinstance(data, Mapping):
        raise AlmostLinearError("a recipe is a YAML mapping with at least 'merge_method' and 'models'")
    for key in data:
        if key in UNSUPPORTED_TOP:
            raise AlmostLinearError(f"recipe key {key!r}: {UNSUPPORTED_TOP[key]}")
        if key not in TOP_KEYS:
            raise AlmostLinearError(f"unknown recipe key {key!r} (accepted: {', '.join(sorted(TOP_KEYS))})")
    method = data.get("merge_method")
    if method not in METHODS:
        raise AlmostLinearError(f"recipe key 'merge_method': {method!r} is not one of {', '.join(METHODS)}")
    allowed = ALLOWED[method]
    root_path = Path(root) if root is not None else None
    fix = (lambda ref: resolve_model(ref, root_path)) if resolve else (lambda ref: Path(ref))
    base_ref = data.get("base_model")
    base = fix(_model_ref(base_ref, "base_model")) if base_ref is not None else None
    raw_models = data.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        raise AlmostLinearError("recipe key 'models' must be a non-empty list of {model: path, parameters: ...}")
    entries: list[ModelEntry] = []
    for i, raw in enumerate(raw_models):
        where = f"models[{i}]"
        if isinstance(raw, Mapping):
            unknown = sorted(set(raw) - MODEL_KEYS)
            if unknown:
                raise AlmostLinearError(f"{where}: unknown key {unknown[0]!r} (accepted: model, parameters)")
        ref = _model_ref(raw, where)
        params = _check_params(raw.get("parameters") if isinstance(raw, Mapping) else None,
                               allowed & PER_MODEL, where, method)
        path = fix(ref)
        if method != "linear" and base is not None and path.resolve() == base.resolve():
            continue  # mergekit lets the base appear among the models; it is not a task vector
        entries.append(ModelEntry(path, params))
    params = _check_params(data.get("parameters"), allowed, "parameters", method)
    if method == "slerp":
        if base is None or len(entries) != 1:
            raise AlmostLinearError("slerp needs base_model and exactly one other model under 'models'")
        if "t" not in params:
            raise AlmostLinearError("slerp needs parameter 't' (0 gives the base model, 1 the other)")
    elif method != "linear" and base is None:
        raise AlmostLinearError(f"merge_method {method!r} needs 'base_model': task vectors are differences from it")
    if not entries:
        raise AlmostLinearError("the recipe lists no models besides the base")
    dtypes = {}
    for key in ("dtype", "out_dtype"):
        value = data.get(key)
        if value is not None and value not in DTYPE_NAMES:
            raise AlmostLinearError(f"recipe key {key!r}: unknown dtype {value!r} (use float32, float16, bfloat16)")
        dtypes[key] = DTYPE_NAMES.get(value) if value is not None else None
    tokenizer = data.get("tokenizer_source")
    if tokenizer == "union":
        raise AlmostLinearError("recipe key 'tokenizer_source': 'union' is not supported; use 'base' or a model path")
    if tokenizer in (None, "base"):
        tokenizer_path = base if base is not None else entries[0].path
    else:
        tokenizer_path = fix(str(tokenizer))
    template = data.get("chat_template")
    if template not in (None, "auto"):
        raise AlmostLinearError("recipe key 'chat_template': only 'auto' (keep the tokenizer source's template) "
                                "is supported")
    return Recipe(method, entries, base, params, dtypes["dtype"], dtypes["out_dtype"], tokenizer_path, text)
