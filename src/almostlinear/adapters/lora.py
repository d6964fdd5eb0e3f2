"""LoRA adapters as plain factors, read from and written to PEFT adapter folders.

An adapter is, per target module, two factors and a scale: ΔW = scale · B A with A [r, in] and
B [out, r] (for PEFT's ``fan_in_fan_out`` layers, such as GPT-2's Conv1D, the weight is stored
transposed and receives (B A)ᵀ). What adds between adapters is ΔW, never A and B separately.

Variants whose update is not scale·BA are refused rather than read wrongly: DoRA (a magnitude
vector rescales the columns), LoRA biases, and embedding LoRA.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file

from ..core.paths import replace_files
from ..core.errors import AlmostLinearError, ArtifactError, NonFiniteError, ShapeError
from ..core.lever import Baked, as_model, bake_weights, check_strength, temporarily_changed

Tensor = torch.Tensor
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")
REFUSED = {
    "use_dora": "DoRA adapters rescale weight columns by a learned magnitude; their update is not scale·BA",
    "lora_bias": "adapters with LoRA biases add a bias term that this reader does not combine",
}


@dataclass(frozen=True)
class LoraFactors:
    """One module's factors: ΔW = scale · B @ A (transposed into the weight when ``fan_in_fan_out``)."""

    A: Tensor  # [r, in]
    B: Tensor  # [out, r]
    scale: float = 1.0
    fan_in_fan_out: bool = False

    def __post_init__(self) -> None:
        if self.A.dim() != 2 or self.B.dim() != 2:
            raise ShapeError(f"LoRA factors must be matrices, got A {tuple(self.A.shape)} and B {tuple(self.B.shape)}")
        if self.A.shape[0] != self.B.shape[1]:
            raise ShapeError(f"LoRA rank mismatch: A has {self.A.shape[0]} rows, B has {self.B.shape[1]} columns")
        if not (torch.isfinite(self.A).all() and torch.isfinite(self.B).all()) or not math.isfinite(self.scale):
            raise NonFiniteError("LoRA factors or their scale contain NaN or infinite values; they would write "
                                 "NaN into the weights")

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    def delta(self) -> Tensor:
        """ΔW in the (out, in) orientation, float64."""
        return self.scale * (self.B.double() @ self.A.double())

    def weight_delta(self) -> Tensor:
        """ΔW in the orientation of the module's stored weight."""
        d = self.delta()
        return d.T if self.fan_in_fan_out else d


@dataclass(frozen=True)
class LoraAdapter:
    """Factors per module (names relative to the base model, e.g. ``model.layers.0.self_attn.q_proj``).

    A lever (:mod:`almostlinear.core.lever`) whose strength multiplies ΔW (units ``"raw"``):
    ``with adapter.apply(model, strength=1.0):`` adds it and restores the weights bit for bit on
    exit; ``adapter.bake_(model)`` merges it and returns the record whose ``undo_()`` restores them.
    It is stored as a PEFT adapter folder (:func:`read_peft`, :func:`write_peft`), not as an
    almostlinear artifact file, so that PEFT and the hub read it as they are; the folder records no
    model fingerprint, so only the shapes of the targeted weights are checked.
    """

    kind: ClassVar[str] = "adapters.lora"
    strength_units: ClassVar[tuple[str, ...]] = ("raw",)
    bakes: ClassVar[bool] = True

    modules: Mapping[str, LoraFactors]
    config: Mapping = field(default_factory=dict)

    def deltas(self) -> dict[str, Tensor]:
        return {name: f.delta() for name, f in self.modules.items()}

    @property
    def ranks(self) -> dict[str, int]:
        return {name: f.rank for name, f in self.modules.items()}

    def _weights(self, model: torch.nn.Module) -> dict[str, Tensor]:
        found = {}
        named = dict(model.named_modules())
        for name, f in self.modules.items():
            module = named.get(name)
            if module is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
                raise AlmostLinearError(f"the model has no module {name!r} with a weight for this adapter")
            w = module.weight
            if tuple(w.shape) != tuple(f.weight_delta().shape):
                raise ShapeError(f"module {name!r}: weight {tuple(w.shape)} but the adapter's ΔW is "
                                 f"{tuple(f.weight_delta().shape)}")
            found[name] = w
        return found

    def _prepare(self, model: Any, strength: float):
        """Every check first (strength, modules, shapes); then the parameter names and the change."""
        strength = check_strength(strength, self.strength_units[0])
        view = as_model(model)
        weights = self._weights(view.module)
        return view, [f"{name}.weight" for name in weights], lambda: self._add_(weights, strength)

    def apply(self, model: Any, strength: float = 1.0) -> AbstractContextManager[torch.nn.Module]:
        """W + strength·ΔW inside the block; the original weights are copied back on exit, bit for bit."""
        view, names, change = self._prepare(model, strength)
        return temporarily_changed(view, names, change)

    def bake_(self, model: Any, strength: float = 1.0) -> Baked:
        """Merge W ← W + strength·ΔW into the model; the returned record's ``undo_()`` restores W exactly."""
        view, names, change = self._prepare(model, strength)
        return bake_weights(view, names, change, kind=self.kind)

    def _add_(self, weights: Mapping[str, Tensor], strength: float) -> None:
        if strength == 0.0:
            return
        with torch.no_grad():
            for k, w in weights.items():
                d = self.modules[k].weight_delta()
                w.copy_((w.double() + strength * d).to(w.dtype))


