"""Hooks: reversible edits, positions among real tokens, KV-cache generation, early stop, input checks."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import D_MLP, D_MODEL, build_model, make_tokenizer

from almostlinear import add, intervene, locate, project_out, record, replace
from almostlinear.core.collect import stream
from almostlinear.core.errors import ChoiceError, NonFiniteError, ShapeError, SiteError
from almostlinear.core.hooks import StopForward, position_mask
from almostlinear.core.sites import Site


@functools.lru_cache(maxsize=None)
def _shared(name: str):
    """A model reused across hypothesis examples (function-scoped fixtures do not mix with @given)."""
    return build_model(name)


def _hook_state(model):
    return {
        name: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks))
        for name, m in model.named_modules()
    }


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_params(model, before):
    after = model.state_dict()
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def _warm(model, inputs):
    """One plain forward first: transformers installs its own output-capturing hooks on first use."""
    with torch.no_grad():
        model(**inputs, output_hidden_states=True)
    return _hook_state(model)


def _inputs(tokenizer, side="right", texts=("the cat is on the road .", "a dog", "one two three")):
    tokenizer.padding_side = side
    return tokenizer(list(texts), return_tensors="pt", padding=True)


def _out(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _resid_full(model, inputs, site="resid_pre.1"):
    with torch.no_grad(), record(model, site, keep_full=True) as rec:
        model(**inputs)
    return rec.full(site)[0]


# ---------------------------------------------------------------------------------------------
# reversibility


def test_add_changes_output_and_restores_bit_for_bit(tiny_model, tiny_tokenizer):
    _, model = tiny_model
    inputs = _inputs(tiny_tokenizer)
    hooks = _warm(model, inputs)
    params = _params(model)
    before = _out(model, inputs)
    vector = torch.randn(D_MODEL)
    with add(model, "resid_post.0", vector, scale=2.0):
        assert _hook_state(model) != hooks
        steered = _out(model, inputs)
    assert not torch.allclose(steered, before)
    assert torch.equal(_out(model, inputs), before)
    assert _hook_state(model) == hooks
    assert _same_params(model, params)


def test_fresh_model_has_no_hooks_left(tiny_llama, tiny_tokenizer):
    model = tiny_llama
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with add(model, "mlp_key.1", torch.ones(D_MLP)), record(model, ["attn_out.0", "resid_pre.1"]):
        pass
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert not torch.nn.modules.module._global_forward_hooks
    assert not torch.nn.modules.module._global_forward_pre_hooks


@pytest.mark.parametrize("lever", ["add", "project_out", "replace", "record"])
def test_restored_when_body_raises(tiny_causal, tiny_tokenizer, lever):
    _, model = tiny_causal
    inputs = _inputs(tiny_tokenizer)
    hooks = _warm(model, inputs)
    params = _params(model)
    before = _out(model, inputs)
    contexts = {
        "add": lambda: add(model, "resid_pre.1", torch.randn(D_MODEL)),
        "project_out": lambda: project_out(model, "attn_out.0", torch.randn(2, D_MODEL)),
        "replace": lambda: replace(model, "mlp_key.0", torch.zeros(D_MLP), positions="last"),
        "record": lambda: record(model, ["resid_post.0", "mlp_out.1"]),
    }
    with pytest.raises(RuntimeError, match="boom"):
        with contexts[lever]():
            _out(model, inputs)
            raise RuntimeError("boom")
    assert _hook_state(model) == hooks
    assert _same_params(model, params)
    assert torch.equal(_out(model, inputs), before)


def test_restored_when_a_hook_raises(tiny_llama, tiny_tokenizer):
    model = tiny_llama
    inputs = _inputs(tiny_tokenizer)
    hooks = _warm(model, inputs)
    before = _out(model, inputs)

    def broken(hidden, chosen):
        raise ZeroDivisionError("inside the hook")

    with pytest.raises(ZeroDivisionError):
        with intervene(model, {"resid_post.0": broken}):
            _out(model, inputs)
    assert _hook_state(model) == hooks
    assert torch.equal(_out(model, inputs), before)


def test_stop_forward_leaves_model_usable(tiny_causal, tiny_tokenizer):
    _, model = tiny_causal
    inputs = _inputs(tiny_tokenizer)
    hooks = _warm(model, inputs)
    before = _out(model, inputs)
    structure = locate(model)
    calls = []
    handle = structure.blocks[1].module.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        with torch.no_grad(), record(model, ["resid_post.0", "attn_out.0"], stop_after=True) as rec:
            with pytest.raises(StopForward):
                model(**inputs)
    finally:
        handle.remove()
    assert calls == []  # block 1 never ran
    n_real = int(inputs["attention_mask"].sum())
    assert rec["resid_post.0"].shape == (n_real, D_MODEL)
    assert rec["attn_out.0"].shape == (n_real, D_MODEL)
    assert _hook_state(model) == hooks
    assert torch.equal(_out(model, inputs), before)
    # and the streaming collector, which relies on the early stop, works
    texts = ["the cat", "a dog is here", "one"]
    batches = list(stream(model, tiny_tokenizer, texts, "resid_post.0", batch_size=2))
    assert [len(b) for b in batches] == [6, 1]
    assert torch.allclose(torch.cat([b.activations[Site("resid_post", 0)] for b in batches]),
                          torch.cat([_resid_full(model, tiny_tokenizer([t], return_tensors="pt"),
                                                 "resid_post.0")[0] for t in texts]), atol=1e-5)


def test_record_without_forward_says_so(tiny_llama):
    with record(tiny_llama, "resid_post.0") as rec:
        pass
    with pytest.raises(ShapeError, match="nothing was recorded"):
        rec["resid_post.0"]
    with pytest.raises(KeyError):
        rec["resid_post.1"]


# ---------------------------------------------------------------------------------------------
# project_out


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), k=st.integers(1, 4), name=st.sampled_from(["llama", "gpt2", "bert"]),
       site=st.sampled_from(["resid_post.0", "attn_out.1", "mlp_out.0", "resid_pre.1"]))
def test_project_out_twice_equals_once(seed, k, name, site):
    model = _shared(name)
    inputs = _inputs(make_tokenizer())
    directions = torch.randn(k, D_MODEL, generator=torch.Generator().manual_seed(seed))
    with project_out(model, site, directions):
        once = _out(model, inputs)
        with project_out(model, site, directions):
            twice = _out(model, inputs)
    assert torch.allclose(once, twice, atol=1e-5, rtol=1e-5)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), k=st.integers(1, 3), scale=st.floats(0.01, 100.0))
def test_project_out_removes_the_span(seed, k, scale):
    model = _shared("llama")
    inputs = _inputs(make_tokenizer())
    gen = torch.Generator().manual_seed(seed)
    directions = scale * torch.randn(k, D_MODEL, generator=gen)
    mask = inputs["attention_mask"].bool()
    # the edit at resid_post.0 is what block 1 receives at resid_pre.1
    with project_out(model, "resid_post.0", directions):
        after = _resid_full(model, inputs, "resid_pre.1")
    residual = after[mask] @ directions.T
    assert residual.abs().max() < 1e-4 * after.norm(dim=-1).max() * directions.norm(dim=-1).max()
    # the component orthogonal to the span is untouched
    before = _resid_full(model, inputs, "resid_pre.1")
    q, _ = torch.linalg.qr(directions.T.double())
    complement = lambda x: x.double() - (x.double() @ q) @ q.T  # noqa: E731
    assert torch.allclose(complement(after[mask]), complement(before[mask]), atol=1e-5)


def test_project_out_dependent_directions(tiny_llama, tiny_tokenizer):
    """Linearly dependent directions span less: the edit removes only their span."""
    inputs = _inputs(tiny_tokenizer)
    d = torch.randn(D_MODEL)
    with project_out(tiny_llama, "resid_post.0", torch.stack([d, 2 * d, -d])):
        a = _resid_full(tiny_llama, inputs)
    with project_out(tiny_llama, "resid_post.0", d):
        b = _resid_full(tiny_llama, inputs)
    assert torch.allclose(a, b, atol=1e-5)


def test_nested_contexts_act_in_the_order_entered(tiny_llama, tiny_tokenizer):
    """A record opened inside an edit at the same site reads the edited activation, and vice versa."""
    inputs = _inputs(tiny_tokenizer)
    mask = inputs["attention_mask"].bool()
    direction = torch.randn(D_MODEL)
    with project_out(tiny_llama, "resid_post.0", direction):
        with torch.no_grad(), record(tiny_llama, "resid_post.0") as inner:
            tiny_llama(**inputs)
    assert (inner["resid_post.0"] @ direction).abs().max() < 1e-4
    with torch.no_grad(), record(tiny_llama, "resid_post.0") as outer:
        with add(tiny_llama, "resid_post.0", direction):
            tiny_llama(**inputs)
    plain = _resid_full(tiny_llama, inputs, "resid_pre.1")[mask]
    assert torch.equal(outer["resid_post.0"], plain)


def test_edits_in_one_slot_run_in_attach_order(tiny_llama, tiny_tokenizer):
    inputs = _inputs(tiny_tokenizer)
    before = _resid_full(tiny_llama, inputs)
    edits = {
        "resid_post.0": lambda h, chosen: h * 2.0,
        Site("resid_post", 0): lambda h, chosen: h + 1.0,  # same slot, attached second
    }
    with intervene(tiny_llama, edits, positions="all"):
        after = _resid_full(tiny_llama, inputs)
    assert torch.allclose(after, before * 2.0 + 1.0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# positions


def _changed(model, inputs, positions, site="resid_post.0"):
    before = _resid_full(model, inputs)
    with add(model, site, torch.ones(D_MODEL), positions=positions):
        after = _resid_full(model, inputs)
    diff = after - before
    changed = diff.abs().amax(-1) > 0
    # where it changed, it changed by exactly the vector (the site feeds resid_pre.1 directly)
    assert torch.allclose(diff[changed], torch.ones_like(diff[changed]), atol=1e-5)
    return changed


def _expected(mask, wanted):
    """Boolean [batch, seq] with True at the real-token indices ``wanted(n_real)`` of each row."""
    out = torch.zeros_like(mask)
    for row in range(mask.shape[0]):
        real = mask[row].nonzero().flatten()
        for i in wanted(len(real)):
            out[row, real[i]] = True
    return out


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize(
    "positions, wanted",
    [
        ("all", lambda n: range(n)),
        ("last", lambda n: [n - 1]),
        ("first", lambda n: [0]),
        ([0, -1], lambda n: sorted({0, n - 1})),
        ([1], lambda n: [1] if n > 1 else []),
        ([-2, 5], lambda n: sorted({i for i in (n - 2, 5) if 0 <= i < n})),
        ([], lambda n: []),
        (lambda index, mask: index % 2 == 1, lambda n: range(1, n, 2)),
    ],
    ids=["all", "last", "first", "0,-1", "1", "-2,5", "none", "odd"],
)
def test_positions_among_real_tokens(tiny_causal, tiny_tokenizer, side, positions, wanted):
    _, model = tiny_causal
    inputs = _inputs(tiny_tokenizer, side)
    mask = inputs["attention_mask"].bool()
    assert not mask.all()  # the batch is padded
    changed = _changed(model, inputs, positions)
    assert torch.equal(changed, _expected(mask, wanted))
    assert not changed[~mask].any()  # pads untouched


def test_positions_in_bert(tiny_tokenizer):
    model = build_model("bert")
    inputs = _inputs(tiny_tokenizer)
    mask = inputs["attention_mask"].bool()
    changed = _changed(model, inputs, "last")
    assert torch.equal(changed, _expected(mask, lambda n: [n - 1]))


def test_integer_positions_as_arrays(tiny_tokenizer):
    import numpy as np

    model = _shared("llama")
    inputs = _inputs(tiny_tokenizer, "left")
    mask = inputs["attention_mask"].bool()
    for positions in (np.array([0, -1]), torch.tensor([0, -1]), (0, -1)):
        changed = _changed(model, inputs, positions)
        assert torch.equal(changed, _expected(mask, lambda n: sorted({0, n - 1})))
    for positions in (-1, np.int64(-1), torch.tensor(-1)):  # a single index
        changed = _changed(model, inputs, positions)
        assert torch.equal(changed, _expected(mask, lambda n: [n - 1]))


def test_position_mask_without_attention_mask():
    chosen = position_mask("last", None, (2, 4), torch.device("cpu"))
    assert chosen.tolist() == [[False, False, False, True]] * 2
    with pytest.raises(ChoiceError, match="unknown position policy"):
        position_mask("middle", None, (2, 4), torch.device("cpu"))
    with pytest.raises(ShapeError):
        position_mask(lambda index, mask: torch.ones(3, dtype=torch.bool), None, (2, 4), torch.device("cpu"))


def test_position_mask_with_cache_counts_from_sequence_start():
    # two past tokens and one new one; row 1 is left-padded by one
    attention = torch.tensor([[1, 1, 1], [0, 1, 1]])
    assert position_mask([2], attention, (2, 1), torch.device("cpu")).tolist() == [[True], [False]]
    assert position_mask([1], attention, (2, 1), torch.device("cpu")).tolist() == [[False], [True]]
    assert position_mask("last", attention, (2, 1), torch.device("cpu")).tolist() == [[True], [True]]


# ---------------------------------------------------------------------------------------------
# generation with a KV cache


@pytest.mark.parametrize("side", ["left", "right"])
def test_generate_with_cache_matches_without(tiny_causal, tiny_tokenizer, side):
    _name, model = tiny_causal
    inputs = _inputs(tiny_tokenizer, side)
    vector = 3.0 * torch.randn(D_MODEL, generator=torch.Generator().manual_seed(1))
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        plain = model.generate(**inputs, use_cache=True, **settings)
        with add(model, "resid_pre.1", vector, positions="all"):
            cached = model.generate(**inputs, use_cache=True, **settings)
            uncached = model.generate(**inputs, use_cache=False, **settings)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, plain)  # the steering did something


def test_generate_replace_last_steers_each_new_token(tiny_tokenizer):
    """With a cache, "last" is the newest token of each step: every generated token is edited."""
    model = _shared("llama")
    inputs = _inputs(tiny_tokenizer, "left")
    seen = []

    def spy(hidden, chosen):
        seen.append(chosen.clone())

    with torch.no_grad(), intervene(model, {"resid_pre.0": spy}, positions="last"):
        model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert len(seen) == 3
    assert seen[0].sum() == 3 and seen[0][:, -1].all()  # prompt: last column (left-padded)
    assert all(s.shape == (3, 1) and s.all() for s in seen[1:])  # one new token per row


# ---------------------------------------------------------------------------------------------
# replace and input checks


def test_replace_sets_the_values(tiny_llama, tiny_tokenizer):
    inputs = _inputs(tiny_tokenizer)
    mask = inputs["attention_mask"].bool()
    value = torch.arange(D_MODEL, dtype=torch.float32)
    before = _resid_full(tiny_llama, inputs)
    with replace(tiny_llama, "resid_post.0", value, positions="last"):
        after = _resid_full(tiny_llama, inputs)
    last = _expected(mask, lambda n: [n - 1])
    assert torch.equal(after[last], value.expand(3, -1))
    assert torch.equal(after[~last], before[~last])
    with replace(tiny_llama, "resid_post.0", lambda h: -h):
        negated = _resid_full(tiny_llama, inputs)
    assert torch.equal(negated[mask], -before[mask])
    assert torch.equal(negated[~mask], before[~mask])  # pads are not real tokens: untouched


@pytest.mark.parametrize(
    "make",
    [
        lambda m: add(m, "resid_post.0", torch.ones(D_MODEL - 1)),
        lambda m: add(m, "mlp_key.0", torch.ones(D_MODEL)),
        lambda m: add(m, "resid_post.0", torch.ones(2, D_MODEL)),
        lambda m: project_out(m, "mlp_out.1", torch.ones(3, D_MLP)),
        lambda m: replace(m, "resid_pre.0", torch.ones(D_MLP)),
    ],
    ids=["short", "mlp_key", "matrix", "project", "replace"],
)
def test_wrong_width_raises_shape_error(tiny_llama, make):
    hooks = _hook_state(tiny_llama)
    with pytest.raises(ShapeError, match="features|shape"):
        with make(tiny_llama):
            pass
    assert _hook_state(tiny_llama) == hooks


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_vectors_raise(tiny_llama, bad):
    vector = torch.ones(D_MODEL)
    vector[3] = bad
    with pytest.raises(NonFiniteError):
        with add(tiny_llama, "resid_post.0", vector):
            pass
    with pytest.raises(NonFiniteError):
        with project_out(tiny_llama, "resid_post.0", vector):
            pass
    with pytest.raises(NonFiniteError):
        with replace(tiny_llama, "resid_post.0", vector):
            pass
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in tiny_llama.modules())


def test_edit_returning_wrong_shape(tiny_llama, tiny_tokenizer):
    inputs = _inputs(tiny_tokenizer)
    with pytest.raises(ShapeError, match="an edit returned shape"):
        with intervene(tiny_llama, {"resid_post.0": lambda h, c: h[:, :1]}):
            _out(tiny_llama, inputs)


def test_dtype_follows_the_model(tiny_tokenizer):
    model = build_model("llama").to(torch.float64)
    inputs = _inputs(tiny_tokenizer)
    with add(model, "resid_post.0", torch.ones(D_MODEL, dtype=torch.float32)):
        out = _resid_full(model, inputs)
    assert out.dtype == torch.float64


@pytest.mark.real
def test_smollm2_add_is_reversible(smollm2):
    model, tokenizer = smollm2
    inputs = tokenizer(["Hello there"], return_tensors="pt")
    before = _out(model, inputs)
    norm = _resid_full(model, inputs, "resid_post.10").norm(dim=-1).mean()
    direction = torch.randn(576, generator=torch.Generator().manual_seed(0))
    with add(model, "resid_post.10", direction / direction.norm(), scale=float(4 * norm)):
        steered = _out(model, inputs)
    assert not torch.allclose(steered, before)
    assert torch.equal(_out(model, inputs), before)


def test_padding_is_respected_when_the_inner_base_model_is_called():
    """Calling ``model.model`` directly (no LM head) still reads the padding mask."""
    from almostlinear import add, locate, record

    model = build_model("llama")
    tokenizer = make_tokenizer()
    tokenizer.padding_side = "right"
    batch = tokenizer(["the cat is on the road", "a dog"], return_tensors="pt", padding=True)
    structure = locate(model)
    with torch.no_grad():
        with record(model, ["resid_post.0"], keep_full=True, structure=structure) as before:
            model.model(**batch)
        with add(model, "resid_post.0", torch.ones(D_MODEL), scale=5.0, structure=structure):
            with record(model, ["resid_post.0"], keep_full=True, structure=structure) as after:
                model.model(**batch)
    plain, steered = before.full("resid_post.0")[0], after.full("resid_post.0")[0]
    pads = ~batch["attention_mask"].bool()
    assert pads.any()
    assert torch.equal(plain[pads], steered[pads])
    assert torch.allclose(steered[~pads] - plain[~pads], torch.full_like(plain[~pads], 5.0), atol=1e-5)
    # the recording saw only real tokens
    assert after["resid_post.0"].shape[0] == int(batch["attention_mask"].sum())


# ---------------------------------------------------------------------------------------------
# sublayer inputs: attn_in and mlp_in


def _norms(name, block):
    """The norm before the attention and the one before the MLP, by the family's own names."""
    if name == "gpt2":
        return block.ln_1, block.ln_2
    return block.input_layernorm, block.post_attention_layernorm


