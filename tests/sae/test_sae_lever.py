"""The SAE and its latent directions as levers: apply restores the model (also after an exception),
bake_ refuses without touching a weight, strengths in their units, files round-trip, LoadedModel accepted."""

import warnings

import pytest
import torch
from tiny_models import TEXTS, build_model, make_tokenizer

from almostlinear.core.artifact import FingerprintWarning, Provenance, Where, load
from almostlinear.core.errors import ArtifactError, ChoiceError, LeverError, NonFiniteError, SiteError
from almostlinear.core.hooks import add, replace
from almostlinear.core.lever import UNITS, Lever
from almostlinear.core.models import LoadedModel, fingerprint
from almostlinear.sae import LatentDirection, SparseAutoencoder, fit_sae


def _hooks(model) -> list[int]:
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]


def _weights(model) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _same(model, weights) -> bool:
    now = model.state_dict()
    return now.keys() == weights.keys() and all(torch.equal(now[k], v) for k, v in weights.items())


@pytest.fixture(scope="module")
def setup():
    """A tiny Llama, its inputs, and an SAE trained on its ``resid_post.0`` (with the model's fingerprint)."""
    model, tok = build_model("llama"), make_tokenizer()
    inputs = tok(list(TEXTS[:3]), return_tensors="pt", padding=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 32, generator=g) * 2
    sae = fit_sae(x, 64, k=8, epochs=2, batch_size=50,
                  provenance=Provenance(model_fingerprint=fingerprint(model), where=Where.at("resid_post.0"),
                                        method="sae-topk", units="fraction"))
    return model, tok, inputs, sae


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def test_both_are_levers_with_units_from_the_vocabulary(setup):
    *_, sae = setup
    latent = sae.direction(3)
    for lever in (sae, latent):
        assert isinstance(lever, Lever) and lever.bakes is False
        assert lever.provenance.units == lever.strength_units[0] and lever.provenance.units in UNITS
        assert all(unit in UNITS for unit in lever.strength_units)
    assert (sae.kind, latent.kind) == ("sae.autoencoder", "sae.latent_direction")
    assert latent.provenance.where == sae.provenance.where == Where("resid_post", (0,))
    assert latent.provenance.model_fingerprint == sae.provenance.model_fingerprint


def test_splice_strength_is_a_fraction_of_the_way_to_the_reconstruction(setup):
    model, _, inputs, sae = setup
    clean = _logits(model, inputs)
    with sae.apply(model, strength=0.0) as module:
        assert module is model
        assert torch.equal(_logits(model, inputs), clean)
    with sae.apply(model, strength=0.5):
        half = _logits(model, inputs)
    with replace(model, "resid_post.0", lambda h: 0.5 * h + 0.5 * sae.reconstruct(h)):
        reference = _logits(model, inputs)
    torch.testing.assert_close(half, reference)
    with sae.apply(model):
        full = _logits(model, inputs)
    with replace(model, "resid_post.0", sae.reconstruct):
        assert torch.equal(_logits(model, inputs), full)  # strength 1 is exactly the reconstruction
    assert not torch.equal(full, clean)


def test_apply_restores_the_model_after_an_exception(setup):
    model, _, inputs, sae = setup
    clean, hooks, weights = _logits(model, inputs), _hooks(model), _weights(model)
    for lever, options in ((sae, {}), (sae, {"mode": "steer", "latent": 2}), (sae.direction(2), {})):
        with pytest.raises(RuntimeError, match="inside"):
            with lever.apply(model, 2.0, **options):
                assert not torch.equal(_logits(model, inputs), clean)
                raise RuntimeError("inside the context")
        assert _hooks(model) == hooks and _same(model, weights)
        assert torch.equal(_logits(model, inputs), clean)


def test_bake_refuses_and_changes_no_weight(setup):
    model, _, inputs, sae = setup
    weights = _weights(model)
    for lever in (sae, sae.direction(0)):
        with pytest.raises(LeverError, match="apply"):
            lever.bake_(model)
        with pytest.raises(LeverError):
            lever.bake_(model, strength=3.0)
        assert _same(model, weights)
        assert not hasattr(model, "_almostlinear_base")


