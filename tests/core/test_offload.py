"""Models dispatched with accelerate, some weights offloaded to the "disk" tier (meta tensors).

The disk tier reproduces on a CPU host the state that GPU + CPU offload creates: offloaded
parameters sit on the meta device and their values live in accelerate's weights map. Reading the
model (fingerprint, collect, hooks) must give what the in-memory model gives; a lever that writes
weights must either match the in-memory lever with exact undo, or refuse before changing anything.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import TEXTS, build_model, make_tokenizer

from almostlinear import collect
from almostlinear.core.collect import model_device
from almostlinear.core.models import fingerprint
from almostlinear.core.offload import offloaded_modules, stored_value

accelerate = pytest.importorskip("accelerate")

BASE = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu", "model.norm": "cpu",
        "model.rotary_emb": "cpu", "lm_head": "cpu"}
PLACEMENTS = {
    "layer_on_disk": {**BASE, "model.layers.1": "disk"},
    "embedding_on_disk": {**BASE, "model.embed_tokens": "disk", "model.layers.0": "disk"},
}
SITES = ["resid_post.0", "mlp_key.1", "attn_out.1"]


def _dispatch(model, placement, folder):
    from accelerate import dispatch_model

    return dispatch_model(copy.deepcopy(model), device_map=PLACEMENTS[placement], offload_dir=str(folder))


@pytest.fixture(params=list(PLACEMENTS))
def pair(request, tmp_path):
    """``(in-memory model, the same model dispatched)`` for each placement."""
    model = build_model("llama")
    return model, _dispatch(model, request.param, tmp_path)


def _logits(model, tokenizer=None):
    tokenizer = tokenizer or make_tokenizer()
    inputs = tokenizer(list(TEXTS[:3]), return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**inputs).logits


def _stored(model) -> dict[str, torch.Tensor]:
    """Every parameter's values, read from the weights map where offloaded (clones)."""
    out = {}
    for name, param in model.named_parameters():
        value = stored_value(model, name) if param.is_meta else param
        out[name] = value.detach().clone()
    return out


def test_dispatch_offloads_something(pair):
    _, dispatched = pair
    names = [n for n, _ in dispatched.named_parameters()]
    assert offloaded_modules(dispatched, names), "the placement should leave parameters on the meta device"


def test_fingerprint_reads_the_weights_map(pair):
    model, dispatched = pair
    assert fingerprint(dispatched) == fingerprint(model)
    assert torch.equal(_logits(dispatched), _logits(model))


def test_fingerprint_sees_a_change_in_offloaded_weights(tmp_path):
    model = build_model("llama")
    dispatched = _dispatch(model, "layer_on_disk", tmp_path)
    other = build_model("llama")
    with torch.no_grad():
        other.model.layers[1].mlp.down_proj.weight.mul_(1.5)
    assert fingerprint(_dispatch(other, "layer_on_disk", tmp_path / "other")) != fingerprint(dispatched)


def test_inputs_go_to_the_embedding_execution_device(pair):
    _, dispatched = pair
    assert model_device(dispatched) == torch.device("cpu")


def test_collect_equals_in_memory(pair):
    model, dispatched = pair
    tokenizer = make_tokenizer()
    expected = collect(model, tokenizer, TEXTS, SITES, logits=True, batch_size=4)
    got = collect(dispatched, tokenizer, TEXTS, SITES, logits=True, batch_size=4)
    for site in SITES:
        assert torch.equal(got[site], expected[site])
    assert torch.equal(got.logits, expected.logits)
    assert torch.equal(got.token_ids, expected.token_ids)


# --- levers -------------------------------------------------------------------------------------------


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _steering_at(layer: int):
    def build(model, fp):
        from almostlinear.steering import SteeringVector

        direction = torch.randn(32, generator=torch.Generator().manual_seed(0))
        return SteeringVector.from_direction(direction / direction.norm(), site="resid_post", layer=layer,
                                             method="mean_diff", norms={"residual_median": 2.0}, model_fingerprint=fp)

    return build


def _factory(name):
    import lever_factories

    return getattr(lever_factories, name)


# What each weight lever must do on each placement: "refuse" when a weight it would write is
# offloaded, else "match" the in-memory lever. Steering vectors and ablations hook on apply.
REFUSE_ALWAYS = {"apply": "refuse", "bake_": "refuse"}
EXPECTED = {
    "task_vector": {"layer_on_disk": REFUSE_ALWAYS, "embedding_on_disk": REFUSE_ALWAYS},
    "lora": {"layer_on_disk": {"apply": "match", "bake_": "match"}, "embedding_on_disk": REFUSE_ALWAYS},
    "ablation": {"layer_on_disk": {"apply": "match", "bake_": "refuse"},
                 "embedding_on_disk": {"apply": "match", "bake_": "refuse"}},
    "steering_layer0": {"layer_on_disk": {"apply": "match", "bake_": "match"},
                        "embedding_on_disk": {"apply": "match", "bake_": "refuse"}},
    "steering_layer1": {"layer_on_disk": {"apply": "match", "bake_": "refuse"},
                        "embedding_on_disk": {"apply": "match", "bake_": "match"}},
    "low_rank_layer0": {"layer_on_disk": {"apply": "match", "bake_": "match"},
                        "embedding_on_disk": {"apply": "refuse", "bake_": "refuse"}},
}
WEIGHT_LEVERS = {
    "task_vector": lambda: _factory("_task_vector"),
    "lora": lambda: _factory("_lora"),
    "ablation": lambda: _factory("_ablation"),
    "steering_layer0": lambda: _steering_at(0),
    "steering_layer1": lambda: _steering_at(1),
    "low_rank_layer0": lambda: _factory("_low_rank"),
}