@pytest.mark.parametrize("name", ["llama", "gpt2", "gpt_neox", "qwen2", "gemma"])
def test_sublayer_inputs_are_the_normed_stream(name, tiny_tokenizer):
    model = build_model(name)
    s = locate(model)
    inputs = _inputs(tiny_tokenizer)
    sites = ["resid_pre.1", "attn_in.1", "attn_out.1", "mlp_in.1", "mlp_out.1"]
    with torch.no_grad(), record(model, sites, keep_full=True, structure=s) as rec:
        model(**inputs)
    full = {site: rec.full(site)[0] for site in sites}
    block = s.block(1).module
    attn_norm, mlp_norm = _norms(name, block)
    resid = full["resid_pre.1"]
    with torch.no_grad():
        assert torch.allclose(full["attn_in.1"], attn_norm(resid), atol=1e-6)
        # GPT-NeoX's parallel block: the MLP reads the block input through its own norm, not what the
        # attention reads; the sequential blocks' MLP reads the stream after the attention's write.
        mlp_reads = resid if name == "gpt_neox" else resid + full["attn_out.1"]
        assert torch.allclose(full["mlp_in.1"], mlp_norm(mlp_reads), atol=1e-6)
    assert not torch.allclose(full["attn_in.1"], full["mlp_in.1"], atol=1e-3)
    assert full["attn_in.1"].shape[-1] == full["mlp_in.1"].shape[-1] == D_MODEL


