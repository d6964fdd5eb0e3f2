"""Applying a steering vector: what is added, where, when; exact restoration; files; bad input."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from almostlinear.core.artifact import FingerprintWarning, Where, load
from almostlinear.core.errors import ArtifactError, ChoiceError, LayerError, LeverError, NonFiniteError, ShapeError
from almostlinear.core.hooks import record
from almostlinear.core.lever import Baked, Lever
from almostlinear.core.models import LoadedModel
from almostlinear.steering import SteeringVector, applied, fit_steering, generate_steered
from tiny_models import TEXTS, build_model, make_tokenizer

PAIRS = [(TEXTS[0], TEXTS[3]), (TEXTS[1], TEXTS[5]), (TEXTS[2], TEXTS[4])]


@pytest.fixture(scope="module")
def llama_and_vector():
    model, tok = build_model("llama"), make_tokenizer()
    return model, tok, fit_steering(model, tok, PAIRS, layer=1)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model, state):
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_adds_strength_times_the_residual_norm(llama_and_vector):
    model, tok, vector = llama_and_vector
    ids = tok(["the cat is on the road", "a dog"], return_tensors="pt", padding=True)
    with record(model, "resid_post.1", keep_full=True) as base:
        model(**ids)
    with vector.apply(model, 0.5), record(model, "resid_post.1", keep_full=True) as steered:
        model(**ids)
    change = steered.full("resid_post.1")[0] - base.full("resid_post.1")[0]
    expected = 0.5 * vector.norms["residual_median"] * vector.direction
    mask = ids["attention_mask"].bool()
    assert torch.allclose(change[mask], expected.expand(int(mask.sum()), -1), atol=1e-5)
    assert torch.equal(change[~mask], torch.zeros_like(change[~mask]))  # padding untouched
    diff_units = vector.added(2.0, units="diff")
    assert float(diff_units.norm()) == pytest.approx(2 * vector.norms["diff_norm"], rel=1e-5)
    assert torch.equal(vector.added(2.0, units="raw"), 2.0 * vector.direction)
    with pytest.raises(ChoiceError, match="strength unit"):
        vector.added(1.0, units="fraction")


def test_is_a_lever_with_its_units_stored(llama_and_vector):
    _, _, vector = llama_and_vector
    assert isinstance(vector, Lever) and vector.kind == "steering.vector" and vector.bakes
    assert vector.strength_units == ("residual", "diff", "raw") and vector.provenance.units == "residual"
    assert vector.provenance.where == Where("resid_post", (1,), "all")
    assert (vector.site, vector.layer, vector.positions, vector.provenance.method) == ("resid_post", 1, "all",
                                                                                       "mean_diff")


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "qwen2", "gemma"])
def test_exit_restores_bit_for_bit_also_after_an_exception(family):
    model, tok = build_model(family), make_tokenizer()
    vector = fit_steering(model, tok, PAIRS, layer=0)
    ids = tok(["the cat is on the road"], return_tensors="pt")
    before, logits, hooks = _state(model), model(**ids).logits, _hook_count(model)
    with vector.apply(model, 1.0) as module:
        assert module is model
        assert not torch.equal(model(**ids).logits, logits)
    with pytest.raises(RuntimeError, match="boom"):
        with vector.apply(model, 3.0):
            model(**ids)
            raise RuntimeError("boom")
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(model(**ids).logits, logits)
    assert _hook_count(model) == hooks


@settings(max_examples=20)
@given(d=st.integers(1, 40), layer=st.integers(0, 40), site=st.sampled_from(["resid_post", "resid_pre", "mlp_out"]),
       positions=st.sampled_from(["all", "prompt", "generated", ("last", 3), [0, -1]]), seed=st.integers(0, 99))
def test_save_load_round_trip(tmp_path_factory, d, layer, site, positions, seed):
    direction = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    vector = SteeringVector.from_direction(direction, site=site, layer=layer, method="pca", positions=positions,
                                           norms={"residual_median": 3.5, "n_pairs": 4}, model_fingerprint="sha256:x",
                                           data_hash="abc")
    path = vector.save(tmp_path_factory.mktemp("v") / "v.safetensors")
    back = load(path)
    assert isinstance(back, SteeringVector)
    assert torch.equal(back.direction, vector.direction)
    assert (back.site, back.layer, back.positions, back.norms) == (site, layer, positions, vector.norms)
    assert back.provenance == vector.provenance
    assert back.provenance.method == "pca" and back.provenance.units == "residual"
    assert back.provenance.extra == {}  # where, method and unit are stored once, not copied into extra


def test_another_model_warns(llama_and_vector):
    _, tok, vector = llama_and_vector
    other = build_model("llama", seed=1)
    with pytest.warns(FingerprintWarning):
        with vector.apply(other, 1.0):
            other(**tok(["a dog"], return_tensors="pt"))
    with pytest.raises(ArtifactError, match="fitted on model"):
        with vector.apply(other, 1.0, strict=True):
            pass
    with pytest.raises(ArtifactError):
        vector.bake_(other, 1.0, strict=True)
    assert _hook_count(other) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with vector.apply(llama_and_vector[0], 1.0):
            pass


def test_a_loaded_model_is_accepted(llama_and_vector):
    model, tok, vector = llama_and_vector
    loaded = LoadedModel(model, tok, "tiny-llama", "memory", "causal-lm")
    ids = tok(["the cat is on the road"], return_tensors="pt")
    with vector.apply(model, 0.7):
        direct = model(**ids).logits
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with vector.apply(loaded, 0.7) as module:
            assert module is model
            assert torch.equal(model(**ids).logits, direct)
        before = _state(model)
        baked = vector.bake_(loaded, 0.7)
        assert torch.allclose(model(**ids).logits, direct, atol=1e-5)
        baked.undo_()
    assert _same(model, before)
    side = vector.side_effects(loaded, list(TEXTS), 0.7)
    assert side.kl > 0 and side == vector.side_effects(model, list(TEXTS), 0.7, tokenizer=tok)


def test_bad_input(llama_and_vector):
    model, tok, vector = llama_and_vector
    wide = SteeringVector.from_direction(torch.ones(7), layer=1, method="mean_diff", norms={"residual_median": 1.0})
    with pytest.raises(ShapeError, match="features"):
        with wide.apply(model, 1.0):
            pass
    far = SteeringVector.from_direction(torch.ones(vector.d), layer=9, method="mean_diff",
                                        norms={"residual_median": 1.0})
    with pytest.raises(LayerError):
        with far.apply(model, 1.0):
            pass
    for bad in (float("nan"), float("inf")):
        with pytest.raises(NonFiniteError):
            with vector.apply(model, bad):
                pass
    with pytest.raises(ChoiceError):
        with vector.apply(model, 1.0, positions="middle"):
            model(**tok(["a dog"], return_tensors="pt"))
    with pytest.raises(ArtifactError, match="where"):
        SteeringVector(torch.ones(4))
    with pytest.raises(ShapeError):
        SteeringVector.from_direction(torch.zeros(vector.d), layer=1, method="mean_diff")
    assert _hook_count(model) == 0


def _reference_policy(name, prompt_len):
    """Which positions a no-cache forward over prompt + generated tokens steers, per policy."""
    if name == "all":
        return lambda index, mask: torch.ones_like(mask)
    if name == "prompt":
        return lambda index, mask: index < prompt_len[:, None]
    if name == "generated":
        return lambda index, mask: index >= prompt_len[:, None]
    k = name[1]
    return lambda index, mask: index >= prompt_len[:, None] - k


@pytest.mark.parametrize("policy", ["all", "prompt", "generated", ("last", 2)])
@pytest.mark.parametrize("family, prompts", [("llama", ["the cat is on the road", "a dog"]),
                                             ("gpt2", ["the cat is on the road", "a dog"]),
                                             ("qwen2", ["the cat is on the road", "the old king and the queen"])])
def test_cached_generate_matches_a_full_forward(family, prompts, policy):
    """Batched, KV-cached generation steers exactly the positions a plain forward over the whole
    sequence steers, with left padding and without any (then generate passes no attention mask, only
    position ids); the prompt lengths are inferred (no prompt_lengths given)."""
    model, tok = build_model(family), make_tokenizer()
    vector = fit_steering(model, tok, PAIRS, layer=0, positions=policy)
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    with vector.apply(model, 2.0):
        out = model.generate(**enc, max_new_tokens=5, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
    sequence = out.sequences
    mask = torch.cat([enc["attention_mask"], torch.ones(2, 5, dtype=torch.long)], 1)
    assert bool(enc["attention_mask"].all()) == (family == "qwen2")
    prompt_len = enc["attention_mask"].sum(-1)
    from almostlinear.core.hooks import add

    value = vector.added(2.0)
    with add(model, "resid_post.0", value, positions=_reference_policy(policy, prompt_len)):
        position_ids = (mask.cumsum(-1) - 1).clamp_min(0)  # as generate numbers left-padded rows
        full = model(input_ids=sequence, attention_mask=mask, position_ids=position_ids, use_cache=False).logits
    width = enc["input_ids"].shape[1]
    for step, logits in enumerate(out.logits):
        assert torch.allclose(logits, full[:, width - 1 + step], atol=1e-4), (policy, step)
    if policy != "all":
        with vector.apply(model, 0.0):
            base = model.generate(**enc, max_new_tokens=5, do_sample=False, output_logits=True,
                                  return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
        assert not torch.allclose(base.logits[-1], out.logits[-1])


@pytest.mark.parametrize("policy", ["all", "prompt", "generated"])
def test_generate_steered_batched_equals_one_by_one(policy):
    model, tok = build_model("qwen2"), make_tokenizer()
    vector = fit_steering(model, tok, PAIRS, layer=1, positions=policy)
    prompts = ["the cat is on the road", "a dog", "Paris is the capital of"]
    together = generate_steered(model, tok, prompts, vector, 3.0, max_new_tokens=6, batch_size=3)
    alone = [generate_steered(model, tok, [p], vector, 3.0, max_new_tokens=6)[0] for p in prompts]
    assert together == alone
    assert tok.padding_side == "right"  # restored


def test_several_vectors_add_up():
    model, tok = build_model("llama"), make_tokenizer()
    a = fit_steering(model, tok, PAIRS, layer=1)
    b = fit_steering(model, tok, PAIRS[::-1][:2], layer=1, method="pca_uncentred")
    ids = tok(["the old king"], return_tensors="pt")
    with applied(model, [a, b], [0.5, -1.0]):
        both = model(**ids).logits
    from almostlinear.core.hooks import add

    with add(model, "resid_post.1", a.added(0.5) + b.added(-1.0)):
        reference = model(**ids).logits
    assert torch.allclose(both, reference, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "qwen2", "gemma"])
@pytest.mark.parametrize("site", ["resid_post", "attn_out", "resid_pre"])
def test_baked_bias_equals_the_hook_and_restores(family, site):
    model, tok = build_model(family), make_tokenizer()
    vector = fit_steering(model, tok, PAIRS, layer=1, site=site)
    ids = tok(["the cat is on the road", "a dog"], return_tensors="pt", padding=True)
    before = _state(model)
    with torch.no_grad():
        with vector.apply(model, 1.5):
            hooked = model(**ids).logits
        record_ = vector.bake_(model, 1.5)
        baked = model(**ids).logits
    mask = ids["attention_mask"].bool()
    assert isinstance(record_, Baked)
    assert torch.allclose(baked[mask], hooked[mask], atol=1e-4)
    record_.undo_()
    assert _same(model, before)
    with pytest.raises(LeverError, match="only position policy 'all'"):
        fit_steering(model, tok, PAIRS, layer=1, positions="prompt").bake_(model, 1.0)
    with pytest.raises(LeverError, match="block 0"):
        SteeringVector.from_direction(vector.direction, site="resid_pre", layer=0, method="mean_diff",
                                      norms=vector.norms).bake_(model, 1.0)
    assert _same(model, before)


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # a bias created by the bake, and one already there
def test_bias_bake_undone_through_a_file_in_a_fresh_record(family, tmp_path):
    model, tok = build_model(family), make_tokenizer()
    vector = fit_steering(model, tok, PAIRS, layer=1)
    before = _state(model)
    baked = vector.bake_(model, 2.0)
    (name,) = baked.names
    assert name.endswith(".bias") and (baked.originals[name] is None) == (family == "llama")
    path = baked.save(tmp_path / "baked.safetensors")
    Baked.load(path).undo_(model)
    assert _same(model, before)
    with pytest.raises(LeverError):  # the bias is back as it was: the first record's hashes no longer match
        baked.undo_()
    again = vector.bake_(model, 2.0)  # and the model can be baked again, then undone in process
    again.undo_()
    assert _same(model, before)
    with pytest.raises(LeverError, match="already undone"):
        again.undo_()


def test_zero_strength_changes_nothing_also_baked(llama_and_vector):
    model, tok, vector = llama_and_vector
    ids = tok(["the cat is on the road"], return_tensors="pt")
    base = model(**ids).logits
    with vector.apply(model, 0.0):
        assert torch.equal(model(**ids).logits, base)
    baked = vector.bake_(model, 0.0)  # a new zero bias: the same sums, up to the kernel's rounding
    torch.testing.assert_close(model(**ids).logits, base, rtol=0, atol=1e-6)
    baked.undo_()


def _gemma2():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from tiny_models import D_MLP, D_MODEL, N_LAYERS, VOCAB

    return Gemma2ForCausalLM(Gemma2Config(hidden_size=D_MODEL, intermediate_size=D_MLP, num_hidden_layers=N_LAYERS,
                                          num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                                          vocab_size=VOCAB, max_position_embeddings=64)).eval()


@pytest.mark.parametrize("make", [lambda: build_model("bert"), _gemma2], ids=["bert", "gemma2"])
def test_bake_refuses_blocks_that_normalise_what_a_bias_would_add(make):
    # a post-norm (BERT) or a norm on the sublayer output (Gemma-2) rescales a bias: not the hook
    model = make()
    vector = SteeringVector.from_direction(torch.ones(model.config.hidden_size), layer=1, method="mean_diff",
                                           norms={"residual_median": 1.0})
    before = _state(model)
    with pytest.raises(LeverError, match="post-norm"):
        vector.bake_(model, 1.0)
    assert _same(model, before)


def test_positions_without_a_mask_count_from_the_sequence_start():
    from almostlinear.core.hooks import _mask_from_call

    ids = torch.zeros(3, 2, dtype=torch.long)
    # a cached step over tokens 4 and 5 of three unpadded rows: 6 real tokens so far per row
    for kwargs in ({"position_ids": torch.tensor([[4, 5]]).expand(3, 2)},
                   {"position_ids": torch.tensor([[4, 5]])},  # one broadcast row
                   {"cache_position": torch.tensor([4, 5])}):  # models that pass only cache_position
        mask = _mask_from_call(None, (), {"input_ids": ids, **kwargs})
        assert torch.equal(mask, torch.ones(3, 6, dtype=torch.long)), kwargs
    prefill = _mask_from_call(None, (), {"input_ids": ids, "position_ids": torch.tensor([[0, 1]])})
    assert torch.equal(prefill, torch.ones(3, 2, dtype=torch.long))
    explicit = torch.tensor([[0, 1], [1, 1], [1, 1]])
    assert _mask_from_call(None, (), {"input_ids": ids, "attention_mask": explicit,
                                      "position_ids": torch.tensor([[4, 5]])}) is explicit
    assert _mask_from_call(None, (), {"input_ids": ids}) is None


def test_a_position_function_is_kept_and_not_silently_replaced_after_saving(llama_and_vector, tmp_path):
    model, tok, fitted = llama_and_vector

    def second_token(index, mask):
        return index == 1

    vector = SteeringVector.from_direction(fitted.direction, layer=1, method="mean_diff", norms=fitted.norms,
                                           positions=second_token)
    ids = tok(["the cat is on the road"], return_tensors="pt")
    with record(model, "resid_post.1", keep_full=True) as base:
        model(**ids)
    with vector.apply(model, 1.0), record(model, "resid_post.1", keep_full=True) as steered:
        model(**ids)
    changed = (steered.full("resid_post.1")[0] - base.full("resid_post.1")[0]).abs().amax(-1) > 0
    assert changed[0].tolist() == [i == 1 for i in range(ids["input_ids"].shape[1])]
    back = load(vector.save(tmp_path / "v.safetensors"))
    assert back.positions == "callable:second_token"
    assert back.provenance.where.positions == vector.provenance.where.positions == "callable:second_token"
    with pytest.raises(LeverError, match="second_token"):
        with back.apply(model, 1.0):
            pass
    with pytest.raises(LeverError, match="only position policy 'all'"):
        vector.bake_(model, 1.0)
    with back.apply(model, 1.0, positions=second_token), record(model, "resid_post.1", keep_full=True) as again:
        model(**ids)
    assert torch.equal(again.full("resid_post.1")[0], steered.full("resid_post.1")[0])


def test_a_file_of_format_1_loads_in_todays_shape(tmp_path):
    """Format 1 stored site, layer, method, positions and operation as fields and again in provenance."""
    from almostlinear.core.artifact import write_file

    direction = torch.nn.functional.normalize(torch.randn(8, generator=torch.Generator().manual_seed(0)), dim=0)
    header = {"kind": "steering-vector", "format_version": 1,
              "fields": {"site": "resid_post", "layer": 2, "method": "mean_diff", "positions": ["last", 2],
                         "operation": "add", "norms": {"residual_median": 3.0, "diff_norm": 1.5}},
              "provenance": {"model_fingerprint": "sha256:x", "site": "resid_post", "layer": 2, "method": "mean_diff",
                             "units": "strength 1 = the median residual norm at the site", "data_hash": "d",
                             "extra": {"operation": "add", "positions": ["last", 2], "read": "last"},
                             "library_version": "0.1.0"}}
    path = write_file(tmp_path / "old.safetensors", {"direction": direction}, header)
    vector = load(path)
    assert isinstance(vector, SteeringVector)
    assert (vector.site, vector.layer, vector.positions) == ("resid_post", 2, ("last", 2))
    assert vector.provenance.where == Where("resid_post", (2,), "last:2")
    assert vector.provenance.units == "residual" and vector.provenance.extra == {"read": "last"}
    assert torch.equal(vector.added(2.0), direction * 6.0)
