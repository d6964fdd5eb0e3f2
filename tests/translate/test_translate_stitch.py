"""Stitching: identity stitches reproduce known networks, fitted stitches run, the models stay untouched."""

import copy

import pytest
import torch
from tiny_models import TEXTS, build_model, make_tokenizer

from almostlinear.core.collect import collect, tokenize
from almostlinear.core.errors import ShapeError
from almostlinear.translate import LinearMap, Network, fit_stitch, paired_activations, stitched_loss
from almostlinear.translate.stitch import _cross_entropy


def _identity(d=32):
    return LinearMap(torch.eye(d), torch.zeros(d), torch.zeros(0, dtype=torch.int64))


def _ce(model, tokenizer, texts):
    inputs = tokenize(tokenizer, texts, max_length=64, device="cpu")
    with torch.no_grad():
        logits = model(**inputs).logits
    total, count = _cross_entropy(logits, inputs["input_ids"], inputs["attention_mask"])
    return total / count


def test_identity_stitch_into_another_model_equals_the_frankenstein_network():
    tokenizer = make_tokenizer()
    bottom, top = build_model("llama", seed=0), build_model("llama", seed=1)
    franken = copy.deepcopy(top)
    franken.model.embed_tokens.load_state_dict(bottom.model.embed_tokens.state_dict())
    franken.model.layers[0].load_state_dict(bottom.model.layers[0].state_dict())
    texts = list(TEXTS)
    result = stitched_loss(Network.of(bottom, tokenizer), Network.of(top, tokenizer), texts, "resid_post.0",
                           "resid_post.0", _identity(), skip_first=False)
    assert result.stitched == pytest.approx(_ce(franken, tokenizer, texts), rel=1e-5)
    assert result.target == pytest.approx(_ce(top, tokenizer, texts), rel=1e-6)
    assert result.identity == pytest.approx(result.stitched, rel=1e-6)


def test_a_map_fitted_from_a_site_to_itself_stitches_without_cost():
    tokenizer, model = make_tokenizer(), build_model("gpt2")
    net = Network.of(model, tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mapping, mean = fit_stitch(net, net, list(TEXTS) * 3, "resid_post.0", "resid_post.0", ridge=0.0)
    result = stitched_loss(net, net, list(TEXTS), "resid_post.0", "resid_post.0", mapping, target_mean=mean)
    assert result.stitched == pytest.approx(result.target, abs=1e-4)
    assert abs(result.mean_ablation - result.target) > 1e-3  # the mean replaced every non-first token
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # weights untouched


def test_paired_rows_are_the_collected_activations_without_first_tokens():
    tokenizer, model = make_tokenizer(), build_model("llama")
    net = Network.of(model, tokenizer)
    x, y = paired_activations(net, net, list(TEXTS), "resid_pre.1", "resid_post.1")
    ref = collect(model, tokenizer, list(TEXTS), ["resid_pre.1", "resid_post.1"], skip_first=True)
    assert torch.allclose(x, ref["resid_pre.1"]) and torch.allclose(y, ref["resid_post.1"])


def test_stitching_across_layers_reports_all_baselines_and_checks_widths():
    tokenizer, model = make_tokenizer(), build_model("qwen2")
    net = Network.of(model, tokenizer)
    mapping, mean = fit_stitch(net, net, list(TEXTS) * 2, "resid_post.0", "resid_post.1")
    assert str(mapping.provenance.where) == "resid_post.0" and mapping.target == "resid_post.1"
    result = stitched_loss(net, net, list(TEXTS), "resid_post.0", "resid_post.1", mapping, target_mean=mean)
    assert result.tokens > 0 and result.identity is not None
    assert all(v == v for v in (result.target, result.stitched, result.mean_ablation))
    with pytest.raises(ShapeError, match="wide"):
        stitched_loss(net, net, list(TEXTS), "mlp_key.0", "resid_post.1", mapping)


def test_an_error_inside_a_stitched_run_leaves_no_hooks_behind():
    tokenizer, model = make_tokenizer(), build_model("llama")
    net = Network.of(model, tokenizer)
    inputs = tokenize(tokenizer, list(TEXTS), max_length=64, device="cpu")
    with torch.no_grad():
        before = model(**inputs).logits
    norm, calls = model.model.norm, []
    original = norm.forward

    def failing(hidden):
        calls.append(1)
        if len(calls) == 2:  # the second forward of the batch is the stitched one, inside the hook
            raise RuntimeError("boom")
        return original(hidden)

    norm.forward = failing
    with pytest.raises(RuntimeError, match="boom"):
        stitched_loss(net, net, list(TEXTS), "resid_post.0", "resid_post.1", _identity())
    norm.forward = original
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, before)
