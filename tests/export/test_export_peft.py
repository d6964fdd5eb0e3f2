"""Weight levers as PEFT LoRA adapters: PEFT itself loads each folder and must compute the applied lever."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from export_helpers import (ablation, edit, logits, low_rank_task_vector, peft_logits, relative, steering_vector,
                            task_vector)
from tiny_models import build_model

from almostlinear.adapters import read_peft
from almostlinear.core.errors import LeverError
from almostlinear.export import export_peft, plan_adapter

pytest.importorskip("peft")

TOLERANCE = 1e-5  # float32 factors against float32 weights: about 1e-7 in practice


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "qwen2"])
def test_edit_adapter_equals_applied_edit(arch, tmp_path):
    model = build_model(arch).eval()
    lever = edit(model, layer=1)
    with lever.apply(model, strength=0.7):
        expected = logits(model)
    plan = export_peft(lever, model, tmp_path, strengths=[0.7])
    assert plan.exact and list(plan.modules) and all(f.rank == 2 for f in plan.modules.values())
    got = peft_logits(model, tmp_path)
    assert relative(got, expected) < TOLERANCE
    assert relative(got, logits(model)) > 1e-3  # the edit does change the output


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma"])  # gemma ties its output head to the embedding
def test_ablation_adapter_equals_applied_ablation(arch, tmp_path):
    model = build_model(arch).eval()
    lever = ablation(model, k=2)
    with lever.apply(model):
        expected = logits(model)
    plan = export_peft(lever, model, tmp_path)
    # rank k on every residual writer: attention and MLP outputs of each block, and the embedding
    assert all(f.rank == 2 for f in plan.modules.values())
    assert sum(f.embedding for f in plan.modules.values()) == 1
    assert relative(peft_logits(model, tmp_path), expected) < TOLERANCE


def test_ablation_with_writer_biases_is_refused(tmp_path):
    model = build_model("gpt2")
    with pytest.raises(LeverError, match="--to hf"):
        export_peft(ablation(model), model, tmp_path)
    assert not (tmp_path / "adapter_config.json").exists()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_task_vector_exact_at_full_rank(arch, tmp_path):
    model = build_model(arch).eval()
    lever = task_vector(model)
    with lever.apply(model):
        expected = logits(model)
    plan = export_peft(lever, model, tmp_path)
    assert plan.total_error < 1e-12
    assert relative(peft_logits(model, tmp_path), expected) < TOLERANCE


def test_task_vector_with_tied_embedding_targets_both_uses(tmp_path):
    model = build_model("gemma").eval()  # tied head: the one storage changes the embedding and the head
    lever = task_vector(model, embeddings=True)
    with lever.apply(model):
        expected = logits(model)
    plan = export_peft(lever, model, tmp_path)
    assert {"model.embed_tokens", "lm_head"} <= set(plan.modules)
    assert plan.modules["model.embed_tokens"].embedding and not plan.modules["lm_head"].embedding
    assert relative(peft_logits(model, tmp_path), expected) < TOLERANCE


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # gpt2: LayerNorm biases and one linear bias change too
def test_changed_norms_and_biases_are_stored_whole(arch, tmp_path):
    from almostlinear.merging import TaskVector

    model = build_model(arch).eval()
    lever = task_vector(model, vectors=True)
    if arch == "gpt2":  # of the linear biases, only the edited MLP output's: that module is stored whole
        keep = {k: v for k, v in lever.deltas.items()
                if v.dim() == 2 or "ln_" in k or k == "transformer.h.1.mlp.c_proj.bias"}
        lever = TaskVector(keep, provenance=lever.provenance)
    extra = edit(model, layer=1)  # folded into the module stored whole (gpt2), or factors beside them (llama)
    with lever.apply(model), extra.apply(model, strict=False):
        expected = logits(model)
    plan = export_peft([lever, extra], model, tmp_path)
    assert plan.saved and not set(plan.saved) & set(plan.modules)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["modules_to_save"] == sorted(plan.saved)
    assert relative(peft_logits(model, tmp_path), expected) < TOLERANCE
    assert "modules_to_save" in (tmp_path / "README.md").read_text()
    if arch == "gpt2":
        assert "transformer.h.1.mlp.c_proj" in plan.saved


def test_an_adapter_of_whole_modules_only_is_refused(tmp_path):
    model = build_model("gpt2")  # every linear layer has a bias: nothing would be left for LoRA factors
    with pytest.raises(LeverError, match="--to hf"):
        export_peft(task_vector(model, vectors=True), model, tmp_path)


def test_truncation_error_is_eckart_young(tmp_path):
    model = build_model("llama")
    lever = task_vector(model)
    plan = export_peft(lever, model, tmp_path, rank=3)
    lost = total = 0.0
    for name, delta in lever.deltas.items():
        module = name.removesuffix(".weight")
        s = np.linalg.svd(delta.double().numpy(), compute_uv=False)  # NumPy as the reference
        expected = float(np.sqrt((s[3:] ** 2).sum() / (s ** 2).sum()))
        assert plan.errors[module] == pytest.approx(expected, rel=1e-9)
        got = float((plan.modules[module].delta() - delta.double()).norm() / delta.double().norm())
        assert got == pytest.approx(expected, rel=1e-6)  # the stored factors have exactly that error
        lost, total = lost + (s[3:] ** 2).sum(), total + (s ** 2).sum()
    assert plan.total_error == pytest.approx(np.sqrt(lost / total), rel=1e-9)
    card = (tmp_path / "README.md").read_text()
    assert "Eckart–Young" in card and f"{plan.total_error:.3g}" in card


def test_target_error_picks_the_smallest_rank(tmp_path):
    model = build_model("llama")
    lever = task_vector(model)
    plan = plan_adapter([lever], model, target_error=0.5)
    for name, delta in lever.deltas.items():
        module = name.removesuffix(".weight")
        k = plan.modules[module].rank
        s = np.linalg.svd(delta.double().numpy(), compute_uv=False)
        error = lambda r: np.sqrt((s[r:] ** 2).sum() / (s ** 2).sum())  # noqa: E731
        assert error(k) <= 0.5 and (k == 1 or error(k - 1) > 0.5)


def test_low_rank_task_vector_is_found_exactly_at_its_rank(tmp_path):
    model = build_model("llama").eval()
    lever = low_rank_task_vector(model, rank=2)
    plan = export_peft(lever, model, tmp_path)  # no rank given: the numerical rank
    assert {f.rank for f in plan.modules.values()} == {2} and plan.total_error < 1e-6
    with lever.apply(model):
        expected = logits(model)
    assert relative(peft_logits(model, tmp_path), expected) < TOLERANCE


def test_several_levers_in_one_adapter_add_exactly(tmp_path):
    model = build_model("llama").eval()
    first, second, tv = edit(model, layer=1), edit(model, layer=1, rank=1, seed=9), low_rank_task_vector(model)
    with first.apply(model), second.apply(model, strict=False), tv.apply(model):
        expected = logits(model)
    plan = export_peft([first, second, tv], model, tmp_path)
    down = "model.layers.1.mlp.down_proj"
    assert plan.modules[down].rank == 2 + 1 + 2  # factors concatenated along the rank
    assert relative(peft_logits(model, tmp_path), expected) < TOLERANCE
    # the library's own PEFT reader agrees on ΔW for this linear-only adapter
    read = read_peft(tmp_path)
    assert torch.allclose(read.modules[down].delta(), plan.modules[down].delta(), atol=1e-6)


def test_config_names_only_changed_modules_and_scale_one(tmp_path):
    model = build_model("llama")
    export_peft([edit(model, layer=0), edit(model, layer=1, rank=3)], model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["target_modules"] == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert config["peft_type"] == "LORA" and config["bias"] == "none" and config["task_type"] == "CAUSAL_LM"
    ranks = {"model.layers.0.mlp.down_proj": 2, "model.layers.1.mlp.down_proj": 3}
    for name, rank in ranks.items():
        assert config["rank_pattern"].get(name, config["r"]) == rank
        assert config["alpha_pattern"].get(name, config["lora_alpha"]) == rank  # alpha = r: scale 1


def test_refusals_name_the_reason(tmp_path):
    from almostlinear.connectivity import Permutation, random_perms, transformer_spec

    model = build_model("llama")
    with pytest.raises(LeverError, match="bias"):
        export_peft(steering_vector(model), model, tmp_path)
    spec = transformer_spec(model)
    permutation = Permutation.from_perms(spec, random_perms(spec, seed=5))
    with pytest.raises(LeverError, match="full rank"):
        export_peft(permutation, model, tmp_path)
    with pytest.raises(LeverError, match="norm weights or biases"):
        export_peft(task_vector(model, vectors=True), model, tmp_path, full_modules=False)
    with pytest.raises(LeverError, match="hooks"):
        export_peft(ablation(model).__class__(torch.eye(32)[:1], (0,)), model, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written by a refusal


def test_card_states_provenance(tmp_path):
    model = build_model("llama")
    lever = edit(model)
    export_peft(lever, model, tmp_path, strengths=[0.5])
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft")
    for text in (lever.provenance.model_fingerprint, "memit", "sha256:0123456789abcdef", "mlp_down_proj.0",
                 "strength: 0.5 in units `raw`", "exact", lever.provenance.library_version):
        assert text in card


def test_lora_adapter_and_edit_share_one_adapter(tmp_path):
    from almostlinear.adapters import LoraAdapter, LoraFactors

    model = build_model("gpt2").eval()  # Conv1D weights: PEFT transposes the update for them
    g = torch.Generator().manual_seed(11)
    lora = LoraAdapter({"transformer.h.1.mlp.c_proj": LoraFactors(torch.randn(3, 64, generator=g) * 0.1,
                                                                  torch.randn(32, 3, generator=g) * 0.1, scale=2.0,
                                                                  fan_in_fan_out=True)})
    lever = edit(model, layer=1)
    with lora.apply(model, strength=0.5), lever.apply(model, strict=False):
        expected = logits(model)
    plan = export_peft([lora, lever], model, tmp_path, strengths=[0.5, 1.0])
    assert plan.modules["transformer.h.1.mlp.c_proj"].rank == 3 + 2
    assert relative(peft_logits(model, tmp_path), expected) < TOLERANCE
