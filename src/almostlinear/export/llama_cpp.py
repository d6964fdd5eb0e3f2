"""Apply a control vector to a model loaded by llama-cpp-python (the optional ``llama`` extra).

llama-cpp-python exposes llama.cpp's ``llama_set_adapter_cvec(ctx, data, len, n_embd, il_start,
il_end)`` (``llama_apply_adapter_cvec`` before it was renamed), which takes the flat buffer that
llama.cpp's command-line tools build from ``--control-vector`` files (see :mod:`.gguf` for the
layout). :func:`apply_control_vector` builds that buffer from a file (or from steering vectors) and
hands it over; :func:`clear_control_vector` switches it off again.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core.errors import LeverError, MissingDependencyError
from .gguf import ControlVector, control_vector, read_control_vector


def _bindings():
    try:
        import llama_cpp
    except ImportError as error:
        raise MissingDependencyError("applying control vectors in llama.cpp needs llama-cpp-python: "
                                     "pip install 'almostlinear[llama]'") from error
    return llama_cpp


def _setter(llama_cpp):
    """llama.cpp's call that sets the control vector, under its current name or the one before."""
    return getattr(llama_cpp, "llama_set_adapter_cvec", None) or llama_cpp.llama_apply_adapter_cvec


def apply_control_vector(llm: Any, source: str | os.PathLike | ControlVector | Sequence[Any], *, scale: float = 1.0,
                         layer_range: tuple[int, int] | None = None) -> np.ndarray:
    """Set the control vector of a ``llama_cpp.Llama`` (as ``--control-vector-scaled FILE scale`` does).

    ``source`` is a control-vector file, a :class:`~.gguf.ControlVector`, or steering vectors;
    ``layer_range`` is llama.cpp's inclusive ``--control-vector-layer-range`` (default: the layers
    the vector has). Returns the buffer handed to llama.cpp.
    """
    llama_cpp = _bindings()
    if isinstance(source, ControlVector):
        cvec = source
    elif isinstance(source, (str, os.PathLike)):
        cvec = read_control_vector(source)
    else:
        cvec, _ = control_vector(source)
    n_embd = int(llm.n_embd())
    n_layers = int(llama_cpp.llama_model_n_layer(llm.model)) if hasattr(llama_cpp, "llama_model_n_layer") \
        else int(llama_cpp.llama_n_layer(llm.model))
    if cvec.n_embd != n_embd:
        raise LeverError(f"the control vector has {cvec.n_embd} features but the model's n_embd is {n_embd}")
    data = np.ascontiguousarray(cvec.buffer(n_layers, scale=scale), dtype=np.float32)
    start, end = layer_range if layer_range is not None else (min(cvec.layers), max(cvec.layers))
    pointer = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    failed = _setter(llama_cpp)(llm.ctx, pointer, data.size, n_embd, int(start), int(end))
    if failed:
        raise LeverError("llama.cpp refused the control vector (setting the adapter returned an error)")
    return data


def clear_control_vector(llm: Any) -> None:
    """Switch the control vector off (llama.cpp keeps its buffers for the next one)."""
    llama_cpp = _bindings()
    _setter(llama_cpp)(llm.ctx, None, 0, int(llm.n_embd()), -1, -1)
