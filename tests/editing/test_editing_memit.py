"""MEMIT and AlphaEdit: the closed forms against direct solves, null-space property, batch edits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from editing_helpers import fast_hparams, random_texts
from tiny_models import build_model, make_tokenizer

from almostlinear.core.errors import EmptyDataError
from almostlinear.core.locate import locate
from almostlinear.editing import EditRequest, LowRankEdit, alphaedit, key_statistics, memit
from almostlinear.editing.solvers import alphaedit_update, memit_update, null_space


def _problem(seed=0, d_in=10, d_out=6, n=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(500, d_in, generator=g, dtype=torch.float64) * torch.linspace(0.05, 3, d_in, dtype=torch.float64)
    c = x.T @ x / 500
    keys = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    residuals = torch.randn(n, d_out, generator=g, dtype=torch.float64)
    return c, keys, residuals


def test_memit_update_is_the_regularised_least_squares_solution():
    c, keys, residuals = _problem()
    lam = 2.5
    b, a = memit_update(c, keys, residuals, weight=lam)
    # independent: argmin ‖Δ Kᵀ − Rᵀ‖² + λ ‖Δ L‖² with C = L Lᵀ, as one stacked least-squares problem
    chol = np.linalg.cholesky(c.numpy())
    design = np.concatenate([keys.numpy().T, np.sqrt(lam) * chol], axis=1)  # [d_in, n + d_in]
    rhs = np.concatenate([residuals.numpy().T, np.zeros((6, 10))], axis=1)  # [d_out, n + d_in]
    direct = np.linalg.lstsq(design.T, rhs.T, rcond=None)[0].T
    np.testing.assert_allclose((b @ a).numpy(), direct, rtol=1e-8, atol=1e-10)
    assert b.shape == (6, 3) and a.shape == (3, 10)


def test_alphaedit_update_leaves_preserved_directions_untouched():
    c, keys, residuals = _problem(1)
    projector, dim = null_space(c, energy=0.05)
    assert 0 < dim < 10
    b, a = alphaedit_update(projector, keys, residuals, l2=0.1)
    delta = b @ a
    eye = torch.eye(10, dtype=torch.float64)
    torch.testing.assert_close(delta @ (eye - projector), torch.zeros_like(delta), atol=1e-10, rtol=0)
    # and inside the null space it is the ridge solution of Δ P Kᵀ ≈ Rᵀ
    kp = keys @ projector
    direct = residuals.T @ kp @ torch.linalg.inv(kp.T @ kp + 0.1 * eye)
    torch.testing.assert_close(delta, direct @ projector, atol=1e-8, rtol=1e-8)


def test_relative_threshold_is_never_empty_where_an_absolute_one_is():
    c, _, _ = _problem(2)
    scaled = c * 1e3  # every eigenvalue now far above AlphaEdit's absolute 2e-2
    assert bool((torch.linalg.eigvalsh(scaled) >= 2e-2).all())
    _, dim = null_space(scaled, energy=0.01)
    _, dim_unscaled = null_space(c, energy=0.01)
    assert dim == dim_unscaled > 0


@pytest.fixture(scope="module")
def tiny():
    model, tok = build_model("qwen2"), make_tokenizer()
    stats = key_statistics(model, tok, [0, 1], texts=random_texts(60), n_tokens=10_000, cache=False)
    return model, tok, stats


# the subject ends the prompt, so an offset written at the last layer reaches the next-token logits
REQUESTS = [EditRequest("the capital is {}", "Paris", "Italy"), EditRequest("the capital is {}", "Tokyo", "Spain")]


@pytest.mark.parametrize("method", [memit, alphaedit])
def test_batch_edit_writes_both_facts_and_restores_the_model(tiny, method):
    model, tok, stats = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hp = fast_hparams(model, v_steps=10, z_lr=0.5, mom2_update_weight=1e-3, l2=1e-4, nullspace_energy=0.5)
    edit = method(model, tok, REQUESTS, layers=[0, 1], stats=stats, hparams=hp)
    assert isinstance(edit, LowRankEdit) and edit.layers == [0, 1] and edit.rank == 2
    for name, value in model.state_dict().items():  # solving left the weights alone
        assert torch.equal(value, before[name]), name
    assert edit.diagnostics["target_reached"] > 0.9
    gains = []
    for r in REQUESTS:
        ids = tok(r.text, return_tensors="pt")
        target = tok.convert_tokens_to_ids(r.target)
        with torch.no_grad():
            lp0 = model(**ids).logits[0, -1].log_softmax(-1)[target]
            with edit.apply(model):
                lp1 = model(**ids).logits[0, -1].log_softmax(-1)[target]
        gains.append(float(lp1 - lp0))
    assert min(gains) > 0.5
    if method is alphaedit:
        projector, _ = null_space(stats[0].c, energy=0.5)
        eye = torch.eye(projector.shape[0], dtype=torch.float64)
        leak = edit.delta(0) @ (eye - projector)
        assert float(leak.norm()) < 1e-6 * float(edit.delta(0).norm())


def test_sequential_alphaedit_preserves_earlier_keys(tiny):
    model, tok, stats = tiny
    hp = fast_hparams(model, v_steps=4, l2=1e-6, nullspace_energy=0.5)
    first = alphaedit(model, tok, REQUESTS[:1], layers=[0], stats=stats, hparams=hp)
    with first.apply(model):
        second = alphaedit(model, tok, REQUESTS[1:], layers=[0], stats=stats, hparams=hp, previous=[first])
        alone = alphaedit(model, tok, REQUESTS[1:], layers=[0], stats=stats, hparams=hp)
    kept = float(second.shift(0, first.keys[0]).norm())
    free = float(alone.shift(0, first.keys[0]).norm())
    assert kept < 0.1 * free


def test_empty_batch(tiny):
    model, tok, stats = tiny
    with pytest.raises(EmptyDataError):
        memit(model, tok, [], layers=[0], stats=stats)
    assert locate(model).n_layers == 2


def test_batched_value_optimisation_equals_one_at_a_time(tiny):
    from almostlinear.core.sites import Site
    from almostlinear.editing.values import optimise_delta, optimise_deltas

    model, tok, _ = tiny
    hp = fast_hparams(model, v_steps=5)
    structure = locate(model)
    templates = ["{}", "the big dog . {}"]
    site = Site("resid_post", 0)
    together = optimise_deltas(model, tok, REQUESTS, site, templates, hp, structure=structure, chunk_rows=2)
    for request, joint in zip(REQUESTS, together):
        alone = optimise_delta(model, tok, request, site, templates, hp, structure=structure)
        torch.testing.assert_close(joint.delta, alone.delta, rtol=1e-4, atol=1e-5)
        assert joint.steps == alone.steps
        assert joint.nll_after == pytest.approx(alone.nll_after, rel=1e-4)


def test_previous_edit_of_another_width_is_an_error():
    from almostlinear.core.errors import ShapeError
    from almostlinear.editing.multi_layer import _preserved_gram

    other = LowRankEdit(layers=[0], a=torch.zeros(1, 1, 5), b=torch.zeros(1, 4, 1), keys=torch.ones(1, 1, 5),
                        base_hashes=["x"], stats_hashes=["y"])
    assert _preserved_gram([other], 1, 8) is None  # it did not edit layer 1
    torch.testing.assert_close(_preserved_gram([other, other], 0, 5), 2 * torch.ones(5, 5, dtype=torch.float64))
    with pytest.raises(ShapeError, match="another model"):
        _preserved_gram([other], 0, 8)
    with pytest.raises(ShapeError, match="hashes"):
        LowRankEdit(layers=[0, 1], a=torch.zeros(2, 1, 5), b=torch.zeros(2, 4, 1), keys=torch.ones(2, 1, 5),
                    base_hashes=["x"], stats_hashes=["y"])
