"""The digits split and the cached reference MLPs."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch

from almostlinear.core.errors import AlmostLinearError, ChoiceError
from almostlinear.zoo import SPLITS, Recipe, VAEConfig, digits, digits_mlp, evaluate, make_mlp


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALMOSTLINEAR_CACHE", str(tmp_path))
    return tmp_path


def test_split_is_fixed_and_standardised():
    d = digits()
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (1200, 200, 397)
    assert set(d.y_train.tolist()) == set(range(10))
    assert d.x_train.mean(0).abs().max() < 1e-5
    from sklearn.datasets import load_digits

    raw = load_digits()
    assert sorted((d.y_train.tolist() + d.y_val.tolist() + d.y_test.tolist())) == sorted(raw.target.tolist())
    x, y = d.subset("test", (0, 1))
    assert set(y.tolist()) == {0, 1} and len(x) == len(y)


def _pin(tensor):
    return hashlib.sha256(tensor.numpy().tobytes()).hexdigest()[:16]


def test_named_splits_and_cache_keys_are_those_the_cached_networks_were_made_with():
    # Pinned from the three loaders these splits replaced: a changed split or key would silently
    # retrain every cached network and move every number that rests on them.
    assert SPLITS == ("mlp", "vae", "tangent") and digits() is digits("mlp") is digits("mlp", seed=0)
    mlp, vae, tangent = digits("mlp"), digits("vae"), digits("tangent")
    assert [_pin(t) for t in (mlp.x_train, mlp.x_val, mlp.x_test, mlp.y_test)] == [
        "3a521078df4e5f11", "7bbbd47a5e305136", "e68e2ed7fe4d8803", "55fb24d73fa3d854"]
    assert [_pin(t) for t in (vae.x_train, vae.x_test, vae.y_test)] == [
        "0c1cd5aeb017d1e7", "bb31c2bc50bcb519", "067aade3f8b7ad41"]
    assert (len(vae.y_train), len(vae.y_val), len(vae.y_test)) == (1348, 0, 449)
    assert float(vae.x_train.min()) == 0 and float(vae.x_train.max()) == 1  # pixels in [0, 1]
    assert [_pin(t) for t in (tangent.x_train, tangent.x_test, tangent.y_test)] == [
        "75a2072ef5236c64", "e62aa733270d5405", "d5f9b0b6f23cd8cd"]
    assert (len(tangent.y_train), len(tangent.y_test)) == (1200, 597)
    assert not torch.equal(digits("tangent", seed=1).y_test, tangent.y_test)  # the seed reshuffles
    assert mlp.digest == vae.digest == "8b3b6ae90863430b"
    assert Recipe().key() == "82fc51af10faac35" and VAEConfig().key(vae.digest) == "fb4931f2b7771daa"
    with pytest.raises(ChoiceError, match="mlp"):
        digits("train")


def test_recipe_keys_differ_and_fine_tunes_chain():
    base = Recipe(width=16, seed=0)
    assert base.key() == Recipe(width=16, seed=0).key()
    assert len({base.key(), Recipe(width=16, seed=1).key(), base.fine_tune(classes=(0, 1)).key()}) == 3
    with pytest.raises(AlmostLinearError, match="not both"):  # the extra fields would be silently ignored
        digits_mlp(base, width=32)


def test_training_is_deterministic_and_cached(cache):
    recipe = Recipe(width=16, epochs=3)
    first = digits_mlp(recipe)
    files = list((cache / "zoo" / "digits").glob("mlp-*.safetensors"))
    assert len(files) == 1 and recipe.key() in files[0].name
    again = digits_mlp(recipe)  # from the cache
    fresh = digits_mlp(recipe, cache=False)  # trained again
    for a, b, c in zip(first.parameters(), again.parameters(), fresh.parameters()):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(first[0].weight, make_mlp(16, 2, 0)[0].weight)


def test_width_64_net_learns_the_digits(cache):
    d = digits()
    net = digits_mlp(Recipe(width=64, seed=0))
    assert evaluate(net, d.x_test, d.y_test)["accuracy"] > 0.95
    untrained = evaluate(make_mlp(64), d.x_test, d.y_test)["accuracy"]
    assert untrained < 0.3


def test_fine_tune_starts_from_parent(cache):
    parent = Recipe(width=16, epochs=2)
    child = parent.fine_tune(epochs=1, classes=(3,), lr=0.0)  # zero learning rate: weights unchanged
    for a, b in zip(digits_mlp(parent).parameters(), digits_mlp(child).parameters()):
        assert torch.equal(a, b)


def test_importing_zoo_loads_nothing_and_every_public_name_resolves():
    code = (
        "import sys, types\n"
        "import almostlinear.zoo as package\n"
        "assert 'torch' not in sys.modules, 'importing the package imported torch'\n"
        "for name in package.__all__:  # a name shadowed by its submodule would come back as a module\n"
        "    assert not isinstance(getattr(package, name), types.ModuleType), name\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
