"""Steering vectors as llama.cpp control vectors (GGUF), and such files read back as steering vectors.

The format, as llama.cpp's loader reads it (``common_control_vector_load_one`` in common.cpp):
``general.architecture = "controlvector"``, one F32 1-D tensor ``direction.<il>`` of length
``n_embd`` per layer, ``il ≥ 1``; a file with ``direction.0`` is rejected. Writers (repeng, llama.cpp's
cvector-generator) add ``controlvector.model_hint`` (the architecture) and
``controlvector.layer_count``. Loading multiplies every tensor by the ``--control-vector-scaled``
scale (1 for ``--control-vector``) and sums files; ``llama_adapter_cvec::apply`` copies layer
``il``'s vector from offset ``(il − 1) · n_embd`` of that buffer (there is none for layer 0), and the
graph adds it to the output of block ``il`` (after the MLP's residual add), at every position.

So ``direction.<il>`` is almostlinear's ``resid_post.<il>`` (equivalently ``resid_pre.<il + 1>``), with
the same 0-based block index as Hugging Face's ``model.layers[il]``. A vector at ``resid_post.0``
(or ``resid_pre.1``) has no llama.cpp slot and is refused.

Units: a file stores the vector llama.cpp adds at scale 1. An export at ``strength`` ``s`` in the
vector's units stores ``s · unit_length · direction``, so a llama.cpp scale ``c`` is strength
``c · s`` in those units; the card and the file's ``almostlinear.*`` keys state it. Reading a file
back gives vectors in units ``"diff"`` whose strength 1 adds exactly the stored tensor (and, for files
this library wrote, the original norms and provenance).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import ArtifactError, LayerError, LeverError, MissingDependencyError, ShapeError
from .card import LeverEntry, write_card
from ..core.paths import replace_files

ARCHITECTURE = "controlvector"
HINT_KEY = "controlvector.model_hint"
COUNT_KEY = "controlvector.layer_count"
RECORD_KEY = "almostlinear.record"  # JSON: per layer the vector's provenance, norms, strength and units
TENSOR_PREFIX = "direction."


def _gguf():
    try:
        import gguf
    except ImportError as error:
        raise MissingDependencyError("GGUF control vectors need the 'gguf' package: pip install 'almostlinear[gguf]'"
                                     ) from error
    return gguf


def llama_cpp_layer(site: str, layer: int) -> int:
    """llama.cpp's control-vector layer index for a vector at ``site.layer`` (see the module docstring)."""
    if site == "resid_post":
        il = layer
    elif site == "resid_pre":
        il = layer - 1
    else:
        raise LeverError(f"llama.cpp adds control vectors to a block's output (resid_post); a vector at {site} "
                         "acts elsewhere in the block and has no control-vector form: fit it at resid_post")
    if il < 1:
        raise LeverError(f"a vector at {site}.{layer} is llama.cpp layer {il}, but llama.cpp keeps no control vector "
                         "for layer 0 (its loader rejects direction.0): fit the vector at resid_post of block 1 "
                         "or later")
    return il


@dataclass(frozen=True)
class ControlVector:
    """What a control-vector file holds: the added vector per llama.cpp layer (``[n_embd]`` float32)."""

    layers: dict[int, torch.Tensor]
    model_hint: str | None = None
    record: dict | None = None

    @property
    def n_embd(self) -> int:
        return int(next(iter(self.layers.values())).shape[0])

    def buffer(self, n_layers: int, scale: float = 1.0) -> np.ndarray:
        """The flat float32 buffer llama.cpp's ``llama_apply_adapter_cvec`` takes: ``n_embd · (n_layers − 1)``
        values, layer ``il`` at offset ``(il − 1) · n_embd`` (layer 0 has none)."""
        top = max(self.layers)
        if top >= n_layers:
            raise LayerError(f"the control vector has layer {top} but the model has {n_layers} blocks "
                             f"(0..{n_layers - 1})")
        data = np.zeros(self.n_embd * (n_layers - 1), dtype=np.float32)
        for il, vector in self.layers.items():
            data[(il - 1) * self.n_embd: il * self.n_embd] += scale * vector.numpy().astype(np.float32)
        return data


