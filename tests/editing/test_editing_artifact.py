"""Edits as artifacts and levers: round trips, exact restore for any strength, bake and undo through a
file, wrong weights, loaded models, provenance, old files, and the real model."""

from __future__ import annotations

import pytest
import torch
from editing_helpers import REQUEST, fast_hparams, random_texts
from hypothesis import given
from hypothesis import strategies as st
from tiny_models import build_model, make_tokenizer

from almostlinear.core.artifact import ArtifactError, FingerprintWarning, Where, read_header, write_file
from almostlinear.core.errors import LeverError, NonFiniteError
from almostlinear.core.lever import BASE_ATTR, UNITS, Baked, Lever, base_fingerprint
from almostlinear.core.models import LoadedModel
from almostlinear.editing import EditRequest, LowRankEdit, RankOneEdit, key_statistics, rome

MODEL = build_model("gpt2")
TOK = make_tokenizer()
STATS = key_statistics(MODEL, TOK, 0, texts=random_texts(40), n_tokens=10_000, cache=False)
EDIT = rome(MODEL, TOK, REQUEST, stats=STATS, hparams=fast_hparams(MODEL, v_steps=2, ridge=1e-6))


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model, state) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items()) and not hasattr(model, BASE_ATTR)


def test_an_edit_is_a_lever_with_raw_strength_acting_on_down_projections():
    assert isinstance(EDIT, Lever) and EDIT.bakes
    assert EDIT.strength_units == ("raw",) and EDIT.provenance.units == "raw" and "raw" in UNITS
    assert EDIT.provenance.where == Where("mlp_down_proj", (0,)) and EDIT.layers == [0] and EDIT.layer == 0


@given(strength=st.floats(-3, 3, allow_nan=False))
def test_apply_restores_bit_for_bit_for_any_strength(strength):
    before = _state(MODEL)
    with EDIT.apply(MODEL, strength=strength) as module:
        assert module is MODEL
    assert _same(MODEL, before)


def test_apply_restores_bit_for_bit_after_an_exception():
    before = _state(MODEL)
    with pytest.raises(KeyError, match="inside"), EDIT.apply(MODEL, 2.0):
        assert not torch.equal(MODEL.transformer.h[0].mlp.c_proj.weight, before["transformer.h.0.mlp.c_proj.weight"])
        raise KeyError("inside")
    assert _same(MODEL, before)


def test_a_strength_that_is_not_a_finite_number_changes_nothing():
    before = _state(MODEL)
    with pytest.raises(NonFiniteError), EDIT.apply(MODEL, float("nan")):
        pass
    with pytest.raises(NonFiniteError):
        EDIT.bake_(MODEL, strength=float("inf"))
    assert _same(MODEL, before)


