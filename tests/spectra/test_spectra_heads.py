"""OV circuits per head: checked against the attention's own forward and against hand-split weights."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

from almostlinear.core.errors import LayerError, StructureError
from almostlinear.core.locate import linear_weight, locate
from almostlinear.spectra import head_layout, mlp_matrices, ov_factors, ov_matrix, ov_spectra
from tiny_models import D_MODEL, build_model


def _attention_io(model, layer: int):
    """Input and output of block ``layer``'s attention for four one-token sequences (attention is one-hot)."""
    attention = locate(model).blocks[layer].attention
    seen = {}

    def before(_m, args, kwargs):
        seen["x"] = kwargs.get("hidden_states", args[0] if args else None)

    def after(_m, _a, output):
        seen["y"] = output[0] if isinstance(output, tuple) else output

    handles = [attention.register_forward_pre_hook(before, with_kwargs=True), attention.register_forward_hook(after)]
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([[5], [17], [30], [44]]))
    finally:
        for h in handles:
            h.remove()
    return seen["x"][:, 0].double(), seen["y"][:, 0].double()


def _only_head(model, layer: int, head: int, head_dim: int):
    """Zero every output-projection column except head ``head``'s, so the attention output is that head's."""
    w_o = linear_weight(locate(model).blocks[layer].attn_out_proj)
    keep = torch.zeros(w_o.shape[1], dtype=torch.bool)
    keep[head * head_dim:(head + 1) * head_dim] = True
    with torch.no_grad():
        w_o[:, ~keep] = 0


def _gqa_llama(seed: int = 0):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=6, num_key_value_heads=2, vocab_size=100,
                                         max_position_embeddings=16)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _phi3(seed: int = 0):
    """Fused QKV in the blocked layout *with* GQA, and a fused gate-up MLP projection."""
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(Phi3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                       max_position_embeddings=16, pad_token_id=0)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


BUILD = {"llama": lambda: build_model("llama"), "gpt2": lambda: build_model("gpt2"),
         "gpt_neox": lambda: build_model("gpt_neox"), "qwen2": lambda: build_model("qwen2"),
         "gemma": lambda: build_model("gemma"), "gqa_6_2": _gqa_llama, "phi3_fused_gqa": _phi3}


@pytest.mark.parametrize("family", list(BUILD))
def test_each_heads_ov_is_what_the_attention_computes_on_one_token(family):
    reference = BUILD[family]()
    structure = locate(reference)
    layout = head_layout(reference, structure)
    for layer in range(structure.n_layers):
        for head in range(layout.n_heads):
            ov = ov_matrix(structure, layout, layer, head).double()
            model = BUILD[family]()  # same seed, same weights
            _only_head(model, layer, head, layout.head_dim)
            x, y = _attention_io(model, layer)
            dx, dy = x[1:] - x[:1], y[1:] - y[:1]  # differences cancel value and output biases
            assert torch.allclose(dx @ ov.T, dy, atol=1e-5, rtol=1e-4), (family, layer, head)


def test_gqa_heads_share_the_kv_head_of_their_group():
    model = _gqa_llama()
    structure = locate(model)
    layout = head_layout(model, structure)
    assert (layout.n_heads, layout.n_kv_heads, layout.head_dim, layout.fused) == (6, 2, 8, None)
    assert [layout.kv_head(h) for h in range(6)] == [0, 0, 0, 1, 1, 1]
    attn = model.model.layers[1].self_attn
    w_o, w_v = ov_factors(structure, layout, 1)
    for h in range(6):
        g = h // 3
        assert torch.equal(w_v[h], attn.v_proj.weight[g * 8:(g + 1) * 8])
        assert torch.equal(w_o[h], attn.o_proj.weight[:, h * 8:(h + 1) * 8])


def test_gpt2_fused_c_attn_splits_into_blocked_q_k_v():
    model = build_model("gpt2")
    structure = locate(model)
    layout = head_layout(model, structure)
    assert (layout.n_heads, layout.n_kv_heads, layout.fused, layout.value_path) == (4, 4, "blocked", "c_attn")
    attn = model.transformer.h[0].attn
    values = attn.c_attn.weight[:, 2 * D_MODEL:]  # Conv1D: [in, out], outputs ordered Q | K | V
    w_o, w_v = ov_factors(structure, layout, 0)
    for h in range(4):
        assert torch.equal(w_v[h], values[:, h * 8:(h + 1) * 8].T)
        assert torch.equal(w_o[h], attn.c_proj.weight[h * 8:(h + 1) * 8].T)


