"""The offline CounterFact-style cases: structure, determinism, the knowledge filter."""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_model, make_tokenizer

from almostlinear.core.errors import AlmostLinearError, EmptyDataError
from almostlinear.data.facts import CAPITAL_OF_COUNTRY, Fact
from almostlinear.editing.counterfact import RELATIONS, Relation, counterfact_cases

RELATION = Relation("city_in_country",
                    prompts=("{} is a city in the country of", "the city of {} is in the country of",
                             "{} is in the country of"),
                    generation_prompts=("{} is",))
COUNTRIES = ["France", "Italy", "Germany", "Spain", "Japan"]
CITIES = ["Paris", "Rome", "Berlin", "Madrid", "Tokyo", "cat", "dog", "bird", "fish", "tree", "house", "road",
          "king", "queen", "sun", "moon", "star", "man", "woman", "river"]
FACTS = [Fact(c, "city_in_country", COUNTRIES[i % len(COUNTRIES)]) for i, c in enumerate(CITIES)]


@pytest.fixture
def tok():
    return make_tokenizer()


def test_cases_are_well_formed_and_deterministic(tok):
    model = build_model("llama")
    cases = counterfact_cases(model, tok, 8, relation=RELATION, facts=FACTS, require_known=False,
                              n_neighbours=3, seed=3)
    again = counterfact_cases(model, tok, 8, relation=RELATION, facts=FACTS, require_known=False,
                              n_neighbours=3, seed=3)
    other = counterfact_cases(model, tok, 8, relation=RELATION, facts=FACTS, require_known=False,
                              n_neighbours=3, seed=4)
    assert cases == again and cases != other
    assert len(cases) == 8 and [c.case_id for c in cases] == list(range(8))
    truth = {f.subject: f.answer for f in FACTS}
    assert len({c.subject for c in cases}) == 8
    for c in cases:
        assert truth[c.subject] == c.target_true != c.target_new
        assert c.target_new in COUNTRIES
        assert c.request.text == c.rewrite_prompt == RELATION.prompts[0].format(c.subject)
        assert c.request.true_target == c.target_true and c.request.target == c.target_new
        assert len(c.paraphrase_prompts) == 2 and c.rewrite_prompt not in c.paraphrase_prompts
        assert all(c.subject in p for p in c.paraphrase_prompts)
        assert len(c.neighbourhood_prompts) == 3 and c.subject not in c.neighbourhood_subjects
        # Many-to-one relation: neighbours share the true answer.
        assert all(truth[s] == c.target_true == a for s, a in zip(c.neighbourhood_subjects, c.neighbourhood_answers))
        assert all(s in p for s, p in zip(c.neighbourhood_subjects, c.neighbourhood_prompts))
        record = c.as_dict()
        assert record["requested_rewrite"]["target_new"]["str"] == c.target_new


def test_knowledge_filter_keeps_facts_ranked_first(tok):
    model = build_model("gpt2", seed=2)
    cases = counterfact_cases(model, tok, 50, relation=RELATION, facts=FACTS, require_known=True, seed=0,
                              min_neighbours=0)
    country_ids = [tok(c, add_special_tokens=False)["input_ids"][0] for c in COUNTRIES]

    def top_country(subject):
        ids = torch.tensor([tok(RELATION.prompts[0].format(subject))["input_ids"]])
        with torch.no_grad():
            logits = model(ids).logits[0, -1]
        return COUNTRIES[int(logits[country_ids].argmax())]

    known = {f.subject for f in FACTS if top_country(f.subject) == f.answer}
    assert 2 <= len(known) < len(FACTS)
    assert {c.subject for c in cases} == known
    for c in cases:
        mates = {f.subject for f in FACTS if f.subject in known and f.answer == c.target_true} - {c.subject}
        assert set(c.neighbourhood_subjects) == mates


def test_one_to_one_relation_uses_other_subjects(tok):
    relation = Relation(CAPITAL_OF_COUNTRY, prompts=("the capital of {} is", "the capital city of {} is"),
                        generation_prompts=("{} is",), shared_answers=False)
    facts = [Fact(c, CAPITAL_OF_COUNTRY, t) for c, t in
             [("France", "Paris"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"), ("Japan", "Tokyo")]]
    cases = counterfact_cases(build_model("llama"), tok, 5, relation=relation, facts=facts, require_known=False,
                              n_paraphrases=1, n_neighbours=2)
    own = {f.subject: f.answer for f in facts}
    for c in cases:
        assert all(own[s] == a and a != c.target_new for s, a in zip(c.neighbourhood_subjects, c.neighbourhood_answers))


def test_bad_inputs(tok):
    model = build_model("llama")
    with pytest.raises(AlmostLinearError):
        counterfact_cases(model, tok, 3, relation="born_in")
    with pytest.raises(AlmostLinearError):
        counterfact_cases(model, tok, 3, relation=RELATION, facts=FACTS, n_paraphrases=5, require_known=False)
    with pytest.raises(EmptyDataError):
        counterfact_cases(model, tok, 3, relation=RELATION, facts=[Fact("Paris", "city_in_country", "France")],
                          require_known=False)
    with pytest.raises(AlmostLinearError):
        Relation("r", prompts=("no slot", "{} ok"), generation_prompts=())
    assert set(RELATIONS) == {"city_in_country", "capital_of_country"}


@pytest.mark.real
def test_smollm2_cases(smollm2):
    tok = smollm2.tokenizer
    cases = counterfact_cases(smollm2.model, tok, 3, candidates=30, n_neighbours=2, seed=0)
    assert len(cases) == 3
    for c in cases:
        assert c.target_new != c.target_true and c.neighbourhood_prompts
        # many-to-one relation: neighbours are other cities of the same country
        assert set(c.neighbourhood_answers) == {c.target_true} and c.subject not in c.neighbourhood_subjects
        first = [tok(f"{c.rewrite_prompt} {t}", add_special_tokens=False)["input_ids"][len(
            tok(c.rewrite_prompt, add_special_tokens=False)["input_ids"])] for t in (c.target_true, c.target_new)]
        assert first[0] != first[1]
