"""Merge recipes in YAML: the common subset of mergekit's configuration format.

Accepted (mergekit's meaning)::

    merge_method: linear | slerp | task_arithmetic | ties | dare_linear | dare_ties
    base_model: path            # required by every method that uses a base (all but linear)
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
``slerp`` interpolates each whole tensor (the original SLERP of two flattened vectors), as
mergekit 0.1.5 does: the two agree to 2e-7 (tests/merging/test_merging_mergekit.py). Anything else (``slices``, ``modules``,
``tokenizer``, ``tokenizer_source: union``, unknown keys) is refused with a message naming the key,
never silently ignored.

Which parameters a method accepts, their defaults and which ones may be set per model come from
the method's record (:mod:`.registry`), so a newly registered method is usable in recipes at once.
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
from .registry import REQUIRED, lookup

TOP_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "tokenizer_source",
            "chat_template", "name"}
UNSUPPORTED_TOP = {
    "slices": "layer slicing (frankenmerges) is not supported; list whole models under 'models'",
    "modules": "multi-module (vision-language) recipes are not supported",
    "tokenizer": "tokenizer surgery is not supported; use tokenizer_source: base or a model path",
}
MODEL_KEYS = {"model", "parameters"}
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16",
               "bfloat16": "bfloat16", "bf16": "bfloat16", "float64": "float64"}
_LAYER = re.compile(r"\.(\d+)\.")


class RecipeError(AlmostLinearError):
    """A recipe this reader cannot follow: a key it does not know or support, a value it cannot read."""


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
        if model is not None and key in self.models[model].parameters:
            setting = self.models[model].parameters[key]
        elif key in self.parameters:
            setting = self.parameters[key]
        else:
            default = lookup(self.method).recipe_default(key)
            if default is REQUIRED:
                raise RecipeError(f"{self.method} needs parameter {key!r} and the recipe does not give it")
            return default
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
                    raise RecipeError(f"parameter {key!r}: a filter entry needs 'filter' and 'value' "
                                            f"only, got keys {sorted(cond)}")
                f = cond.get("filter")
                if f is None or f == "*" or f in tensor:
                    return evaluate(cond["value"], tensor, position, key)
            return None
        if all(isinstance(v, (bool, str)) for v in setting):
            return setting[int(position * (len(setting) - 1))]
    raise RecipeError(f"parameter {key!r} has a value this reader does not understand: {setting!r}")


def tensor_options(recipe: Recipe, name: str, position: float) -> tuple[list[float], dict[str, Any]]:
    """Weights (one per model) and the method's options for one tensor, in the dispatcher's terms:
    each parameter of the method's record, read under its recipe key and converted by its record."""
    n = len(recipe.models)
    weights = [1.0] * n
    options: dict[str, Any] = {}
    for option, p in lookup(recipe.method).params.items():
        if p.ignored:
            continue
        key = p.recipe_key or option
        convert = p.from_recipe or (lambda value: value)
        if p.per_model:
            value = [convert(recipe.value(key, name, position, i)) for i in range(n)]
        else:
            value = convert(recipe.value(key, name, position))
        if option == "weight":
            weights = value
        else:
            options[option] = value
    return weights, options


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
    raise RecipeError(f"{where}: expected a model path, got {entry!r}")


