"""SAE maths: metrics on hand-computable cases, TopK activation, training on planted sparse data,
AuxK revival, the decoder-norm constraint, bad input."""

import math

import pytest
import torch
from sae_synthetic import planted

from almostlinear.core.errors import ChoiceError, EmptyDataError, NonFiniteError, ShapeError
from almostlinear.sae import (
    ReluSAE,
    SAETrainer,
    TopKSAE,
    ce_recovered,
    fit_sae,
    fvu,
    l0,
    topk_activation,
)


def test_metrics_match_their_definitions_on_a_hand_computed_case():
    z = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 3.0]])
    assert l0(z) == 1.5  # (2 + 1) / 2
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0]])  # mean (2, 1); total variance 1+1+1+1 = 4
    x_hat = torch.tensor([[1.0, 1.0], [2.0, 2.0]])  # squared error 0+1+1+0 = 2
    assert fvu(x, x_hat) == 0.5
    assert fvu(x, x) == 0.0
    assert ce_recovered(2.0, 2.5, 4.0) == 0.75  # (4 - 2.5) / (4 - 2)
    assert ce_recovered(2.0, 2.0, 4.0) == 1.0 and ce_recovered(2.0, 4.0, 4.0) == 0.0
    assert math.isnan(ce_recovered(2.0, 2.0, 2.0))


