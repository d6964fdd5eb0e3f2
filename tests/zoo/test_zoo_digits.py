"""The digits split and the cached reference MLPs."""

from __future__ import annotations

import pytest
import torch

from almostlinear.zoo import Recipe, digits, digits_mlp, evaluate, make_mlp


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


def test_recipe_keys_differ_and_fine_tunes_chain():
    base = Recipe(width=16, seed=0)
    assert base.key() == Recipe(width=16, seed=0).key()
    assert len({base.key(), Recipe(width=16, seed=1).key(), base.fine_tune(classes=(0, 1)).key()}) == 3
    with pytest.raises(TypeError, match="not both"):  # the extra fields would be silently ignored
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
