"""Merge methods are declared once: a record is all that in-memory merges, the streamed path and
recipes need."""

from __future__ import annotations

import glob

import pytest
import torch
from safetensors.torch import load_file

from almostlinear.core.errors import AlmostLinearError, ChoiceError
from almostlinear.merging import (
    METHODS,
    MergeMethod,
    ParamDef,
    RecipeError,
    merge_files,
    merge_state_dicts,
    parse_recipe,
    register_method,
)
from almostlinear.merging import registry
from almostlinear.merging.run import tensor_options


def _quantile(base, tensors, weights, *, name, q):
    return torch.quantile(torch.stack([t.float() for t in tensors]), q, dim=0).to(tensors[0].dtype)


QUANTILE = MergeMethod("quantile", _quantile, {"q": ParamDef(0.5, recipe_key="quantile", from_recipe=float)},
                       base="ignored", doc="element-wise quantile of the models")


@pytest.fixture
def with_quantile(monkeypatch):
    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))
    return register_method(QUANTILE)


def test_a_new_record_is_all_a_recipe_needs(with_quantile, saved_models, tmp_path):
    recipe = dict(merge_method="quantile", parameters={"quantile": 0.25},
                  models=[dict(model=str(saved_models[k])) for k in ("base", "ft0", "ft1")])
    merge_files(recipe, tmp_path / "out")
    merged = {}
    for f in glob.glob(str(tmp_path / "out" / "*.safetensors")):
        merged.update(load_file(f))
    inputs = [load_file(str(saved_models[k] / "model.safetensors")) for k in ("base", "ft0", "ft1")]
    assert sorted(merged) == sorted(inputs[0])
    for k, v in merged.items():
        assert torch.equal(v, torch.quantile(torch.stack([i[k] for i in inputs]), 0.25, dim=0)), k
    # the record's defaults, recipe key and refusals hold in recipes and in memory alike
    parsed = parse_recipe(dict(recipe, parameters={}))
    assert tensor_options(parsed, "model.norm.weight", 0.0) == ([1.0, 1.0, 1.0], {"q": 0.5})
    with pytest.raises(RecipeError, match="unknown parameter 'weight' for merge_method 'quantile'"):
        parse_recipe(dict(recipe, parameters={"weight": 1.0}))
    sds = [{"w": torch.tensor([float(i)])} for i in range(5)]
    assert merge_state_dicts("quantile", sds, q=0.75)["w"].item() == 3.0
    with pytest.raises(ChoiceError, match="'quantile' do not apply"):
        merge_state_dicts("quantile", sds, quantile=0.75)  # the recipe's name is not the option's


def test_registering_a_name_twice_is_refused(with_quantile):
    with pytest.raises(AlmostLinearError, match="registered twice"):
        register_method(QUANTILE)
    with pytest.raises(AlmostLinearError, match="one recipe key"):
        MergeMethod("clash", _quantile, {"lam": ParamDef(1.0), "lambda_": ParamDef(1.0, recipe_key="lam")})


def test_records_carry_what_recipes_and_memory_disagree_on():
    ties = METHODS["ties"]
    assert ties.options()["density"] == 0.2 and ties.recipe_default("density") == 1.0
    assert ties.recipe_keys()["lambda"] == "lam" and ties.chunkable and ties.needs_base
    assert METHODS["dare_linear"].recipe_default("rescale") is True and not METHODS["dare_linear"].chunkable
    assert METHODS["slerp"].recipe_default("t") is registry.REQUIRED and METHODS["slerp"].options() == {"t": 0.5}
    assert not METHODS["linear"].uses_base and "int8_mask" not in METHODS["linear"].options()
    assert {name for name, m in METHODS.items() if m.in_memory_only} == {"regmean", "fisher"}


def test_recipe_defaults_and_conversions_come_from_the_record(saved_models):
    recipe = parse_recipe(dict(merge_method="dare_ties", base_model=str(saved_models["base"]),
                               parameters={"int8_mask": True, "lambda": 2, "seed": 3.0},
                               models=[dict(model=str(saved_models["ft0"]), parameters={"weight": 2}),
                                       dict(model=str(saved_models["ft1"]))]))
    weights, options = tensor_options(recipe, "model.layers.0.mlp.up_proj.weight", 0.0)
    assert weights == [2.0, 1.0]
    assert options == {"density": [1.0, 1.0], "lam": 2.0, "normalize": False, "rescale": "l1", "seed": 3,
                       "election": "paper"}
    assert isinstance(options["seed"], int)


def test_in_memory_only_methods_are_refused_by_recipes_with_a_pointer():
    with pytest.raises(RecipeError, match=r"grams.*merge_state_dicts\('regmean'"):
        parse_recipe({"merge_method": "regmean", "models": [{"model": "x"}]}, resolve=False)
    with pytest.raises(AlmostLinearError, match="whole state dicts"):
        from almostlinear.merging import merge_tensor

        merge_tensor("fisher", "w", [torch.zeros(2)], [1.0], None, {})
    with pytest.raises(AlmostLinearError, match="needs option.*'fishers'"):
        merge_state_dicts("fisher", [{"w": torch.zeros(2)}])


def test_slerp_recipes_need_t_and_exactly_two_models():
    with pytest.raises(RecipeError, match="needs parameter 't' \\(0 gives the base model"):
        parse_recipe({"merge_method": "slerp", "base_model": "b", "models": [{"model": "x"}]}, resolve=False)
    with pytest.raises(RecipeError, match="exactly 2 models"):
        parse_recipe({"merge_method": "slerp", "base_model": "b", "parameters": {"t": 0.5},
                      "models": [{"model": "x"}, {"model": "y"}]}, resolve=False)
    with pytest.raises(RecipeError, match="needs 'base_model'"):
        parse_recipe({"merge_method": "slerp", "parameters": {"t": 0.5}, "models": [{"model": "x"}]}, resolve=False)
