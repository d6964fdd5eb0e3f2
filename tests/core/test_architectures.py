"""Every tiny causal architecture goes through ``locate`` and the hooks with no per-architecture table.

The residual sites must equal HF's own hidden states, adding nothing must change nothing, and what the
attention and the MLP (or the sparse mixture-of-experts block) write must rebuild the block's output.
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import (
    CAUSAL_ARCHITECTURES,
    D_MLP,
    D_MODEL,
    MOE_ARCHITECTURES,
    N_LAYERS,
    POST_NORM_ARCHITECTURES,
    TEXTS,
    build_model,
    make_tokenizer,
)
from transformers import MixtralConfig, MixtralForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM

from almostlinear import locate, record
from almostlinear.core.errors import SiteError
from almostlinear.core.hooks import add
from almostlinear.core.locate import linear_shape
from almostlinear.core.sites import SITE_NAMES, Site

TIED = {"gpt2", "gemma", "gemma2", "gemma3", "falcon"}  # the configs' defaults, kept


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module", params=CAUSAL_ARCHITECTURES)
def arch(request) -> tuple[str, torch.nn.Module]:
    return request.param, build_model(request.param)


def _inputs(tokenizer, side: str = "right"):
    tokenizer.padding_side = side
    return tokenizer(list(TEXTS[:3]), return_tensors="pt", padding=True)


def _members(module: torch.nn.Module) -> set[int]:
    return {id(m) for m in module.modules()}


def test_the_lists_are_consistent():
    assert set(MOE_ARCHITECTURES) <= set(CAUSAL_ARCHITECTURES)
    assert set(POST_NORM_ARCHITECTURES) <= set(CAUSAL_ARCHITECTURES)
    assert len(CAUSAL_ARCHITECTURES) == len(set(CAUSAL_ARCHITECTURES)) >= 16
    assert "bert" not in CAUSAL_ARCHITECTURES


def test_locate(arch):
    name, model = arch
    structure = locate(model)
    assert (structure.n_layers, structure.d_model, structure.d_mlp) == (N_LAYERS, D_MODEL, D_MLP)
    assert structure.embedding is model.get_input_embeddings()
    assert structure.unembedding is model.get_output_embeddings()
    assert structure.final_norm is not None and model.get_submodule(structure.final_norm_path) is structure.final_norm
    assert structure.tied_embeddings is (name in TIED)
    assert structure.tied_embeddings is (structure.embedding.weight is structure.unembedding.weight)
    assert structure.transposed_weights is (name == "gpt2")
    moe = name in MOE_ARCHITECTURES
    for block in structure.blocks:
        assert block.module is model.get_submodule(block.path)
        members = _members(block.module)
        assert {id(block.attention), id(block.attn_out_proj), id(block.mlp)} <= members
        assert id(block.attn_out_proj) in _members(block.attention)
        assert linear_shape(block.attn_out_proj) == (D_MODEL, D_MODEL)
        assert id(block.mlp) not in _members(block.attention)
        assert block.moe is moe
        assert block.post_norms is (name in POST_NORM_ARCHITECTURES)
        if moe:
            assert block.mlp_down_proj is None
            assert {id(block.experts), id(block.router)} <= _members(block.mlp)
            assert block.router.weight.shape == (model.config.num_experts if hasattr(model.config, "num_experts")
                                                 else model.config.num_local_experts, D_MODEL)
        else:
            assert block.experts is None and block.router is None
            assert linear_shape(block.mlp_down_proj) == (D_MODEL, D_MLP)
            assert id(block.mlp_down_proj) in _members(block.mlp)


def test_summary(arch):
    name, model = arch
    summary = locate(model).summary()
    json.dumps(summary)  # JSON-ready
    assert summary["n_layers"] == N_LAYERS and summary["d_mlp"] == D_MLP and summary["d_model"] == D_MODEL
    assert summary["moe"] is (name in MOE_ARCHITECTURES)
    assert summary["post_norms"] is (name in POST_NORM_ARCHITECTURES)
    assert summary["mlp"] and model.get_submodule(summary["mlp"]) is locate(model).blocks[0].mlp
    if name in MOE_ARCHITECTURES:
        assert summary["mlp_down_proj"] is None
    else:
        assert model.get_submodule(summary["mlp_down_proj"]) is locate(model).blocks[0].mlp_down_proj


@pytest.mark.parametrize("side", ["right", "left"])
def test_resid_post_matches_hidden_states(arch, tokenizer, side):
    """``hidden_states[i + 1]`` is block ``i``'s output, except the last, which is after the final norm."""
    _name, model = arch
    structure = locate(model)
    sites = [f"resid_post.{i}" for i in range(N_LAYERS)] + ["resid_pre.0"]
    with torch.no_grad(), record(model, sites, keep_full=True, structure=structure) as rec:
        out = model(**_inputs(tokenizer, side), output_hidden_states=True)
    hidden = out.hidden_states
    assert len(hidden) == N_LAYERS + 1
    assert torch.equal(rec.full("resid_pre.0")[0], hidden[0])
    for i in range(N_LAYERS - 1):
        assert torch.equal(rec.full(f"resid_post.{i}")[0], hidden[i + 1])
    last = rec.full(f"resid_post.{N_LAYERS - 1}")[0]
    with torch.no_grad():
        torch.testing.assert_close(structure.final_norm(last), hidden[-1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(last, hidden[-1])


def test_adding_at_resid_post(arch, tokenizer):
    _name, model = arch
    structure = locate(model)
    inputs = _inputs(tokenizer)
    with torch.no_grad():
        base = model(**inputs).logits
        for layer in range(N_LAYERS):
            with add(model, f"resid_post.{layer}", torch.zeros(D_MODEL), structure=structure):
                assert torch.equal(model(**inputs).logits, base)
            with add(model, f"resid_post.{layer}", torch.randn(D_MODEL), structure=structure):
                assert not torch.allclose(model(**inputs).logits, base, atol=1e-4)
        assert torch.equal(model(**inputs).logits, base)  # nothing left behind


def test_sublayer_sites_rebuild_the_block(arch, tokenizer):
    """``resid_pre + attn_out + mlp_out`` (each through its post-sublayer norm, where there is one) is
    ``resid_post``; on a mixture of experts ``mlp_out`` is the sparse block's output."""
    name, model = arch
    structure = locate(model)
    sites = [f"{s}.{i}" for i in range(N_LAYERS) for s in ("resid_pre", "attn_out", "mlp_out", "resid_post")]
    written: dict[int, torch.Tensor] = {}
    handles = [block.mlp.register_forward_hook(lambda m, a, o, i=block.index: written.__setitem__(i, o))
               for block in structure.blocks]
    try:
        # rec[site] copies the chosen tokens at once: Falcon adds the attention in place into the MLP's output
        with torch.no_grad(), record(model, sites, structure=structure) as rec:
            mask = _inputs(tokenizer)["attention_mask"].bool()
            model(**_inputs(tokenizer))
    finally:
        for handle in handles:
            handle.remove()
    for block in structure.blocks:
        i = block.index
        pre, attn, mlp, post = (rec[f"{s}.{i}"] for s in ("resid_pre", "attn_out", "mlp_out", "resid_post"))
        if block.moe:
            sparse = written[i][0] if isinstance(written[i], tuple) else written[i]
            assert torch.equal(mlp, sparse[mask])
        with torch.no_grad():
            if block.post_norms:
                attn = block.module.post_attention_layernorm(attn)
                mlp = block.module.post_feedforward_layernorm(mlp)
            torch.testing.assert_close(pre + attn + mlp, post, rtol=1e-5, atol=1e-5)
    assert name  # every architecture, dense or sparse, sequential or parallel


def test_every_site_reads_its_width(arch, tokenizer):
    """Each site the vocabulary names either records ``[tokens, width]`` or refuses with a SiteError
    (only ``mlp_key`` of a mixture of experts refuses here)."""
    name, model = arch
    structure = locate(model)
    sites, refused = [], []
    for site in (Site(s, layer) for layer in range(N_LAYERS) for s in SITE_NAMES):
        try:
            site.target(structure)
        except SiteError:
            refused.append(site.name)
            continue
        sites.append(site)
    assert set(refused) == ({"mlp_key"} if name in MOE_ARCHITECTURES else set())
    inputs = _inputs(tokenizer)
    with torch.no_grad(), record(model, sites, structure=structure) as rec:
        model(**inputs)
    n_tokens = int(inputs["attention_mask"].sum())
    for site in sites:
        assert rec[site].shape == (n_tokens, site.width(structure)), site
        assert torch.isfinite(rec[site]).all()


@pytest.mark.parametrize("name", MOE_ARCHITECTURES)
def test_moe_sites(name, tokenizer):
    model = build_model(name)
    structure = locate(model)
    assert Site("mlp_out", 0).target(structure) == (structure.blocks[0].mlp, "output")
    with pytest.raises(SiteError, match="mixture of experts"):
        Site("mlp_key", 1).target(structure)
    with pytest.raises(SiteError, match="mixture of experts"):
        record(model, "mlp_key.0").__enter__()
    inputs = _inputs(tokenizer)
    with torch.no_grad():
        base = model(**inputs).logits
        with add(model, "mlp_out.0", torch.zeros(D_MODEL), structure=structure):
            assert torch.equal(model(**inputs).logits, base)
        with add(model, "mlp_out.0", torch.randn(D_MODEL), structure=structure):
            assert not torch.allclose(model(**inputs).logits, base, atol=1e-4)
        with add(model, "attn_out.1", torch.randn(D_MODEL), structure=structure):
            assert not torch.allclose(model(**inputs).logits, base, atol=1e-4)


def test_dense_and_sparse_blocks_in_one_model():
    """Qwen2-MoE can keep dense MLPs in some layers: each block is classified on its own."""
    torch.manual_seed(0)
    model = Qwen2MoeForCausalLM(Qwen2MoeConfig(
        hidden_size=D_MODEL, intermediate_size=2 * D_MLP, moe_intermediate_size=D_MLP,
        shared_expert_intermediate_size=D_MLP, num_experts=4, num_experts_per_tok=2, mlp_only_layers=[0],
        num_hidden_layers=N_LAYERS, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        vocab_size=100, pad_token_id=0, eos_token_id=1, bos_token_id=None)).eval()
    structure = locate(model)
    dense, sparse = structure.blocks
    assert not dense.moe and linear_shape(dense.mlp_down_proj) == (D_MODEL, 2 * D_MLP)
    assert sparse.moe and sparse.mlp_down_proj is None
    # the routed experts' width, not the shared expert's down projection
    assert sparse.mlp is model.model.layers[1].mlp and sparse.experts is sparse.mlp.experts
    assert structure.d_mlp == 2 * D_MLP  # the widest MLP


class _Expert(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.w1, self.w3 = torch.nn.Linear(D_MODEL, width, bias=False), torch.nn.Linear(D_MODEL, width, bias=False)
        self.w2 = torch.nn.Linear(width, D_MODEL, bias=False)

    def forward(self, x):
        return self.w2(torch.nn.functional.silu(self.w1(x)) * self.w3(x))


class _ListMoe(torch.nn.Module):
    """The older layout: a linear router and a ``ModuleList`` of experts; returns ``(hidden, router_logits)``."""

    def __init__(self, n_experts: int = 4, width: int = D_MLP // 2) -> None:
        super().__init__()
        self.gate = torch.nn.Linear(D_MODEL, n_experts, bias=False)
        self.experts = torch.nn.ModuleList(_Expert(width) for _ in range(n_experts))

    def forward(self, hidden):
        logits = self.gate(hidden)
        weights = logits.softmax(-1)
        out = sum(weights[..., e, None] * expert(hidden) for e, expert in enumerate(self.experts))
        return out, logits


class _FirstOutput(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, hidden):
        return self.inner(hidden)[0]


def test_moe_with_a_list_of_experts(tokenizer):
    """Experts as a ``ModuleList`` of MLPs and a ``Linear`` router (transformers 4 and remote code);
    the sparse block returns a tuple, and ``mlp_out`` reads its hidden state."""
    torch.manual_seed(0)
    model = MixtralForCausalLM(MixtralConfig(
        hidden_size=D_MODEL, intermediate_size=D_MLP, num_hidden_layers=N_LAYERS, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, num_local_experts=4, vocab_size=100,
        pad_token_id=0, eos_token_id=1, bos_token_id=None)).eval()
    for layer in model.model.layers:
        layer.mlp = _FirstOutput(_ListMoe())  # transformers 4 decoder layers unpacked the tuple themselves
    structure = locate(model)
    block = structure.blocks[0]
    assert block.mlp is model.model.layers[0].mlp.inner  # the module holding experts and router
    assert block.moe and block.router is block.mlp.gate and block.experts is block.mlp.experts
    assert structure.d_mlp == D_MLP // 2
    seen = []
    handle = block.mlp.register_forward_hook(lambda m, a, o: seen.append(o[0]))
    try:
        with torch.no_grad(), record(model, "mlp_out.0", keep_full=True, structure=structure) as rec:
            model(**_inputs(tokenizer))
    finally:
        handle.remove()
    assert torch.equal(rec.full("mlp_out.0")[0], seen[0])


@pytest.mark.parametrize(("name", "tied"), [("llama", False), ("gpt2", True), ("mixtral", False)])
def test_tied_embeddings_on_the_meta_device(name, tied):
    """Meta tensors have no storage to compare (every ``data_ptr`` is 0): the config decides there."""
    from tiny_models import BUILDERS

    with torch.device("meta"):
        model = BUILDERS[name]()
    structure = locate(model)
    assert structure.embedding.weight.is_meta
    assert structure.tied_embeddings is tied


def test_an_untied_copy_of_the_head_is_not_tied():
    model = build_model("gpt2")
    assert locate(model).tied_embeddings
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    assert not locate(model).tied_embeddings
