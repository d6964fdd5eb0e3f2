import pytest
import torch

from almostlinear import collect, locate
from almostlinear.core.errors import StructureError
from almostlinear.lens import LogitLens, kl_and_agreement


def test_lens_at_last_block_reproduces_model_logits(tiny_causal, tiny_tokenizer, texts):
    _, model = tiny_causal
    structure = locate(model)
    last = f"resid_post.{structure.n_layers - 1}"
    acts = collect(model, tiny_tokenizer, texts, [last], logits=True)
    lens = LogitLens.from_structure(structure)
    with torch.no_grad():
        logits = lens(acts[last])
    assert torch.allclose(logits, acts.logits, atol=1e-4, rtol=1e-4)
    kl, agree = kl_and_agreement(acts.logits, logits)
    assert kl.abs().max() < 1e-4 and bool(agree.all())


def test_kl_matches_definition():
    g = torch.Generator().manual_seed(0)
    p_logits, q_logits = torch.randn(7, 11, generator=g), torch.randn(7, 11, generator=g)
    kl, agree = kl_and_agreement(p_logits, q_logits)
    p, q = p_logits.softmax(-1), q_logits.softmax(-1)
    assert torch.allclose(kl, (p * (p.log() - q.log())).sum(-1), atol=1e-6)
    assert torch.equal(agree, p.argmax(-1) == q.argmax(-1))


def test_encoder_without_head_is_refused():
    from tiny_models import build_model

    with pytest.raises(StructureError, match="output head"):
        LogitLens.from_structure(locate(build_model("bert")))
