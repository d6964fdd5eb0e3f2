"""Tiny saved Llama checkpoints (a base and two perturbed variants) for the streamed-merge tests."""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_model, make_tokenizer


def save_variant(model, folder, tokenizer, *, noise: float, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn(p.shape, generator=g))
    model.to(dtype).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """{'base', 'ft0', 'ft1'} -> folder; the variants are the base plus independent noise."""
    root = tmp_path_factory.mktemp("models")
    tok = make_tokenizer()
    base = build_model("llama")
    state = {k: v.clone() for k, v in base.state_dict().items()}
    out = {"base": save_variant(base, root / "base", tok, noise=0.0, seed=0)}
    for i in range(2):
        m = build_model("llama")
        m.load_state_dict(state)
        out[f"ft{i}"] = save_variant(m, root / f"ft{i}", tok, noise=0.02, seed=10 + i)
    return out
