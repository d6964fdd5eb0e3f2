"""Streamed merges of saved tiny models equal mergekit's output on the same recipe."""

from __future__ import annotations

import glob

import pytest
import torch
from safetensors.torch import load_file

from almostlinear.merging import merge_files, parse_recipe, verify

pytest.importorskip("mergekit")


def _mergekit(recipe: dict, out) -> dict[str, torch.Tensor]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    run_merge(MergeConfiguration.model_validate(recipe), str(out),
              MergeOptions(lazy_unpickle=False, copy_tokenizer=False, quiet=True))
    tensors = {}
    for f in glob.glob(str(out / "*.safetensors")):
        tensors.update(load_file(f))
    return tensors


def _ours(recipe: dict, out) -> dict[str, torch.Tensor]:
    merge_files(recipe, out)
    assert all(verify(out).values())
    tensors = {}
    for f in glob.glob(str(out / "*.safetensors")):
        tensors.update(load_file(f))
    return tensors


def _recipes(m):
    return {
        "linear": dict(merge_method="linear", dtype="float32", models=[
            dict(model=str(m["ft0"]), parameters=dict(weight=0.7)),
            dict(model=str(m["ft1"]), parameters=dict(weight=0.3))]),
        "ties": dict(merge_method="ties", base_model=str(m["base"]), dtype="float32", models=[
            dict(model=str(m["ft0"]), parameters=dict(weight=1.0, density=0.3)),
            dict(model=str(m["ft1"]), parameters=dict(weight=1.0, density=0.5))]),
        "ties_unequal": dict(merge_method="ties", base_model=str(m["base"]), dtype="float32",
                             parameters=dict(normalize=True, **{"lambda": 0.9}), models=[
            dict(model=str(m["ft0"]), parameters=dict(weight=0.8, density=0.3)),
            dict(model=str(m["ft1"]), parameters=dict(weight=0.4, density=[0.2, 0.6]))]),
        "task_arithmetic": dict(merge_method="task_arithmetic", base_model=str(m["base"]), dtype="float32", models=[
            dict(model=str(m["ft0"]), parameters=dict(weight=0.8)),
            dict(model=str(m["ft1"]), parameters=dict(weight=[{"filter": "mlp", "value": 0.1}, {"value": 0.5}]))]),
        "slerp": dict(merge_method="slerp", base_model=str(m["ft0"]), dtype="float32", parameters=dict(t=0.3),
                      models=[dict(model=str(m["ft0"])), dict(model=str(m["ft1"]))]),
    }


@pytest.mark.parametrize("name", ["linear", "ties", "ties_unequal", "task_arithmetic", "slerp"])
def test_equals_mergekit(saved_models, tmp_path, name):
    recipe = _recipes(saved_models)[name]
    theirs = _mergekit(recipe, tmp_path / "mergekit")
    ours_recipe = dict(recipe)
    if name == "ties_unequal":  # with unequal weights mergekit elects signs on weighted deltas
        ours_recipe["parameters"] = dict(recipe["parameters"], election="weighted")
    ours = _ours(ours_recipe, tmp_path / "ours")
    assert sorted(ours) == sorted(theirs)
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=2e-7)


def test_weight_zero_file_merge_returns_the_first_model_bit_for_bit(saved_models, tmp_path):
    recipe = dict(merge_method="linear", models=[
        dict(model=str(saved_models["ft0"]), parameters=dict(weight=1.0)),
        dict(model=str(saved_models["ft1"]), parameters=dict(weight=0.0))])
    ours = _ours(recipe, tmp_path / "out")
    first = load_file(str(saved_models["ft0"] / "model.safetensors"))
    assert sorted(ours) == sorted(first)
    for k in first:
        assert torch.equal(ours[k], first[k]), k


def test_paper_election_is_the_default(saved_models):
    recipe = parse_recipe(_recipes(saved_models)["ties"])
    assert recipe.value("election", "model.layers.0.mlp.up_proj.weight", 0.0) == "paper"
