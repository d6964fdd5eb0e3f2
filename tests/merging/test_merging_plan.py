"""The plan refuses bad inputs by name; the writer is atomic, sharded and checksummed."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import build_model
from transformers import AutoModelForCausalLM

from almostlinear.core.errors import AlmostLinearError, NonFiniteError, ShapeError
from almostlinear.merging import merge_files, parse_recipe, plan_merge, verify
from almostlinear.merging import run as run_module
from almostlinear.merging.writer import AtomicShardedWriter, OutputTensor


def _linear(a, b, **extra):
    return dict(merge_method="linear", models=[dict(model=str(a), parameters=dict(weight=1.0)),
                                               dict(model=str(b), parameters=dict(weight=1.0))], **extra)


def test_different_architectures_are_refused(saved_models, tmp_path):
    gpt2 = build_model("gpt2")
    gpt2.save_pretrained(tmp_path / "gpt2")
    with pytest.raises(AlmostLinearError, match="architectures"):
        plan_merge(parse_recipe(_linear(saved_models["ft0"], tmp_path / "gpt2")))


def test_different_vocabularies_are_refused(saved_models, tmp_path):
    model = build_model("llama")
    model.resize_token_embeddings(120)
    model.save_pretrained(tmp_path / "big_vocab")
    with pytest.raises(AlmostLinearError, match="vocab"):
        plan_merge(parse_recipe(_linear(saved_models["ft0"], tmp_path / "big_vocab")))
    # with the config check bypassed (no config), the shape check still names the tensor
    (tmp_path / "big_vocab" / "config.json").unlink()
    with pytest.raises(ShapeError, match=r"(embed_tokens|lm_head)\.weight.*vocabulary"):
        plan_merge(parse_recipe(_linear(saved_models["ft0"], tmp_path / "big_vocab")))


def test_a_missing_tensor_is_named(saved_models, tmp_path):
    folder = tmp_path / "missing"
    folder.mkdir()
    tensors = load_file(str(saved_models["ft1"] / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text((saved_models["ft1"] / "config.json").read_text())
    with pytest.raises(AlmostLinearError, match=r"'model\.layers\.1\.mlp\.up_proj\.weight' is missing"):
        plan_merge(parse_recipe(_linear(saved_models["ft0"], folder)))


def test_a_dtype_that_would_overflow_is_refused(saved_models, tmp_path):
    folder = tmp_path / "huge"
    folder.mkdir()
    tensors = load_file(str(saved_models["ft1"] / "model.safetensors"))
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * 0 + 1e5
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text((saved_models["ft1"] / "config.json").read_text())
    with pytest.raises(AlmostLinearError, match=r"'model\.norm\.weight'.*overflow"):
        plan_merge(parse_recipe(_linear(saved_models["ft0"], folder, out_dtype="float16")))
    plan = plan_merge(parse_recipe(_linear(saved_models["ft0"], saved_models["ft1"], out_dtype="float16")))
    assert {t.out_dtype for t in plan.tensors} == {torch.float16}


@pytest.mark.parametrize("bad, key", [
    ({"merge_method": "linear", "models": [], "tokenizer_sauce": "base"}, "tokenizer_sauce"),
    ({"merge_method": "linear", "slices": []}, "slices"),
    ({"merge_method": "linear", "models": [{"model": "x", "params": {}}]}, "params"),
    ({"merge_method": "ties", "base_model": "b", "models": [{"model": "x"}], "parameters": {"gamma": 0.1}}, "gamma"),
    ({"merge_method": "ties", "base_model": "b", "models": [{"model": "x", "parameters": {"t": 0.1}}]}, "'t'"),
    ({"merge_method": "model_stock", "models": [{"model": "x"}]}, "merge_method"),
    ({"merge_method": "linear", "models": [{"model": "x"}], "tokenizer_source": "union"}, "tokenizer_source"),
])
def test_recipes_with_unknown_keys_are_refused_by_name(bad, key):
    with pytest.raises(AlmostLinearError, match=key):
        parse_recipe(bad, resolve=False)


def test_yaml_recipe_with_gradient_and_filter_parameters(saved_models, tmp_path):
    text = f"""
