"""The plan on the real SmolLM2 checkpoint: headers only, so it is quick."""

from __future__ import annotations

import pytest
import torch

from almostlinear.core.errors import AlmostLinearError
from almostlinear.merging import TaskVector, parse_recipe, plan_merge


@pytest.mark.real
def test_plan_of_smollm2_with_itself(smollm2):
    folder = smollm2.path
    # the base listed among the models is not a task vector, so nothing would be merged
    with pytest.raises(AlmostLinearError, match="no models besides the base"):
        parse_recipe({"merge_method": "ties", "base_model": folder,
                      "models": [{"model": folder, "parameters": {"weight": 1.0}}]})
    recipe = parse_recipe({"merge_method": "linear", "models": [{"model": folder}, {"model": folder + "/"}],
                           "out_dtype": "bfloat16"})
    plan = plan_merge(recipe)
    n_params = sum(p.numel() for p in smollm2.model.state_dict().values() if p.is_floating_point())
    assert plan.parameters == pytest.approx(n_params, rel=0.2)  # tied head: stored once on disk
    assert {t.out_dtype for t in plan.tensors} == {torch.bfloat16}


@pytest.mark.real
def test_task_vector_apply_restores_smollm2(smollm2):
    model = smollm2.model
    name = "model.layers.3.mlp.down_proj.weight"
    state = model.state_dict()
    before = state[name].clone()
    tv = TaskVector({name: torch.randn_like(before) * 1e-3})
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        clean = model(ids).logits[0, -1]
        with tv.apply(smollm2, strength=-1.0):
            shifted = model(ids).logits[0, -1]
        again = model(ids).logits[0, -1]
    assert not torch.equal(clean, shifted)
    assert torch.equal(clean, again) and torch.equal(model.state_dict()[name], before)
