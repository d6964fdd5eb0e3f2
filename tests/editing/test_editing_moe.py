"""Mixture-of-experts blocks: every editing entry point refuses them by name before it changes anything."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from editing_helpers import REQUEST, fast_hparams, random_texts
from tiny_models import MOE_ARCHITECTURES, build_model, make_tokenizer

from almostlinear.core.errors import LeverError
from almostlinear.core.lever import BASE_ATTR
from almostlinear.core.locate import locate
from almostlinear.core.models import LoadedModel
from almostlinear.editing import alphaedit, key_statistics, memit, predicted_shift, rome

TOK = make_tokenizer()


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, _hooks(model)


def _untouched(model, snapshot) -> None:
    state, hooks = snapshot
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert _hooks(model) == hooks and not hasattr(model, BASE_ATTR)


def _marked(model, family: str) -> LoadedModel:
    """``model`` as a LoadedModel whose block 0 is marked a mixture of experts (as locate marks them)."""
    structure = locate(model)
    blocks = list(structure.blocks)
    blocks[0] = dataclasses.replace(blocks[0], moe=True, mlp_down_proj=None)
    loaded = LoadedModel(model, TOK, f"tiny-{family}", "memory", "causal-lm")
    loaded.__dict__["structure"] = dataclasses.replace(structure, blocks=tuple(blocks))
    return loaded


@pytest.fixture(scope="module")
def edit():
    model = build_model("llama")
    stats = key_statistics(model, TOK, 0, texts=random_texts(40), n_tokens=10_000, cache=False)
    return rome(model, TOK, REQUEST, stats=stats, hparams=fast_hparams(model, v_steps=2, ridge=1e-6))


def _refusals(target, model_type: str, edit):
    hp = fast_hparams(locate(target.model) if isinstance(target, LoadedModel) else target, v_steps=2)
    calls = {
        "key_statistics": lambda: key_statistics(target, TOK, 0, texts=random_texts(8), cache=False),
        "rome": lambda: rome(target, TOK, REQUEST, layer=0, hparams=hp),
        "memit": lambda: memit(target, TOK, [REQUEST], layers=[0, 1], hparams=hp),
        "alphaedit": lambda: alphaedit(target, TOK, [REQUEST], layers=[0], hparams=hp),
        "apply": lambda: edit.apply(target),
        "bake_": lambda: edit.bake_(target, strict=False),
        "predicted_shift": lambda: predicted_shift(edit, target, TOK, [REQUEST]),
    }
    for name, call in calls.items():
        with pytest.raises(LeverError, match=rf"mixture of experts \(block 0 of {model_type}\)"):
            call()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_block_marked_moe_is_refused_before_any_change(family, edit):
    model = build_model(family)
    loaded = _marked(model, family)
    snapshot = _snapshot(model)
    _refusals(loaded, loaded.structure.model_type, edit)
    _untouched(model, snapshot)


@pytest.mark.parametrize("family", MOE_ARCHITECTURES)
def test_real_mixture_of_experts_models_are_refused_before_any_change(family, edit):
    model = build_model(family)
    snapshot = _snapshot(model)
    _refusals(model, locate(model).model_type, edit)
    _untouched(model, snapshot)
