"""The lever contract, run over every registered artifact kind and every tiny causal architecture.

PEFT's shared tuner tests are the model: one table of factories (``lever_factories.py``), one set
of checks. A kind registered without a factory fails :func:`test_every_kind_has_a_factory`.
"""

from __future__ import annotations

import dataclasses
import re
import warnings

import pytest
import torch
from lever_factories import (BAKE_REFUSES, FACTORIES, LEVERS, NOT_ARTIFACTS, REFUSES, UNFINGERPRINTED, Case,
                             build_case, logits)
from tiny_models import CAUSAL_ARCHITECTURES, MOE_ARCHITECTURES, TEXTS

from almostlinear.core.artifact import FORMAT_VERSION, Artifact, FingerprintWarning, Where, read_header, registered_kinds
from almostlinear.core.errors import AlmostLinearError, LeverError
from almostlinear.core.lever import UNITS, Baked, Lever
from almostlinear.core.models import LoadedModel

KIND = re.compile(r"^[a-z]+\.[a-z][a-z_]*$")


def library_kinds() -> dict[str, type]:
    """Registered kinds defined by the library (tests register toy kinds of their own)."""
    return {k: cls for k, cls in registered_kinds().items() if cls.__module__.startswith("almostlinear.")}


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict(keep_vars=True).items()}


def _hooks(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in module.modules())


def _assert_same(module: torch.nn.Module, state: dict[str, torch.Tensor], hooks: int) -> None:
    now = module.state_dict(keep_vars=True)
    assert set(now) == set(state), f"parameters added or removed: {set(now) ^ set(state)}"
    for name, value in state.items():
        assert now[name].dtype == value.dtype and torch.equal(now[name].detach(), value), f"{name} changed"
    assert _hooks(module) == hooks, "a hook was left on the model"