def test_strength_is_linear_in_the_written_shift():
    key = EDIT.key.float()[None]
    down = MODEL.transformer.h[0].mlp.c_proj  # GPT-2's Conv1D, weight stored [in, out]
    base = down(key)[0].double()
    shifts = []
    for s in (0.5, 1.0, 2.0):
        with EDIT.apply(MODEL, strength=s):
            shifts.append(down(key)[0].double() - base)
    torch.testing.assert_close(shifts[0] * 2, shifts[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(shifts[1] * 2, shifts[2], rtol=1e-4, atol=1e-5)


def test_round_trip_and_header(tmp_path):
    path = EDIT.save(tmp_path / "rome.safetensors")
    loaded = RankOneEdit.load(path)
    assert loaded.layers == EDIT.layers and loaded.base_hashes == EDIT.base_hashes
    assert loaded.stats_hashes == [STATS.content_hash]
    assert loaded.provenance.model_fingerprint == EDIT.provenance.model_fingerprint
    assert loaded.provenance.data_hash == STATS.content_hash
    assert torch.equal(loaded.u, EDIT.u) and torch.equal(loaded.v, EDIT.v)
    with pytest.raises(ArtifactError):
        LowRankEdit.load(STATS.save(tmp_path / "stats.safetensors"))
    # statistics round-trip too
    from almostlinear.editing import KeyStatistics

    again = KeyStatistics.load(tmp_path / "stats.safetensors")
    assert torch.equal(again.c, STATS.c) and again.n_tokens == STATS.n_tokens


def test_statistics_survive_edits_in_place():
    # while an edit is applied or baked, statistics and templates are those of the unedited model
    with EDIT.apply(MODEL):
        assert base_fingerprint(MODEL) == EDIT.provenance.model_fingerprint
    baked = EDIT.bake_(MODEL)
    try:
        assert base_fingerprint(MODEL) == EDIT.provenance.model_fingerprint
    finally:
        baked.undo_()
    assert not hasattr(MODEL, BASE_ATTR)


def test_bake_then_undo_is_exact_and_equals_apply():
    before = _state(MODEL)
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad(), EDIT.apply(MODEL, strength=1.5):
        applied = MODEL(ids).logits
    baked = EDIT.bake_(MODEL, strength=1.5)
    assert isinstance(baked, Baked) and baked.names == ["transformer.h.0.mlp.c_proj.weight"]
    with torch.no_grad():
        assert torch.equal(MODEL(ids).logits, applied)
    assert not torch.equal(MODEL.transformer.h[0].mlp.c_proj.weight, before["transformer.h.0.mlp.c_proj.weight"])
    baked.undo_()
    assert _same(MODEL, before)


def test_a_saved_bake_is_undone_in_another_process(tmp_path):
    # what another process holds: the model as the bake left it, and the record's file
    model = build_model("gpt2")
    before = _state(model)
    path = EDIT.bake_(model).save(tmp_path / "baked.safetensors")
    assert read_header(path)["lever"] == "editing.rank_one"
    record = Baked.load(path)
    with pytest.raises(LeverError, match="pass the model"):
        record.undo_()
    fresh = build_model("gpt2")  # weights as they were before the bake: the hashes do not match
    with pytest.raises(LeverError, match="not as this"):
        record.undo_(fresh)
    assert _same(fresh, before)
    record.undo_(model)
    assert _same(model, before)


def test_wrong_weights_raise_when_strict_and_warn_otherwise():
    other = build_model("gpt2", seed=1)
    before = _state(other)
    with pytest.raises(ArtifactError, match="differ"):
        EDIT.apply(other)
    with pytest.raises(ArtifactError, match="differ"):
        EDIT.bake_(other)
    assert _same(other, before)
    with pytest.warns(FingerprintWarning, match="differ"), EDIT.apply(other, strict=False):
        assert not torch.equal(other.transformer.h[0].mlp.c_proj.weight, before["transformer.h.0.mlp.c_proj.weight"])
    assert _same(other, before)
    with pytest.warns(FingerprintWarning, match="differ"):
        EDIT.bake_(other, strict=False).undo_()
    assert _same(other, before)


def test_a_loaded_model_is_accepted_everywhere():
    loaded = LoadedModel(MODEL, TOK, "tiny-gpt2", "memory", "causal-lm")
    before = _state(MODEL)
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad(), EDIT.apply(MODEL):
        direct = MODEL(ids).logits
    with torch.no_grad(), EDIT.apply(loaded) as module:
        assert module is MODEL and torch.equal(MODEL(ids).logits, direct)
    EDIT.bake_(loaded).undo_()
    assert _same(MODEL, before)
    # the fitting functions take it too, its tokenizer included
    again = rome(loaded, None, REQUEST, stats=key_statistics(loaded, None, 0, texts=random_texts(40), n_tokens=10_000,
                                                             cache=False),
                 hparams=fast_hparams(loaded, v_steps=2, ridge=1e-6))
    assert torch.equal(again.a, EDIT.a) and torch.equal(again.b, EDIT.b)


def test_files_written_before_where_held_the_layers_load(tmp_path):
    # a version 1 MEMIT file: the layers were a field, provenance named the last layer's mlp_out only
    edit = LowRankEdit(layers=[0, 1], a=torch.ones(2, 1, 5), b=torch.ones(2, 4, 1), keys=torch.ones(2, 1, 5),
                       base_hashes=["x", "y"], stats_hashes=["s", "t"])
    header = {"kind": "editing.low_rank", "format_version": 1,
              "fields": {"layers": [0, 1], "base_hashes": ["x", "y"], "stats_hashes": ["s", "t"], "requests": [],
                         "method": "memit", "diagnostics": {}},
              "provenance": {"site": "mlp_out.1", "layer": 1, "method": "memit",
                             "units": "ΔW = b @ a per layer on the down projection, [out, in]"}}
    path = write_file(tmp_path / "old.safetensors", {"a": edit.a, "b": edit.b, "keys": edit.keys}, header)
    loaded = LowRankEdit.load(path)
    assert loaded.layers == [0, 1] and loaded.provenance.where == Where("mlp_down_proj", (0, 1))
    assert loaded.provenance.units == "raw" and torch.equal(loaded.delta(1), edit.delta(1))
    again = LowRankEdit.load(loaded.save(tmp_path / "new.safetensors"))
    assert "layers" not in read_header(tmp_path / "new.safetensors")["fields"] and again.layers == [0, 1]


@pytest.mark.real
def test_rome_on_smollm2_writes_the_fact(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    from almostlinear.data import FALLBACK_TEXTS

    layer = 6
    stats = key_statistics(model, tok, layer, texts=list(FALLBACK_TEXTS), n_tokens=2_000, cache=False)
    request = EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome")
    hp = fast_hparams(model, v_steps=12, n_prefixes=0, ridge=1e-2, clamp_norm_factor=4.0, v_weight_decay=0.5)
    edit = rome(model, tok, request, layer=layer, stats=stats, hparams=hp)
    ids = tok(request.text, return_tensors="pt")
    target = tok(" Rome", add_special_tokens=False)["input_ids"][0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        p0 = model(**ids).logits[0, -1].softmax(-1)[target]
        with edit.apply(model):
            p1 = model(**ids).logits[0, -1].softmax(-1)[target]
    assert float(p1) > 0.5 > float(p0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # the linear prediction is exact at the edited layer on the real model too
    from almostlinear.editing import predicted_shift

    rows = predicted_shift(edit, model, tok, [("{} is located in the city of", "The Colosseum")])
    assert rows[0].relative_error < 1e-3
