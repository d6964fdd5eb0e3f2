"""The contract's building blocks in core/lever.py, on plain modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from almostlinear.core.errors import LeverError, NonFiniteError, ShapeError
from almostlinear.core.lever import (
    BASE_ATTR, Baked, as_model, bake_weights, base_fingerprint, check_strength, set_parameter, temporarily_changed)
from almostlinear.core.models import LoadedModel, fingerprint


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _change(net):
    def change():
        set_parameter(net, "0.bias", torch.ones(4))  # a bias where there was none
        net[2].weight.add_(1.0)
    return change


NAMES = ["0.bias", "2.weight"]


def test_temporarily_changed_restores_parameters_and_the_missing_bias_also_after_an_exception():
    net = _net().eval()
    x = torch.randn(5, 3)
    before = net(x)
    with temporarily_changed(net, NAMES, _change(net)) as module:
        assert module is net and not torch.equal(net(x), before)
    assert torch.equal(net(x), before) and net[0].bias is None and "bias" in net[0]._parameters
    with pytest.raises(RuntimeError, match="inside"), temporarily_changed(net, NAMES, _change(net)):
        raise RuntimeError("inside")
    assert torch.equal(net(x), before) and net[0].bias is None
    assert not hasattr(net, BASE_ATTR)


def test_a_failed_change_leaves_nothing_behind():
    net = _net().eval()
    state = {k: v.clone() for k, v in net.state_dict().items()}

    def change():
        net[2].weight.add_(1.0)
        raise ShapeError("half way")

    with pytest.raises(ShapeError):
        bake_weights(net, ["2.weight"], change, kind="test")
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert not hasattr(net, BASE_ATTR)


def test_bake_undo_is_exact_in_process_and_through_a_file(tmp_path):
    net = _net().eval()
    x = torch.randn(5, 3)
    before = net(x)
    record = bake_weights(net, NAMES, _change(net), kind="test")
    baked = net(x)
    assert not torch.equal(baked, before)
    record.undo_()
    assert torch.equal(net(x), before) and net[0].bias is None
    with pytest.raises(LeverError, match="already undone"):
        record.undo_()
    record = bake_weights(net, NAMES, _change(net), kind="test")
    loaded = Baked.load(record.save(tmp_path / "undo.safetensors"))
    assert loaded.lever == "test" and loaded.module is None
    with pytest.raises(LeverError, match="pass the model"):
        loaded.undo_()
    loaded.undo_(net)
    assert torch.equal(net(x), before) and not hasattr(net, BASE_ATTR)


def test_undo_refuses_weights_changed_after_the_bake():
    net = _net().eval()
    first = bake_weights(net, ["2.weight"], lambda: net[2].weight.add_(1.0), kind="first")
    second = bake_weights(net, ["2.weight"], lambda: net[2].weight.mul_(2.0), kind="second")
    with pytest.raises(LeverError, match="undo later bakes first"):
        first.undo_()
    second.undo_()
    first.undo_()
    assert torch.equal(net[2].weight, _net()[2].weight)


def test_buffers_are_refused_before_anything_changes():
    net = _net()
    with pytest.raises(LeverError, match="buffer"):
        bake_weights(net, ["1.running_mean"], lambda: net[1].running_mean.add_(1.0), kind="test")
    assert torch.equal(net[1].running_mean, torch.zeros(4))


def test_the_base_fingerprint_holds_while_levers_are_in_place():
    net = _net()
    base = fingerprint(net)
    with temporarily_changed(net, ["2.weight"], lambda: net[2].weight.add_(1.0)):
        assert fingerprint(net) != base and base_fingerprint(net) == base
        record = bake_weights(net, ["0.weight"], lambda: net[0].weight.add_(1.0), kind="test")
        assert base_fingerprint(net) == base
    assert base_fingerprint(net) == base  # the bake is still in place
    record.undo_()
    assert not hasattr(net, BASE_ATTR) and base_fingerprint(net) == base


def test_as_model_accepts_modules_and_loaded_models_only():
    net = _net()
    loaded = LoadedModel(net, None, "net", "memory", "causal-lm")
    assert as_model(net).module is net and as_model(loaded).module is net and as_model(as_model(net)).module is net
    with pytest.raises(LeverError, match="nn.Module"):
        as_model("gpt2")


@pytest.mark.parametrize(("value", "units", "error"), [
    (float("nan"), "raw", NonFiniteError), (True, "raw", ShapeError), ("1", "raw", ShapeError),
    (torch.ones(2), "raw", ShapeError), (2.0, "none", LeverError), (1.0, "kilograms", ValueError)])
def test_check_strength_refuses_what_is_not_a_strength(value, units, error):
    with pytest.raises(error):
        check_strength(value, units)


def test_check_strength_accepts_numbers_in_every_unit():
    assert check_strength(torch.tensor(0.5), "fraction") == 0.5 and check_strength(1, "none") == 1.0


def test_weight_contexts_closed_out_of_order_still_restore_the_model_exactly():
    from almostlinear.core.lever import LeverOrderWarning

    net = _net()
    original = {k: v.clone() for k, v in net.state_dict().items()}
    first = temporarily_changed(net, ["2.weight", "0.weight"], lambda: (net[2].weight.add_(1.0), net[0].weight.add_(1.0)))
    second = temporarily_changed(net, ["2.weight"], lambda: net[2].weight.mul_(3.0))
    first.__enter__()
    second.__enter__()
    with pytest.warns(LeverOrderWarning, match="2.weight"):
        first.__exit__(None, None, None)  # the wrong order
    assert torch.equal(net[0].weight, original["0.weight"])  # not shared with the open context: restored
    assert not torch.equal(net[2].weight, original["2.weight"])  # shared: kept until the later one closes
    second.__exit__(None, None, None)
    assert all(torch.equal(original[k], v) for k, v in net.state_dict().items())
    assert not hasattr(net, BASE_ATTR)


def test_real_weight_levers_closed_out_of_order_restore_the_model(tiny_llama):
    import warnings

    from almostlinear.merging import TaskVector

    original = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    deltas = {n: torch.full_like(p, 0.01) for n, p in tiny_llama.named_parameters() if "mlp" in n}
    a, b = TaskVector(deltas).apply(tiny_llama), TaskVector(deltas).apply(tiny_llama, strength=-3.0)
    a.__enter__()
    b.__enter__()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.__exit__(None, None, None)
        b.__exit__(None, None, None)
    assert all(torch.equal(original[k], v) for k, v in tiny_llama.state_dict().items())