def test_steer_mode_equals_the_latent_direction_and_adds_its_typical_contribution(setup):
    model, _, inputs, sae = setup
    latent = int(sae.latent_frequency.argmax())
    direction = sae.direction(latent)
    with sae.apply(model, 3.0, mode="steer", latent=latent):
        steered = _logits(model, inputs)
    with direction.apply(model, 3.0):
        assert torch.equal(_logits(model, inputs), steered)
    row = sae.W_dec[latent]
    with add(model, "resid_post.0", row / row.norm() * 3.0 * direction.typical):
        torch.testing.assert_close(_logits(model, inputs), steered)


def test_bad_options_are_library_errors(setup):
    model, _, _, sae = setup
    with pytest.raises(ChoiceError, match="SAE mode"):
        with sae.apply(model, mode="ablate"):
            pass
    with pytest.raises(LeverError, match="latent="):
        with sae.apply(model, mode="steer"):
            pass
    with pytest.raises(LeverError, match="mode='steer'"):
        with sae.apply(model, latent=1):
            pass
    with pytest.raises(NonFiniteError):
        with sae.apply(model, float("nan")):
            pass
    unplaced = LatentDirection(direction=torch.ones(32) / 32 ** 0.5, typical=1.0, latent=0, frequency=0.1)
    assert unplaced.provenance.units == "typical"  # the default unit is recorded even when none is given
    with pytest.raises(SiteError, match="site="):
        with unplaced.apply(model):
            pass


def test_a_loaded_model_is_accepted_and_another_model_warns_or_raises(setup):
    model, tok, inputs, sae = setup
    loaded = LoadedModel(model, tok, "tiny", "memory", "causal-lm")
    with sae.apply(model):
        expected = _logits(model, inputs)
    for lever in (sae, sae.direction(1)):
        with warnings.catch_warnings():
            warnings.simplefilter("error", FingerprintWarning)
            with lever.apply(loaded, strict=True) as module:
                assert module is model
                if lever is sae:
                    assert torch.equal(_logits(model, inputs), expected)
    other = build_model("llama", seed=1)
    for lever in (sae, sae.direction(1)):
        with pytest.warns(FingerprintWarning):
            with lever.apply(other):
                pass
        with pytest.raises(ArtifactError, match="fitted on model"):
            with lever.apply(other, strict=True):
                pass
        assert _hooks(other) == _hooks(build_model("llama", seed=1))


def test_save_load_round_trips(setup, tmp_path):
    model, _, inputs, sae = setup
    again = load(sae.save(tmp_path / "sae.safetensors"))
    assert isinstance(again, SparseAutoencoder) and again.provenance == sae.provenance
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "latent_mean", "latent_frequency"):
        assert torch.equal(getattr(again, name), getattr(sae, name))
    direction = sae.direction(5)
    back = LatentDirection.load(direction.save(tmp_path / "latent.safetensors"))
    assert isinstance(back, LatentDirection) and back.provenance == direction.provenance
    assert torch.equal(back.direction, direction.direction)
    assert (back.typical, back.latent, back.frequency) == (direction.typical, 5, direction.frequency)
    assert back.site == direction.site == sae.site
    with direction.apply(model, 2.0):
        before = _logits(model, inputs)
    with back.apply(model, 2.0):
        assert torch.equal(_logits(model, inputs), before)
    with pytest.raises(ArtifactError, match="not a"):
        SparseAutoencoder.load(tmp_path / "latent.safetensors")


def test_an_sae_with_non_finite_parameters_is_refused():
    from almostlinear.core.errors import NonFiniteError
    from almostlinear.sae import SparseAutoencoder

    d, width = 4, 8
    w = torch.randn(d, width)
    w[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="W_enc"):
        SparseAutoencoder(w, torch.zeros(width), torch.randn(width, d), torch.zeros(d), torch.ones(width),
                          torch.ones(width), activation="topk", k=2)