def test_topk_activation_keeps_the_k_largest_after_relu():
    pre = torch.tensor([[3.0, -1.0, 2.0, 0.5], [-3.0, -2.0, -1.0, 1.0]])
    z = topk_activation(pre, 2)
    assert torch.equal(z, torch.tensor([[3.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))


def test_module_forward_matches_a_direct_computation():
    sae = TopKSAE(6, 10, 3, seed=1)
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
    x = torch.randn(5, 6)
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    expected = torch.zeros_like(pre)
    for i in range(5):
        top = pre[i].argsort(descending=True)[:3]
        expected[i, top] = pre[i, top].clamp_min(0)
    x_hat, z, _ = sae(x)
    torch.testing.assert_close(z, expected)
    torch.testing.assert_close(x_hat, expected @ sae.W_dec + sae.b_dec)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(10))


def test_topk_sae_recovers_a_planted_dictionary():
    x, dictionary = planted()
    trainer_out = []
    sae = fit_sae(x, 96, k=3, epochs=25, batch_size=256, lr=3e-3, trainer_out=trainer_out)
    z = sae.encode(x)
    assert l0(z) <= 3.0
    assert fvu(x, sae.decode(z)) < 0.1
    # each planted direction has a decoder row pointing along it
    rows = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    best = (dictionary @ rows.T).max(1).values
    assert best.median() > 0.9
    # the decoder-norm constraint held in the trained (scaled) module
    torch.testing.assert_close(trainer_out[0].sae.W_dec.norm(dim=1), torch.ones(96))


def test_result_in_site_units_equals_the_scaled_module():
    x, _ = planted(n=800)
    out = []
    sae = fit_sae(x, 32, k=4, epochs=2, batch_size=200, trainer_out=out)
    trainer = out[0]
    with torch.no_grad():
        x_hat, z, _ = trainer.sae(x * trainer.scale)
    torch.testing.assert_close(sae.encode(x), z, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sae.reconstruct(x), x_hat / trainer.scale, atol=1e-4, rtol=1e-4)


def test_relu_sae_trades_sparsity_for_reconstruction():
    x, _ = planted(n=2000)
    loose = fit_sae(x, 64, activation="relu", l1=0.05, epochs=15, batch_size=250, lr=3e-3)
    tight = fit_sae(x, 64, activation="relu", l1=2.0, epochs=15, batch_size=250, lr=3e-3)
    z_loose, z_tight = loose.encode(x), tight.encode(x)
    assert fvu(x, loose.decode(z_loose)) < 0.1
    assert l0(z_tight) < l0(z_loose)
    assert fvu(x, tight.decode(z_tight)) > fvu(x, loose.decode(z_loose))
    assert (z_loose >= 0).all()


def test_relu_sparsity_loss_is_the_l1_of_the_latents():
    sae = ReluSAE(4, 8, l1=0.5)
    z = torch.tensor([[1.0, 0.0, 2.0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 4.0]])
    assert float(sae.sparsity_loss(z)) == pytest.approx(0.5 * (3 + 4) / 2)


def test_aux_loss_is_zero_without_dead_latents_and_matches_its_definition():
    sae = TopKSAE(4, 6, 2, seed=0)
    pre = torch.randn(8, 6)
    residual = torch.randn(8, 4)
    none_dead = torch.zeros(6, dtype=torch.bool)
    assert float(sae.aux_loss(pre, residual, none_dead, 2)) == 0.0
    dead = torch.tensor([True, False, True, True, False, False])
    masked = torch.where(dead, pre, torch.full_like(pre, -1e9))
    z = topk_activation(masked, 2)
    expected = ((z @ sae.W_dec - residual) ** 2).sum() / ((residual - residual.mean(0)) ** 2).sum()
    torch.testing.assert_close(sae.aux_loss(pre, residual, dead, 2), expected)


def test_auxk_revives_dead_latents():
    """Train, then push 8 latents out of the top k by lowering their bias. Without AuxK they get no
    gradient and stay dead; with it they are trained on the residual they leave and come back."""
    x, _ = planted(n=2000, d=16, features=32, active=2)
    handicapped = torch.arange(8)

    def revived(aux_coef):
        trainer = SAETrainer(16, 32, k=2, lr=3e-3, batch_size=200, buffer_tokens=2000, dead_tokens=400,
                             aux_coef=aux_coef, seed=0)
        trainer._initialise(x)
        g = torch.Generator().manual_seed(0)

        def epoch():
            order = torch.randperm(2000, generator=g)
            for start in range(0, 2000, 200):
                trainer.step(x[order[start:start + 200]])

        for _ in range(15):
            epoch()
        with torch.no_grad():
            trainer.sae.b_enc[handicapped] -= 4.0
        trainer.reset_stats()
        for _ in range(10):
            epoch()
        return int((trainer.fired[handicapped] > 0).sum()), trainer.log.dead[-1]

    without, dead_without = revived(0.0)
    with_aux, dead_with = revived(1 / 32)
    assert without == 0 and dead_without >= 0.25
    assert with_aux >= 4 and dead_with < dead_without


def test_streaming_trainer_uses_every_token_once():
    x, _ = planted(n=1000)
    trainer = SAETrainer(24, 32, k=3, batch_size=100, buffer_tokens=300)
    for chunk in x.split(70):
        trainer.update(chunk)
    sae = trainer.result()
    assert trainer.tokens == 1000 and sae.tokens == 1000
    assert trainer.buffered == 0
    assert sae.latent_frequency.sum() * 1000 == pytest.approx(3 * 1000, rel=1e-4)  # k latents per token


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ShapeError, match="at least one latent"):
        TopKSAE(8, 0, 1)
    with pytest.raises(ShapeError, match="at least one latent"):
        fit_sae(torch.randn(10, 4), 0)
    with pytest.raises(ShapeError, match="k must be"):
        TopKSAE(8, 4, 5)
    with pytest.raises(ShapeError, match="k must be"):  # not silently clamped to the width
        fit_sae(torch.randn(20, 4), 8, k=9)
    x = torch.randn(20, 4)
    x[3, 1] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN"):
        fit_sae(x, 8, k=2)
    trainer = SAETrainer(4, 8, k=2)
    with pytest.raises(ShapeError, match="width 5"):
        trainer.update(torch.randn(10, 5))
    with pytest.raises(EmptyDataError):
        trainer.result()
    sae = fit_sae(torch.randn(50, 4), 8, k=2, batch_size=10)
    with pytest.raises(ShapeError, match="width 6"):
        sae.encode(torch.randn(3, 6))
    with pytest.raises(EmptyDataError, match="no variance"):
        fit_sae(torch.ones(10, 4), 8, k=2)
    with pytest.raises(ChoiceError, match="SAE activation"):
        SAETrainer(4, 8, activation="gelu")


def test_sparse_topk_path_matches_the_dense_one_with_gradients():
    sae = TopKSAE(12, 40, 5, seed=3)
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
    x = torch.randn(30, 12)
    dense, z, _ = sae(x)
    sparse, values, index, _ = sae.sparse_forward(x)
    torch.testing.assert_close(sparse, dense)
    torch.testing.assert_close(torch.zeros_like(z).scatter(1, index, values), z)
    params = [sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec]
    grads_dense = torch.autograd.grad(dense.pow(2).sum(), params)
    grads_sparse = torch.autograd.grad(sparse.pow(2).sum(), params)
    for a, b in zip(grads_dense, grads_sparse):
        torch.testing.assert_close(a, b)