@pytest.mark.parametrize("name, shared", [("gptj", True), ("falcon", True), ("gpt_neox", False)])
def test_parallel_blocks_read_one_normed_input_only_when_they_have_one_norm(name, shared, tiny_tokenizer):
    # GPT-J and Falcon feed both sublayers the output of one norm; GPT-NeoX gives each its own norm.
    model = build_model(name)
    with torch.no_grad(), record(model, ["attn_in.1", "mlp_in.1"]) as rec:
        model(**_inputs(tiny_tokenizer))
    assert torch.equal(rec["attn_in.1"], rec["mlp_in.1"]) == shared


def test_sublayer_inputs_in_every_decoder_and_none_for_a_split_mlp(tiny_tokenizer):
    from tiny_models import BUILDERS

    inputs = _inputs(tiny_tokenizer)
    for name in BUILDERS:
        if name == "bert":
            continue
        model = build_model(name)
        with torch.no_grad(), record(model, ["attn_in.0", "mlp_in.1"]) as rec:
            model(**inputs)
        n_real = int(inputs["attention_mask"].sum())
        for site in ("attn_in.0", "mlp_in.1"):
            assert rec[site].shape == (n_real, D_MODEL) and torch.isfinite(rec[site]).all(), (name, site)
    bert = build_model("bert")
    with pytest.raises(SiteError, match="MLP"), record(bert, "mlp_in.0"):
        pass
    with torch.no_grad(), record(bert, "attn_in.0", keep_full=True) as rec:  # post-norm: the block input
        bert(**inputs)
    assert torch.equal(rec.full("attn_in.0")[0], _resid_full(bert, inputs, "resid_pre.0"))


def test_writing_at_a_sublayer_input_changes_only_what_that_sublayer_reads(tiny_llama, tiny_tokenizer):
    inputs = _inputs(tiny_tokenizer)
    hooks = _warm(tiny_llama, inputs)
    with torch.no_grad():
        base = _resid_full(tiny_llama, inputs, "resid_post.0")
        attn = _resid_full(tiny_llama, inputs, "attn_out.0")
    vector = torch.randn(D_MODEL)
    with torch.no_grad(), add(tiny_llama, "mlp_in.0", vector), \
            record(tiny_llama, ["attn_out.0", "resid_post.0"], keep_full=True) as rec:
        tiny_llama(**inputs)
    assert torch.equal(rec.full("attn_out.0")[0], attn)  # the attention before it is untouched
    assert not torch.allclose(rec.full("resid_post.0")[0], base, atol=1e-4)
    assert _hook_state(tiny_llama) == hooks


def test_execution_order_puts_inputs_before_outputs():
    from almostlinear.core.hooks import execution_order

    names = ["resid_pre", "attn_in", "attn_out", "mlp_in", "mlp_key", "mlp_out", "resid_post"]
    assert sorted((Site(n, 0) for n in reversed(names)), key=execution_order) == [Site(n, 0) for n in names]
