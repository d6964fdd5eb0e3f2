"""Steering vectors as llama.cpp control vectors: the file layout llama.cpp reads, and reading files back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from export_helpers import gen, steering_vector
from tiny_models import build_model

from almostlinear.core.errors import ArtifactError, LayerError, LeverError
from almostlinear.export import export_gguf, import_gguf, llama_cpp_layer, read_control_vector

gguf = pytest.importorskip("gguf")


def _write_file(path, tensors: dict[str, np.ndarray], architecture: str = "controlvector", hint: str = "llama"):
    """A control-vector file as repeng and llama.cpp's cvector-generator write it."""
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_string("controlvector.model_hint", hint)
    writer.add_uint32("controlvector.layer_count", len(tensors))
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_layer_convention():
    # direction.<il> is added to block il's output: resid_post.il, resid_pre.(il + 1); no layer 0
    assert llama_cpp_layer("resid_post", 9) == 9
    assert llama_cpp_layer("resid_pre", 10) == 9
    for site, layer in (("resid_post", 0), ("resid_pre", 1)):
        with pytest.raises(LeverError, match="layer 0"):
            llama_cpp_layer(site, layer)
    with pytest.raises(LeverError, match="resid_post"):
        llama_cpp_layer("attn_out", 3)


def test_written_file_holds_what_llama_cpp_reads(tmp_path):
    vectors = [steering_vector(None, layer=2, width=16, seed=1), steering_vector(None, layer=5, width=16, seed=2)]
    path = export_gguf(vectors, tmp_path / "v.gguf", strengths=[0.5, -1.0])
    reader = gguf.GGUFReader(str(path))
    field = reader.fields["general.architecture"]
    assert bytes(field.parts[field.data[0]]).decode() == "controlvector"
    assert int(reader.fields["controlvector.layer_count"].parts[-1][0]) == 2
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == {"direction.2", "direction.5"}
    for name, vector, strength in (("direction.2", vectors[0], 0.5), ("direction.5", vectors[1], -1.0)):
        assert tensors[name].tensor_type == gguf.GGMLQuantizationType.F32 and list(tensors[name].shape) == [16]
        # stored = strength × median residual norm × unit direction: what llama.cpp adds at scale 1
        expected = (strength * 3.0 * vector.direction).numpy()
        np.testing.assert_allclose(np.asarray(tensors[name].data), expected, rtol=1e-6, atol=1e-7)
    card = (tmp_path / "v.README.md").read_text()
    assert "strength 0.5 × 3" in card and "--control-vector-layer-range 2 5" in card


def test_round_trip_equals_original_per_layer(tmp_path):
    vectors = [steering_vector(None, layer=1, width=16, seed=3), steering_vector(None, layer=3, width=16, seed=4)]
    path = export_gguf(vectors, tmp_path, strengths=[0.25, 2.0])  # a folder: control_vector.gguf + README.md
    assert path.name == "control_vector.gguf" and (tmp_path / "README.md").is_file()
    back = import_gguf(path)
    assert [v.layer for v in back] == [1, 3] and all(v.site == "resid_post" for v in back)
    for original, strength, read in zip(vectors, (0.25, 2.0), back):
        assert torch.allclose(read.added(1.0), original.added(strength), rtol=1e-6, atol=1e-7)
        assert torch.allclose(read.direction, original.direction, atol=1e-6)
        assert read.norms["residual_median"] == 3.0  # recorded norms come back
        assert read.provenance.method == "mean_diff" and read.provenance.data_hash == original.provenance.data_hash
        assert read.provenance.units == "diff"
        # the residual unit still means the same: strength 1 adds the median residual norm
        assert float(read.added(1.0, units="residual").norm()) == pytest.approx(3.0, rel=1e-6)


