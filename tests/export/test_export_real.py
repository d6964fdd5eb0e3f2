"""Round trips on the embedded SmolLM2-135M: each export loaded by the engine it is for, against the hooked lever.

Numbers from a fuller run (more prompts, a longer-fitted edit) are in benchmarks/RESULTS.md, section
"Export" (``benchmarks/bench_export.py``).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from almostlinear.data.sentiment import NEGATIVE_WORDS, NEUTRAL_PROMPTS, POSITIVE_WORDS, SENTIMENT_PAIRS

pytestmark = pytest.mark.real

STRENGTHS = (-0.3, 0.0, 0.3)  # multiples of the median residual norm at resid_post.9


@pytest.fixture(scope="module")
def sentiment_vector(smollm2):
    from almostlinear.steering import fit_steering

    return fit_steering(smollm2, pairs=SENTIMENT_PAIRS[:16], layer=9)


def test_rome_edit_through_peft_equals_apply(smollm2, tmp_path):
    pytest.importorskip("peft")
    from peft import PeftModel

    from almostlinear.data import FALLBACK_TEXTS
    from almostlinear.editing import EditRequest, hparams_for, key_statistics, rome
    from almostlinear.export import export_peft

    model, tok = smollm2.model, smollm2.tokenizer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = key_statistics(model, tok, 6, texts=list(FALLBACK_TEXTS), n_tokens=1_000, cache=False)
    edit = rome(model, tok, EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome"), layer=6,
                stats=stats, hparams=hparams_for(model, v_steps=4, n_prefixes=0, ridge=1e-2))
    ids = tok(["The Eiffel Tower is located in the city of", "I like to eat"], return_tensors="pt", padding=True)
    with torch.no_grad(), edit.apply(model):
        expected = model(**ids).logits[:, -1].double()
    plan = export_peft(edit, smollm2, tmp_path)
    assert plan.exact and [f.rank for f in plan.modules.values()] == [1]
    peft_model = PeftModel.from_pretrained(model, str(tmp_path)).eval()
    try:
        with torch.no_grad():
            got = peft_model(**ids).logits[:, -1].double()
    finally:
        peft_model.unload()
    assert float((got - expected).norm() / expected.norm()) <= 1e-4
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_baked_steered_model_loaded_by_transformers_equals_hooked(smollm2, sentiment_vector, tmp_path):
    from transformers import AutoModelForCausalLM

    from almostlinear.export import export_hf

    ids = smollm2.tokenizer(list(NEUTRAL_PROMPTS[:2]), return_tensors="pt", padding=True)
    real = ids["attention_mask"].bool()  # a bias also acts on padding, which no real token attends to
    with torch.no_grad(), sentiment_vector.apply(smollm2, strength=0.3):
        expected = smollm2.model(**ids).logits.double()[real]
    export_hf(sentiment_vector, smollm2, tmp_path, strengths=[0.3])
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        got = loaded(**ids).logits.double()[real]
    assert float((got - expected).norm() / expected.norm()) <= 1e-4
    assert loaded.config.mlp_bias is True and smollm2.model.config.mlp_bias is False


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python is not installed (pip install 'almostlinear[llama]')")
def test_gguf_control_vector_in_llama_cpp_moves_log_odds_like_hooked(smollm2, sentiment_vector, tmp_path):
    from llama_cpp_loader import llama_cpp_buffer, load_with_llama_cpp, open_llama, served_log_odds

    from almostlinear.core.embedded import EMBEDDED
    from almostlinear.export import ControlVector, export_gguf, read_control_vector
    from almostlinear.steering import TokenPreference

    prompts = list(NEUTRAL_PROMPTS[:8])
    preference = TokenPreference(POSITIVE_WORDS, NEGATIVE_WORDS)
    pos, neg = preference.token_ids(smollm2.tokenizer)
    hooked = {}
    for strength in STRENGTHS:
        with sentiment_vector.apply(smollm2, strength=strength):
            hooked[strength] = preference(smollm2.model, smollm2.tokenizer, prompts).numpy()

    path = export_gguf(sentiment_vector, tmp_path / "sentiment.gguf", model=smollm2)  # scale c = strength c
    layers = load_with_llama_cpp(path)  # llama.cpp's own GGUF parser accepts the file
    assert list(layers) == [9]
    np.testing.assert_array_equal(layers[9], read_control_vector(path).layers[9].numpy())
    llm = open_llama(str(EMBEDDED["smollm2-135m"].source()), threads=1)
    n_layers = smollm2.structure.n_layers
    cvec = ControlVector({il: torch.from_numpy(v) for il, v in layers.items()})
    np.testing.assert_array_equal(cvec.buffer(n_layers), llama_cpp_buffer(layers, n_layers))

    served = served_log_odds(llm, cvec, smollm2.tokenizer, prompts, STRENGTHS, pos, neg)
    shift_hooked, shift_served = hooked[0.3] - hooked[-0.3], served[0.3] - served[-0.3]
    assert (shift_hooked > 0).all() and (shift_served > 0).all()  # the same direction on every prompt
    assert np.corrcoef(shift_hooked, shift_served)[0, 1] > 0.9
    # the means follow the hooked model's within a tenth of the shift (Q4_1 weights differ from float)
    for strength in STRENGTHS:
        assert abs(served[strength].mean() - hooked[strength].mean()) < 0.1 * shift_hooked.mean()
