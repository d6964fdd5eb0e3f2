"""The frozen, serialisable base of every fitted lever.

An artifact is a frozen dataclass. Its tensor fields are stored in one ``.safetensors`` file; every
other field, and a :class:`Provenance` record, go into the file's JSON header under the key
``almostlinear``. Loading reads tensors and JSON only, so it never unpickles anything.

Subclasses register themselves by ``kind`` (one registry, filled by class definition), so
:func:`load` can rebuild any artifact from its file alone.

Naming rule: a kind is ``<family>.<name>`` in lower case with underscores (``steering.vector``,
``editing.rank_one``), and its class lives in ``almostlinear/<family>/artifact.py``. Where an
artifact acts is one :class:`Where` record in its provenance, stored once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import ArtifactError
from .paths import follow_umask
from .units import UNITS

# Version 2: kinds named ``family.name``; provenance holds one ``where`` record instead of
# ``site``/``layer``. Version 1 files are upgraded on load (:func:`_upgrade_v1`).
FORMAT_VERSION = 2
HEADER_KEY = "almostlinear"
_REGISTRY: dict[str, type[Artifact]] = {}


class FingerprintWarning(UserWarning):
    """An artifact is used on a model other than the one it was fitted on."""


@dataclass(frozen=True)
class Where:
    """Where a lever acts: a site (a name of :mod:`.sites`, or a weight role such as
    ``"mlp_down_proj"``), the layers (empty: the whole model or every layer) and the positions."""

    site: str | None = None
    layers: tuple[int, ...] = ()
    positions: str = "all"

    def __post_init__(self) -> None:
        layers = (self.layers,) if isinstance(self.layers, int) else self.layers
        object.__setattr__(self, "layers", tuple(int(layer) for layer in layers))

    @property
    def layer(self) -> int | None:
        """The layer when there is exactly one, else ``None``."""
        return self.layers[0] if len(self.layers) == 1 else None

    @classmethod
    def at(cls, site: str | None, layer: int | None = None, positions: str = "all") -> Where:
        """From a site name and a layer, or from one ``"name.layer"`` string."""
        name, _, suffix = (site or "").partition(".")
        if layer is None and suffix.lstrip("-").isdigit():
            layer = int(suffix)
        return cls(name or None, () if layer is None else (int(layer),), positions)

    def __str__(self) -> str:
        layers = ",".join(map(str, self.layers)) if self.layers else "*"
        text = f"{self.site or 'model'}.{layers}"
        return text if self.positions == "all" else f"{text}@{self.positions}"

    @classmethod
    def from_json(cls, value: dict | None) -> Where | None:
        return None if value is None else cls(**value)


@dataclass(frozen=True)
class Provenance:
    """What is needed to use an artifact correctly elsewhere.

    ``units`` names the unit of the artifact's ``strength`` (one of :data:`core.lever.UNITS`) for
    levers, and is ``None`` for artifacts that have no strength.
    """

    model_fingerprint: str | None = None
    where: Where | None = None
    method: str | None = None
    data_hash: str | None = None
    units: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    library_version: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.where, dict):
            object.__setattr__(self, "where", Where(**self.where))
        if self.where is not None and not isinstance(self.where, Where):
            raise ArtifactError(f"provenance.where must be a Where, got {self.where!r}")
        if not self.library_version:
            from .. import __version__

            object.__setattr__(self, "library_version", __version__)

    @property
    def site(self) -> str | None:
        return self.where.site if self.where is not None else None

    @property
    def layer(self) -> int | None:
        return self.where.layer if self.where is not None else None


@dataclass(frozen=True)
class Artifact:
    """Base class. Subclasses are ``@dataclass(frozen=True)`` and set ``kind``."""

    kind: ClassVar[str] = ""
    provenance: Provenance = field(default_factory=Provenance, kw_only=True)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind:
            if kind in _REGISTRY and _REGISTRY[kind].__qualname__ != cls.__qualname__:
                raise ArtifactError(f"artifact kind {kind!r} is registered twice")
            _REGISTRY[kind] = cls

    def _split(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The tensors to store and the JSON fields; :meth:`_join` is the inverse. A class whose
        tensors are not its fields (a task vector holds one per parameter) overrides both."""
        tensors, plain = {}, {}
        for f in dataclasses.fields(self):
            if f.name == "provenance":
                continue
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                tensors[f.name] = value
            else:
                plain[f.name] = value
        return tensors, plain

    @classmethod
    def _join(cls, tensors: dict[str, torch.Tensor], fields: dict[str, Any], provenance: Provenance) -> Artifact:
        """Rebuild an artifact from what :meth:`_split` stored."""
        return cls(**tensors, **fields, provenance=provenance)

    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.safetensors`` file atomically (a temporary file, then a rename)."""
        if not self.kind:
            raise ArtifactError(f"{type(self).__name__} has no kind and cannot be saved")
        tensors, plain = self._split()
        header = {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "fields": plain,
            "provenance": dataclasses.asdict(self.provenance),
        }
        return write_file(path, tensors, header, what=type(self).__name__)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Artifact:
        """Read an artifact; called on a subclass, the file must hold that kind."""
        artifact = load(path)
        if cls is not Artifact and not isinstance(artifact, cls):
            raise ArtifactError(f"{path} holds a {artifact.kind!r}, not a {cls.kind!r}")
        return artifact

    def check_model(self, fingerprint: str | None, *, strict: bool = False) -> None:
        """Warn (or raise, when ``strict``) if ``fingerprint`` is not the one this was fitted on."""
        expected = self.provenance.model_fingerprint
        if expected is None or fingerprint is None or expected == fingerprint:
            return
        message = (
            f"this {self.kind} was fitted on model {expected} but is used on {fingerprint}; "
            "results may be meaningless (pass strict=False to allow, or refit on this model)"
        )
        if strict:
            raise ArtifactError(message)
        warnings.warn(message, FingerprintWarning, stacklevel=3)


def write_file(path: str | os.PathLike, tensors: dict[str, torch.Tensor], header: dict[str, Any], *,
               what: str = "artifact") -> Path:
    """Write ``tensors`` and an almostlinear ``header`` to one ``.safetensors`` file, atomically."""
    try:
        encoded = json.dumps(header, sort_keys=True)
    except TypeError as error:
        raise ArtifactError(f"a field of {what} is not JSON-serialisable: {error}") from error
    stored, seen = {}, set()
    for name, value in tensors.items():
        tensor = value.detach().to("cpu").contiguous()
        if tensor.numel() and tensor.data_ptr() in seen:
            tensor = tensor.clone()  # safetensors refuses two names for one memory
        seen.add(tensor.data_ptr())
        stored[name] = tensor
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(stored, tmp, metadata={HEADER_KEY: encoded})
        follow_umask(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of an artifact file, without reading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"no artifact file at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types
        raise ArtifactError(f"{path} is not a readable .safetensors file: {error}") from error
    if HEADER_KEY not in metadata:
        raise ArtifactError(f"{path} is a safetensors file but not an almostlinear artifact")
    try:
        header = json.loads(metadata[HEADER_KEY])
    except (ValueError, RecursionError) as error:
        raise ArtifactError(f"{path} has a corrupt almostlinear header: {error}") from error
    if not isinstance(header, dict):
        raise ArtifactError(f"{path} has a corrupt almostlinear header: expected a JSON object")
    return header


def load(path: str | os.PathLike) -> Artifact:
    """Rebuild whatever artifact ``path`` holds; a malformed header is an :class:`ArtifactError`."""
    header = read_header(path)
    try:
        return _rebuild(path, header)
    except ArtifactError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError) as error:
        # A header written by hand or damaged: fields of the wrong type or shape, nesting too deep.
        raise ArtifactError(f"{path} has a malformed almostlinear header ({type(error).__name__}: {error}); "
                            "it was not written by this library or was damaged") from error


def _rebuild(path, header: dict[str, Any]) -> Artifact:
    version = header.get("format_version", 0)
    if not isinstance(version, int):
        raise ArtifactError(f"{path} has format_version {version!r}, not an integer")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} uses artifact format {version}; this version of almostlinear "
            f"reads up to {FORMAT_VERSION}: upgrade almostlinear"
        )
    if version < 2:
        header = _upgrade_v1(header)
    kind = header.get("kind")
    _import_families()
    if not isinstance(kind, str) or kind not in _REGISTRY:
        raise ArtifactError(f"unknown artifact kind {kind!r} in {path}; known: {sorted(_REGISTRY)}")
    cls = _REGISTRY[kind]
    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    fields, provenance = header.get("fields", {}), header.get("provenance", {})
    if not isinstance(fields, dict) or not isinstance(provenance, dict):
        raise ArtifactError(f"{path}: the header's fields and provenance must be JSON objects")
    names = {f.name for f in dataclasses.fields(cls)}
    # Fields a class has since moved into its provenance (site, layer, positions) are dropped.
    fields = {k: v for k, v in fields.items() if k in names or k not in ("site", "layer", "sites", "positions")}
    try:
        return cls._join(tensors, fields, Provenance(**provenance))
    except TypeError as error:
        raise ArtifactError(f"{path} does not match {cls.__name__}: {error}") from error


def registered_kinds() -> dict[str, Any]:
    """Every artifact kind :func:`load` can rebuild, with its class."""
    _import_families()
    return dict(_REGISTRY)


def _import_families() -> None:
    # Artifact classes register when their module is imported; import every module the family
    # manifest names, so that loading a file works without the caller importing its family first.
    import importlib

    from ..families import artifact_modules

    for name in artifact_modules():
        importlib.import_module(name)


# Kinds as version 1 files spelled them, and the names they have now.
LEGACY_KINDS = {
    "steering-vector": "steering.vector", "directional-ablation": "steering.ablation",
    "leace-eraser": "erasure.leace", "task_vector": "merging.task_vector", "permutation": "connectivity.permutation",
    "latent-direction": "latent.attribute_direction", "linear-map": "translate.linear_map", "sae": "sae.autoencoder",
    "linear-probe": "probes.linear", "truth-direction": "truth.direction", "affine-lens": "lens.affine",
    "tuned-lens": "lens.tuned", "key-statistics": "editing.key_statistics",
}


def _upgrade_v1(header: dict[str, Any]) -> dict[str, Any]:
    """A version 1 header in today's shape: renamed kind, ``site``/``layer`` folded into ``where``."""
    header = dict(header)
    header["kind"] = LEGACY_KINDS.get(header.get("kind"), header.get("kind"))
    provenance = dict(header.get("provenance", {}))
    if provenance.get("units") not in UNITS:
        provenance["units"] = None  # version 1 described units in prose; levers fill in their default
    site, layer = provenance.pop("site", None), provenance.pop("layer", None)
    if site is not None or layer is not None:
        site = (site or "").split(",")[-1]  # lenses wrote "resid_pre.0,resid_post.*": every resid_post
        name, _, suffix = site.partition(".")
        layers = (layer,) if layer is not None else (int(suffix),) if suffix.lstrip("-").isdigit() else ()
        provenance["where"] = {"site": name or None, "layers": list(layers)}
    header["provenance"] = provenance
    return header
