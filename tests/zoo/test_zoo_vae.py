"""The digits VAE: data split, deterministic training, content-keyed cache, and a reconstruction a classifier reads."""

import pytest
import torch
from safetensors.torch import load_file

from almostlinear.core.errors import ShapeError
from almostlinear.zoo.vae import (
    DigitsVAE,
    VAEConfig,
    classify,
    digits_scorer,
    digits_vae,
    elbo,
)
from almostlinear.zoo.digits_data import digits



def test_digits_split_is_disjoint_and_scaled():
    data = digits("vae")
    assert data.x_train.shape[1] == 64 and len(data.x_train) + len(data.x_test) == 1797
    assert float(data.x_train.min()) >= 0 and float(data.x_train.max()) <= 1
    train_rows = {tuple(r) for r in data.x_train.tolist()}
    overlap = sum(tuple(r) in train_rows for r in data.x_test.tolist())
    assert overlap <= 5  # the dataset itself holds a few duplicate images, nothing more
    assert set(data.y_test.tolist()) == set(range(10))


def test_training_is_deterministic_and_cached_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("ALMOSTLINEAR_CACHE", str(tmp_path))
    small = VAEConfig(epochs=2, hidden=32, latent=4)
    first = digits_vae(small)
    files = list((tmp_path / "zoo" / "vae").glob("vae-*.safetensors"))
    assert len(files) == 1
    stored = load_file(str(files[0]))
    assert all(torch.equal(stored[k], v) for k, v in first.state_dict().items())
    again = digits_vae(small)  # from the file
    fresh = digits_vae(small, cache=False)  # retrained from the same seed
    for k, v in first.state_dict().items():
        assert torch.equal(again.state_dict()[k], v) and torch.equal(fresh.state_dict()[k], v)
    digits_vae(VAEConfig(epochs=2, hidden=32, latent=4, seed=1))
    assert len(list((tmp_path / "zoo" / "vae").glob("vae-*.safetensors"))) == 2


def test_trained_vae_reconstructs_digits_a_classifier_recognises():
    data = digits("vae")
    vae, scorer = digits_vae(), digits_scorer()
    raw = float((classify(scorer, data.x_test) == data.y_test).float().mean())
    recon = float((classify(scorer, vae.decode(vae.encode(data.x_test))) == data.y_test).float().mean())
    assert raw > 0.95
    assert recon > 0.85  # measured 0.91 with the default settings
    untrained = DigitsVAE()
    assert elbo(vae, data.x_test) < elbo(untrained, data.x_test) - 10  # nats per image
    assert torch.equal(vae.encode(data.x_test[:3]), vae.encode(data.x_test[:3]))


def test_wrong_widths_are_refused():
    vae = DigitsVAE(latent=4, hidden=8)
    with pytest.raises(ShapeError, match="64 wide"):
        vae.encode(torch.zeros(2, 63))
    with pytest.raises(ShapeError, match="4 wide"):
        vae.decode(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        vae.loss(torch.full((2, 64), 16.0))  # raw 0..16 grey levels, not scaled


def test_negative_elbo_equals_torch_distributions_with_the_same_noise():
    vae = DigitsVAE(latent=3, hidden=16)
    x = digits("vae").x_test[:7]
    loss = vae.loss(x, beta=0.5, generator=torch.Generator().manual_seed(4))
    mean, log_var = vae.posterior(x)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(4))
    std = (0.5 * log_var).exp()
    z = mean + noise * std
    recon = -torch.distributions.Bernoulli(logits=vae.decode_logits(z), validate_args=False).log_prob(x).sum(-1)
    posterior = torch.distributions.Normal(mean, std)
    prior = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(std))
    kl = torch.distributions.kl_divergence(posterior, prior).sum(-1)
    assert float(loss.detach()) == pytest.approx(float((recon + 0.5 * kl).mean().detach()), rel=1e-5)


def test_seeding_leaves_the_global_generator_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("ALMOSTLINEAR_CACHE", str(tmp_path))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    digits_vae(VAEConfig(epochs=1, hidden=8, latent=2))
    digits_vae(VAEConfig(epochs=1, hidden=8, latent=2))  # from the cache
    assert torch.equal(torch.rand(3), expected)