def test_vectors_on_one_layer_are_summed_as_llama_cpp_does(tmp_path):
    a, b = steering_vector(None, layer=2, width=8, seed=5), steering_vector(None, layer=2, width=8, seed=6)
    cvec = read_control_vector(export_gguf([a, b], tmp_path / "sum.gguf", strengths=[1.0, 0.5]))
    assert list(cvec.layers) == [2]
    assert torch.allclose(cvec.layers[2], a.added(1.0) + b.added(0.5), atol=1e-6)


def test_buffer_layout_matches_llama_cpp_offsets(tmp_path):
    vectors = [steering_vector(None, layer=1, width=4, seed=7), steering_vector(None, layer=3, width=4, seed=8)]
    cvec = read_control_vector(export_gguf(vectors, tmp_path / "b.gguf"))
    data = cvec.buffer(n_layers=5, scale=2.0)
    assert data.shape == (4 * 4,)  # n_embd · (n_layers − 1): layer 0 has no slot
    np.testing.assert_allclose(data[0:4], 2 * vectors[0].added(1.0).numpy(), rtol=1e-6)  # il 1 at offset 0
    np.testing.assert_allclose(data[8:12], 2 * vectors[1].added(1.0).numpy(), rtol=1e-6)  # il 3 at 2·n_embd
    assert not data[4:8].any() and not data[12:].any()
    with pytest.raises(LayerError):
        cvec.buffer(n_layers=3)


def test_repeng_style_file_imports(tmp_path):
    width = 12
    rows = {f"direction.{il}": torch.randn(width, generator=gen(il)).numpy() for il in range(1, 5)}
    rows["direction.3"] = np.zeros(width, dtype=np.float32)  # writers fill every layer; a zero one steers nothing
    _write_file(tmp_path / "repeng.gguf", rows, hint="mistral")
    vectors = import_gguf(tmp_path / "repeng.gguf")
    assert [v.layer for v in vectors] == [1, 2, 4]
    for v in vectors:
        np.testing.assert_allclose(v.added(1.0).numpy(), rows[f"direction.{v.layer}"], rtol=1e-6, atol=1e-7)
        assert v.provenance.extra["model_hint"] == "mistral" and v.provenance.method == "llama.cpp control vector"


def test_imported_vector_steers_the_tiny_model_like_the_original(tmp_path):
    model = build_model("llama").eval()
    original = steering_vector(model, layer=1)
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad(), original.apply(model, strength=0.4):
        expected = model(ids).logits
    (read,) = import_gguf(export_gguf(original, tmp_path / "t.gguf", model=model, strengths=[0.4]))
    with torch.no_grad(), read.apply(model):
        got = model(ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert read.provenance.model_fingerprint == original.provenance.model_fingerprint


def test_refusals(tmp_path):
    model = build_model("llama")  # two blocks: llama.cpp layers 0 and 1
    with pytest.raises(LeverError, match="layer 0"):
        export_gguf(steering_vector(model, layer=0), tmp_path / "a.gguf", model=model)
    with pytest.raises(LayerError, match="last block"):
        export_gguf(steering_vector(None, layer=2, width=32), tmp_path / "b.gguf", model=model)
    with pytest.raises(LeverError, match="every position"):
        export_gguf(steering_vector(model, layer=1, positions="prompt"), tmp_path / "c.gguf")
    from almostlinear.steering import DirectionalAblation

    with pytest.raises(LeverError, match="only add a vector"):
        export_gguf(DirectionalAblation.from_direction(torch.randn(32)), tmp_path / "d.gguf")
    assert not any(tmp_path.iterdir())


def test_bad_files_are_artifact_errors(tmp_path):
    _write_file(tmp_path / "zero.gguf", {"direction.0": np.ones(4, dtype=np.float32)})
    with pytest.raises(ArtifactError, match="direction.0"):
        import_gguf(tmp_path / "zero.gguf")
    _write_file(tmp_path / "model.gguf", {"token_embd.weight": np.ones(4, dtype=np.float32)}, architecture="llama")
    with pytest.raises(ArtifactError, match="not a control vector"):
        import_gguf(tmp_path / "model.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(ArtifactError):
        import_gguf(tmp_path / "junk.gguf")
