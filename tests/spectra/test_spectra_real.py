"""SmolLM2-135M smoke test on two layers: GQA layout, spectra against dense SVDs, readable tokens."""

import pytest
import torch

from almostlinear.core.locate import linear_weight
from almostlinear.spectra import (
    CoherenceScorer,
    TokenReader,
    head_layout,
    mlp_spectra,
    ov_matrix,
    ov_spectra,
)

pytestmark = pytest.mark.real


def test_smollm2_spectra_on_two_layers(smollm2):
    model, structure = smollm2.model, smollm2.structure
    layout = head_layout(model, structure)
    assert (layout.n_heads, layout.n_kv_heads, layout.head_dim, layout.fused) == (9, 3, 64, None)
    assert [layout.kv_head(h) for h in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    ov = ov_spectra(model, layers=[0, 29], layout=layout, structure=structure)
    assert len(ov) == 18
    attn = model.model.layers[29].self_attn  # head 4 reads kv head 1 (heads 3..5 share it)
    dense = attn.o_proj.weight[:, 4 * 64:5 * 64].double() @ attn.v_proj.weight[64:128].double()
    assert torch.allclose(ov_matrix(structure, layout, 29, 4).double(), dense, atol=1e-5)
    assert torch.allclose(ov[13].singular_values, torch.linalg.svdvals(dense)[:64], rtol=1e-8, atol=1e-8)
    mlp = mlp_spectra(model, layers=[29], dtype=torch.float32, structure=structure)
    assert [sp.name for sp in mlp] == ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    gate = torch.linalg.svdvals(linear_weight(structure.blocks[29].module.mlp.gate_proj).detach().double())
    assert torch.allclose(mlp[0].singular_values.double(), gate, atol=3e-4 * float(gate[0]))
    assert 1 <= mlp[0].stable_rank <= mlp[0].effective_rank <= 576
    reader = TokenReader.from_structure(structure)
    [direction] = reader.top_tokens(mlp[2].residual_directions[:1], smollm2.tokenizer, k=10)
    assert len(direction.positive) == 10 and all(isinstance(t, str) for t in direction.negative)
    scorer = CoherenceScorer(structure.embedding.weight, n_random_sets=200)
    assert scorer.score([direction.positive_ids[0]] * 3).score == pytest.approx(1.0)
    assert abs(scorer.score(direction.positive_ids).z_score) < 1e3