def _check_params(params: Any, allowed: set[str], where: str, method: str) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise RecipeError(f"{where}: 'parameters' must be a mapping, got {params!r}")
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise RecipeError(f"{where}: unknown parameter {unknown[0]!r} for merge_method {method!r} "
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
            raise RecipeError(f"no recipe file at {p}")
        if p is not None and p.is_file():
            text = p.read_text()
            root = root or p.parent
        else:
            text = str(source)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise RecipeError(f"the recipe is not valid YAML: {error}") from error
    if not isinstance(data, Mapping):
        raise RecipeError("a recipe is a YAML mapping with at least 'merge_method' and 'models'")
    for key in data:
        if key in UNSUPPORTED_TOP:
            raise RecipeError(f"recipe key {key!r}: {UNSUPPORTED_TOP[key]}")
        if key not in TOP_KEYS:
            raise RecipeError(f"unknown recipe key {key!r} (accepted: {', '.join(sorted(TOP_KEYS))})")
    method = data.get("merge_method")
    record = lookup(method, "merge_method")
    if record.in_memory_only:
        needed = [k for k, p in record.params.items() if p.default is REQUIRED]
        raise RecipeError(f"merge_method {method!r} needs statistics of each model ({', '.join(needed)}) and runs in "
                          f"memory only: use almostlinear.merging.merge_state_dicts({method!r}, ...)")
    keys = record.recipe_keys()
    allowed = set(keys)
    root_path = Path(root) if root is not None else None
    fix = (lambda ref: resolve_model(ref, root_path)) if resolve else (lambda ref: Path(ref))
    base_ref = data.get("base_model")
    base = fix(_model_ref(base_ref, "base_model")) if base_ref is not None else None
    raw_models = data.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        raise RecipeError("recipe key 'models' must be a non-empty list of {model: path, parameters: ...}")
    entries: list[ModelEntry] = []
    for i, raw in enumerate(raw_models):
        where = f"models[{i}]"
        if isinstance(raw, Mapping):
            unknown = sorted(set(raw) - MODEL_KEYS)
            if unknown:
                raise RecipeError(f"{where}: unknown key {unknown[0]!r} (accepted: model, parameters)")
        ref = _model_ref(raw, where)
        params = _check_params(raw.get("parameters") if isinstance(raw, Mapping) else None,
                               {k for k in allowed if record.params[keys[k]].per_model}, where, method)
        path = fix(ref)
        if record.uses_base and base is not None and path.resolve() == base.resolve():
            continue  # mergekit lets the base appear among the models; it is not a task vector
        entries.append(ModelEntry(path, params))
    params = _check_params(data.get("parameters"), allowed, "parameters", method)
    if record.uses_base and base is None:
        raise RecipeError(f"merge_method {method!r} needs 'base_model'"
                          + (": task vectors are differences from it" if record.needs_base else ""))
    if record.inputs is not None and len(entries) + (base is not None) != record.inputs:
        raise RecipeError(f"{method} merges exactly {record.inputs} models, the base included: give base_model and "
                          f"{record.inputs - 1} other model(s) under 'models'")
    for key, option in keys.items():
        p = record.params[option]
        if record.recipe_default(key) is REQUIRED and key not in params and not (
                p.per_model and all(key in e.parameters for e in entries)):
            raise RecipeError(f"{method} needs parameter {key!r}" + (f" ({p.doc})" if p.doc else ""))
    if not entries:
        raise RecipeError("the recipe lists no models besides the base")
    dtypes = {}
    for key in ("dtype", "out_dtype"):
        value = data.get(key)
        if value is not None and value not in DTYPE_NAMES:
            raise RecipeError(f"recipe key {key!r}: unknown dtype {value!r} (use float32, float16, bfloat16)")
        dtypes[key] = DTYPE_NAMES.get(value) if value is not None else None
    tokenizer = data.get("tokenizer_source")
    if tokenizer == "union":
        raise RecipeError("recipe key 'tokenizer_source': 'union' is not supported; use 'base' or a model path")
    if tokenizer in (None, "base"):
        tokenizer_path = base if base is not None else entries[0].path
    else:
        tokenizer_path = fix(str(tokenizer))
    template = data.get("chat_template")
    if template not in (None, "auto"):
        raise RecipeError("recipe key 'chat_template': only 'auto' (keep the tokenizer source's template) "
                          "is supported")
    return Recipe(method, entries, base, params, dtypes["dtype"], dtypes["out_dtype"], tokenizer_path, text)