def _equal(a, b) -> bool:
    """Equality that compares tensors bit for bit, also inside dicts and lists."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


# --- every kind -----------------------------------------------------------------------------------


def test_every_kind_has_a_factory():
    kinds = set(library_kinds())
    assert kinds - set(FACTORIES) == set(), "registered kinds without a contract factory"
    assert set(FACTORIES) - kinds - NOT_ARTIFACTS == set(), "factories for kinds that are not registered"


@pytest.mark.parametrize("kind", sorted(library_kinds()))
def test_kind_name_and_home(kind):
    cls = library_kinds()[kind]
    family = kind.split(".")[0]
    assert KIND.match(kind), f"{kind!r} breaks the naming rule family.snake_name"
    assert cls.__module__ == f"almostlinear.{family}.artifact", f"{cls.__name__} lives in {cls.__module__}"


@pytest.mark.parametrize("kind", sorted(set(FACTORIES) - NOT_ARTIFACTS))
def test_save_load_round_trip(kind, tmp_path):
    case = build_case(kind, "llama")
    artifact = case.artifact
    path = artifact.save(tmp_path / "a.safetensors")
    header = read_header(path)
    assert header["kind"] == kind and header["format_version"] == FORMAT_VERSION
    loaded = Artifact.load(path)
    assert type(loaded) is type(artifact)
    for f in dataclasses.fields(artifact):
        assert _equal(getattr(artifact, f.name), getattr(loaded, f.name)), f.name
    units = artifact.provenance.units
    if kind in LEVERS:
        assert units in UNITS and units == type(artifact).strength_units[0]
        assert isinstance(artifact.provenance.where, Where)
    else:
        assert units is None or units in UNITS


# --- every lever × every architecture ------------------------------------------------------------------

LEVER_CASES = [(kind, arch) for kind in sorted(LEVERS) for arch in CAUSAL_ARCHITECTURES]


def _case_or_refusal(kind: str, arch: str) -> Case:
    """The case, or — where the lever refuses this architecture by name — a check that it refused cleanly."""
    case = build_case(kind, arch)
    if case.refused is not None:
        pytest.skip(f"{kind} refuses {arch} by design: {case.refused}")
    return case


@pytest.mark.parametrize(("kind", "arch"), LEVER_CASES)
def test_is_a_lever(kind, arch):
    case = _case_or_refusal(kind, arch)
    assert isinstance(case.artifact, Lever)
    units = type(case.artifact).strength_units
    assert units and all(u in UNITS for u in units)


@pytest.mark.parametrize(("kind", "arch"), LEVER_CASES)
def test_apply_restores_bit_for_bit(kind, arch):
    case = _case_or_refusal(kind, arch)
    model = case.model
    state, hooks, base = _state(model), _hooks(model), logits(model)
    with case.apply(model) as module:
        assert module is model
        inside = logits(model)
        changed = not torch.equal(inside, base) or any(
            not torch.equal(v.detach(), state[k]) for k, v in model.state_dict(keep_vars=True).items() if k in state)
        assert changed, "applying the lever changed neither the outputs nor the weights"
    _assert_same(model, state, hooks)
    assert torch.equal(logits(model), base)


@pytest.mark.parametrize(("kind", "arch"), LEVER_CASES)
def test_apply_restores_after_an_exception(kind, arch):
    case = _case_or_refusal(kind, arch)
    model = case.model
    state, hooks = _state(model), _hooks(model)
    with pytest.raises(KeyError, match="inside"):
        with case.apply(model):
            logits(model)
            raise KeyError("inside")
    _assert_same(model, state, hooks)


@pytest.mark.parametrize(("kind", "arch"), LEVER_CASES)
def test_zero_strength_changes_nothing(kind, arch):
    case = _case_or_refusal(kind, arch)
    if type(case.artifact).strength_units[0] == "none":
        with pytest.raises(LeverError):
            with case.apply(case.model, strength=0.0):
                pass
        return
    base = logits(case.model)
    with case.apply(case.model, strength=0.0):
        assert torch.equal(logits(case.model), base)


@pytest.mark.parametrize(("kind", "arch"), LEVER_CASES)
def test_bake_then_undo_is_exact(kind, arch, tmp_path):
    case = _case_or_refusal(kind, arch)
    model = case.model
    state, hooks = _state(model), _hooks(model)
    if not type(case.artifact).bakes or arch in BAKE_REFUSES.get(kind, ()):
        with pytest.raises(LeverError):
            case.bake(model)
        _assert_same(model, state, hooks)
        return
    with case.apply(model):
        applied = logits(model)
    record = case.bake(model)
    assert isinstance(record, Baked)
    baked = logits(model)
    torch.testing.assert_close(baked, applied, rtol=1e-4, atol=1e-5)
    if record.on_undo is None:  # a record that restores weights only can go through a file
        path = record.save(tmp_path / "baked.safetensors")
        Baked.load(path).undo_(model)
        with pytest.raises(LeverError):  # the weights are back: the record's hashes no longer match
            record.undo_()
    else:
        record.undo_()
    _assert_same(model, state, hooks)


@pytest.mark.parametrize(("kind", "arch"), LEVER_CASES)
def test_another_models_artifact_warns_and_strict_raises(kind, arch):
    case = _case_or_refusal(kind, arch)
    if kind in UNFINGERPRINTED:
        pytest.skip(f"{kind} is stored without a model fingerprint; only the shapes of its targets are checked")
    other = case.other_model()
    state, hooks = _state(other), _hooks(other)
    with pytest.warns(FingerprintWarning):
        with case.apply(other, strict=False):
            pass
    with pytest.raises(AlmostLinearError):
        with case.apply(other, strict=True):
            pass
    _assert_same(other, state, hooks)


@pytest.mark.parametrize(("kind", "arch"), LEVER_CASES)
def test_a_loaded_model_is_accepted(kind, arch):
    case = _case_or_refusal(kind, arch)
    loaded = LoadedModel(case.model, case.tokenizer, f"tiny-{arch}", "memory", "causal-lm")
    with case.apply(case.model):
        direct = logits(case.model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FingerprintWarning)
        with case.apply(loaded) as module:
            assert module is case.model
            torch.testing.assert_close(logits(case.model), direct, rtol=0, atol=0)


@pytest.mark.parametrize("arch", MOE_ARCHITECTURES)
@pytest.mark.parametrize("kind", sorted(LEVERS))
def test_moe_is_handled_or_refused_before_any_change(kind, arch):
    case = build_case(kind, arch)  # raises where a lever refuses an architecture it should handle
    if arch not in REFUSES.get(kind, ()):
        assert case.refused is None
        return  # handled: the checks above ran on this architecture
    assert case.refused and "expert" in case.refused
    if case.artifact is None:
        return  # refused while fitting, before any artifact or change existed
    model = case.model
    state, hooks = _state(model), _hooks(model)
    with pytest.raises(LeverError):
        with case.apply(model):
            pass
    with pytest.raises(LeverError):
        case.bake(model)
    _assert_same(model, state, hooks)


def test_the_suite_covers_the_architectures():
    assert {"llama", "gpt2", "gpt_neox", "qwen2", "gemma"} <= set(CAUSAL_ARCHITECTURES)
    assert MOE_ARCHITECTURES and set(MOE_ARCHITECTURES) <= set(CAUSAL_ARCHITECTURES)
    assert len(TEXTS) >= 4


@pytest.mark.parametrize("kind", sorted(LEVERS))
def test_a_footprint_where_offered_is_readable(kind):
    from almostlinear.calibrate.footprint import as_footprint

    case = build_case(kind, "llama")
    if not hasattr(case.artifact, "footprint"):
        pytest.skip(f"{kind} declares no footprint")
    offered = case.artifact.footprint()
    prints = [as_footprint(f) for f in (offered if isinstance(offered, list) else [offered])]
    structure = case.model.config
    assert prints and all(p.width in (structure.hidden_size, structure.intermediate_size) for p in prints)
    assert {p.role for p in prints} <= {"reads", "writes"}
