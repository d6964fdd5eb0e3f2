"""Plain weights: a ``save_pretrained`` folder of the model with levers baked in, for transformers alone.

Weight levers (edits, ablations, task vectors, permutations, LoRA) are baked with their own
``bake_``. A steering vector bakes into the bias of the module writing its site; where that module
has no bias (Llama, Qwen2, Gemma), the folder must declare one or a fresh load would drop it. The
config option that does so is found from the architecture itself, with no per-model table: each
``*bias`` flag of the config that is off is switched on in turn, the model class is built from that
config on the meta device, and the flag whose model gives the writing module a bias is used (Llama's
``mlp_bias``, for example). Every other bias it creates is written as zeros, so the function is
unchanged. An architecture with no such flag is refused with the reason.

The model is changed only while the folder is written: every bake is undone afterwards, bit for
bit, also when writing fails.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import LeverError, ShapeError
from ..core.lever import as_model, bake_weights, get_parameter, set_parameter
from .card import LeverEntry, write_card


def _bias_flags(config) -> list[str]:
    return [key for key, value in vars(config).items() if key.endswith("bias") and value is False]


def _skeleton_names(module: nn.Module, config) -> set[str] | None:
    """Parameter names of ``type(module)`` built from ``config`` on the meta device (None if it cannot be built)."""
    try:
        with torch.device("meta"):
            fresh = type(module)(config)
    except Exception:  # an architecture that cannot be built from its config alone
        return None
    return {name for name, _ in fresh.named_parameters()}


def bias_option(module: nn.Module, needed: Sequence[str]) -> tuple[str | None, set[str]]:
    """The config flag whose model declares the biases ``needed``, and every parameter that model has.

    ``(None, names)`` when the current config already declares them; :class:`LeverError` when no
    flag does.
    """
    config = module.config
    current = _skeleton_names(module, config)
    if current is not None and all(name in current for name in needed):
        return None, current
    for flag in _bias_flags(config):
        trial = copy.deepcopy(config)
        setattr(trial, flag, True)
        names = _skeleton_names(module, trial)
        if names is not None and all(name in names for name in needed):
            return flag, names
    raise LeverError(f"{config.model_type} has no config option that gives {', '.join(needed)} a bias, so a steering "
                     "vector baked there would be lost when the saved folder is loaded: export it with --to gguf "
                     "(llama.cpp) or steer with apply()")


@contextlib.contextmanager
def _config_flag(module: nn.Module, flag: str | None):
    if flag is None:
        yield
        return
    config = module.config
    before = getattr(config, flag)
    setattr(config, flag, True)
    try:
        yield
    finally:
        setattr(config, flag, before)


def export_hf(levers: Any | Sequence[Any], model: Any, out: str | os.PathLike, *,
              strengths: Sequence[float] | None = None, tokenizer: Any = None, side_effects: dict | None = None,
              strict: bool = False, max_shard_size: str = "5GB") -> Path:
    """Bake ``levers`` into ``model``, write ``save_pretrained`` (and the tokenizer) to ``out``, undo the bakes.

    Returns the folder; ``AutoModelForCausalLM.from_pretrained(out)`` then computes the baked model.
    """
    from ..steering.artifact import SteeringVector

    levers = list(levers) if isinstance(levers, (list, tuple)) else [levers]
    strengths = [1.0] * len(levers) if strengths is None else list(strengths)
    if len(strengths) != len(levers):
        raise ShapeError(f"{len(strengths)} strengths for {len(levers)} levers")
    if not levers:
        raise LeverError("no levers to export")
    view = as_model(model)
    module = view.module
    if not hasattr(module, "save_pretrained") or getattr(module, "config", None) is None:
        raise LeverError("plain-weights export needs a transformers model (save_pretrained and a config)")
    for lever in levers:
        if not getattr(lever, "bakes", False):
            kind = getattr(lever, "kind", type(lever).__name__)
            raise LeverError(f"{kind} has no exact permanent form (bakes=False), so no plain-weights folder can "
                             "hold it")
    fingerprint = view.fingerprint
    before = {name for name, _ in module.named_parameters()}
    records = []
    folder = Path(out)
    try:
        for lever, strength in zip(levers, strengths):
            if isinstance(lever, SteeringVector):
                records.append(lever.bake_(view, strength, strict=strict))
            else:
                takes_strict = "strict" in inspect.signature(lever.bake_).parameters
                records.append(lever.bake_(view, strength, **({"strict": strict} if takes_strict else {})))
        created = sorted({name for name, _ in module.named_parameters()} - before)
        flag, declared = bias_option(module, created) if created else (None, set())
        # the other parameters the flag declares (biases of sibling modules) are written as zeros
        zeros = sorted(declared - {name for name, _ in module.named_parameters()})
        if zeros:
            records.append(bake_weights(view, zeros, lambda: _zero_fill(module, zeros), kind="export.declared_bias"))
        with _config_flag(module, flag):
            module.save_pretrained(folder, max_shard_size=max_shard_size)
        tokenizer = tokenizer if tokenizer is not None else view.tokenizer
        if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(folder)
    finally:
        for record in reversed(records):
            record.undo_()
    entries = [LeverEntry.of(lever, strength) for lever, strength in zip(levers, strengths)]
    details = ["weights: the base model with every lever baked in (`bake_`), loadable by transformers alone"]
    if created:
        details.append(f"new biases for the steering vectors: {', '.join(created)}"
                       + (f"; config option `{flag}` switched on, its other {len(zeros)} biases written as zeros"
                          if flag else ""))
    base = view.loaded.path if view.loaded is not None else getattr(module.config, "_name_or_path", None)
    usage = ("```python\nfrom transformers import AutoModelForCausalLM\n\n"
             f"model = AutoModelForCausalLM.from_pretrained({folder.name!r})\n```")
    write_card(folder / "README.md", target="plain-weights model", entries=entries, base_fingerprint=fingerprint,
               base_name=base or None, details=details, usage=usage, side_effects=side_effects,
               library_name="transformers")
    return folder


def _zero_fill(module: nn.Module, names: Sequence[str]) -> None:
    for name in names:
        owner_path, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_path)
        weight = owner._parameters.get("weight")
        out_features = getattr(owner, "out_features", None) or getattr(owner, "nf", None)
        if leaf != "bias" or weight is None or out_features is None:
            raise LeverError(f"the declared parameter {name!r} is not the bias of a linear layer; cannot fill it")
        set_parameter(module, name, torch.zeros(out_features, dtype=weight.dtype, device=weight.device))
        get_parameter(module, name).requires_grad_(weight.requires_grad)