def control_vector(vectors: Any | Sequence[Any], *, strengths: Sequence[float] | None = None,
                   units: str | None = None, n_layers: int | None = None) -> tuple[ControlVector, list[dict]]:
    """The per-layer vectors llama.cpp should add, and a record of each steering vector that went in.

    Vectors at the same llama.cpp layer are summed (as llama.cpp sums several files). Everything is
    checked before anything is returned.
    """
    from ..steering.artifact import SteeringVector

    vectors = list(vectors) if isinstance(vectors, (list, tuple)) else [vectors]
    if not vectors:
        raise LeverError("no steering vectors to export")
    strengths = [1.0] * len(vectors) if strengths is None else list(strengths)
    if len(strengths) != len(vectors):
        raise ShapeError(f"{len(strengths)} strengths for {len(vectors)} vectors")
    layers: dict[int, torch.Tensor] = {}
    records = []
    for vector, strength in zip(vectors, strengths):
        if not isinstance(vector, SteeringVector):
            kind = getattr(vector, "kind", type(vector).__name__)
            raise LeverError(f"{kind} cannot be a llama.cpp control vector: control vectors only add a vector to a "
                             "block's output; export weight levers with --to peft or --to hf")
        if vector.positions != "all":
            raise LeverError(f"llama.cpp adds a control vector at every position; this vector's policy is "
                             f"{vector.provenance.where.positions!r}: refit or export one with positions 'all'")
        il = llama_cpp_layer(vector.site, vector.layer)
        if n_layers is not None and il >= n_layers:
            raise LayerError(f"{vector.site}.{vector.layer} is llama.cpp layer {il}, past the model's last block "
                             f"({n_layers - 1})")
        vector_units = vector._units(units)
        added = vector.added(strength, vector_units).detach().float().cpu()
        if layers and added.shape[0] != next(iter(layers.values())).shape[0]:
            raise ShapeError("the vectors have different widths; one control vector serves one model")
        layers[il] = layers[il] + added if il in layers else added
        records.append({"layer": il, "strength": float(strength), "units": vector_units,
                        "unit_length": vector.unit_length(vector_units), "norm": float(added.norm()),
                        "norms": dict(vector.norms),
                        "provenance": dataclasses.asdict(vector.provenance)})
    return ControlVector(dict(sorted(layers.items()))), records


def export_gguf(vectors: Any | Sequence[Any], out: str | os.PathLike, *, model: Any = None,
                strengths: Sequence[float] | None = None, units: str | None = None, model_hint: str | None = None,
                side_effects: dict | None = None) -> Path:
    """Write steering vectors as one llama.cpp control-vector file, with a card beside it.

    ``out`` ending in ``.gguf`` is the file (card: ``<stem>.README.md`` beside it); otherwise ``out``
    is a folder receiving ``control_vector.gguf`` and ``README.md``. ``model`` (optional) checks the
    layers against its depth and gives the architecture hint. Returns the GGUF path.
    """
    gguf = _gguf()
    view = None
    if model is not None:
        from ..core.lever import as_model

        view = as_model(model)
    n_layers = view.structure.n_layers if view is not None else None
    cvec, records = control_vector(vectors, strengths=strengths, units=units, n_layers=n_layers)
    if view is not None:
        if cvec.n_embd != view.structure.d_model:
            raise ShapeError(f"the vectors have {cvec.n_embd} features but the model's residual stream has "
                             f"{view.structure.d_model}")
        model_hint = model_hint or getattr(getattr(view.module, "config", None), "model_type", None)
    hint = model_hint or "llama"
    out = Path(out)
    if out.suffix == ".gguf":
        path, card = out, out.with_name(out.stem + ".README.md")
    else:
        path, card = out / "control_vector.gguf", out / "README.md"

    def write(tmp: str) -> None:
        writer = gguf.GGUFWriter(tmp, ARCHITECTURE)
        writer.add_string(HINT_KEY, hint)
        writer.add_uint32(COUNT_KEY, len(cvec.layers))
        writer.add_string(RECORD_KEY, json.dumps({"vectors": records}, sort_keys=True))
        for il, vector in cvec.layers.items():
            writer.add_tensor(f"{TENSOR_PREFIX}{il}", vector.numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    replace_files(path.parent, {path.name: write})
    from ..steering.artifact import SteeringVector

    vectors = list(vectors) if isinstance(vectors, (list, tuple)) else [vectors]
    entries = [LeverEntry.of(v, r["strength"], units=r["units"]) for v, r in zip(vectors, records)
               if isinstance(v, SteeringVector)]
    details = [f"file: `{path.name}`; llama.cpp layers {', '.join(map(str, cvec.layers))} (direction.<il> is added to "
               "the output of block il, i.e. almostlinear's resid_post.il; llama.cpp has no slot for layer 0)",
               f"architecture hint: {hint}; width {cvec.n_embd}"]
    for r in records:
        details.append(f"layer {r['layer']}: stored norm {r['norm']:.4g} = strength {r['strength']:g} × "
                       f"{r['unit_length']:.4g} ({r['units']} units); llama.cpp scale c means strength "
                       f"{r['strength']:g}·c in {r['units']} units")
    ranged = f"{min(cvec.layers)} {max(cvec.layers)}"
    usage = (f"```sh\nllama-cli -m MODEL.gguf --control-vector {path.name}\n"
             f"llama-cli -m MODEL.gguf --control-vector-scaled {path.name} 0.5 --control-vector-layer-range {ranged}\n"
             "```")
    write_card(card, target="llama.cpp control vector", entries=entries,
               base_fingerprint=view.fingerprint if view is not None else
               (entries[0].fingerprint if entries else None), details=details, usage=usage,
               side_effects=side_effects, library_name="gguf")
    return path


def read_control_vector(path: str | os.PathLike) -> ControlVector:
    """The layers of a control-vector file (this library's, repeng's or llama.cpp's cvector-generator's)."""
    gguf = _gguf()
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"no control-vector file at {path}")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as error:  # the reader raises plain ValueErrors and struct errors on bad files
        raise ArtifactError(f"{path} is not a readable GGUF file: {error}") from error

    def text(key: str) -> str | None:
        field = reader.fields.get(key)
        return None if field is None else str(bytes(field.parts[field.data[0]]), encoding="utf-8")

    architecture = text("general.architecture")
    if architecture != ARCHITECTURE:
        raise ArtifactError(f"{path} is a GGUF file of architecture {architecture!r}, not a control vector")
    layers: dict[int, torch.Tensor] = {}
    for tensor in reader.tensors:
        prefix, _, index = tensor.name.partition(".")
        if prefix != "direction" or not index.isdigit():
            raise ArtifactError(f"{path}: tensor {tensor.name!r} is not named direction.<layer>")
        il = int(index)
        if il == 0:
            raise ArtifactError(f"{path}: direction.0 is invalid (llama.cpp keeps no control vector for layer 0)")
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32 or len(tensor.shape) != 1:
            raise ArtifactError(f"{path}: {tensor.name} must be a 1-D F32 tensor, as llama.cpp requires")
        layers[il] = torch.from_numpy(np.array(tensor.data, dtype=np.float32, copy=True)).reshape(-1)
    if not layers:
        raise ArtifactError(f"{path} holds no direction tensors")
    if len({v.shape[0] for v in layers.values()}) > 1:
        raise ArtifactError(f"{path}: direction tensors of different widths")
    record = text(RECORD_KEY)
    try:
        parsed = json.loads(record) if record else None
    except ValueError:
        parsed = None
    return ControlVector(dict(sorted(layers.items())), model_hint=text(HINT_KEY), record=parsed)


