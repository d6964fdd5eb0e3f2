"""The evaluation protocols driving the library's own editors (ROME, MEMIT) on a tiny model."""

from __future__ import annotations

import pytest
from tiny_models import TEXTS, build_model, make_tokenizer

from almostlinear.data.facts import Fact
from almostlinear.editing import hparams_for, key_statistics, memit, rome
from almostlinear.editing.counterfact import Relation, counterfact_cases
from almostlinear.editing.eval import evaluate_edits, weights_digest
from almostlinear.editing.section import predicted_reach

RELATION = Relation("city_in_country",
                    prompts=("{} is a city in the country of", "the city of {} is in the country of",
                             "{} is in the country of"),
                    generation_prompts=("{} is",))
COUNTRIES = ["France", "Italy", "Germany", "Spain", "Japan"]
CITIES = ["Paris", "Rome", "Berlin", "Madrid", "Tokyo", "cat", "dog", "bird", "fish", "tree"]
FACTS = [Fact(c, "city_in_country", COUNTRIES[i % len(COUNTRIES)]) for i, c in enumerate(CITIES)]


@pytest.fixture(scope="module")
def setup():
    model, tok = build_model("llama"), make_tokenizer()
    hp = hparams_for(model, n_prefixes=1, v_steps=8)
    stats = key_statistics(model, tok, list(hp.layers), texts=list(TEXTS) * 3, n_tokens=400, cache=False)
    cases = counterfact_cases(model, tok, 3, relation=RELATION, facts=FACTS, require_known=False, n_neighbours=2)
    return model, tok, hp, stats, cases


def test_rome_single_and_sequential(setup):
    model, tok, hp, stats, cases = setup
    digest = weights_digest(model)

    def editor(requests):
        return rome(model, tok, requests[0], stats=stats[hp.layer], hparams=hp)

    reach = []

    def hook(chunk, edit):
        found = {c.case_id: predicted_reach(model, tok, c, edit) for c in chunk}
        reach.extend(found.values())
        return found

    single = evaluate_edits(model, tok, cases, editor, on_edit=hook)
    assert single.restored is True and weights_digest(model) == digest
    # The edit raises the new target on its own prompt in every case.
    assert all(r.post.rewrite_new < r.pre.rewrite_new for r in single.cases)
    assert [len(r["reach_neighbour"]) for r in reach] == [len(c.neighbourhood_prompts) for c in cases]
    assert [len(r["reach_paraphrase"]) for r in reach] == [2, 2, 2]
    sequential = evaluate_edits(model, tok, cases, editor, protocol="sequential")
    assert sequential.restored is True and weights_digest(model) == digest
    assert sequential.checkpoints[-1][0] == 3


def test_memit_batch(setup):
    model, tok, hp, stats, cases = setup
    digest = weights_digest(model)
    sizes = []

    def editor(requests):
        sizes.append(len(requests))
        return memit(model, tok, requests, stats=stats, hparams=hp)

    result = evaluate_edits(model, tok, cases, editor, protocol="batch", batch_size=3)
    assert sizes == [3]
    assert result.restored is True and weights_digest(model) == digest
    # The batch edit was active while its cases were scored (on this 2-layer random model MEMIT moves the
    # targets only slightly, so the size of the effect is not asserted here).
    assert all(r.post != r.pre for r in result.cases)


def test_reach_of_the_rewrite_prompt_is_one_without_prefixes(setup):
    """Without prefixes the edit's key is the bare prompt's own, and ROME solves uᵀk* = 1 for it."""
    model, tok, hp, stats, cases = setup
    bare = hp.replace(n_prefixes=0, v_steps=2)
    edit = rome(model, tok, cases[0].request, stats=stats[hp.layer], hparams=bare)
    found = predicted_reach(model, tok, cases[0], edit)
    assert found["reach_rewrite"] == pytest.approx(1.0, abs=1e-4)
