import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from almostlinear.truth import ccs_loss, credence, fit_ccs
from almostlinear.truth._lbfgs import minimise_rows
from truth_synthetic import cosine, make_pairs


def test_ccs_recovers_a_planted_truth_direction():
    data = make_pairs(400, 16, seed=0)
    fit = fit_ccs(data.x_pos, data.x_neg)
    direction = fit.to_direction(0)
    assert abs(cosine(direction.direction, data.u)) > 0.95
    assert float(fit.accuracy(data.x_pos, data.x_neg, data.truth)[0]) > 0.97
    assert float(fit.loss[0]) < 0.05


def test_ccs_is_deterministic_for_a_seed():
    data = make_pairs(96, 12, seed=1)
    a = fit_ccs(data.x_pos, data.x_neg, restarts=4, seed=7)
    b = fit_ccs(data.x_pos, data.x_neg, restarts=4, seed=7)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.probe_bias, b.probe_bias)


def test_swapping_the_sides_flips_predictions_not_accuracy():
    # The loss is symmetric in the two sides, so the same probe is optimal with the sides swapped;
    # its decisions flip sign and the sign-free accuracy is unchanged.
    data = make_pairs(200, 12, seed=2)
    fit = fit_ccs(data.x_pos, data.x_neg, restarts=3)
    swapped = fit_ccs(data.x_neg, data.x_pos, restarts=3)
    assert torch.allclose(fit.weight, swapped.weight, atol=1e-6)
    d1 = fit.decision(data.x_pos, data.x_neg)
    d2 = swapped.decision(data.x_neg, data.x_pos)
    assert torch.allclose(d1, -d2, atol=1e-6)
    acc = fit.accuracy(data.x_pos, data.x_neg, data.truth)
    assert torch.allclose(acc, swapped.accuracy(data.x_neg, data.x_pos, data.truth))
    assert torch.allclose(acc, fit.accuracy(data.x_pos, data.x_neg, ~data.truth))


def test_prediction_is_the_sign_of_the_projected_difference():
    data = make_pairs(120, 10, seed=3)
    fit = fit_ccs(data.x_pos, data.x_neg, restarts=2)
    assert torch.equal(credence(fit, data.x_pos, data.x_neg) > 0.5, fit.predict(data.x_pos, data.x_neg))


def test_layers_fitted_together_equal_layers_fitted_alone():
    a, b = make_pairs(80, 10, seed=4), make_pairs(80, 10, seed=5, truth_scale=1.0)
    together = fit_ccs(torch.stack([a.x_pos, b.x_pos]), torch.stack([a.x_neg, b.x_neg]), restarts=3)
    alone = fit_ccs(b.x_pos, b.x_neg, restarts=3)
    assert torch.allclose(together.weight[1], alone.weight[0], atol=1e-10)
    assert torch.allclose(together.loss[1], alone.loss[0], atol=1e-12)


def test_the_lowest_loss_restart_is_kept():
    data = make_pairs(60, 40, seed=6, truth_scale=0.5)
    l2 = 1e-2
    fit = fit_ccs(data.x_pos, data.x_neg, restarts=6, l2=l2)
    objectives = fit.restart_objectives[0]
    kept = float(fit.loss[0]) + 0.5 * l2 * float(fit.weight[0].norm() ** 2)
    assert kept == pytest.approx(float(objectives.min()), rel=1e-9)
    assert objectives.shape == (6,)


def test_solution_in_the_span_is_stationary_in_the_full_space():
    # With fewer pairs than dimensions CCS is solved in the span of the training activations; the
    # result must still be a stationary point of the loss over all d coordinates.
    data = make_pairs(16, 48, seed=8)
    l2 = 1e-2
    fit = fit_ccs(data.x_pos, data.x_neg, restarts=2, l2=l2)
    z_pos, z_neg = fit.normaliser(data.x_pos, data.x_neg)
    w = fit.weight[0].clone().requires_grad_(True)
    b = fit.probe_bias[0].clone().requires_grad_(True)
    objective = ccs_loss(torch.sigmoid(z_pos[0] @ w + b), torch.sigmoid(z_neg[0] @ w + b)) + 0.5 * l2 * (w ** 2).sum()
    grad_w, grad_b = torch.autograd.grad(objective, (w, b))
    assert float(grad_w.abs().max()) < 1e-6 and abs(float(grad_b)) < 1e-6


def test_ccs_loss_matches_its_definition():
    p = torch.tensor([0.9, 0.2, 0.5])
    q = torch.tensor([0.1, 0.3, 0.5])
    expected = np.mean([(0.9 - 0.9) ** 2 + 0.1 ** 2, (0.2 - 0.7) ** 2 + 0.2 ** 2, 0.0 + 0.25])
    assert float(ccs_loss(p, q)) == pytest.approx(expected)


def test_row_wise_lbfgs_matches_scipy_on_independent_problems():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 20, 5, generator=g, dtype=torch.float64)
    y = torch.randn(3, 20, generator=g, dtype=torch.float64) > 0

    def objective(x):  # one L2-penalised logistic regression per row
        logits = torch.einsum("pnk,pk->pn", a, x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y.double(), reduction="none")
        return loss.mean(-1) + 0.05 * (x ** 2).sum(-1)

    solved = minimise_rows(objective, torch.zeros(3, 5, dtype=torch.float64), max_iter=200)
    for row in range(3):
        def f(x, row=row):
            t = torch.tensor(x, requires_grad=True)
            full = torch.zeros(3, 5, dtype=torch.float64)
            value = objective(full.index_copy(0, torch.tensor([row]), t[None]))[row]
            value.backward()
            return float(value.detach()), t.grad.numpy()

        ref = minimize(f, np.zeros(5), jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15})
        assert np.allclose(solved[row].numpy(), ref.x, atol=1e-6)


@pytest.mark.parametrize("kwargs", [{"restarts": 0}, {"restarts": 2.5}, {"l2": -1.0}])
def test_bad_options_are_refused(kwargs):
    data = make_pairs(8, 4)
    with pytest.raises(ValueError):
        fit_ccs(data.x_pos, data.x_neg, **kwargs)