def import_gguf(path: str | os.PathLike, *, model_fingerprint: str | None = None) -> list:
    """One :class:`~almostlinear.steering.SteeringVector` per layer of a control-vector file.

    Each acts at ``resid_post.<il>`` in units ``"diff"``: strength 1 adds exactly the stored vector
    (what llama.cpp adds at scale 1). A file written by this library whose single vector per layer
    is recorded also gets back its direction's norms, method, data hash and fingerprint.
    """
    from ..core.artifact import Provenance
    from ..steering.artifact import SteeringVector

    cvec = read_control_vector(path)
    recorded = {}
    for item in (cvec.record or {}).get("vectors", []) if isinstance(cvec.record, dict) else []:
        if isinstance(item, dict) and isinstance(item.get("layer"), int):
            recorded.setdefault(item["layer"], []).append(item)
    out = []
    for il, vector in cvec.layers.items():
        norm = float(vector.double().norm())
        if norm == 0.0:
            continue  # a zero slot (repeng and cvector-generator write every layer) steers nothing
        items = recorded.get(il, [])
        source = items[0] if len(items) == 1 else None
        extra = {"llama_cpp_layer": il, "source_file": Path(path).name}
        if cvec.model_hint:
            extra["model_hint"] = cvec.model_hint
        norms = {"diff_norm": norm}
        method, data_hash, fingerprint = "llama.cpp control vector", None, model_fingerprint
        if source is not None:
            try:
                stored = Provenance(**source["provenance"])
            except (TypeError, KeyError):
                stored = None
            if stored is not None:
                method, data_hash = stored.method, stored.data_hash
                fingerprint = fingerprint or stored.model_fingerprint
                extra.update({"exported_strength": source.get("strength"), "exported_units": source.get("units")})
            if isinstance(source.get("norms"), dict):
                norms = {**{k: float(v) for k, v in source["norms"].items() if isinstance(v, (int, float))},
                         "diff_norm": norm}
        steering = SteeringVector.from_direction(vector, site="resid_post", layer=il, method=method, norms=norms,
                                                 model_fingerprint=fingerprint, data_hash=data_hash, extra=extra)
        # strength 1 in "diff" units is the stored vector itself: what llama.cpp adds at scale 1
        out.append(dataclasses.replace(steering, provenance=dataclasses.replace(steering.provenance, units="diff")))
    if not out:
        raise ArtifactError(f"{path}: every direction tensor is zero")
    return out
