"""Levers that travel: fitted levers as files other engines load.

* PEFT LoRA adapter folders for weight levers (edits and ablations exactly, task vectors and merges
  by SVD with the error stated): :func:`export_peft`;
* plain ``save_pretrained`` folders with levers baked in, steering vectors as declared biases:
  :func:`export_hf`;
* llama.cpp control vectors (GGUF) from steering vectors, and such files read back:
  :func:`export_gguf`, :func:`import_gguf`, :func:`read_control_vector`.

Every export writes a model card (``README.md``) beside what it exports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

_PUBLIC = {
    "card": ("LeverEntry", "render_card"),
    "factors": ("AdapterPlan", "Factors", "plan_adapter"),
    "gguf": ("ControlVector", "control_vector", "export_gguf", "import_gguf", "llama_cpp_layer", "read_control_vector"),
    "hf": ("export_hf",),
    "llama_cpp": ("apply_control_vector", "clear_control_vector"),
    "lowrank": ("Truncation", "rank_for_error", "truncate"),
    "measure": ("measure_side_effects",),
    "peft": ("export_peft",),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)

if TYPE_CHECKING:
    from .card import LeverEntry, render_card
    from .factors import AdapterPlan, Factors, plan_adapter
    from .gguf import ControlVector, control_vector, export_gguf, import_gguf, llama_cpp_layer, read_control_vector
    from .hf import export_hf
    from .llama_cpp import apply_control_vector, clear_control_vector
    from .lowrank import Truncation, rank_for_error, truncate
    from .measure import measure_side_effects
    from .peft import export_peft
