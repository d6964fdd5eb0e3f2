"""LoRA arithmetic against PEFT and direct matrix computations."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tiny_models import assert_state_restored, build_model, state_copy

from almostlinear import adapters as ad
from almostlinear.core.errors import AlmostLinearError, ArtifactError, LeverError, NonFiniteError
from almostlinear.core.lever import Baked, Lever
from almostlinear.core.models import LoadedModel

peft = pytest.importorskip("peft")


def _adapter(base, folder, seed, r, alpha, targets=("q_proj", "v_proj", "down_proj"), **extra):
    torch.manual_seed(seed)
    config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0,
                             init_lora_weights=False, **extra)
    model = peft.get_peft_model(copy.deepcopy(base), config)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def base():
    return build_model("llama")


@pytest.fixture(scope="module")
def folders(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return [_adapter(base, root / "a", 1, 4, 8), _adapter(base, root / "b", 2, 2, 3),
            _adapter(base, root / "c", 3, 4, 4, use_rslora=True)]


def _peft_delta(base, folder, module):
    model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(folder))
    layer = dict(model.named_modules())[f"base_model.model.{module}"]
    return layer.get_delta_weight("default").double()


def test_read_gives_peft_delta_weights(base, folders):
    for folder in folders:
        adapter = ad.read_peft(folder)
        module = "model.layers.1.self_attn.v_proj"
        torch.testing.assert_close(adapter.modules[module].delta(), _peft_delta(base, folder, module),
                                   rtol=1e-5, atol=1e-7)


def test_exact_combination_is_the_sum_of_delta_weights(base, folders):
    adapters = [ad.read_peft(f) for f in folders]
    weights = [0.7, -0.4, 1.3]
    combined = ad.combine_exact(adapters, weights)
    for module, expected in ad.exact_sum(adapters, weights).items():
        direct = sum(w * _peft_delta(base, f, module) for f, w in zip(folders, weights))
        torch.testing.assert_close(expected, direct, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(combined.modules[module].delta(), direct, rtol=1e-5, atol=1e-7)
        assert combined.modules[module].rank == 10
    assert ad.relative_error(combined, adapters, weights)["total"] < 1e-12
    # PEFT's own 'cat' is exact as well
    assert ad.peft_error(base, folders, weights, combination_type="cat")["total"] < 1e-6


def test_written_adapter_loads_in_peft_and_computes_the_sum(base, folders, tmp_path):
    adapters = [ad.read_peft(f) for f in folders]
    weights = [0.5, 0.5, -1.0]
    ad.write_peft(ad.combine_exact(adapters, weights), tmp_path / "sum")
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "sum"))
    x = torch.randint(3, 90, (2, 7))
    with torch.no_grad():
        via_peft = loaded(x).logits
        reference = copy.deepcopy(base)
        for module, delta in ad.exact_sum(adapters, weights).items():
            w = dict(reference.named_modules())[module].weight
            w.add_(delta.to(w.dtype))
        torch.testing.assert_close(via_peft, reference(x).logits, rtol=1e-4, atol=1e-5)
    back = ad.read_peft(tmp_path / "sum")
    assert ad.relative_error(back, adapters, weights)["total"] < 1e-6


def test_svd_truncation_error_is_the_eckart_young_error(base, folders):
    adapters = [ad.read_peft(f) for f in folders]
    weights = [1.0, 0.5, 0.25]
    result = ad.combine_svd(adapters, weights, rank=3)
    sums = ad.exact_sum(adapters, weights)
    num = den = 0.0
    for module, target in sums.items():
        s = torch.linalg.svdvals(target)
        expected = float((s[3:].pow(2).sum() / s.pow(2).sum()).sqrt())
        assert result.errors[module] == pytest.approx(expected, rel=1e-6, abs=1e-9)
        assert result.adapter.modules[module].rank == 3
        num, den = num + float(s[3:].pow(2).sum()), den + float(s.pow(2).sum())
    assert result.total_error == pytest.approx((num / den) ** 0.5, rel=1e-6)
    assert ad.relative_error(result.adapter, adapters, weights)["total"] == pytest.approx(result.total_error, rel=1e-6)
    full = ad.combine_svd(adapters, weights, rank=10)
    assert full.total_error < 1e-7


def test_factor_wise_mixing_reproduces_peft_linear_and_is_far_from_the_sum(base, tmp_path):
    folders = [_adapter(base, tmp_path / f"l{i}", 10 + i, 4, 8) for i in range(2)]
    adapters = [ad.read_peft(f) for f in folders]
    for weights in ([0.5, 0.5], [1.0, -1.0], [0.7, 0.3]):
        peft_combined = ad.peft_combination(base, folders, weights, combination_type="linear")
        ours = ad.linear_factor_mix(adapters, weights)
        for module, f in ours.modules.items():
            torch.testing.assert_close(f.delta(), peft_combined.modules[module].delta(), rtol=1e-5, atol=1e-7)
        error = ad.peft_error(base, folders, weights, combination_type="linear")["total"]
        assert error > 0.3  # cross terms BᵢAⱼ: far from the exact sum


def test_an_adapter_is_a_lever_with_raw_strength(folders):
    adapter = ad.read_peft(folders[0])
    assert isinstance(adapter, Lever) and adapter.bakes and adapter.strength_units == ("raw",)


def test_apply_restores_and_bake_merges(base, folders):
    adapter = ad.read_peft(folders[0])
    model = copy.deepcopy(base)
    before = state_copy(model)
    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(folders[0]))
    x = torch.randint(3, 90, (1, 5))
    with torch.no_grad():
        with adapter.apply(model) as module:
            assert module is model
            torch.testing.assert_close(model(x).logits, peft_model(x).logits, rtol=1e-4, atol=1e-5)
        with pytest.raises(KeyError, match="inside"):
            with adapter.apply(model, strength=3.0):
                assert not torch.equal(model.model.layers[0].self_attn.q_proj.weight,
                                       before["model.layers.0.self_attn.q_proj.weight"])
                raise KeyError("inside")
    assert_state_restored(model, before)
    with pytest.raises(NonFiniteError):
        adapter.bake_(model, strength=float("nan"))
    assert_state_restored(model, before)
    baked = adapter.bake_(model)
    assert isinstance(baked, Baked)
    merged = peft_model.merge_and_unload()
    for k, v in merged.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    baked.undo_()
    assert_state_restored(model, before)


def test_strength_scales_the_merged_delta(base, folders):
    adapter = ad.read_peft(folders[1])
    model = copy.deepcopy(base)
    name = "model.layers.1.self_attn.v_proj"
    weight = dict(model.named_modules())[name].weight
    original = weight.detach().double().clone()
    with adapter.apply(model, strength=-0.5):
        torch.testing.assert_close(weight.double() - original, -0.5 * adapter.modules[name].delta(),
                                   rtol=1e-5, atol=1e-6)
    with adapter.apply(model, strength=0.0):
        assert torch.equal(weight.double(), original)


def test_a_saved_bake_is_undone_elsewhere_and_a_loaded_model_is_accepted(base, folders, tmp_path):
    adapter = ad.read_peft(folders[2])
    model = copy.deepcopy(base)
    before = state_copy(model)
    loaded = LoadedModel(model, None, "tiny-llama", "memory", "causal-lm")
    with adapter.apply(loaded) as module:
        assert module is model
    path = adapter.bake_(loaded, strength=2.0).save(tmp_path / "baked.safetensors")
    record = Baked.load(path)
    with pytest.raises(LeverError, match="not as this"):  # other weights than the bake left: refused, unchanged
        record.undo_(copy.deepcopy(base))
    record.undo_(loaded)
    assert_state_restored(model, before)


def test_an_adapter_for_another_model_changes_nothing(folders):
    adapter = ad.read_peft(folders[0])
    model = build_model("gpt2")
    before = state_copy(model)
    with pytest.raises(AlmostLinearError, match="no module"):
        adapter.apply(model)
    with pytest.raises(AlmostLinearError, match="no module"):
        adapter.bake_(model)
    assert_state_restored(model, before)


def test_unsupported_variants_are_refused(base, tmp_path):
    folder = _adapter(base, tmp_path / "dora", 1, 2, 2, use_dora=True)
    with pytest.raises(ArtifactError, match="use_dora"):
        ad.read_peft(folder)
    folder = _adapter(base, tmp_path / "ok", 1, 2, 2)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["peft_type"] = "IA3"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="IA3"):
        ad.read_peft(folder)
    with pytest.raises(ArtifactError, match="not a PEFT adapter folder"):
        ad.read_peft(tmp_path)


def test_cli_combines_exactly_and_by_svd(base, folders, tmp_path, capsys):
    import argparse

    from almostlinear.adapters.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["lora-combine", str(folders[0]), str(folders[1]), "--weights", "1", "-1",
                              "--out", str(tmp_path / "sum")])
    assert args.func(args) == 0
    assert "exact" in capsys.readouterr().out
    adapters = [ad.read_peft(folders[0]), ad.read_peft(folders[1])]
    assert ad.relative_error(ad.read_peft(tmp_path / "sum"), adapters, [1, -1])["total"] < 1e-6
    args = parser.parse_args(["lora-combine", str(folders[0]), str(folders[2]), "--rank", "2",
                              "--out", str(tmp_path / "svd")])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "rank 2 by SVD" in printed and "PEFT's 'linear'" in printed


def test_a_failed_write_keeps_the_previous_adapter_whole(folders, tmp_path, monkeypatch):
    from almostlinear.adapters import lora as lora_module

    first = ad.read_peft(folders[0])
    out = tmp_path / "adapter"
    ad.write_peft(first, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bigger = ad.combine_exact([first, ad.read_peft(folders[1])])  # other ranks: a mixed pair would not load

    def broken(*args, **kwargs):
        raise OSError("disk full")

    for target, name in ((lora_module, "save_file"), (lora_module.json, "dumps")):  # weights, then config
        with monkeypatch.context() as m:
            m.setattr(target, name, broken)
            with pytest.raises(OSError, match="disk full"):
                ad.write_peft(bigger, out)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_cli_module_and_package_face_import_no_torch():
    import subprocess
    import sys

    code = ("import sys, almostlinear.adapters.cli, almostlinear.adapters as a; a.__all__;"
            " sys.exit(int('torch' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("where", ["A", "B", "scale"])
def test_lora_factors_with_non_finite_values_are_refused(where):
    from almostlinear.adapters import LoraFactors
    from almostlinear.core.errors import NonFiniteError

    a, b, scale = torch.ones(2, 3), torch.ones(4, 2), 1.0
    if where == "A":
        a[0, 0] = float("nan")
    elif where == "B":
        b[1, 1] = float("inf")
    else:
        scale = float("nan")
    with pytest.raises(NonFiniteError):
        LoraFactors(a, b, scale)


def test_a_pattern_that_would_backtrack_exponentially_is_refused_at_once():
    from almostlinear.adapters.lora import _pattern_value
    from almostlinear.core.errors import ArtifactError

    with pytest.raises(ArtifactError, match="nests quantifiers"):  # matched first, this would run for hours
        _pattern_value({"(a+)+b": 2.0}, "a" * 40 + "c", 1.0)
    # ordinary PEFT keys: a literal module suffix, or a plain regex
    assert _pattern_value({"layers.0.q_proj": 2.0}, "model.layers.0.q_proj", 1.0) == 2.0
    assert _pattern_value({r"layers\.\d+\.v_proj": 3.0}, "model.layers.7.v_proj", 1.0) == 3.0
    assert _pattern_value({"k_proj": 4.0}, "model.layers.7.v_proj", 1.0) == 1.0
