"""Artifacts: exact save/load round trips, header, atomic writes, fingerprint checks, bad files."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from almostlinear import Artifact, Provenance, load_artifact
from almostlinear.core import artifact as artifact_module
from almostlinear.core.artifact import FingerprintWarning, read_header, registered_kinds, Where
from almostlinear.core.errors import ArtifactError


@dataclass(frozen=True)
class VectorArtifact(Artifact):
    kind = "test-vector"

    vector: torch.Tensor
    label: str
    scale: float = 1.0
    tags: list = field(default_factory=list)


@dataclass(frozen=True)
class OtherArtifact(Artifact):
    kind = "test-other"

    weight: torch.Tensor
    bias: torch.Tensor


@dataclass(frozen=True)
class Unsaveable(Artifact):
    kind = "test-unsaveable"

    vector: torch.Tensor
    thing: object = None


PROVENANCE = Provenance(model_fingerprint="sha256:0123456789abcdef", where=Where.at("resid_post.3", 3),
                        method="mean-difference", data_hash="abc", units="resid-norm",
                        extra={"n": 12, "texts": ["a", "b"]})


def _example(**overrides):
    values = dict(vector=torch.randn(16, dtype=torch.float32), label="honesty", scale=2.5,
                  tags=["x", 1, None], provenance=PROVENANCE)
    values.update(overrides)
    return VectorArtifact(**values)


def _assert_same(a: VectorArtifact, b: VectorArtifact):
    assert type(a) is type(b)
    assert a.vector.dtype == b.vector.dtype and torch.equal(a.vector, b.vector)
    assert (a.label, a.scale, a.tags) == (b.label, b.scale, b.tags)
    assert a.provenance == b.provenance


def test_round_trip(tmp_path):
    art = _example()
    path = art.save(tmp_path / "vec.safetensors")
    assert path == tmp_path / "vec.safetensors"
    for loaded in (load_artifact(path), VectorArtifact.load(path), Artifact.load(str(path))):
        _assert_same(art, loaded)


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(0, 5), min_size=0, max_size=3),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64]),
       label=st.text(max_size=20), scale=st.floats(allow_nan=False, allow_infinity=False))
def test_round_trip_property(tmp_path_factory, shape, dtype, label, scale):
    vector = (torch.randn(shape) * 10).to(dtype)
    art = _example(vector=vector, label=label, scale=scale, provenance=Provenance())
    path = art.save(tmp_path_factory.mktemp("prop") / "a.safetensors")
    _assert_same(art, load_artifact(path))


def test_round_trip_odd_tensors(tmp_path):
    base = torch.randn(4, 6)
    # a non-contiguous view, and two fields holding one tensor
    OtherArtifact(weight=base.T, bias=base[:, 1]).save(tmp_path / "view.safetensors")
    loaded = load_artifact(tmp_path / "view.safetensors")
    assert torch.equal(loaded.weight, base.T) and torch.equal(loaded.bias, base[:, 1])
    OtherArtifact(weight=base, bias=base).save(tmp_path / "shared.safetensors")
    loaded = load_artifact(tmp_path / "shared.safetensors")
    assert torch.equal(loaded.weight, base) and torch.equal(loaded.bias, base)


def test_header(tmp_path):
    art = _example()
    path = art.save(tmp_path / "vec.safetensors")
    header = read_header(path)
    assert header["kind"] == "test-vector"
    assert header["format_version"] == artifact_module.FORMAT_VERSION
    assert header["fields"] == {"label": "honesty", "scale": 2.5, "tags": ["x", 1, None]}
    assert header["provenance"]["model_fingerprint"] == "sha256:0123456789abcdef"
    assert header["provenance"]["where"] == {"site": "resid_post", "layers": [3], "positions": "all"}
    assert header["provenance"]["library_version"]
    assert "vector" not in header["fields"]  # tensors live in the tensor section


def test_registry():
    kinds = registered_kinds()
    assert kinds["test-vector"] is VectorArtifact
    assert kinds["test-other"] is OtherArtifact


def test_wrong_kind_for_subclass(tmp_path):
    path = OtherArtifact(weight=torch.ones(2, 2), bias=torch.zeros(2)).save(tmp_path / "o.safetensors")
    with pytest.raises(ArtifactError, match="test-other"):
        VectorArtifact.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match="no artifact file"):
        load_artifact(tmp_path / "absent.safetensors")
    with pytest.raises(ArtifactError):
        read_header(tmp_path)  # a folder


def test_plain_safetensors_file_is_not_an_artifact(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.ones(3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ArtifactError, match="not an almostlinear artifact"):
        load_artifact(path)
    save_file({"w": torch.ones(3)}, str(path))
    with pytest.raises(ArtifactError):
        load_artifact(path)


def test_garbage_files(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(ArtifactError, match="not a readable"):
        load_artifact(path)
    save_file({"w": torch.ones(3)}, str(path), metadata={"almostlinear": "{not json"})
    with pytest.raises(ArtifactError, match="corrupt"):
        load_artifact(path)


def _write_header(path, header, tensors=None):
    save_file(tensors or {"vector": torch.ones(2)}, str(path), metadata={"almostlinear": json.dumps(header)})


def test_unknown_kind_newer_format_and_mismatched_fields(tmp_path):
    path = tmp_path / "a.safetensors"
    _write_header(path, {"kind": "no-such-kind", "format_version": 1, "fields": {}, "provenance": {}})
    with pytest.raises(ArtifactError, match="unknown artifact kind"):
        load_artifact(path)
    _write_header(path, {"kind": "test-vector", "format_version": 99, "fields": {}, "provenance": {}})
    with pytest.raises(ArtifactError, match="upgrade"):
        load_artifact(path)
    _write_header(path, {"kind": "test-vector", "format_version": 1, "fields": {"colour": "red"},
                         "provenance": {}})
    with pytest.raises(ArtifactError, match="does not match"):
        load_artifact(path)
    _write_header(path, {"kind": "test-vector", "format_version": 1, "fields": {"label": "x"},
                         "provenance": {"from_the_future": 1}})
    with pytest.raises(ArtifactError):
        load_artifact(path)


def test_check_model():
    art = _example()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        art.check_model("sha256:0123456789abcdef")
        art.check_model(None)
        _example(provenance=Provenance()).check_model("sha256:ffff")
        art.check_model("sha256:0123456789abcdef", strict=True)
    with pytest.warns(FingerprintWarning, match="fitted on model sha256:0123456789abcdef"):
        art.check_model("sha256:ffffffffffffffff")
    with pytest.raises(ArtifactError, match="sha256:ffffffffffffffff"):
        art.check_model("sha256:ffffffffffffffff", strict=True)


def test_save_is_atomic(tmp_path):
    path = _example().save(tmp_path / "vec.safetensors")
    assert os.listdir(tmp_path) == ["vec.safetensors"]  # no temporary file left behind
    good = path.read_bytes()
    # a field that JSON cannot hold: the error names the problem and the good file survives
    with pytest.raises(ArtifactError, match="not JSON-serialisable"):
        Unsaveable(vector=torch.ones(3), thing=object()).save(path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["vec.safetensors"]
    assert load_artifact(path).label == "honesty"


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = _example().save(tmp_path / "vec.safetensors")
    good = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(artifact_module, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        _example(label="new").save(path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["vec.safetensors"]


def test_base_class_cannot_be_saved(tmp_path):
    with pytest.raises(ArtifactError, match="no kind"):
        Artifact().save(tmp_path / "x.safetensors")


def test_artifacts_are_frozen():
    art = _example()
    with pytest.raises(AttributeError):
        art.label = "other"
    with pytest.raises(AttributeError):
        art.provenance.method = "other"


def test_provenance_records_library_version():
    from almostlinear import __version__

    assert Provenance().library_version == __version__
    assert Provenance(library_version="0.0.1").library_version == "0.0.1"


def test_load_works_when_a_family_package_is_absent(tmp_path, monkeypatch):
    """Loading imports the lever families so their kinds register; a family not installed is skipped."""
    import sys

    path = _example().save(tmp_path / "vec.safetensors")
    monkeypatch.setitem(sys.modules, "almostlinear.probes", None)  # makes its import fail
    assert load_artifact(path).label == "honesty"
    assert "test-vector" in registered_kinds()


def test_every_family_kind_is_known_to_a_fresh_process():
    import subprocess
    import sys

    code = (
        "from almostlinear.core.artifact import registered_kinds\n"
        "kinds = set(registered_kinds())\n"
        "expected = {'probes.linear', 'truth.direction', 'lens.affine', 'lens.tuned', 'steering.vector',\n"
        "            'steering.ablation', 'erasure.leace', 'editing.key_statistics', 'editing.low_rank',\n"
        "            'editing.rank_one', 'merging.task_vector', 'connectivity.permutation',\n"
        "            'latent.attribute_direction', 'translate.linear_map', 'sae.autoencoder', 'sae.latent_direction'}\n"
        "assert expected <= kinds, sorted(expected - kinds)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_steering_vector_loads_in_a_fresh_process(tmp_path):
    import subprocess
    import sys

    from almostlinear.steering import SteeringVector

    vector = SteeringVector.from_direction(torch.ones(8), site="resid_post", layer=1, method="mean_diff",
                                           norms={"residual_median": 2.0})
    path = vector.save(tmp_path / "v.safetensors")
    code = (f"import almostlinear as al\nv = al.load_artifact({str(path)!r})\n"
            "assert type(v).__name__ == 'SteeringVector', type(v)\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("header", [
    {"kind": "test-vector", "format_version": 2, "fields": [], "provenance": {}},
    {"kind": "test-vector", "format_version": 2, "fields": {"label": "x"}, "provenance": ["site"]},
    {"kind": "test-vector", "format_version": 2, "fields": {"label": "x"}, "provenance": {"where": 5}},
    {"kind": "test-vector", "format_version": "2", "fields": {}, "provenance": {}},
    {"kind": ["test-vector"], "format_version": 2},
    "[" * 100_000 + "]" * 100_000,
])
def test_malformed_headers_are_artifact_errors(tmp_path, header):
    from safetensors.torch import save_file

    path = tmp_path / "bad.safetensors"
    text = header if isinstance(header, str) else json.dumps(header)
    save_file({"vector": torch.zeros(3)}, str(path), metadata={"almostlinear": text})
    with pytest.raises(ArtifactError):
        artifact_module.load(path)


def test_saved_files_follow_the_umask(tmp_path):
    import os
    import stat

    path = _example().save(tmp_path / "a.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
