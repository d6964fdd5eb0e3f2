"""Edits as artifacts: round trips, exact restore for any scale, provenance, and the real model."""

from __future__ import annotations

import pytest
import torch
from editing_helpers import REQUEST, fast_hparams, random_texts
from hypothesis import given
from hypothesis import strategies as st
from tiny_models import build_model, make_tokenizer

from almostlinear.core.artifact import ArtifactError
from almostlinear.editing import EditRequest, LowRankEdit, RankOneEdit, key_statistics, rome
from almostlinear.editing.identity import BASE_ATTR

MODEL = build_model("gpt2")
TOK = make_tokenizer()
STATS = key_statistics(MODEL, TOK, 0, texts=random_texts(40), n_tokens=10_000, cache=False)
EDIT = rome(MODEL, TOK, REQUEST, stats=STATS, hparams=fast_hparams(MODEL, v_steps=2, ridge=1e-6))


@given(scale=st.floats(-3, 3, allow_nan=False))
def test_apply_restores_bit_for_bit_for_any_scale(scale):
    before = {k: v.clone() for k, v in MODEL.state_dict().items()}
    with EDIT.apply(MODEL, scale=scale):
        pass
    assert all(torch.equal(v, before[k]) for k, v in MODEL.state_dict().items())
    assert not hasattr(MODEL, BASE_ATTR)


def test_scale_is_linear_in_the_written_shift():
    key = EDIT.key.float()[None]
    down = MODEL.transformer.h[0].mlp.c_proj  # GPT-2's Conv1D, weight stored [in, out]
    base = down(key)[0].double()
    shifts = []
    for s in (0.5, 1.0, 2.0):
        with EDIT.apply(MODEL, scale=s):
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
        assert getattr(MODEL, BASE_ATTR) == EDIT.provenance.model_fingerprint
    EDIT.bake_(MODEL)
    try:
        assert getattr(MODEL, BASE_ATTR) == EDIT.provenance.model_fingerprint
    finally:
        EDIT.undo_(MODEL)


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