# A quantified group that itself holds a quantifier, e.g. "(a+)+": such patterns can backtrack for
# minutes on a 40-character name, so a pattern read from a file may not use them.
_NESTED_QUANTIFIER = re.compile(r"\([^()]*[+*}][^()]*\)\s*[+*{]")


def _pattern_value(patterns: Mapping[str, float], module: str, default: float) -> float:
    # PEFT matches a pattern key against the end of the module name (a regex is allowed)
    for key, value in patterns.items():
        if module == key or module.endswith("." + key):
            return value
        if _NESTED_QUANTIFIER.search(key):
            raise ArtifactError(f"the adapter's pattern {key!r} nests quantifiers, which can take exponential time "
                                "to match; write it without a repeated group")
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default


def read_peft(folder: str | os.PathLike) -> LoraAdapter:
    """Read a PEFT LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``)."""
    folder = Path(folder)
    cfg_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not cfg_path.is_file() or not weights_path.is_file():
        raise ArtifactError(f"{folder} is not a PEFT adapter folder ({CONFIG_NAME} and {WEIGHTS_NAME} needed)")
    config = json.loads(cfg_path.read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ArtifactError(f"{folder} holds a {config.get('peft_type')} adapter, not LoRA")
    for key, why in REFUSED.items():
        if config.get(key):
            raise ArtifactError(f"{folder}: {key} is set; {why}")
    if config.get("bias", "none") != "none":
        raise ArtifactError(f"{folder}: bias={config['bias']!r} trains biases too; only bias='none' is read")
    tensors = load_file(str(weights_path))
    pairs: dict[str, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if "lora_embedding" in key or "lora_magnitude" in key:
            raise ArtifactError(f"{folder}: tensor {key!r} (embedding LoRA or DoRA) is not supported")
        m = _KEY.match(key)
        if m is None:
            raise ArtifactError(f"{folder}: tensor {key!r} is not a lora_A/lora_B weight")
        module = m.group("module")
        module = module[len(PREFIX):] if module.startswith(PREFIX) else module
        pairs.setdefault(module, {})[m.group("which")] = value
    alpha_default = config.get("lora_alpha", 8)
    rslora, fan = bool(config.get("use_rslora")), bool(config.get("fan_in_fan_out"))
    modules = {}
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ArtifactError(f"{folder}: module {module!r} lacks lora_{'A' if 'A' not in ab else 'B'}")
        rank = int(ab["A"].shape[0])
        alpha = _pattern_value(config.get("alpha_pattern") or {}, module, alpha_default)
        scale = alpha / math.sqrt(rank) if rslora else alpha / rank
        modules[module] = LoraFactors(ab["A"], ab["B"], float(scale), fan)
    if not modules:
        raise ArtifactError(f"{folder} holds no LoRA weights")
    return LoraAdapter(modules, config)


def write_peft(adapter: LoraAdapter, folder: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> Path:
    """Write a PEFT LoRA folder that PEFT loads as is. Each module's scale is folded into B so that
    every module has lora_alpha = r (scale 1) and rsLoRA off; ranks that differ go in rank_pattern."""
    folder = Path(folder)
    if not adapter.modules:
        raise AlmostLinearError("an adapter with no modules cannot be written")
    ranks = adapter.ranks
    common = max(set(ranks.values()), key=list(ranks.values()).count)
    fans = {f.fan_in_fan_out for f in adapter.modules.values()}
    if len(fans) > 1:
        raise AlmostLinearError("modules disagree on fan_in_fan_out; PEFT stores one value per adapter")
    tensors = {}
    for name, f in adapter.modules.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = f.A.to(dtype).contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = (f.B.double() * f.scale).to(dtype).contiguous()
    targets = sorted({name.rsplit(".", 1)[-1] for name in adapter.modules})
    config = {k: v for k, v in dict(adapter.config).items()
              if k in ("base_model_name_or_path", "task_type", "auto_mapping", "revision")}
    config.update({
        "peft_type": "LORA", "r": common, "lora_alpha": common, "use_rslora": False, "use_dora": False,
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": fans.pop(), "init_lora_weights": True,
        "target_modules": targets, "inference_mode": True, "modules_to_save": None,
        "rank_pattern": {n: r for n, r in ranks.items() if r != common},
        "alpha_pattern": {n: r for n, r in ranks.items() if r != common},
    })
    # both files are complete on disk before either replaces an older adapter's
    return replace_files(folder, {
        WEIGHTS_NAME: lambda path: save_file(tensors, path, metadata={"format": "pt"}),
        CONFIG_NAME: lambda path: Path(path).write_text(json.dumps(config, indent=2)),
    })
