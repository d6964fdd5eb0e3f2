"""CounterFact metrics: scoring against direct computation, hand-computable metrics, protocols with
editors built here (a logit boost that is exact by construction)."""

from __future__ import annotations

import contextlib
import math

import pytest
import scipy.stats
import torch
from tiny_models import build_model, make_tokenizer

from almostlinear.core.errors import AlmostLinearError, EmptyDataError
from almostlinear.core.tokens import continuation_ids, first_answer_token
from almostlinear.data.facts import Fact
from almostlinear.editing.counterfact import Relation, counterfact_cases
from almostlinear.editing.eval import (
    CaseScores,
    evaluate_edits,
    generation_entropy,
    harmonic_mean,
    ngram_entropy,
    summarize,
    target_nll,
    weights_digest,
)

RELATION = Relation("city_in_country",
                    prompts=("{} is a city in the country of", "the city of {} is in the country of",
                             "{} is in the country of"),
                    generation_prompts=("{} is", "the {}"))
COUNTRIES = ["France", "Italy", "Germany", "Spain", "Japan"]
CITIES = ["Paris", "Rome", "Berlin", "Madrid", "Tokyo", "cat", "dog", "bird", "fish", "tree", "house", "road",
          "king", "queen", "sun"]
FACTS = [Fact(c, "city_in_country", COUNTRIES[i % len(COUNTRIES)]) for i, c in enumerate(CITIES)]


@pytest.fixture
def tok():
    return make_tokenizer()


def test_continuation_splits_prompt_and_target(tok):
    ctx, tgt = continuation_ids(tok, "Paris is in", "big red house")
    assert ctx == tok("Paris is in")["input_ids"]
    assert tgt == tok("big red house", add_special_tokens=False)["input_ids"]
    assert first_answer_token(tok, "Paris is in", "big red house") == tgt[0]
    with pytest.raises(AlmostLinearError):
        continuation_ids(tok, "Paris is in", "   ")
    with pytest.raises(AlmostLinearError, match="adds no token"):
        first_answer_token(tok, "Paris is in", "   ")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_target_nll_matches_direct_cross_entropy(family, tok):
    model = build_model(family)
    prompts = ["Paris is in", "the old king and the new queen was in the", "a", "Paris is in"]
    targets = ["big red house", "house", "dog", "France"]
    got = target_nll(model, tok, prompts, targets, batch_size=3)
    for i, (p, t) in enumerate(zip(prompts, targets)):
        ctx = tok(p)["input_ids"]
        tgt = tok(t, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ctx + tgt])
        with torch.no_grad():
            logits = model(ids).logits[0].double()
        ref = torch.nn.functional.cross_entropy(logits[len(ctx) - 1:-1], torch.tensor(tgt))
        assert got[i].item() == pytest.approx(ref.item(), abs=1e-5)


def test_case_metrics_by_hand():
    s = CaseScores(rewrite_new=0.5, rewrite_true=2.0, paraphrase_new=(1.0, 3.0), paraphrase_true=(2.0, 1.0),
                   neighbour_new=(4.0, 0.1, 2.0), neighbour_answer=(1.0, 1.0, 1.0))
    assert s.efficacy == 1.0
    assert s.efficacy_magnitude == pytest.approx(math.exp(-0.5) - math.exp(-2.0))
    assert s.paraphrase == 0.5
    assert s.paraphrase_magnitude == pytest.approx(((math.exp(-1) - math.exp(-2)) + (math.exp(-3) - math.exp(-1))) / 2)
    assert s.neighbourhood == pytest.approx(2 / 3)
    assert s.neighbourhood_magnitude == pytest.approx(
        sum(math.exp(-1.0) - math.exp(-n) for n in (4.0, 0.1, 2.0)) / 3)
    t = CaseScores(3.0, 1.0, (3.0, 3.0), (1.0, 1.0), (0.5,), (1.0,))
    total = summarize([s, t])
    assert total.es == pytest.approx(50.0) and total.ps == pytest.approx(25.0)
    assert total.ns == pytest.approx(100 * (2 / 3 + 0) / 2)
    assert total.s == pytest.approx(scipy.stats.hmean([total.es, total.ps, total.ns]))
    assert total.n_cases == 2


def test_harmonic_mean():
    assert harmonic_mean([100.0, 96.4, 71.8]) == pytest.approx(scipy.stats.hmean([100.0, 96.4, 71.8]))
    assert harmonic_mean([100.0, 0.0]) == 0.0
    with pytest.raises(EmptyDataError):
        harmonic_mean([])


def test_ngram_entropy_against_scipy():
    text = "a b a b c a b"
    words = text.split()
    for n in (2, 3):
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        counts = [grams.count(g) for g in sorted(set(grams))]
        assert ngram_entropy(text, n) == pytest.approx(scipy.stats.entropy(counts, base=2))
    assert generation_entropy(text) == pytest.approx((2 / 3 * ngram_entropy(text, 2) + 4 / 3 * ngram_entropy(text, 3)) / 2)
    assert ngram_entropy("one", 2) == 0.0
    # A repetitive text (a collapsed model) has lower entropy than a varied one.
    assert generation_entropy("the the the the the the") < generation_entropy("the cat sat on a red mat today")