merge_method: task_arithmetic
base_model: {saved_models['base']}
models:
  - model: {saved_models['ft0']}
    parameters:
      weight: [0.0, 1.0]
  - model: {saved_models['ft1']}
    parameters:
      weight:
        - filter: self_attn
          value: 0.25
        - value: 0.0
"""
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    recipe = parse_recipe(path)
    assert recipe.value("weight", "model.layers.0.mlp.up_proj.weight", 0.0, 0) == 0.0
    assert recipe.value("weight", "model.layers.1.mlp.up_proj.weight", 1.0, 0) == 1.0
    assert recipe.value("weight", "model.layers.1.self_attn.q_proj.weight", 1.0, 1) == 0.25
    assert recipe.value("weight", "model.norm.weight", 0.0, 1) == 0.0


def test_merged_folder_loads_and_is_sharded_with_checksums(saved_models, tmp_path):
    out = tmp_path / "merged"
    result = merge_files(_linear(saved_models["ft0"], saved_models["ft1"]), out, shard_bytes=10_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards == sorted(index["metadata"]["sha256"])
    assert all(verify(out).values())
    model = AutoModelForCausalLM.from_pretrained(out)
    a = AutoModelForCausalLM.from_pretrained(saved_models["ft0"]).state_dict()
    b = AutoModelForCausalLM.from_pretrained(saved_models["ft1"]).state_dict()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, (a[k] + b[k]) / 2)
    assert (out / "tokenizer.json").is_file()
    assert result.signals["elements"] == result.plan.parameters
    # a flipped byte is caught
    shard = out / shards[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(data)
    assert not verify(out)[shards[0]]


def test_an_interrupted_merge_leaves_nothing_that_looks_complete(saved_models, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = run_module.merge_into

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "merge_into", failing)
    with pytest.raises(KeyboardInterrupt):
        merge_files(_linear(saved_models["ft0"], saved_models["ft1"]), tmp_path / "out", shard_bytes=10_000)
    assert list(tmp_path.iterdir()) == []


def test_overwrite_only_replaces_after_success(saved_models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(AlmostLinearError, match="already exists"):
        merge_files(_linear(saved_models["ft0"], saved_models["ft1"]), out)
    recipe = _linear(saved_models["ft0"], saved_models["ft1"], out_dtype="float16")
    huge = {"merge_method": "task_arithmetic", "base_model": str(saved_models["base"]),
            "models": [{"model": str(saved_models["ft0"]), "parameters": {"weight": 1e9}}], "out_dtype": "float16"}
    with pytest.raises(NonFiniteError, match=r"tensor '[a-z_.0-9]+weight'.*infinite"):
        merge_files(huge, out, overwrite=True)
    assert (out / "keep.txt").read_text() == "old"
    merge_files(recipe, out, overwrite=True)
    assert not (out / "keep.txt").exists() and all(verify(out).values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("which", ["input", "parent", "link"])
def test_an_output_that_overlaps_an_input_is_refused_before_anything_is_written(saved_models, tmp_path, which):
    ft0 = saved_models["ft0"]
    before = {p.name: p.read_bytes() for p in ft0.iterdir()}
    out = {"input": ft0, "parent": ft0.parent, "link": tmp_path / "link"}[which]
    if which == "link":
        out.symlink_to(ft0, target_is_directory=True)
    with pytest.raises(AlmostLinearError, match="overlaps the input"):
        merge_files(_linear(ft0, saved_models["ft1"]), out, overwrite=True)
    assert {p.name: p.read_bytes() for p in ft0.iterdir()} == before


def test_writer_checks_order_shape_and_count(tmp_path):
    layout = [OutputTensor("a", (2,), torch.float32), OutputTensor("b", (3,), torch.float16)]
    with pytest.raises(AlmostLinearError, match="expected tensor 'a'"):
        with AtomicShardedWriter(tmp_path / "x", layout) as w:
            w.write("b", torch.zeros(3, dtype=torch.float16))
    with pytest.raises(AlmostLinearError, match="only 1 of 2"):
        with AtomicShardedWriter(tmp_path / "y", layout) as w:
            w.write("a", torch.zeros(2))
    with AtomicShardedWriter(tmp_path / "z", layout) as w:
        w.write("a", torch.tensor([1.0, 2.0]))
        w.write("b", torch.ones(3, dtype=torch.float16))
    out = load_file(str(tmp_path / "z" / "model.safetensors"))
    assert out["a"].tolist() == [1.0, 2.0] and out["b"].dtype == torch.float16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z"]


def test_verify_counts_a_removed_checksum_and_never_reads_outside(saved_models, tmp_path):
    import json as json_module

    out = tmp_path / "out"
    merge_files(_linear(saved_models["ft0"], saved_models["ft1"]), out, shard_bytes=20_000)
    index_path = out / "model.safetensors.index.json"
    index = json_module.loads(index_path.read_text())
    shards = sorted(index["metadata"]["sha256"])
    assert len(shards) > 1 and all(verify(out).values())
    removed = shards[0]
    (out / removed).write_bytes(b"tampered")
    del index["metadata"]["sha256"][removed]
    index["metadata"]["sha256"]["../outside.safetensors"] = "0" * 64
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    index_path.write_text(json_module.dumps(index))
    result = verify(out)
    assert result[removed] is False and result["../outside.safetensors"] is False


def _dead_pid() -> int:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_leftovers_of_killed_merges_are_cleaned_and_an_interrupted_overwrite_is_undone(saved_models, tmp_path):
    import os

    from almostlinear.merging.writer import OWNER_FILE

    out = tmp_path / "out"
    # a merge killed while writing: its partial folder, owned by a process that is gone
    stale = tmp_path / ".out.partial-abc"
    stale.mkdir()
    (stale / OWNER_FILE).write_text(str(_dead_pid()))
    (stale / "model.safetensors").write_bytes(b"half")
    # a running merge's partial folder (this process owns it): left alone
    live = tmp_path / ".out.partial-live"
    live.mkdir()
    (live / OWNER_FILE).write_text(str(os.getpid()))
    # an --overwrite killed between its two renames: the previous output sits in an .old- folder
    old = tmp_path / ".out.old-xyz"
    (old / "previous").mkdir(parents=True)
    (old / "previous" / "keep.txt").write_text("previous output")
    with pytest.raises(AlmostLinearError, match="already exists"):
        merge_files(_linear(saved_models["ft0"], saved_models["ft1"]), out)  # the old output came back first
    assert (out / "keep.txt").read_text() == "previous output"
    assert not stale.exists() and not old.exists() and live.exists()


def test_the_output_folder_follows_the_umask(saved_models, tmp_path):
    import os
    import stat

    out = tmp_path / "out"
    merge_files(_linear(saved_models["ft0"], saved_models["ft1"]), out)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    assert not (out / ".writer-pid").exists()


@pytest.mark.parametrize("weight", ["abc", float("nan"), [1.0, "x"], [{"filter": "mlp", "value": "high"}]])
def test_a_parameter_value_that_is_not_a_number_is_refused_by_the_plan(saved_models, tmp_path, weight):
    recipe = parse_recipe({"merge_method": "linear", "models": [
        {"model": str(saved_models["ft0"]), "parameters": {"weight": weight}},
        {"model": str(saved_models["ft1"]), "parameters": {"weight": 1.0}}]})
    with pytest.raises(AlmostLinearError, match="weight"):
        plan_merge(recipe)
    assert list(tmp_path.iterdir()) == []
