"""Erasers on models: fitted from activations at one layer or every layer, applied through hooks."""

from __future__ import annotations

import random

import pytest
import torch
from sklearn.linear_model import LogisticRegression
from tiny_models import TEXTS, WORDS, build_model, make_tokenizer

from almostlinear.core.artifact import FingerprintWarning, Where, load
from almostlinear.core.collect import collect
from almostlinear.core.errors import ArtifactError, EmptyDataError, LayerError, LeverError, ShapeError, SiteError
from almostlinear.core.lever import Lever
from almostlinear.core.models import LoadedModel, fingerprint
from almostlinear.erasure import LeaceEraser, fit_eraser
from almostlinear.steering.cost import side_effects


def _labelled(n=48, seed=0):
    """Texts whose label is which of two words they contain somewhere before the end."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        words = [rng.choice(WORDS[:30]) for _ in range(rng.randint(2, 6))]
        words.insert(rng.randint(0, len(words) - 1), "cat" if label else "dog")
        texts.append(" ".join(words))
        labels.append(label)
    return texts, torch.tensor(labels)


def _probe_accuracy(x: torch.Tensor, y: torch.Tensor) -> float:
    model = LogisticRegression(max_iter=5000, C=1e3).fit(x.double().numpy(), y.numpy())
    return model.score(x.double().numpy(), y.numpy())


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_one_layer_erasure_puts_probe_at_chance(family):
    model, tok = build_model(family).eval(), make_tokenizer()
    texts, labels = _labelled()
    site = "resid_post.1"
    eraser = fit_eraser(model, tok, texts, labels, site, positions="last")
    assert eraser.provenance.model_fingerprint == fingerprint(model)
    before = collect(model, tok, texts, [site], positions="last")[site]
    with eraser.apply(model, positions="last"):
        after = collect(model, tok, texts, [site], positions="last")[site]
    assert _probe_accuracy(before, labels) > 0.9
    assert _probe_accuracy(after, labels) == pytest.approx(0.5, abs=0.05)
    torch.testing.assert_close(after, eraser(before), rtol=1e-5, atol=1e-5)


def test_every_layer_sequential_erasure_guards_every_site():
    model, tok = build_model("llama").eval(), make_tokenizer()
    texts, labels = _labelled()
    sites = ["resid_post.0", "resid_post.1"]
    eraser = fit_eraser(model, tok, texts, labels, sites, positions="last")
    assert eraser.sites == tuple(sites) and eraser.provenance.where == Where("resid_post", (0, 1))
    before = collect(model, tok, texts, sites, positions="last")
    with eraser.apply(model):
        acts = collect(model, tok, texts, sites, positions="last")
    z = labels.double() - labels.double().mean()

    def cov(x):
        x = x.double()
        return (((x - x.mean(0)).T @ z) / len(z)).abs().max()

    for s in sites:
        assert cov(acts[s]) < 1e-4 * cov(before[s]), s
        assert _probe_accuracy(acts[s], labels) == pytest.approx(0.5, abs=0.05)


def test_apply_restores_model_bit_for_bit_also_on_exception():
    model, tok = build_model("gpt2").eval(), make_tokenizer()
    texts, labels = _labelled()
    eraser = fit_eraser(model, tok, texts, labels, ["resid_pre.0", "resid_pre.1"], sequential=False)
    inputs = tok(list(TEXTS), return_tensors="pt", padding=True)
    with torch.no_grad():
        plain = model(**inputs).logits
    before = _state(model)
    with torch.no_grad(), eraser.apply(model) as module:
        assert module is model
        erased = model(**inputs).logits
    assert (erased - plain).abs().max() > 1e-4
    with pytest.raises(KeyError):
        with eraser.apply(model):
            raise KeyError("inside")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, plain)


def test_erasure_cost_is_reported():
    model, tok = build_model("llama").eval(), make_tokenizer()
    texts, labels = _labelled()
    eraser = fit_eraser(model, tok, texts, labels, "resid_post.0")
    cost = side_effects(model, tok, TEXTS, lambda: eraser.apply(model))
    assert cost.kl > 0 and cost.n_tokens > 0


def test_save_load_and_fingerprint_warning(tmp_path):
    model, tok = build_model("gpt_neox").eval(), make_tokenizer()
    texts, labels = _labelled()
    eraser = fit_eraser(model, tok, texts, labels, ["resid_pre.0", "resid_pre.1"], data_hash="h")
    back = load(eraser.save(tmp_path / "e.safetensors"))
    assert isinstance(back, LeaceEraser) and back.sites == eraser.sites == ("resid_pre.0", "resid_pre.1")
    p = back.provenance
    assert p == eraser.provenance
    assert p.where == Where("resid_pre", (0, 1)) and p.layer is None and p.data_hash == "h"
    assert p.units == "fraction" and p.method == "leace" and not {"operation", "sites", "ranks"} & set(p.extra)
    x = torch.randn(5, 32)
    torch.testing.assert_close(back(x, "resid_pre.1"), eraser(x, "resid_pre.1"))
    one = back.at("resid_pre.1")
    assert one.sites == ("resid_pre.1",) and one.provenance.layer == 1
    torch.testing.assert_close(one(x), eraser(x, "resid_pre.1"))
    other = build_model("gpt_neox", seed=1)
    with pytest.warns(FingerprintWarning):
        with back.apply(other):
            pass
    with pytest.raises(ArtifactError):
        with back.apply(other, strict=True):
            pass
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in other.modules())


def test_bad_input():
    model, tok = build_model("llama").eval(), make_tokenizer()
    texts, labels = _labelled(n=12)
    with pytest.raises(EmptyDataError):
        fit_eraser(model, tok, texts, torch.zeros(12), "resid_post.0")
    with pytest.raises(EmptyDataError):
        fit_eraser(model, tok, [], [], "resid_post.0")
    with pytest.raises(ShapeError):
        fit_eraser(model, tok, texts, labels[:5], "resid_post.0")
    with pytest.raises(LayerError):
        fit_eraser(model, tok, texts, labels, "resid_post.7")
    wide = LeaceEraser.fit(torch.randn(20, 16), torch.arange(20) % 2, site="resid_post.0")
    with pytest.raises(ShapeError):
        with wide.apply(model):
            pass
    far = LeaceEraser.fit(torch.randn(20, 32), torch.arange(20) % 2, site="resid_post.9")
    with pytest.raises(LayerError):
        with far.apply(model):
            pass
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_one_eraser_acts_at_one_site_name():
    model, tok = build_model("llama").eval(), make_tokenizer()
    texts, labels = _labelled(n=12)
    with pytest.raises(SiteError, match="one site name"):
        fit_eraser(model, tok, texts, labels, ["resid_pre.1", "resid_post.1"])
    x, z = torch.randn(20, 32), torch.arange(20) % 2
    a, b = LeaceEraser.fit(x, z, site="resid_pre.0"), LeaceEraser.fit(x, z, site="mlp_out.1")
    from almostlinear.erasure import stack

    with pytest.raises(SiteError, match="one site name"):
        stack([a, b])
    assert stack([a, LeaceEraser.fit(x, z, site="resid_pre.1")]).sites == ("resid_pre.0", "resid_pre.1")


def test_is_a_lever_whose_strength_interpolates_and_that_cannot_be_baked():
    model, tok = build_model("llama").eval(), make_tokenizer()
    texts, labels = _labelled()
    site = "resid_post.1"
    eraser = fit_eraser(model, tok, texts, labels, site, positions="last")
    assert isinstance(eraser, Lever) and eraser.kind == "erasure.leace"
    assert eraser.strength_units == ("fraction",) and not eraser.bakes
    inputs = tok(list(TEXTS), return_tensors="pt", padding=True)
    before = collect(model, tok, texts, [site], positions="last")[site]
    with torch.no_grad():
        plain = model(**inputs).logits
        with eraser.apply(model, strength=0.0):
            assert torch.equal(model(**inputs).logits, plain)
    with eraser.apply(model, strength=0.5):
        half = collect(model, tok, texts, [site], positions="last")[site]
    torch.testing.assert_close(half, (before + eraser(before)) / 2, rtol=1e-5, atol=1e-5)
    state = _state(model)
    with pytest.raises(LeverError, match="oblique affine map"):
        eraser.bake_(model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_a_loaded_model_is_accepted():
    model, tok = build_model("gpt2").eval(), make_tokenizer()
    loaded = LoadedModel(model, tok, "tiny-gpt2", "memory", "causal-lm")
    texts, labels = _labelled()
    eraser = fit_eraser(loaded, None, texts, labels, "resid_post.0")
    assert eraser.provenance.model_fingerprint == loaded.fingerprint
    inputs = tok(list(TEXTS), return_tensors="pt", padding=True)
    with torch.no_grad():
        with eraser.apply(model):
            direct = model(**inputs).logits
        with eraser.apply(loaded) as module:
            assert module is model
            assert torch.equal(model(**inputs).logits, direct)


def test_guardedness_matches_sklearn_and_hooked_reading():
    from almostlinear.erasure.evaluate import guardedness

    model, tok = build_model("llama").eval(), make_tokenizer()
    texts, labels = _labelled(n=200)
    train, test = (texts[:120], labels[:120]), (texts[120:], labels[120:])
    eraser = fit_eraser(model, tok, *train, "resid_post.1")
    got = guardedness(model, tok, eraser, train, test)
    assert got.chance == 0.5 and got.n_train == 120 and got.n_test == 80
    assert got.accuracy_before > 0.8
    assert got.accuracy_after <= got.chance + 0.15
    # the same number read through the hooks (two-site eraser takes the hooked path)
    two = fit_eraser(model, tok, *train, ["resid_post.0", "resid_post.1"])
    hooked = guardedness(model, tok, two, train, test)
    assert hooked.accuracy_after <= hooked.chance + 0.15
    x = collect(model, tok, texts, ["resid_post.1"], positions="last")["resid_post.1"]
    after = eraser(x)
    sk = LogisticRegression(max_iter=5000).fit(after[:120].double().numpy(), labels[:120].numpy())
    assert sk.score(after[120:].double().numpy(), labels[120:].numpy()) <= 0.5 + 0.15


def test_a_file_of_format_1_loads_in_todays_shape(tmp_path):
    """Format 1 kept the layers in a ``sites`` field (and in ``extra``) and only a shared site name in provenance."""
    from almostlinear.core.artifact import write_file

    eraser = LeaceEraser.from_factors({f"resid_pre.{i}": (torch.randn(32, 1), torch.randn(1, 32), torch.randn(32))
                                       for i in (0, 1)})
    header = {"kind": "leace-eraser", "format_version": 1,
              "fields": {"sites": ["resid_pre.0", "resid_pre.1"], "ranks": [1, 1], "method": "leace"},
              "provenance": {"model_fingerprint": None, "site": "resid_pre", "layer": None, "method": "leace",
                             "units": "raw activations; erased in place of the site's activation",
                             "extra": {"operation": "leace-erase", "sites": ["resid_pre.0", "resid_pre.1"],
                                       "ranks": [1, 1], "svd_tol": 1e-6},
                             "library_version": "0.1.0"}}
    path = write_file(tmp_path / "old.safetensors",
                      {"left": eraser.left, "right": eraser.right, "mean": eraser.mean}, header)
    back = load(path)
    assert isinstance(back, LeaceEraser) and back.sites == ("resid_pre.0", "resid_pre.1")
    assert back.provenance.where == Where("resid_pre", (0, 1)) and back.provenance.units == "fraction"
    assert back.provenance.extra == {"svd_tol": 1e-6}
    x = torch.randn(4, 32)
    torch.testing.assert_close(back(x, "resid_pre.1"), eraser(x, "resid_pre.1"))
