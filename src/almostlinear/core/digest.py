"""One way to name content by hash: ``sha256:`` and the first 16 hex digits of a SHA-256.

Provenance records (data hashes, weight hashes, statistics hashes) and cache keys all use these
helpers, so any two of them can be compared. Cache file names use :func:`file_key` (the same
digits without the prefix).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a tensor is hashed, so the command line's parser stays light
    import torch

PREFIX = "sha256:"
DIGITS = 16


def digest(*parts: bytes | str) -> str:
    """``sha256:`` + 16 hex digits of the concatenated parts (strings as UTF-8)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8") if isinstance(part, str) else part)
    return PREFIX + h.hexdigest()[:DIGITS]


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's bytes as stored (any dtype, bf16 included), on the CPU."""
    import torch

    data = tensor.detach().to("cpu").contiguous()
    return data.view(torch.uint8).numpy().tobytes() if data.numel() else b""


def tensor_digest(tensor: torch.Tensor) -> str:
    """Digest of a tensor's shape, dtype and exact bytes."""
    return digest(f"{tuple(tensor.shape)}:{tensor.dtype}", tensor_bytes(tensor))


def json_digest(value: Any) -> str:
    """Digest of a JSON-serialisable value, keys sorted."""
    return digest(json.dumps(value, sort_keys=True, default=str))


def texts_digest(texts: Iterable[Any]) -> str:
    """Digest of a sequence of texts (or of objects with a ``text`` attribute), in order."""
    return json_digest([getattr(t, "text", t) if not isinstance(t, str) else t for t in texts])


def file_key(value: str) -> str:
    """The hex digits of a digest of ``value``, for cache file names."""
    return digest(value)[len(PREFIX):]


def _jsonable(obj: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"data_hash cannot encode {type(obj).__name__}; pass dataclasses or JSON values")


def data_hash(items: Iterable[Any]) -> str:
    """Digest of a data set (dataclasses or JSON values) as canonical JSON, for artifact headers."""
    from .errors import ShapeError

    try:
        text = json.dumps(list(items), default=_jsonable, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    except TypeError as error:
        raise ShapeError(str(error)) from error
    return digest(text)
