"""Atomic, sharded safetensors output written one tensor at a time.

The plan knows every output tensor's name, shape and dtype before any arithmetic, so each shard's
safetensors header (with all byte offsets) is written first and tensors are appended as they are
computed, whole or slice by slice: memory holds one output tensor (or a few slices), never a whole
shard. Everything goes into a hidden
temporary folder beside the target; files are fsynced, the index (with a SHA-256 per shard) is
written last, and only then is the folder renamed to its final name. An interrupted merge leaves
at most a ``.NAME.partial-*`` folder, never a folder that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.errors import AlmostLinearError
from ..core.paths import follow_umask
from .stream import INDEX_NAME, dtype_name

DEFAULT_SHARD_BYTES = 2 * 1024**3
HASH_IN_THREAD_BYTES = 1 << 20
PIPELINE_SLOTS = 3  # slices of a streamed tensor in flight to the background writer


def _write_and_hash(handle, digest, data) -> None:
    handle.write(data)  # both release the GIL on large buffers
    digest.update(data)


@dataclass(frozen=True)
class OutputTensor:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = torch.empty((), dtype=self.dtype).element_size()
        for s in self.shape:
            n *= s
        return n


def _shards(layout: Sequence[OutputTensor], shard_bytes: int) -> list[list[OutputTensor]]:
    shards: list[list[OutputTensor]] = [[]]
    size = 0
    for t in layout:
        if shards[-1] and size + t.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicShardedWriter:
    """Write ``layout``'s tensors, in order, into ``out`` (a folder) atomically.

    Use as a context manager: leaving the block normally commits; leaving it with an exception
    (Ctrl-C included) deletes the temporary folder.
    """

    def __init__(self, out: str | os.PathLike, layout: Sequence[OutputTensor], *,
                 shard_bytes: int = DEFAULT_SHARD_BYTES, overwrite: bool = False,
                 metadata: Mapping[str, str] | None = None, extra_files: Mapping[str, bytes] | None = None) -> None:
        self.out = Path(out)
        if self.out.parent.is_dir():
            recover_stale(self.out)  # first: an interrupted overwrite puts the previous output back
        if self.out.exists() and not overwrite:
            raise AlmostLinearError(f"{self.out} already exists; choose another folder or pass overwrite")
        if not layout:
            raise AlmostLinearError("nothing to write: the merge has no tensors")
        names = [t.name for t in layout]
        if len(set(names)) != len(names):
            raise AlmostLinearError("the output layout names a tensor twice")
        self.overwrite = overwrite
        self.metadata = {"format": "pt", **(metadata or {})}
        self.extra_files = dict(extra_files or {})
        self.shards = _shards(layout, max(1, int(shard_bytes)))
        n = len(self.shards)
        self.file_names = (["model.safetensors"] if n == 1 else
                           [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
        self.order = [t for shard in self.shards for t in shard]
        self._shard_of = [i for i, shard in enumerate(self.shards) for _ in shard]
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))
        _claim(self.tmp)
        self._position = 0
        self._shard = -1
        self._handle = None
        self._hash = None
        self._hasher: ThreadPoolExecutor | None = None
        self._slots: list[np.ndarray | None] = [None] * PIPELINE_SLOTS
        self._pending: list = [None] * PIPELINE_SLOTS
        self._next_slot = 0
        self.checksums: dict[str, str] = {}
        self.total_size = sum(t.nbytes for t in self.order)

    # -- writing -------------------------------------------------------------------------
    def _open_shard(self, i: int) -> None:
        self._close_shard()
        header: dict = {"__metadata__": dict(self.metadata)}
        offset = 0
        for t in self.shards[i]:
            header[t.name] = {"dtype": dtype_name(t.dtype), "shape": list(t.shape),
                              "data_offsets": [offset, offset + t.nbytes]}
            offset += t.nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        self._handle = open(self.tmp / self.file_names[i], "wb")
        self._hash = hashlib.sha256()
        self._emit(struct.pack("<Q", len(encoded)) + encoded)
        self._shard = i

    def _emit(self, data) -> None:
        self._drain()  # background writes of earlier slices go first: the file is written in order
        if len(data) < HASH_IN_THREAD_BYTES:
            self._handle.write(data)
            self._hash.update(data)
            return
        # hashlib and file writes both release the GIL on large buffers: hash the bytes in a second
        # thread while they are written, instead of reading them back after the shard is closed
        if self._hasher is None:
            self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-sha256")
        hashed = self._hasher.submit(self._hash.update, data)
        try:
            self._handle.write(data)
        finally:
            hashed.result()

    def _emit_behind(self, data) -> None:
        """Copy ``data`` into a free slot and leave writing and hashing it to the background thread,
        so the caller computes the next slice meanwhile; at most ``PIPELINE_SLOTS`` are in flight."""
        if self._hasher is None:
            self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-sha256")
        slot = self._next_slot
        self._next_slot = (slot + 1) % PIPELINE_SLOTS
        if self._pending[slot] is not None:
            self._pending[slot].result()
            self._pending[slot] = None
        buffer = self._slots[slot]
        if buffer is None or len(buffer) < len(data):
            buffer = self._slots[slot] = np.empty(len(data), dtype=np.uint8)
        buffer[:len(data)] = data
        view = memoryview(buffer)[:len(data)]
        handle, digest = self._handle, self._hash
        self._pending[slot] = self._hasher.submit(_write_and_hash, handle, digest, view)

    def _drain(self) -> None:
        """Wait for every background write; the first failure (a full disk) is raised here."""
        for slot, future in enumerate(self._pending):
            if future is not None:
                self._pending[slot] = None
                future.result()

    def _close_shard(self) -> None:
        if self._handle is None:
            return
        self._drain()
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        self.checksums[self.file_names[self._shard]] = self._hash.hexdigest()
        self._handle = None

    def _stop_hasher(self) -> None:
        for slot, future in enumerate(self._pending):  # on abort: let writes finish, errors no longer matter
            if future is not None:
                self._pending[slot] = None
                future.exception()
        if self._hasher is not None:
            self._hasher.shutdown(wait=True)
            self._hasher = None

    def expected(self) -> OutputTensor | None:
        return self.order[self._position] if self._position < len(self.order) else None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next tensor; it must be the one the layout expects, with its shape and dtype."""
        want = self.expected()
        if want is None:
            raise AlmostLinearError(f"tensor {name!r} is beyond the planned output")
        if name != want.name:
            raise AlmostLinearError(f"expected tensor {want.name!r} next, got {name!r}")
        if tuple(tensor.shape) != want.shape or tensor.dtype != want.dtype:
            raise AlmostLinearError(f"tensor {name!r} is {tuple(tensor.shape)} {tensor.dtype}, planned "
                                    f"{want.shape} {want.dtype}")
        shard = self._shard_of[self._position]
        if shard != self._shard:
            self._open_shard(shard)
        data = tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
        self._emit(memoryview(data))
        self._position += 1

    def write_parts(self, name: str, parts) -> None:
        """Append the next tensor from ``parts``, 1-D slices of its flattened entries in order (each
        may be a reused buffer: it is written before the next is asked for); their sizes must add up."""
        want = self.expected()
        if want is None or name != want.name:
            raise AlmostLinearError(f"expected tensor {want.name if want else None!r} next, got {name!r}")
        shard = self._shard_of[self._position]
        if shard != self._shard:
            self._open_shard(shard)
        written = 0
        for part in parts:
            if part.dtype != want.dtype:
                raise AlmostLinearError(f"a slice of tensor {name!r} is {part.dtype}, planned {want.dtype}")
            data = part.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
            if written + len(data) > want.nbytes:
                raise AlmostLinearError(f"the slices of tensor {name!r} exceed its planned {want.nbytes} bytes")
            self._emit_behind(data)
            written += len(data)
        if written != want.nbytes:
            raise AlmostLinearError(f"the slices of tensor {name!r} hold {written} bytes, planned {want.nbytes}")
        self._position += 1

    # -- finishing -----------------------------------------------------------------------
    def commit(self) -> Path:
        if self._position != len(self.order):
            raise AlmostLinearError(f"only {self._position} of {len(self.order)} planned tensors were written")
        self._close_shard()
        self._stop_hasher()
        weight_map = {t.name: self.file_names[i] for i, s in enumerate(self.shards) for t in s}
        index = {"metadata": {"total_size": self.total_size, "sha256": self.checksums},
                 "weight_map": weight_map}
        files = {INDEX_NAME: json.dumps(index, indent=2).encode(), **self.extra_files}
        for name, data in files.items():
            with open(self.tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        follow_umask(self.tmp)  # mkdtemp made it private
        _fsync_dir(self.tmp)
        old = None
        if self.out.exists():
            if not self.overwrite:
                raise AlmostLinearError(f"{self.out} appeared while merging; the result is left in {self.tmp}")
            old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old-", dir=self.out.parent))
            _claim(old)
            os.rename(self.out, old / "previous")
        (self.tmp / OWNER_FILE).unlink()
        os.rename(self.tmp, self.out)
        _fsync_dir(self.out.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out

    def abort(self) -> None:
        self._stop_hasher()
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> AtomicShardedWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.commit()
        except BaseException:
            self.abort()
            raise


OWNER_FILE = ".writer-pid"  # in a temporary folder while its merge runs: which process owns it


def _claim(folder: Path) -> None:
    (folder / OWNER_FILE).write_text(str(os.getpid()))


def _owner_alive(folder: Path) -> bool:
    try:
        pid = int((folder / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_stale(out: str | os.PathLike) -> list[Path]:
    """Clean what killed merges into ``out`` left beside it; returns what was removed or put back.

    A ``.partial-`` folder whose process is gone is deleted. An ``.old-`` folder holds the previous
    output of an ``--overwrite`` that was killed between its two renames: when ``out`` is missing it
    is put back, so an interrupted overwrite never loses both versions. Folders of running merges
    are left alone.
    """
    out = Path(out)
    touched = []
    for folder in sorted(out.parent.glob(f".{out.name}.partial-*")) + sorted(out.parent.glob(f".{out.name}.old-*")):
        if not folder.is_dir() or _owner_alive(folder):
            continue
        previous = folder / "previous"
        if previous.is_dir() and not out.exists():
            os.rename(previous, out)
        shutil.rmtree(folder, ignore_errors=True)
        touched.append(folder)
    return touched


def verify(folder: str | os.PathLike) -> dict[str, bool]:
    """Recompute each shard's SHA-256 and compare with the index; {file: matches}.

    Every shard the weight map names must have a checksum (a removed entry counts as a mismatch),
    and only files inside ``folder`` are read.
    """
    folder = Path(folder)
    index_path = folder / INDEX_NAME
    if not index_path.is_file():
        raise AlmostLinearError(f"{folder} has no {INDEX_NAME}; it is not a finished merge")
    try:
        index = json.loads(index_path.read_text())
        sums = index.get("metadata", {}).get("sha256", {})
        shards = set(index.get("weight_map", {}).values())
    except (ValueError, RecursionError, AttributeError) as error:
        raise AlmostLinearError(f"{index_path} is not a valid index: {error}") from error
    if not sums:
        raise AlmostLinearError(f"{index_path} records no checksums")
    root = folder.resolve()
    result = {name: False for name in shards if name not in sums}  # a shard whose checksum was removed
    for name, expected in sums.items():
        path = folder / str(name)
        if path.resolve().parent != root or not path.is_file():
            result[name] = False  # outside the folder (never read) or missing
            continue
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        result[name] = h.hexdigest() == expected
    return result
