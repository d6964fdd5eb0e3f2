"""Read checkpoints tensor by tensor without loading a whole file.

A safetensors file is an 8-byte header length, a JSON header (name -> dtype, shape, byte offsets)
and the raw bytes. :class:`Checkpoint` parses the headers of every shard of a folder once; then
each tensor (or a slice of its entries) is read on demand with a positional read straight into a
fresh tensor or a reused buffer. Only the bytes
of that tensor enter memory, and nothing keeps the file mapped, so the process's resident memory
stays near the tensors being merged rather than growing with the pages of files read so far.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import AlmostLinearError, ModelNotFoundError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
NAMES = {v: k for k, v in DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"


def dtype_name(dtype: torch.dtype) -> str:
    if dtype not in NAMES:
        raise AlmostLinearError(f"dtype {dtype} cannot be stored in safetensors")
    return NAMES[dtype]


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, byte range, dtype, shape."""

    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def read_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the byte offset where its data begins."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise AlmostLinearError(f"{path} is too short to be a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length > 100_000_000:
            raise AlmostLinearError(f"{path} has an implausible safetensors header of {length} bytes")
        try:
            header = json.loads(f.read(length))
        except (ValueError, RecursionError) as error:
            raise AlmostLinearError(f"{path} has a corrupt safetensors header: {error}") from error
    if not isinstance(header, dict):
        raise AlmostLinearError(f"{path} has a corrupt safetensors header: expected a JSON object")
    return header, 8 + length


def tensor_info(file: Path, name: str, entry, data_start: int, file_size: int, label: str) -> TensorInfo:
    """One header entry, checked before anything is allocated: dtype, shape, offsets inside the file,
    and a byte count that matches shape × dtype (a header claiming a huge shape is refused)."""
    try:
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        shape = tuple(shape)
    except (TypeError, KeyError, ValueError) as error:
        raise AlmostLinearError(f"{label}: tensor {name!r} has a malformed header entry: {entry!r:.200}") from error
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise AlmostLinearError(f"{label}: tensor {name!r} has unsupported dtype {dtype!r}")
    ints = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (*shape, begin, end))
    if not ints or end < begin or data_start + end > file_size:
        raise AlmostLinearError(f"{label}: tensor {name!r} has shape {shape} and offsets {[begin, end]} that do "
                                f"not fit in {file.name} ({file_size} bytes)")
    info = TensorInfo(name, file, DTYPES[dtype], shape, data_start + begin, end - begin)
    if info.numel * info.dtype.itemsize != info.nbytes:
        raise AlmostLinearError(f"{label}: tensor {name!r} claims shape {shape} of {dtype} ({info.numel} values) "
                                f"but holds {info.nbytes} bytes")
    return info


def _shard_names(index: Path, folder: Path) -> list[str]:
    """The shard files an index names, each confined to ``folder`` (no path outside it is followed)."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = list(dict.fromkeys(weight_map.values()))
    except (ValueError, RecursionError, KeyError, TypeError, AttributeError) as error:
        raise AlmostLinearError(f"{index} is not a valid shard index: {error}") from error
    root = folder.resolve()
    for name in names:
        if not isinstance(name, str) or (folder / name).resolve().parent != root:
            raise AlmostLinearError(f"{index} names a shard {name!r} outside its folder; refusing to follow it")
    return names


class Checkpoint:
    """A folder (or single file) of safetensors weights, read lazily."""

    def __init__(self, path: str | os.PathLike, *, label: str | None = None) -> None:
        self.path = Path(path)
        self.label = label or str(path)
        if self.path.is_file():
            files = [self.path]
            self.folder = self.path.parent
        elif self.path.is_dir():
            self.folder = self.path
            index = self.path / INDEX_NAME
            if index.is_file():
                files = [self.path / f for f in _shard_names(index, self.path)]
            else:
                files = sorted(self.path.glob("*.safetensors"))
            if not files:
                raise ModelNotFoundError(f"{self.path} holds no .safetensors weights")
        else:
            raise ModelNotFoundError(f"no model folder or file at {self.path}")
        self.infos: dict[str, TensorInfo] = {}
        self.metadata: dict[str, str] = {}
        for file in files:
            if not file.is_file():
                raise ModelNotFoundError(f"{self.label}: shard {file.name} named in the index is missing")
            header, data_start = read_header(file)
            metadata = header.pop("__metadata__", {}) or {}
            if not isinstance(metadata, dict):
                raise AlmostLinearError(f"{self.label}: {file.name} has metadata that is not a JSON object")
            self.metadata.update(metadata)
            size = file.stat().st_size
            for name, entry in header.items():
                self.infos[name] = tensor_info(file, name, entry, data_start, size, self.label)

    def config(self) -> dict:
        """``config.json`` next to the weights, or {} when there is none."""
        path = self.folder / "config.json"
        if not path.is_file():
            return {}
        try:
            config = json.loads(path.read_text())
        except (ValueError, RecursionError) as error:
            raise AlmostLinearError(f"{path} is not valid JSON: {error}") from error
        if not isinstance(config, dict):
            raise AlmostLinearError(f"{path} is not a JSON object")
        return config

    def keys(self) -> list[str]:
        return list(self.infos)

    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def info(self, name: str) -> TensorInfo:
        if name not in self.infos:
            raise AlmostLinearError(f"{self.label} has no tensor {name!r}")
        return self.infos[name]

    def read(self, name: str, *, buffer: torch.Tensor | None = None) -> torch.Tensor:
        """Read one tensor from disk into a new CPU tensor, or into the front of ``buffer`` (a 1-D
        uint8 tensor, reused across tensors so that the pages are not faulted in and zeroed again
        for every tensor). With a buffer the result is a view of it, valid until the next read."""
        info = self.info(name)
        return self.read_part(name, 0, info.numel, buffer=buffer).view(info.shape)

    def read_part(self, name: str, start: int, count: int, *, buffer: torch.Tensor | None = None) -> torch.Tensor:
        """Entries ``[start, start + count)`` of the flattened tensor, as a 1-D tensor (in ``buffer``
        as :meth:`read` does): merges that work entry by entry stream a tensor in such slices."""
        info = self.info(name)
        if start < 0 or count < 0 or start + count > info.numel:
            raise AlmostLinearError(f"{self.label}: entries [{start}, {start + count}) are outside tensor {name!r} "
                                    f"of {info.numel}")
        size = info.dtype.itemsize
        nbytes = count * size
        if buffer is None:
            out = torch.empty(count, dtype=info.dtype)
        else:
            if buffer.dtype != torch.uint8 or buffer.dim() != 1 or buffer.numel() < nbytes:
                raise AlmostLinearError(f"read buffer must be a 1-D uint8 tensor of at least {nbytes} bytes")
            out = buffer[:nbytes].view(info.dtype)
        if nbytes == 0:
            return out
        view = memoryview(out.view(torch.uint8).numpy())
        with open(info.file, "rb", buffering=0) as f:
            f.seek(info.start + start * size)
            done = 0
            while done < nbytes:
                got = f.readinto(view[done:])
                if not got:
                    raise AlmostLinearError(f"{self.label}: file ended inside tensor {name!r}")
                done += got
        return out
