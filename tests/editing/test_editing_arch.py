"""Every causal family: ROME finds the down projection, writes the value, restores bit for bit."""

from __future__ import annotations

import pytest
import torch
from editing_helpers import REQUEST, fast_hparams, random_texts
from tiny_models import CAUSAL, build_model, make_tokenizer

from almostlinear.core.artifact import ArtifactError, load
from almostlinear.core.errors import ShapeError
from almostlinear.core.locate import locate
from almostlinear.editing import key_statistics, rome


@pytest.mark.parametrize("family", list(CAUSAL))
def test_rome_on_every_family(family, tmp_path):
    model, tok = build_model(family), make_tokenizer()
    stats = key_statistics(model, tok, 0, texts=random_texts(40), n_tokens=10_000, cache=False)
    edit = rome(model, tok, REQUEST, stats=stats, hparams=fast_hparams(model, v_steps=3, ridge=1e-6))
    structure = locate(model)
    down = structure.block(0).mlp_down_proj
    assert edit.b.shape[1] == structure.d_model and edit.a.shape[2] == structure.d_mlp
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with edit.apply(model):
        out = down(edit.key.float()[None])[0].double()
    torch.testing.assert_close(out, edit.value.double(), rtol=1e-4, atol=1e-4)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    # save / load: a small file that works the same
    path = edit.save(tmp_path / "edit.safetensors")
    assert path.stat().st_size < 20_000
    loaded = load(path)
    assert type(loaded) is type(edit) and loaded.requests == edit.requests
    torch.testing.assert_close(loaded.delta(0), edit.delta(0), rtol=0, atol=0)
    # made for another model: a clear error
    other = build_model(family, seed=1)
    with pytest.raises(ArtifactError, match="differ"), loaded.apply(other):
        pass
    with pytest.warns(UserWarning, match="differ"), loaded.apply(other, strict=False):
        pass


def test_edit_for_another_architecture_is_a_shape_error():
    llama, tok = build_model("llama"), make_tokenizer()
    stats = key_statistics(llama, tok, 0, texts=random_texts(40), n_tokens=10_000, cache=False)
    edit = rome(llama, tok, REQUEST, stats=stats, hparams=fast_hparams(llama, v_steps=2))
    from transformers import LlamaConfig, LlamaForCausalLM

    wider = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=100))
    with pytest.raises(ShapeError, match="another model"), edit.apply(wider):
        pass