@pytest.mark.parametrize("placement", list(PLACEMENTS))
@pytest.mark.parametrize("lever", list(WEIGHT_LEVERS))
@pytest.mark.parametrize("verb", ["apply", "bake_"])
def test_weight_lever_refuses_or_matches(placement, lever, verb, tmp_path):
    from almostlinear.core.errors import LeverError
    from almostlinear.core.lever import BASE_ATTR

    model = build_model("llama")
    artifact = WEIGHT_LEVERS[lever]()(model, fingerprint(model))
    dispatched = _dispatch(model, placement, tmp_path)
    logits, stored = _logits(dispatched), _stored(dispatched)
    names = [n for n, _ in dispatched.named_parameters()]

    if EXPECTED[lever][placement][verb] == "refuse":
        with pytest.raises(LeverError, match="offloaded"):
            if verb == "apply":
                with artifact.apply(dispatched):
                    pass
            else:
                artifact.bake_(dispatched)
        assert torch.equal(_logits(dispatched), logits)
        after = _stored(dispatched)
        assert list(after) == list(stored) and [n for n, _ in dispatched.named_parameters()] == names
        assert all(torch.equal(after[n], stored[n]) for n in stored)
        assert getattr(dispatched, BASE_ATTR, None) is None
        return

    if verb == "apply":
        with artifact.apply(model):
            expected = _logits(model)
        with artifact.apply(dispatched):
            got = _logits(dispatched)
    else:
        record = artifact.bake_(model)
        expected = _logits(model)
        record.undo_()
        record = artifact.bake_(dispatched)
        got = _logits(dispatched)
        record.undo_()
    assert not torch.equal(expected, logits), "the lever should change the model"
    assert _rel(got, expected) <= 1e-6
    assert torch.equal(_logits(dispatched), logits)
    after = _stored(dispatched)
    assert list(after) == list(stored) and all(torch.equal(after[n], stored[n]) for n in stored)
    assert fingerprint(dispatched) == fingerprint(model)


@pytest.mark.parametrize("placement", list(PLACEMENTS))
@pytest.mark.parametrize("lever", ["_steering_vector", "_ablation", "_eraser", "_sae"])
def test_hook_levers_act_on_dispatched_models(placement, lever, tmp_path):
    model = build_model("llama")
    artifact = _factory(lever)(model, fingerprint(model))  # recorded fingerprint: the check runs too
    dispatched = _dispatch(model, placement, tmp_path)
    before = _logits(dispatched)
    with artifact.apply(model):
        expected = _logits(model)
    with artifact.apply(dispatched):
        got = _logits(dispatched)
    assert not torch.equal(expected, before)
    assert _rel(got, expected) <= 1e-6
    assert torch.equal(_logits(dispatched), before)


def test_refusal_comes_before_a_change_that_holds_the_weight(tmp_path):
    """A change closure that captured an offloaded weight never runs."""
    from almostlinear.core.errors import LeverError
    from almostlinear.core.lever import bake_weights, temporarily_changed

    dispatched = _dispatch(build_model("llama"), "layer_on_disk", tmp_path)
    weight = dispatched.model.layers[1].mlp.down_proj.weight
    assert weight.is_meta
    ran = []

    def change():
        ran.append(True)
        weight.add_(1.0)

    names = ["model.layers.1.mlp.down_proj.weight", "model.layers.0.mlp.down_proj.weight"]
    with pytest.raises(LeverError, match="model.layers.1.mlp.down_proj"):
        with temporarily_changed(dispatched, names, change):
            pass
    with pytest.raises(LeverError, match="model.layers.1.mlp.down_proj"):
        bake_weights(dispatched, ["model.layers.1.mlp.down_proj.bias"], change, kind="test")  # a bias to create
    assert not ran
    assert dispatched.model.layers[1].mlp.down_proj.bias is None


def test_resident_weights_of_a_dispatched_model_still_change(tmp_path):
    from almostlinear.core.lever import check_resident, temporarily_changed

    model = build_model("llama")
    dispatched = _dispatch(model, "layer_on_disk", tmp_path)
    check_resident(dispatched, ["model.layers.0.mlp.down_proj.weight"])
    weight = dispatched.model.layers[0].mlp.down_proj.weight
    original = weight.clone()
    with temporarily_changed(dispatched, ["model.layers.0.mlp.down_proj.weight"], lambda: weight.mul_(2.0)):
        assert torch.equal(weight, 2 * original)
    assert torch.equal(weight, original)


def test_parameter_value_reads_offloaded_weights(tmp_path):
    from almostlinear.core.lever import parameter_value

    model = build_model("llama")
    dispatched = _dispatch(model, "layer_on_disk", tmp_path)
    name = "model.layers.1.mlp.down_proj.weight"
    expected = model.get_parameter(name)
    assert torch.equal(parameter_value(dispatched, name), expected)
    assert torch.equal(parameter_value(dispatched, dispatched.get_parameter(name)), expected)
    resident = dispatched.model.layers[0].mlp.down_proj.weight
    assert parameter_value(dispatched, resident) is resident


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_offload_reads_the_same_values(dtype, tmp_path):
    model = build_model("llama").to(dtype)
    for placement in PLACEMENTS:
        dispatched = _dispatch(model, placement, tmp_path / placement)
        assert fingerprint(dispatched) == fingerprint(model)
        stored = _stored(dispatched)
        assert all(torch.equal(stored[n], p) for n, p in model.named_parameters())
        assert torch.equal(_logits(dispatched), _logits(model))
