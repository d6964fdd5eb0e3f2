"""Task vectors: arithmetic, application to models, measures, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import cosine_similarity
from tiny_models import build_model

from almostlinear.core.errors import ShapeError
from almostlinear.merging import TaskVector, analogy, cosine_matrix, merge_state_dicts, sign_conflict_rate


def _variant(model, seed, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    return {k: v + noise * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
            for k, v in model.state_dict().items()}


@pytest.fixture
def setup():
    model = build_model("llama")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    fts = [_variant(model, s) for s in (1, 2, 3)]
    return model, base, fts


def test_arithmetic_and_apply_to(setup):
    _, base, (a, b, c) = setup
    ta, tb = TaskVector.from_state_dicts(base, a), TaskVector.from_state_dicts(base, b)
    k = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close((ta + tb).deltas[k], a[k] - base[k] + b[k] - base[k])
    torch.testing.assert_close((ta - tb).deltas[k], a[k] - b[k])
    torch.testing.assert_close((-ta).deltas[k], base[k] - a[k])
    torch.testing.assert_close((0.5 * ta).deltas[k], (ta * 0.5).deltas[k])
    torch.testing.assert_close(sum([ta, tb]).deltas[k], (ta + tb).deltas[k])
    rebuilt = ta.apply_to(base)
    torch.testing.assert_close(rebuilt[k], a[k])
    # adding task vectors is task arithmetic
    merged = merge_state_dicts("task_arithmetic", [a, b], base=base, lam=0.4)
    torch.testing.assert_close((ta + tb).apply_to(base, scale=0.4)[k], merged[k])
    # negation undoes
    torch.testing.assert_close((-ta).apply_to(rebuilt)[k], base[k])
    tc = TaskVector.from_state_dicts(base, c)
    torch.testing.assert_close(analogy(ta, tb, tc).deltas[k], (tc + tb - ta).deltas[k])


def test_apply_restores_bit_for_bit_even_on_errors(setup):
    model, base, (a, _, _) = setup
    tv = TaskVector.from_state_dicts(base, a)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randint(3, 90, (2, 6))
    with torch.no_grad():
        with tv.apply(model, scale=1.0):
            inside = model(x).logits
            k = "model.layers.1.self_attn.q_proj.weight"
            torch.testing.assert_close(model.state_dict()[k], a[k])
        with pytest.raises(RuntimeError):
            with tv.apply(model, scale=-2.0):
                raise RuntimeError("boom")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    reference = build_model("llama")
    reference.load_state_dict(a)
    with torch.no_grad():
        torch.testing.assert_close(inside, reference(x).logits)
    tv.bake_(model)
    torch.testing.assert_close(model.state_dict()[k], a[k])


def test_cosine_matrix_matches_sklearn_and_conflicts_match_brute_force(setup):
    _, base, fts = setup
    tvs = [TaskVector.from_state_dicts(base, f) for f in fts]
    flat = np.stack([np.concatenate([tv.deltas[k].double().numpy().ravel() for k in tvs[0].deltas]) for tv in tvs])
    np.testing.assert_allclose(cosine_matrix(tvs).numpy(), cosine_similarity(flat), atol=1e-10)
    assert tvs[0].cosine(tvs[1]) == pytest.approx(cosine_similarity(flat)[0, 1], abs=1e-10)
    signs = np.sign(flat)
    overlap = (signs != 0).sum(0) >= 2
    conflict = overlap & (signs > 0).any(0) & (signs < 0).any(0)
    assert sign_conflict_rate(tvs) == pytest.approx(conflict.sum() / overlap.sum())
    # independent random task vectors disagree about half the time on their top entries
    assert 0.4 < sign_conflict_rate(tvs, density=0.2) < 0.9
    assert sign_conflict_rate([tvs[0], tvs[0] * 2.0]) == 0.0


def test_save_load_and_mismatch(setup, tmp_path):
    _, base, (a, _, _) = setup
    tv = TaskVector.from_state_dicts(base, a)
    path = tv.save(tmp_path / "tv.safetensors")
    back = TaskVector.load(path)
    assert set(back.deltas) == set(tv.deltas)
    for k in tv.deltas:
        assert torch.equal(back.deltas[k], tv.deltas[k])
    smaller = {k: v for k, v in a.items() if "layers.1" not in k}
    with pytest.raises(ShapeError, match="lacks tensor"):
        TaskVector.from_state_dicts(base, smaller)
    other = TaskVector.from_state_dicts({k: v for k, v in base.items() if "layers.1" not in k}, smaller)
    with pytest.raises(ShapeError, match="different tensors"):
        tv + other


def test_generic_artifact_loader_reads_a_task_vector(tmp_path):
    from almostlinear import load_artifact
    from almostlinear.merging import TaskVector

    tv = TaskVector.from_state_dicts({"w": torch.zeros(2, 3)}, {"w": torch.arange(6.0).reshape(2, 3)})
    loaded = load_artifact(tv.save(tmp_path / "tv.safetensors"))
    assert isinstance(loaded, TaskVector)
    assert torch.equal(loaded.deltas["w"], tv.deltas["w"])


@pytest.mark.parametrize("scale", [float("nan"), float("inf")])
def test_a_non_finite_scale_is_refused_and_leaves_the_model_as_it_was(scale):
    from almostlinear.core.errors import NonFiniteError

    model = build_model("llama")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    tv = TaskVector.from_state_dicts(base, {k: v + 1 for k, v in base.items()})
    with pytest.raises(NonFiniteError):
        tv.apply_to(base, scale)
    with pytest.raises(NonFiniteError), tv.apply(model, scale):
        pass
    with pytest.raises(NonFiniteError):
        tv.bake_(model, scale)
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())
