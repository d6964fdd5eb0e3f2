import pytest
import torch
from tiny_models import TEXTS, build_model, make_tokenizer

from almostlinear import collect, locate, stream
from almostlinear.core.errors import ArtifactError, ChoiceError, EmptyDataError, SiteError, StructureError
from almostlinear.lens import (
    AffineLensFitter,
    LogitLens,
    TunedLens,
    evaluate_lens,
    format_lens_table,
    kl_and_agreement,
    lens_sites,
    lens_table,
    plot_lens_table,
    prompt_tokens,
)

PROMPT = "Paris is the capital of France ."


@pytest.mark.parametrize("kind", ["logit", "tuned"])
def test_lens_table_has_a_row_per_state_and_a_column_per_token(kind):
    model, tokenizer = build_model("llama"), make_tokenizer()
    structure = locate(model)
    lens = TunedLens.zeros(structure.n_layers + 1, structure.d_model) if kind == "tuned" else None
    rows = lens_table(model, tokenizer, PROMPT, kind, lens)
    inputs = prompt_tokens(tokenizer, PROMPT)
    assert len(rows) == structure.n_layers + 1
    assert [r.layer for r in rows] == list(range(-1, structure.n_layers))
    assert inputs == PROMPT.split() and all(len(r.tokens) == len(inputs) for r in rows)
    # the last row is the model's own prediction
    with torch.no_grad():
        logits = model(**tokenizer(PROMPT, return_tensors="pt")).logits[0]
    probs, ids = logits.softmax(-1).max(-1)
    assert rows[-1].tokens == [tokenizer.decode([i]) for i in ids.tolist()]
    assert rows[-1].probs == pytest.approx(probs.tolist(), abs=1e-5)
    text = format_lens_table(rows, inputs)
    assert len(text.splitlines()) == len(rows) + 2 and text.splitlines()[0].lstrip().startswith("block 1")


def test_lens_table_refuses_a_missing_or_wrong_lens():
    model, tokenizer = build_model("llama"), make_tokenizer()
    with pytest.raises(ArtifactError, match="needs a fitted lens"):
        lens_table(model, tokenizer, PROMPT, "affine")
    with pytest.raises(ArtifactError, match="needs a AffineLens"):
        lens_table(model, tokenizer, PROMPT, "affine", TunedLens.zeros(3, 32))
    with pytest.raises(ChoiceError, match="unknown lens kind"):
        lens_table(model, tokenizer, PROMPT, "tuned-ish")


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    model, tokenizer = build_model("llama"), make_tokenizer()
    rows = lens_table(model, tokenizer, PROMPT)
    path = plot_lens_table(rows, prompt_tokens(tokenizer, PROMPT), tmp_path / "lens.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_lens_matches_direct_kl_per_state(tiny_causal, tiny_tokenizer):
    _, model = tiny_causal
    structure = locate(model)
    sites = lens_sites(structure)
    texts = list(TEXTS) * 2
    acts = collect(model, tiny_tokenizer, texts, sites, logits=True)
    fitter = AffineLensFitter(len(sites), structure.d_model).update([acts[s] for s in sites])
    affine = fitter.result(ridge=1.0)
    decoder = LogitLens.from_structure(structure)
    batches = stream(model, tiny_tokenizer, texts, sites, logits=True, batch_size=4, structure=structure)
    score = evaluate_lens(affine, batches, decoder=decoder)
    assert score.tokens == len(acts) and score.layers == list(range(-1, structure.n_layers))
    with torch.no_grad():
        for s, site in enumerate(sites):
            kl, agree = kl_and_agreement(acts.logits, decoder(affine.translate(acts[site], s)))
            assert score.kl[s] == pytest.approx(float(kl.double().mean()), abs=1e-5)
            assert score.top1[s] == pytest.approx(float(agree.double().mean()))
    assert score.kl[-1] == pytest.approx(0.0, abs=1e-4) and score.top1[-1] == 1.0


def test_evaluate_lens_needs_logits_and_lens_sites():
    model, tokenizer = build_model("llama"), make_tokenizer()
    structure = locate(model)
    decoder = LogitLens.from_structure(structure)
    with pytest.raises(EmptyDataError, match="logits=True"):
        evaluate_lens(decoder, stream(model, tokenizer, TEXTS, lens_sites(structure)))
    with pytest.raises(SiteError, match="resid_pre.0"):
        evaluate_lens(decoder, stream(model, tokenizer, TEXTS, ["resid_post.0"], logits=True))
    with pytest.raises(StructureError, match="decoder"):
        evaluate_lens(TunedLens.zeros(3, 32), stream(model, tokenizer, TEXTS, lens_sites(structure), logits=True))


@pytest.mark.real
def test_lens_table_on_smollm2_ends_with_the_models_prediction(smollm2):
    prompt = "The capital of France is"
    rows = lens_table(smollm2.model, smollm2.tokenizer, prompt, structure=smollm2.structure)
    assert len(rows) == 31 and rows[0].label == "embeddings" and rows[-1].label == "block 29"
    with torch.no_grad():
        logits = smollm2.model(**smollm2.tokenizer(prompt, return_tensors="pt")).logits[0]
    shown = [smollm2.tokenizer.decode([i]).replace("\n", "\\n").replace("\t", "\\t") for i in logits.argmax(-1).tolist()]
    assert rows[-1].tokens == shown
    assert len(prompt_tokens(smollm2.tokenizer, prompt)) == logits.shape[0]
