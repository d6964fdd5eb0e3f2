"""SAEs on models: streamed training, splicing, CE recovered against direct computations, steering,
save/load (the lever contract itself: test_sae_lever.py)."""

import pytest
import torch
from tiny_models import TEXTS, WORDS, build_model, make_tokenizer

from almostlinear.core.artifact import FingerprintWarning, Where, load as load_artifact
from almostlinear.core.collect import collect
from almostlinear.core.errors import ShapeError
from almostlinear.core.hooks import add
from almostlinear.core.locate import locate
from almostlinear.core.sites import Site
from almostlinear.sae import SparseAutoencoder, evaluate_sae, fvu, l0, train_sae


def _texts(n=40, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (length,), generator=g)) for _ in range(n)]


def _identity_sae(d: int, site: str) -> SparseAutoencoder:
    """ReLU SAE with latents x+ and x-: reconstructs every input exactly."""
    eye = torch.eye(d)
    from almostlinear.core.artifact import Provenance

    return SparseAutoencoder(W_enc=torch.cat([eye, -eye], 1), b_enc=torch.zeros(2 * d),
                             W_dec=torch.cat([eye, -eye], 0), b_dec=torch.zeros(d),
                             latent_mean=torch.ones(2 * d), latent_frequency=torch.full((2 * d,), 0.5),
                             activation="relu", provenance=Provenance(where=Where.at(site)))


def _reference_ce(model, tokenizer, texts, hook=None, block=None):
    """Mean next-token CE from the model's own loss, skipping padding; optional hook on a block's output."""
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "right"
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    handle = block.register_forward_hook(hook) if hook else None
    try:
        with torch.no_grad():
            out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels)
    finally:
        if handle:
            handle.remove()
    return float(out.loss)


def test_identity_sae_recovers_all_loss_and_zero_ablation_matches_a_direct_hook():
    model, tok = build_model("llama"), make_tokenizer()
    structure = locate(model)
    texts = list(TEXTS)
    sae = _identity_sae(structure.d_model, "resid_post.0")
    result = evaluate_sae(sae, model, tok, texts, skip_first=False)
    clean = _reference_ce(model, tok, texts)
    assert result.ce_clean == pytest.approx(clean, rel=1e-5)
    assert result.ce_sae == pytest.approx(clean, rel=1e-5)
    assert result.fvu == pytest.approx(0.0, abs=1e-10)
    assert result.ce_recovered == pytest.approx(1.0, abs=1e-5)

    def zero(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = torch.zeros_like(hidden)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    ablated = _reference_ce(model, tok, texts, zero, structure.blocks[0].module)
    assert result.ce_ablated == pytest.approx(ablated, rel=1e-5)
    assert result.predicted_tokens == sum(len(t.split()) - 1 for t in texts)


def test_streamed_sae_on_a_tiny_model_and_its_scores():
    model, tok = build_model("llama"), make_tokenizer()
    texts = _texts()
    sae = train_sae(model, tok, texts, "resid_post.1", 64, k=8, batch_size=64, buffer_tokens=128,
                    model_fingerprint="abc")
    assert sae.provenance.where == Where("resid_post", (1,)) and sae.provenance.model_fingerprint == "abc"
    assert sae.site == Site("resid_post", 1) and sae.provenance.units == "fraction"
    assert sae.tokens == 40 * 11  # first token of each text skipped
    held_out = _texts(10, seed=1)
    with pytest.warns(FingerprintWarning, match="fitted on model abc"):  # "abc" is not this model
        result = evaluate_sae(sae, model, tok, held_out)
    acts = collect(model, tok, held_out, "resid_post.1", skip_first=True)["resid_post.1"]
    z = sae.encode(acts)
    assert result.l0 == pytest.approx(l0(z)) and result.l0 <= 8
    assert result.fvu == pytest.approx(fvu(acts, sae.decode(z)), rel=1e-5)
    assert result.fvu < 1.0
    assert result.tokens == acts.shape[0]
    expected = (result.ce_ablated - result.ce_sae) / (result.ce_ablated - result.ce_clean)
    assert result.ce_recovered == pytest.approx(expected)


def test_splice_restores_the_model_and_save_load_round_trips(tmp_path):
    model, tok = build_model("gpt2"), make_tokenizer()
    texts = _texts(16)
    sae = train_sae(model, tok, texts, "mlp_out.0", 32, k=4, batch_size=32, buffer_tokens=64)
    enc = tok(list(TEXTS[:2]), return_tensors="pt", padding=True)
    with torch.no_grad():
        before = model(**enc).logits
        with sae.apply(model):
            during = model(**enc).logits
        after = model(**enc).logits
    assert torch.equal(before, after) and not torch.equal(before, during)
    path = sae.save(tmp_path / "sae.safetensors")
    again = load_artifact(path)
    assert isinstance(again, SparseAutoencoder) and again.k == 4 and again.site == Site("mlp_out", 0)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "latent_mean", "latent_frequency"):
        assert torch.equal(getattr(sae, name), getattr(again, name))


def test_latent_as_steering_direction_adds_its_typical_contribution():
    model, tok = build_model("llama"), make_tokenizer()
    sae = train_sae(model, tok, _texts(16), "resid_pre.1", 32, k=4, batch_size=32, buffer_tokens=64)
    latent = int(sae.latent_frequency.argmax())
    direction = sae.direction(latent)
    assert float(direction.direction.norm()) == pytest.approx(1.0, abs=1e-6)
    row = sae.W_dec[latent]
    assert direction.typical == pytest.approx(float(sae.latent_mean[latent] * row.norm()), rel=1e-5)
    enc = tok(list(TEXTS[:2]), return_tensors="pt", padding=True)
    with torch.no_grad():
        with sae.apply(model, strength=3.0, mode="steer", latent=latent):
            steered = model(**enc).logits
        with add(model, "resid_pre.1", row / row.norm() * 3.0 * direction.typical):
            reference = model(**enc).logits
    torch.testing.assert_close(steered, reference)
    with pytest.raises(Exception, match="outside"):
        sae.direction(10_000)


def test_wrong_site_width_is_a_clear_error():
    model, tok = build_model("llama"), make_tokenizer()
    sae = _identity_sae(8, "resid_post.0")
    with pytest.raises(ShapeError, match="carries 32"):
        evaluate_sae(sae, model, tok, list(TEXTS))


def test_streaming_stops_at_the_token_budget_and_shows_progress(capsys):
    model, tok = build_model("llama"), make_tokenizer()
    sae = train_sae(model, tok, _texts(40), "resid_post.0", 16, k=2, batch_size=25, buffer_tokens=50,
                    max_tokens=100, text_batch_size=4, progress=True)
    assert sae.tokens == 100
    assert "training an SAE" in capsys.readouterr().err


def test_train_sae_trains_where_the_model_takes_its_inputs_unless_told():
    model, tok = build_model("llama"), make_tokenizer()
    texts = _texts(8)
    default = train_sae(model, tok, texts, "mlp_out.0", 32, k=4, batch_size=32, buffer_tokens=64)
    explicit = train_sae(model, tok, texts, "mlp_out.0", 32, k=4, batch_size=32, buffer_tokens=64, device="cpu")
    assert default.W_enc.device.type == "cpu"
    assert torch.equal(default.W_enc, explicit.W_enc) and torch.equal(default.W_dec, explicit.W_dec)