def test_gpt_neox_fused_projection_is_interleaved_per_head():
    model = build_model("gpt_neox")
    structure = locate(model)
    layout = head_layout(model, structure)
    assert layout.fused == "interleaved"
    per_head = model.gpt_neox.layers[0].attention.query_key_value.weight.view(4, 3, 8, D_MODEL)
    _, w_v = ov_factors(structure, layout, 0)
    for h in range(4):
        assert torch.equal(w_v[h], per_head[h, 2])


def test_a_wrong_fused_layout_does_not_reproduce_the_attention():
    model = build_model("gpt2")
    structure = locate(model)
    right = head_layout(model, structure, fused_layout="blocked")
    wrong = head_layout(model, structure, fused_layout="interleaved")
    x, y = _attention_io(model, 0)
    dx, dy = x[1:] - x[:1], y[1:] - y[:1]
    for layout, expect in ((right, True), (wrong, False)):
        total = sum(ov_matrix(structure, layout, 0, h).double() for h in range(4))
        assert torch.allclose(dx @ total.T, dy, atol=1e-5, rtol=1e-4) is expect


def test_fused_qkv_with_gqa_and_fused_gate_up():
    model = _phi3()
    structure = locate(model)
    layout = head_layout(model, structure)
    assert (layout.n_heads, layout.n_kv_heads, layout.fused, layout.value_path) == (4, 2, "blocked", "qkv_proj")
    qkv = model.model.layers[0].self_attn.qkv_proj.weight  # rows: 4 query heads | 2 key heads | 2 value heads
    _, w_v = ov_factors(structure, layout, 0)
    for h in range(4):
        g = h // 2
        assert torch.equal(w_v[h], qkv[(6 + g) * 8:(7 + g) * 8])
    assert [(kind, name) for kind, name, _ in mlp_matrices(structure, 0)] == [
        ("mlp_in", "mlp.gate_up_proj"), ("mlp_out", "mlp.down_proj")]


def test_bert_value_projection_is_found_by_name():
    model = build_model("bert")
    layout = head_layout(model)
    assert (layout.value_path, layout.n_heads, layout.n_kv_heads) == ("self.value", 4, 4)


def test_ov_spectra_equal_dense_singular_values_of_the_ov_matrix():
    model = _gqa_llama()
    structure = locate(model)
    layout = head_layout(model, structure)
    spectra = ov_spectra(model, layers=[1], n_directions=3)
    assert [sp.name for sp in spectra] == [f"head {h}" for h in range(6)]
    for h, sp in enumerate(spectra):
        dense = ov_matrix(structure, layout, 1, h).double()
        assert torch.allclose(sp.singular_values, torch.linalg.svdvals(dense)[:8], atol=1e-10)
        # the top left singular vectors are what the head writes: OV OVᵀ u = σ² u
        u, s = sp.left, sp.singular_values[:3]
        assert torch.allclose(u @ dense @ dense.T, u * (s**2)[:, None], atol=1e-10)
        assert torch.allclose(sp.residual_directions, sp.left)


def test_bad_heads_layers_and_layouts_are_refused():
    model = build_model("llama")
    structure = locate(model)
    layout = head_layout(model, structure)
    with pytest.raises(LayerError):
        layout.kv_head(4)
    with pytest.raises(LayerError):
        ov_factors(structure, layout, 2)
    with pytest.raises(ValueError, match="fused_layout"):
        head_layout(model, structure, fused_layout="split")
    with pytest.raises(ValueError, match="n_directions"):
        ov_spectra(model, n_directions=0)


def test_a_config_without_head_count_is_refused_with_a_reason():
    model = build_model("llama")
    model.config.num_attention_heads = 0  # strict configs refuse None; 0 counts as not stated
    with pytest.raises(StructureError, match="number of attention heads"):
        head_layout(model)
    model.config.num_attention_heads = 3  # 32 features do not split into 3 heads
    with pytest.raises(StructureError, match="not a multiple"):
        head_layout(model)
