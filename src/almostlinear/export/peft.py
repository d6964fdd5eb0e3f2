"""Write an :class:`~.factors.AdapterPlan` as a PEFT LoRA adapter folder, with its model card.

The folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` as PEFT writes them, so
``PeftModel.from_pretrained(base, folder)`` loads it, and so do servers that read PEFT adapters
(vLLM's multi-LoRA serving among them, for adapters on linear layers). Every module has scale 1
(``lora_alpha = r``, rsLoRA off); modules of other ranks are listed in ``rank_pattern`` and
``alpha_pattern``. Targets are named in full, so only the modules a lever changes are adapted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.errors import LeverError
from ..core.lever import as_model
from .card import LeverEntry, write_card
from .factors import AdapterPlan, plan_adapter
from ..core.paths import replace_files

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."


def adapter_tensors(plan: AdapterPlan, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """PEFT's saved names: ``lora_A.weight``/``lora_B.weight`` (linear), ``lora_embedding_A/B`` (embeddings)."""
    tensors = {}
    for name, f in plan.modules.items():
        a, b = f.A.to(dtype).contiguous(), f.B.to(dtype).contiguous()
        if f.embedding:
            tensors[f"{PREFIX}{name}.lora_embedding_A"] = a
            tensors[f"{PREFIX}{name}.lora_embedding_B"] = b
        else:
            tensors[f"{PREFIX}{name}.lora_A.weight"] = a
            tensors[f"{PREFIX}{name}.lora_B.weight"] = b
    for name, values in plan.saved.items():  # modules_to_save: the whole module's parameters, as PEFT saves them
        for leaf, value in values.items():
            tensors[f"{PREFIX}{name}.{leaf}"] = value.contiguous()
    return tensors


def adapter_config(plan: AdapterPlan, *, base: str | None = None, causal: bool = True) -> dict[str, Any]:
    ranks = {name: f.rank for name, f in plan.modules.items()}
    values = list(ranks.values()) or [1]
    common = max(set(values), key=values.count)
    others = {name: r for name, r in ranks.items() if r != common}
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM" if causal else None, "base_model_name_or_path": base,
        "r": common, "lora_alpha": common, "rank_pattern": others, "alpha_pattern": dict(others),
        "target_modules": sorted(plan.modules), "use_rslora": False, "use_dora": False, "lora_dropout": 0.0,
        "bias": "none", "fan_in_fan_out": any(f.conv1d for f in plan.modules.values()),
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": sorted(plan.saved) or None,
    }


def _base_name(view) -> str | None:
    if view.loaded is not None:
        return view.loaded.path
    config = getattr(view.module, "config", None)
    return getattr(config, "_name_or_path", None) or None


def export_peft(levers: Any | Sequence[Any], model: Any, out: str | os.PathLike, *,
                strengths: Sequence[float] | None = None, rank: int | None = None,
                target_error: float | None = None, strict: bool = False, side_effects: dict | None = None,
                dtype: torch.dtype = torch.float32, full_modules: bool = True) -> AdapterPlan:
    """Write ``levers`` (one or several) applied to ``model`` as one PEFT LoRA adapter in ``out``.

    ``rank`` / ``target_error`` truncate task vectors and merges by SVD (edits and ablations are
    exact at their own rank); the card states the error. Modules whose norm weights or biases a task
    vector changes are stored whole (``modules_to_save``) unless ``full_modules=False``, which
    refuses such a task vector instead (for servers that accept LoRA factors only). Returns the plan.
    """
    from safetensors.torch import save_file

    levers = list(levers) if isinstance(levers, (list, tuple)) else [levers]
    view = as_model(model)
    plan = plan_adapter(levers, view, strengths=strengths, rank=rank, target_error=target_error, strict=strict,
                        full_modules=full_modules)
    if not plan.modules and not plan.saved:
        raise LeverError("these levers change no weight at this strength; there is nothing to export")
    if not plan.modules:
        raise LeverError("every module these levers change has a changed norm weight or bias, so the adapter would "
                         "hold whole modules and no LoRA factors (PEFT refuses such an adapter): export with --to hf")
    folder = Path(out)
    causal = view.structure.unembedding is not None
    config = adapter_config(plan, base=_base_name(view), causal=causal)

    def write_weights(path: str) -> None:
        save_file(adapter_tensors(plan, dtype), path, metadata={"format": "pt"})

    def write_config(path: str) -> None:
        Path(path).write_text(json.dumps(config, indent=2))

    replace_files(folder, {WEIGHTS_NAME: write_weights, CONFIG_NAME: write_config})
    entries = [LeverEntry.of(item["lever"], item["strength"], modules=item["modules"]) for item in plan.levers]
    ranks = sorted({f.rank for f in plan.modules.values()})
    details = [f"modules with LoRA factors: {len(plan.modules)}; ranks: {', '.join(map(str, ranks)) or 'none'}; "
               "factors stored as "
               f"{str(dtype).removeprefix('torch.')}"]
    if plan.errors:
        worst = max(plan.errors, key=plan.errors.get)
        details.append(f"task vectors truncated by SVD (Eckart–Young: the best rank-k approximation in the Frobenius "
                       f"norm): relative error {plan.total_error:.3g} over all truncated matrices, worst "
                       f"{plan.errors[worst]:.3g} at {worst}")
    else:
        details.append("exact: every ΔW is stored at its own rank (no truncation)")
    if plan.saved:
        shown = ", ".join(f"`{name}`" for name in list(plan.saved)[:6]) + (
            f" and {len(plan.saved) - 6} more" if len(plan.saved) > 6 else "")
        details.append(f"{len(plan.saved)} modules stored whole (`modules_to_save`: their norm weights or biases "
                       f"changed, which LoRA factors cannot hold): {shown}; a server that accepts LoRA factors "
                       "only cannot use this adapter (export with full_modules=False to be told instead)")
    if any(f.embedding for f in plan.modules.values()):
        details.append("the embeddings carry an embedding LoRA (lora_embedding_A/B), which leaves a tied output head "
                       "unchanged, as baking the ablation does; a server that accepts LoRA on linear layers only "
                       "cannot use it")
    usage = ("```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
             f"base = AutoModelForCausalLM.from_pretrained({config['base_model_name_or_path'] or 'BASE_MODEL'!r})\n"
             f"model = PeftModel.from_pretrained(base, {str(folder.name)!r})\n```")
    write_card(folder / "README.md", target="PEFT LoRA adapter", entries=entries, base_fingerprint=view.fingerprint,
               base_name=config["base_model_name_or_path"], details=details, usage=usage, side_effects=side_effects,
               library_name="peft")
    return plan
