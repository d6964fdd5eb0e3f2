"""Task vectors: arithmetic, the lever contract on models, measures, files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sklearn.metrics.pairwise import cosine_similarity
from tiny_models import build_model, make_tokenizer

from almostlinear.core.artifact import FORMAT_VERSION, FingerprintWarning, Where, read_header
from almostlinear.core.errors import ArtifactError, LeverError, NonFiniteError, ShapeError
from almostlinear.core.lever import Baked, Lever, base_fingerprint
from almostlinear.core.models import LoadedModel, fingerprint
from almostlinear.merging import TaskVector, analogy, cosine_matrix, merge_state_dicts, sign_conflict_rate


def _variant(model, seed, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    return {k: v + noise * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
            for k, v in model.state_dict().items()}


@pytest.fixture
def setup():
    model = build_model("llama")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    fts = [_variant(model, s) for s in (1, 2, 3)]
    return model, base, fts


def test_arithmetic_and_apply_to(setup):
    _, base, (a, b, c) = setup
    ta, tb = TaskVector.from_state_dicts(base, a), TaskVector.from_state_dicts(base, b)
    k = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close((ta + tb).deltas[k], a[k] - base[k] + b[k] - base[k])
    torch.testing.assert_close((ta - tb).deltas[k], a[k] - b[k])
    torch.testing.assert_close((-ta).deltas[k], base[k] - a[k])
    torch.testing.assert_close((0.5 * ta).deltas[k], (ta * 0.5).deltas[k])
    torch.testing.assert_close(sum([ta, tb]).deltas[k], (ta + tb).deltas[k])
    rebuilt = ta.apply_to(base)
    torch.testing.assert_close(rebuilt[k], a[k])
    # adding task vectors is task arithmetic
    merged = merge_state_dicts("task_arithmetic", [a, b], base=base, lam=0.4)
    torch.testing.assert_close((ta + tb).apply_to(base, strength=0.4)[k], merged[k])
    # negation undoes
    torch.testing.assert_close((-ta).apply_to(rebuilt)[k], base[k])
    tc = TaskVector.from_state_dicts(base, c)
    torch.testing.assert_close(analogy(ta, tb, tc).deltas[k], (tc + tb - ta).deltas[k])


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model, state) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items()) and len(model.state_dict()) == len(state)


def test_apply_gives_the_finetuned_model_and_restores_bit_for_bit_even_on_errors(setup):
    model, base, (a, _, _) = setup
    tv = TaskVector.from_state_dicts(base, a)
    before = _state(model)
    x = torch.randint(3, 90, (2, 6))
    k = "model.layers.1.self_attn.q_proj.weight"
    with torch.no_grad():
        with tv.apply(model, strength=1.0) as module:
            assert module is model
            inside = model(x).logits
            torch.testing.assert_close(model.state_dict()[k], a[k])
        assert _same(model, before)
        with pytest.raises(RuntimeError, match="boom"):
            with tv.apply(model, strength=-2.0):
                assert not torch.equal(model.state_dict()[k], before[k])
                raise RuntimeError("boom")
    assert _same(model, before)
    reference = build_model("llama")
    reference.load_state_dict(a)
    with torch.no_grad():
        torch.testing.assert_close(inside, reference(x).logits)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # gpt2 ties its head to the embedding
def test_bake_equals_apply_and_undo_is_exact(arch):
    model = build_model(arch)
    base = _state(model)
    tv = TaskVector.from_state_dicts(base, _variant(model, 5))
    x = torch.randint(3, 90, (2, 6))
    with torch.no_grad(), tv.apply(model, strength=0.5):
        applied = model(x).logits
        applied_state = _state(model)
    record = tv.bake_(model, strength=0.5)
    assert isinstance(record, Baked) and record.lever == "merging.task_vector"
    assert _same(model, applied_state)
    with torch.no_grad():
        assert torch.equal(model(x).logits, applied)
    assert record.undo_() is model
    assert _same(model, base)
    with pytest.raises(LeverError, match="already undone"):
        record.undo_()


def test_a_saved_bake_is_undone_in_another_process_by_its_file(setup, tmp_path):
    model, base, (a, _, _) = setup
    tv = TaskVector.from_state_dicts(base, a)
    path = tv.bake_(model, strength=2.0).save(tmp_path / "baked.safetensors")
    assert read_header(path)["format_version"] == FORMAT_VERSION
    record = Baked.load(path)
    with pytest.raises(LeverError, match="pass the model"):
        record.undo_()
    record.undo_(model)
    assert _same(model, base)
    # a record does not undo a model it no longer matches
    other = Baked.load(tv.bake_(model).save(tmp_path / "again.safetensors"))
    with tv.apply(model):
        with pytest.raises(LeverError, match="not as this merging.task_vector bake left them"):
            other.undo_(model)
    other.undo_(model)
    assert _same(model, base)


def test_a_loaded_model_is_accepted_and_fingerprints_are_checked():
    base_model, finetuned = build_model("llama"), build_model("llama", seed=1)
    tv = TaskVector.from_models(LoadedModel(base_model, make_tokenizer(), "tiny", "", "causal"), finetuned)
    assert tv.provenance.model_fingerprint == fingerprint(base_model)
    assert tv.provenance.units == "raw" and tv.strength_units == ("raw",)
    loaded = LoadedModel(base_model, make_tokenizer(), "tiny", "", "causal")
    before = _state(base_model)
    with tv.apply(loaded) as module:
        assert module is base_model
        for k, v in finetuned.state_dict().items():
            torch.testing.assert_close(base_model.state_dict()[k], v)
        assert base_fingerprint(base_model) == tv.provenance.model_fingerprint  # the base's, while applied
    assert _same(base_model, before)
    record = tv.bake_(loaded, strength=1.0)
    record.undo_(loaded)
    assert _same(base_model, before)
    stranger = build_model("llama", seed=2)
    with pytest.warns(FingerprintWarning), tv.apply(stranger):
        pass
    with pytest.raises(ArtifactError, match="fitted on model"):
        tv.bake_(stranger, strict=True)
    assert _same(stranger, build_model("llama", seed=2).state_dict())


def test_task_vector_is_a_lever_and_an_artifact(setup, tmp_path):
    _, base, (a, _, _) = setup
    tv = TaskVector.from_state_dicts(base, a)
    assert isinstance(tv, Lever) and tv.kind == "merging.task_vector" and tv.bakes
    header = read_header(tv.save(tmp_path / "tv.safetensors"))
    assert header["kind"] == "merging.task_vector" and header["format_version"] == FORMAT_VERSION
    assert header["fields"] == {} and header["provenance"]["units"] == "raw"
    assert TaskVector.load(tmp_path / "tv.safetensors").provenance.where == Where()


def test_a_version_1_task_vector_file_still_loads(tmp_path):
    path = tmp_path / "old.safetensors"
    header = {"kind": "task_vector", "format_version": 1, "fields": {},
              "provenance": {"model_fingerprint": None, "site": None, "layer": None, "method": "difference",
                             "data_hash": None, "units": "", "extra": {}, "library_version": "0.1.0"}}
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, str(path), metadata={"almostlinear": json.dumps(header)})
    tv = TaskVector.load(path)
    assert torch.equal(tv.deltas["w"], torch.arange(6.0).reshape(2, 3)) and tv.provenance.method == "difference"
    assert tv.provenance.units == "raw"


def test_tensors_the_lever_cannot_change_are_refused_before_anything_changes():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    before = _state(model)
    sd = model.state_dict()
    floats = {k: v + 1 for k, v in sd.items() if v.is_floating_point()}
    tv = TaskVector.from_state_dicts(sd, {**sd, **floats})
    with pytest.raises(LeverError, match="'1.running_mean' is a buffer"):
        tv.bake_(model)
    with pytest.raises(ShapeError, match="no tensor 'missing'"):
        TaskVector({"missing": torch.zeros(1)}).apply(model)
    assert _same(model, before)
    assert torch.equal(tv.apply_to(sd)["1.running_mean"], sd["1.running_mean"] + 1)  # state dicts are fine


def test_cosine_matrix_matches_sklearn_and_conflicts_match_brute_force(setup):
    _, base, fts = setup
    tvs = [TaskVector.from_state_dicts(base, f) for f in fts]
    flat = np.stack([np.concatenate([tv.deltas[k].double().numpy().ravel() for k in tvs[0].deltas]) for tv in tvs])
    np.testing.assert_allclose(cosine_matrix(tvs).numpy(), cosine_similarity(flat), atol=1e-10)
    assert tvs[0].cosine(tvs[1]) == pytest.approx(cosine_similarity(flat)[0, 1], abs=1e-10)
    signs = np.sign(flat)
    overlap = (signs != 0).sum(0) >= 2
    conflict = overlap & (signs > 0).any(0) & (signs < 0).any(0)
    assert sign_conflict_rate(tvs) == pytest.approx(conflict.sum() / overlap.sum())
    # independent random task vectors disagree about half the time on their top entries
    assert 0.4 < sign_conflict_rate(tvs, density=0.2) < 0.9
    assert sign_conflict_rate([tvs[0], tvs[0] * 2.0]) == 0.0


def test_save_load_and_mismatch(setup, tmp_path):
    _, base, (a, _, _) = setup
    tv = TaskVector.from_state_dicts(base, a)
    path = tv.save(tmp_path / "tv.safetensors")
    back = TaskVector.load(path)
    assert back.provenance == tv.provenance
    assert set(back.deltas) == set(tv.deltas)
    for k in tv.deltas:
        assert torch.equal(back.deltas[k], tv.deltas[k])
    smaller = {k: v for k, v in a.items() if "layers.1" not in k}
    with pytest.raises(ShapeError, match="lacks tensor"):
        TaskVector.from_state_dicts(base, smaller)
    other = TaskVector.from_state_dicts({k: v for k, v in base.items() if "layers.1" not in k}, smaller)
    with pytest.raises(ShapeError, match="different tensors"):
        tv + other


def test_generic_artifact_loader_reads_a_task_vector(tmp_path):
    from almostlinear import load_artifact
    from almostlinear.merging import TaskVector

    tv = TaskVector.from_state_dicts({"w": torch.zeros(2, 3)}, {"w": torch.arange(6.0).reshape(2, 3)})
    loaded = load_artifact(tv.save(tmp_path / "tv.safetensors"))
    assert isinstance(loaded, TaskVector)
    assert torch.equal(loaded.deltas["w"], tv.deltas["w"])


@pytest.mark.parametrize("strength", [float("nan"), float("inf")])
def test_a_non_finite_strength_is_refused_and_leaves_the_model_as_it_was(strength):
    model = build_model("llama")
    base = _state(model)
    tv = TaskVector.from_state_dicts(base, {k: v + 1 for k, v in base.items()})
    with pytest.raises(NonFiniteError):
        tv.apply_to(base, strength)
    with pytest.raises(NonFiniteError), tv.apply(model, strength=strength):
        pass
    with pytest.raises(NonFiniteError):
        tv.bake_(model, strength=strength)
    assert _same(model, base)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_task_vector_with_non_finite_deltas_is_refused(bad):
    from almostlinear.core.errors import NonFiniteError

    with pytest.raises(NonFiniteError, match="'w'"):
        TaskVector({"w": torch.tensor([bad, 1.0]), "b": torch.zeros(2)})