class Boost:
    """A stand-in edit: adds ``amount`` to each target's first-token logit wherever its subject occurs
    in the input (``leak``: everywhere). Reverting removes the hooks."""

    def __init__(self, tokenizer, requests, amount=50.0, leak=False):
        self.pairs = [(tokenizer(r.subject, add_special_tokens=False)["input_ids"][0],
                       tokenizer(r.target, add_special_tokens=False)["input_ids"][0]) for r in requests]
        self.amount, self.leak = amount, leak

    @contextlib.contextmanager
    def apply(self, model):
        seen = {}

        def remember(module, args, kwargs):
            seen["ids"] = kwargs.get("input_ids", args[0] if args else None)

        def boost(module, args, output):
            output = output.clone()
            for subject, target in self.pairs:
                rows = torch.ones(output.shape[0], dtype=torch.bool) if self.leak else \
                    (seen["ids"] == subject).any(dim=1)
                output[rows, :, target] += self.amount
            return output

        handles = [model.register_forward_pre_hook(remember, with_kwargs=True),
                   model.get_output_embeddings().register_forward_hook(boost)]
        try:
            yield model
        finally:
            for h in handles:
                h.remove()


@pytest.fixture
def cases(tok):
    model = build_model("llama")
    return counterfact_cases(model, tok, 6, relation=RELATION, facts=FACTS, require_known=False,
                             n_neighbours=2, seed=1)


@pytest.mark.parametrize("protocol,batch", [("single", 1), ("batch", 3), ("sequential", 2)])
def test_protocols_with_an_exact_editor(protocol, batch, tok, cases):
    model = build_model("llama")
    digest = weights_digest(model)
    result = evaluate_edits(model, tok, cases, lambda reqs: Boost(tok, reqs), protocol=protocol, batch_size=batch,
                            eval_every=2 if protocol == "sequential" else None)
    assert result.post.es == 100.0 and result.post.ps == 100.0
    assert result.post.em > 0.9
    if protocol == "sequential":
        assert [n for n, _ in result.checkpoints] == [2, 4, 6]
    if protocol == "single":
        # The boost never fires on a neighbour (no subject token there): the neighbourhood is untouched.
        # (In batches a neighbour may be another case's subject, edited in the same batch.)
        assert result.post.ns == pytest.approx(result.pre.ns)
        assert result.post.nm == pytest.approx(result.pre.nm)
    assert result.restored is True and weights_digest(model) == digest
    assert "ES" in result.table() and len(result.as_dict()["cases"]) == len(cases)


def test_a_loaded_model_is_accepted(tok, cases):
    from almostlinear.core.models import LoadedModel

    model = build_model("llama")
    loaded = LoadedModel(model, tok, "tiny-llama", "memory", "causal-lm")
    direct = evaluate_edits(model, tok, cases[:2], lambda reqs: Boost(tok, reqs))
    through = evaluate_edits(loaded, None, cases[:2], lambda reqs: Boost(tok, reqs))  # its tokenizer serves
    assert through.post == direct.post and through.pre == direct.pre and through.restored is True
    assert weights_digest(loaded) == weights_digest(model)


def test_neighbourhood_score_sees_bleed(tok, cases):
    model = build_model("llama")
    result = evaluate_edits(model, tok, cases, lambda reqs: Boost(tok, reqs, leak=True))
    assert result.post.es == 100.0 and result.post.ns == 0.0 and result.post.s == 0.0


def test_restore_check_catches_a_lasting_change(tok, cases):
    model = build_model("llama")

    class Sticky:
        @contextlib.contextmanager
        def apply(self, m):
            with torch.no_grad():
                m.get_output_embeddings().weight[0, 0] += 1.0
            yield m

    result = evaluate_edits(model, tok, cases[:1], lambda reqs: Sticky())
    assert result.restored is False


def test_fluency_and_hook(tok, cases):
    model = build_model("llama")
    seen = []

    def hook(chunk, edit):
        seen.append(len(chunk))
        return {c.case_id: {"note": c.subject} for c in chunk}

    result = evaluate_edits(model, tok, cases[:2], lambda reqs: Boost(tok, reqs), fluency_cases=1,
                            generation_tokens=8, on_edit=hook)
    assert seen == [1, 1]
    assert result.pre.ge is not None and result.pre.ge >= 0 and result.post.ge is not None
    assert result.as_dict()["cases"][0]["note"] == cases[0].subject


def test_bad_protocol_inputs(tok, cases):
    model = build_model("llama")
    editor = lambda reqs: Boost(tok, reqs)  # noqa: E731
    with pytest.raises(AlmostLinearError):
        evaluate_edits(model, tok, cases, editor, protocol="parallel")
    with pytest.raises(AlmostLinearError):
        evaluate_edits(model, tok, cases, editor, protocol="single", batch_size=2)
    with pytest.raises(EmptyDataError):
        evaluate_edits(model, tok, [], editor)
