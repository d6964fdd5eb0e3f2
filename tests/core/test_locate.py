"""locate(): structure of the six original tiny families and the two real models; sites agree with HF's own
outputs. Every other architecture is covered in test_architectures.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_models import D_MLP, D_MODEL, N_LAYERS, build_model

from almostlinear import locate, record
from almostlinear.core.errors import LayerError, SiteError, StructureError
from almostlinear.core.locate import is_linear, linear_shape, linear_weight
from almostlinear.core.sites import SITE_NAMES, Site, all_layers, as_sites

ALL_SITES = [f"{name}.{layer}" for layer in range(N_LAYERS) for name in SITE_NAMES]
TIED = {"llama": False, "gpt2": True, "gpt_neox": False, "qwen2": False, "gemma": True, "bert": False}


def _batch(tokenizer, side="right"):
    tokenizer.padding_side = side
    return tokenizer(["the cat is on the road .", "a dog"], return_tensors="pt", padding=True)


def _sites(model) -> list[str]:
    """Every site the model has (BERT's split MLP has no ``mlp_in``)."""
    structure = locate(model)
    out = []
    for text in ALL_SITES:
        try:
            Site.parse(text).target(structure)
        except SiteError:
            continue
        out.append(text)
    return out


def _run(model, inputs):
    """One forward with every site recorded in full, and HF's own hidden states."""
    with torch.no_grad(), record(model, _sites(model), keep_full=True) as rec:
        out = model(**inputs, output_hidden_states=True)
    return rec, out


def test_dimensions(tiny_model):
    name, model = tiny_model
    structure = locate(model)
    assert structure.n_layers == N_LAYERS
    assert structure.d_model == D_MODEL
    assert structure.d_mlp == D_MLP
    assert len(structure.blocks) == N_LAYERS
    assert [b.index for b in structure.blocks] == list(range(N_LAYERS))
    assert structure.n_params == sum(p.numel() for p in model.parameters())
    assert structure.tied_embeddings is TIED[name]
    assert structure.transposed_weights is (name == "gpt2")
    for block in structure.blocks:
        assert linear_shape(block.attn_out_proj) == (D_MODEL, D_MODEL)
        assert linear_shape(block.mlp_down_proj) == (D_MODEL, D_MLP)
        assert block.module is model.get_submodule(block.path)
        # the parts found belong to their block
        members = {id(m) for m in block.module.modules()}
        assert id(block.attention) in members and id(block.attn_out_proj) in members
        assert id(block.mlp_down_proj) in members
        assert id(block.attn_out_proj) in {id(m) for m in block.attention.modules()}
        assert id(block.mlp_down_proj) not in {id(m) for m in block.attention.modules()}
        assert not block.moe and block.experts is None and block.router is None
        # BERT's MLP is split over two children of the block (``intermediate``, ``output``) and each
        # sublayer's output is normalised with the residual (post-LN)
        assert block.post_norms is (name == "bert")
        if name == "bert":
            assert block.mlp is None
        else:
            assert id(block.mlp_down_proj) in {id(m) for m in block.mlp.modules()}
            assert block.mlp is model.get_submodule(f"{block.path}.mlp")
    assert len(_sites(model)) == len(ALL_SITES) - (N_LAYERS if name == "bert" else 0)
    summary = structure.summary()
    assert summary["n_layers"] == N_LAYERS and summary["d_mlp"] == D_MLP
    assert summary["moe"] is False and summary["post_norms"] is (name == "bert")
    if name == "bert":
        assert structure.final_norm is None and structure.unembedding is None
        assert structure.notes
    else:
        assert structure.final_norm is not None
        assert model.get_submodule(structure.final_norm_path) is structure.final_norm
        assert structure.unembedding is model.get_output_embeddings()
    assert structure.embedding is model.get_input_embeddings()


def test_gpt2_conv1d_weights_are_out_in():
    model = build_model("gpt2")
    structure = locate(model)
    down = structure.blocks[0].mlp_down_proj
    assert type(down).__name__ == "Conv1D" and is_linear(down)
    assert down.weight.shape == (D_MLP, D_MODEL)  # stored [in, out]
    weight = linear_weight(down)
    assert weight.shape == (D_MODEL, D_MLP)  # returned [out, in]
    assert torch.equal(weight, down.weight.T)
    x = torch.randn(3, D_MLP)
    assert torch.allclose(down(x), x @ weight.T + down.bias, atol=1e-6)
    assert structure.transposed_weights


def test_linear_helpers_reject_other_modules():
    assert not is_linear(torch.nn.LayerNorm(4))
    with pytest.raises(StructureError):
        linear_shape(torch.nn.LayerNorm(4))
    with pytest.raises(StructureError):
        linear_weight(torch.nn.Embedding(3, 4))


@pytest.mark.parametrize("side", ["right", "left"])
def test_resid_sites_match_hidden_states(tiny_model, tiny_tokenizer, side):
    _name, model = tiny_model
    structure = locate(model)
    rec, out = _run(model, _batch(tiny_tokenizer, side))
    hidden = out.hidden_states
    assert len(hidden) == N_LAYERS + 1
    full = lambda site: rec.full(site)[0]  # noqa: E731
    assert torch.equal(full("resid_pre.0"), hidden[0])
    for i in range(N_LAYERS - 1):
        assert torch.equal(full(f"resid_post.{i}"), hidden[i + 1])
        assert torch.equal(full(f"resid_pre.{i + 1}"), full(f"resid_post.{i}"))
    last = full(f"resid_post.{N_LAYERS - 1}")
    if structure.final_norm is None:
        assert torch.equal(last, hidden[-1])
    else:
        with torch.no_grad():
            assert torch.allclose(structure.final_norm(last), hidden[-1], atol=1e-6)
        assert not torch.allclose(last, hidden[-1])  # HF's last hidden state is after the final norm


def test_gemma_resid_pre_is_scaled_embedding(tiny_tokenizer):
    model = build_model("gemma")
    structure = locate(model)
    inputs = _batch(tiny_tokenizer)
    rec, out = _run(model, inputs)
    raw = structure.embedding.weight[inputs["input_ids"]]
    # Gemma multiplies embeddings by sqrt(d_model) inside its embedding module, so both HF's
    # hidden_states[0] and resid_pre.0 are the scaled embeddings.
    assert torch.allclose(out.hidden_states[0], raw * math.sqrt(D_MODEL), atol=1e-5)
    assert torch.equal(rec.full("resid_pre.0")[0], out.hidden_states[0])


def test_sublayer_sites(tiny_model, tiny_tokenizer):
    """attn_out + mlp_out rebuild resid_post; mlp_out is the down projection of mlp_key."""
    name, model = tiny_model
    structure = locate(model)
    rec, _ = _run(model, _batch(tiny_tokenizer))
    full = lambda site: rec.full(site)[0]  # noqa: E731
    for i, block in enumerate(structure.blocks):
        pre, post = full(f"resid_pre.{i}"), full(f"resid_post.{i}")
        attn, mlp, key = full(f"attn_out.{i}"), full(f"mlp_out.{i}"), full(f"mlp_key.{i}")
        assert key.shape[-1] == D_MLP and attn.shape[-1] == D_MODEL and mlp.shape[-1] == D_MODEL
        down = block.mlp_down_proj
        bias = down.bias if down.bias is not None else 0.0
        assert torch.allclose(mlp, key @ linear_weight(down).T + bias, atol=1e-5)
        with torch.no_grad():
            if name == "bert":  # post-norm: LN(x + attn), then LN(h + mlp)
                h = block.module.attention.output.LayerNorm(pre + attn)
                rebuilt = block.module.output.LayerNorm(h + mlp)
            else:  # pre-norm, sequential or parallel: x + attn + mlp
                rebuilt = pre + attn + mlp
        assert torch.allclose(rebuilt, post, atol=1e-5)


def test_attn_out_is_attention_output(tiny_causal, tiny_tokenizer):
    _name, model = tiny_causal
    structure = locate(model)
    seen = []
    handle = structure.blocks[1].attention.register_forward_hook(lambda m, a, o: seen.append(o[0]))
    try:
        rec, _ = _run(model, _batch(tiny_tokenizer))
    finally:
        handle.remove()
    assert len(seen) == 1
    assert torch.equal(rec.full("attn_out.1")[0], seen[0])


def test_layer_out_of_range(tiny_model):
    _, model = tiny_model
    structure = locate(model)
    with pytest.raises(LayerError, match=f"out of range.*{N_LAYERS} blocks"):
        structure.block(N_LAYERS)
    with pytest.raises(LayerError):
        structure.block(-N_LAYERS - 1)
    assert structure.block(-1) is structure.blocks[-1]
    with pytest.raises(LayerError, match="out of range"):
        record(model, f"resid_post.{N_LAYERS + 3}").__enter__()
    with pytest.raises(IndexError):  # LayerError is also an IndexError
        Site("mlp_out", 99).normalized(structure)
    assert Site("resid_post", -1).normalized(structure) == Site("resid_post", N_LAYERS - 1)


def test_unknown_site(tiny_llama):
    structure = locate(tiny_llama)
    with pytest.raises(SiteError, match="unknown site"):
        Site("resid_mid", 0)
    with pytest.raises(SiteError, match="NAME.LAYER"):
        Site.parse("resid_post")
    with pytest.raises(SiteError):
        Site.parse("resid_post.x")
    with pytest.raises(SiteError):
        as_sites(structure, [])
    with pytest.raises(SiteError):
        as_sites(structure, [3])
    with pytest.raises(SiteError, match="unknown site"):
        record(tiny_llama, "logits.1").__enter__()
    assert isinstance(SiteError("x"), ValueError)


def test_site_helpers(tiny_llama):
    structure = locate(tiny_llama)
    assert Site.parse("mlp_key.-1") == Site("mlp_key", -1)
    layer = np.int64(1)
    assert Site("resid_post", layer) == Site("resid_post", 1)
    assert type(Site("resid_post", layer).layer) is int
    with pytest.raises(SiteError, match="must be an int"):
        Site("resid_post", 1.0)
    with pytest.raises(SiteError, match="must be an int"):
        Site("resid_post", True)
    assert str(Site("attn_out", 1)) == "attn_out.1"
    assert Site("mlp_key", 0).width(structure) == D_MLP
    assert Site("resid_pre", 0).width(structure) == D_MODEL
    assert as_sites(structure, "resid_post.-1") == [Site("resid_post", N_LAYERS - 1)]
    assert all_layers(structure, "mlp_out") == [Site("mlp_out", i) for i in range(N_LAYERS)]
    block = structure.blocks[0]
    assert Site("resid_pre", 0).target(structure) == (block.module, "input")
    assert Site("mlp_key", 0).target(structure) == (block.mlp_down_proj, "input")
    assert Site("attn_out", 0).target(structure) == (block.attn_out_proj, "output")


@pytest.mark.real
def test_smollm2_structure(smollm2):
    structure = smollm2.structure
    assert structure.model_type == "llama"
    assert (structure.n_layers, structure.d_model, structure.d_mlp) == (30, 576, 1536)
    assert structure.tied_embeddings
    assert not structure.transposed_weights
    assert structure.final_norm is not None and structure.unembedding is not None
    assert structure.summary()["attn_out_proj"].endswith("self_attn.o_proj")
    assert structure.summary()["mlp_down_proj"].endswith("mlp.down_proj")


@pytest.mark.real
def test_smollm2_sites_match_hidden_states(smollm2):
    model, tokenizer = smollm2
    inputs = tokenizer(["The capital of France is"], return_tensors="pt")
    sites = ["resid_pre.0", "resid_post.3", "resid_post.29"]
    with torch.no_grad(), record(model, sites, keep_full=True) as rec:
        out = model(**inputs, output_hidden_states=True)
    assert torch.equal(rec.full("resid_pre.0")[0], out.hidden_states[0])
    assert torch.equal(rec.full("resid_post.3")[0], out.hidden_states[4])
    with torch.no_grad():
        normed = smollm2.structure.final_norm(rec.full("resid_post.29")[0])
    assert torch.allclose(normed, out.hidden_states[-1], atol=1e-4)


@pytest.mark.real
def test_minilm_structure(minilm):
    structure = minilm.structure
    assert minilm.kind == "encoder"
    assert structure.model_type == "bert"
    assert (structure.n_layers, structure.d_model, structure.d_mlp) == (6, 384, 1536)
    assert structure.unembedding is None and structure.final_norm is None
    assert not structure.tied_embeddings
    model, tokenizer = minilm
    inputs = tokenizer(["a short sentence", "another one here"], return_tensors="pt", padding=True)
    with torch.no_grad(), record(model, ["resid_post.2", "resid_post.5"], keep_full=True) as rec:
        out = model(**inputs, output_hidden_states=True)
    assert torch.equal(rec.full("resid_post.2")[0], out.hidden_states[3])
    assert torch.equal(rec.full("resid_post.5")[0], out.hidden_states[-1])
