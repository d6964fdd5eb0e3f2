"""Read a control-vector file with llama.cpp's own GGUF parser (libggml, shipped in llama-cpp-python).

This mirrors ``common_control_vector_load_one`` in llama.cpp's common.cpp: open the file with
``gguf_init_from_file`` (tensors allocated), take every tensor named ``direction.<il>`` (``il > 0``,
F32, 1-D), and place it at ``(il − 1) · n_embd`` of one flat buffer. It lets the tests check a file
against the parser llama.cpp itself uses rather than the Python ``gguf`` package. Also: opening a
GGUF model with llama-cpp-python where AMX faults, and reading its next-token logits.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

GGML_TYPE_F32 = 0


class _InitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]


def _library() -> ctypes.CDLL:
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.gguf_init_from_file.restype = ctypes.c_void_p
    lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, _InitParams]
    lib.gguf_get_n_tensors.restype = ctypes.c_int64
    lib.gguf_get_n_tensors.argtypes = [ctypes.c_void_p]
    lib.gguf_get_tensor_name.restype = ctypes.c_char_p
    lib.gguf_get_tensor_name.argtypes = [ctypes.c_void_p, ctypes.c_int64]
    lib.ggml_get_tensor.restype = ctypes.c_void_p
    lib.ggml_get_tensor.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.ggml_n_dims.restype = ctypes.c_int
    lib.ggml_n_dims.argtypes = [ctypes.c_void_p]
    lib.ggml_nelements.restype = ctypes.c_int64
    lib.ggml_nelements.argtypes = [ctypes.c_void_p]
    lib.ggml_get_data_f32.restype = ctypes.POINTER(ctypes.c_float)
    lib.ggml_get_data_f32.argtypes = [ctypes.c_void_p]
    lib.gguf_free.argtypes = [ctypes.c_void_p]
    lib.ggml_free.argtypes = [ctypes.c_void_p]
    return lib


def load_with_llama_cpp(path: str | Path) -> dict[int, np.ndarray]:
    """``{il: vector}`` as llama.cpp's loader reads the file; ``ValueError`` where it would reject it."""
    lib = _library()
    ggml_ctx = ctypes.c_void_p()
    handle = lib.gguf_init_from_file(str(path).encode(), _InitParams(False, ctypes.pointer(ggml_ctx)))
    if not handle:
        raise ValueError(f"llama.cpp cannot open {path} as GGUF")
    try:
        layers: dict[int, np.ndarray] = {}
        for i in range(lib.gguf_get_n_tensors(handle)):
            name = lib.gguf_get_tensor_name(handle, i)
            prefix, _, index = name.decode().partition(".")
            if prefix != "direction" or not index.isdigit() or int(index) == 0:
                raise ValueError(f"llama.cpp rejects tensor {name!r}")
            tensor = lib.ggml_get_tensor(ggml_ctx, name)
            if ctypes.c_int.from_address(tensor).value != GGML_TYPE_F32 or lib.ggml_n_dims(tensor) != 1:
                raise ValueError(f"llama.cpp rejects {name!r}: not a 1-D F32 tensor")
            count = lib.ggml_nelements(tensor)
            layers[int(index)] = np.ctypeslib.as_array(lib.ggml_get_data_f32(tensor), shape=(count,)).copy()
        return layers
    finally:
        lib.gguf_free(handle)
        if ggml_ctx:
            lib.ggml_free(ggml_ctx)


def llama_cpp_buffer(layers: dict[int, np.ndarray], n_layers: int, scale: float = 1.0) -> np.ndarray:
    """The buffer ``common_control_vector_load`` builds: layer ``il`` at ``(il − 1) · n_embd``, times ``scale``."""
    n_embd = len(next(iter(layers.values())))
    data = np.zeros(n_embd * (n_layers - 1), dtype=np.float32)
    for il, vector in layers.items():
        data[(il - 1) * n_embd: il * n_embd] += scale * vector
    return data


def open_llama(path: str, threads: int):
    """A llama_cpp.Llama without extra buffer types: their AMX kernels fault in virtual machines that do
    not grant AMX tile state (seen here as a general-protection fault in ldtilecfg)."""
    import llama_cpp
    import llama_cpp.llama as module

    default = llama_cpp.llama_model_default_params

    def without_extra_buffers():
        params = default()
        params.use_extra_bufts = False
        return params

    module.llama_cpp.llama_model_default_params = without_extra_buffers
    try:
        return llama_cpp.Llama(model_path=path, n_ctx=256, n_threads=threads, verbose=False)
    finally:
        module.llama_cpp.llama_model_default_params = default


def llama_logits(llm, ids) -> np.ndarray:
    """llama.cpp's next-token logits after the token ids ``ids`` (float64)."""
    import llama_cpp

    llm.reset()
    llm.eval(list(ids))
    pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).astype(np.float64).copy()


def served_log_odds(llm, cvec, tokenizer, prompts, strengths, positive, negative) -> dict[float, np.ndarray]:
    """Per-prompt next-token log-odds of ``positive`` vs ``negative`` token ids in llama.cpp with the
    control vector ``cvec`` applied at each scale in ``strengths``; the vector is cleared afterwards."""
    import torch

    from almostlinear.export import apply_control_vector, clear_control_vector

    def log_odds(logits: np.ndarray) -> float:
        log_p = torch.log_softmax(torch.from_numpy(logits), -1)
        return float(torch.logsumexp(log_p[positive], -1) - torch.logsumexp(log_p[negative], -1))

    served = {}
    try:
        for strength in strengths:
            apply_control_vector(llm, cvec, scale=strength)
            served[strength] = np.array([log_odds(llama_logits(llm, tokenizer(p)["input_ids"])) for p in prompts])
    finally:
        clear_control_vector(llm)
    return served
