"""Contrast prompts built from true/false statements, clean and with a planted distractor.

Each statement becomes a yes/no question answered both ways, as CCS builds ``x+``/``x-``
(arXiv 2212.03827): ``"<statement> Is this true? Yes"`` and ``"... No"``. The pair carries no
label; the statement's truth is kept aside for evaluation only.

The distractor variant (the sanity check of Farquhar et al., arXiv 2312.10029) adds one of two
unrelated words after the statement: for a pair with ``distractor=True`` the "Yes" side reads
``"<statement> Banana. Is this true? Yes"`` and the "No" side ``"<statement> Shed. Is this true? No"``,
otherwise the words are swapped. The paper appends such words at the end; here they go before the
question so that the answer token, where activations are read, still follows the whole question.
Measured here on SmolLM2-135M (120 distractor pairs): with the word appended after the answer, even
a supervised logistic probe read truth at chance (0.53), so the check could not tell "follows the
distractor" from "finds nothing"; with the word before the question it keeps 0.72-0.75 at blocks
18-28 while CCS and contrast PCA follow the word. The flag is drawn per
subject (a true and a false statement about the same city share it), so it carries no information
about truth, yet it is a perfectly consistent binary feature of the pair: an unsupervised method
may lock onto it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from ..core.errors import EmptyDataError, ShapeError
from ..data import Statement

QUESTION = "{statement} Is this true? {answer}"
ANSWERS = ("Yes", "No")
DISTRACTOR_WORDS = ("Banana", "Shed")
CLEAN, DISTRACTOR = "clean", "distractor"


@dataclass(frozen=True)
class ContrastPrompt:
    """One side of one contrast pair. ``text`` is what the model reads."""

    text: str
    pair: int  # index of the pair within its variant
    positive: bool  # True for the "Yes" side
    label: bool  # whether the statement is true (never shown to unsupervised methods)
    subject: str
    variant: str = CLEAN
    distractor: bool | None = None  # distractor variant: whether the first word sits on the "Yes" side


def _pair(statement: Statement, index: int, variant: str, flag: bool | None, question: str,
          answers: tuple[str, str], words: tuple[str, str]) -> list[ContrastPrompt]:
    out = []
    for positive, answer in ((True, answers[0]), (False, answers[1])):
        said = statement.text if flag is None else f"{statement.text} {words[0] if positive == flag else words[1]}."
        text = question.format(statement=said, answer=answer)
        out.append(ContrastPrompt(text, index, positive, bool(statement.label), statement.subject, variant, flag))
    return out


def contrast_prompts(statements: Sequence[Statement], *, distractor_pairs: int | None = None, seed: int = 0,
                     question: str = QUESTION, answers: tuple[str, str] = ANSWERS,
                     words: tuple[str, str] = DISTRACTOR_WORDS) -> list[ContrastPrompt]:
    """Clean pairs for every statement, then distractor pairs for a subset of the subjects.

    ``distractor_pairs`` (default: half the statements) pairs are drawn subject by subject; the
    flag alternates between subjects, so it is balanced and independent of truth. Prompts come
    pair by pair, "Yes" side first.
    """
    statements = list(statements)
    if len(statements) < 2:
        raise EmptyDataError(f"need at least two statements to build contrast pairs, got {len(statements)}")
    if "{statement}" not in question or "{answer}" not in question:
        raise ShapeError("question must contain the fields {statement} and {answer}")
    prompts: list[ContrastPrompt] = []
    for i, st in enumerate(statements):
        prompts += _pair(st, i, CLEAN, None, question, answers, words)
    wanted = len(statements) // 2 if distractor_pairs is None else distractor_pairs
    if wanted < 0:
        raise ShapeError(f"distractor_pairs must be non-negative, got {wanted}")
    subjects: dict[str, list[Statement]] = {}
    for st in statements:
        subjects.setdefault(st.subject, []).append(st)
    groups = list(subjects.values())
    rng = random.Random(seed)
    rng.shuffle(groups)
    chosen: list[list[Statement]] = []
    for group in groups:
        if sum(map(len, chosen)) >= wanted:
            break
        chosen.append(group)
    # Every statement of a subject gets the subject's flag, and the flags alternate over the shuffled
    # subjects: when each subject has one true and one false statement, truth and flag are exactly
    # uncorrelated in any split that keeps subjects together (the audit splits by subject).
    mixed = [(st, k % 2 == 0) for k, group in enumerate(chosen) for st in group][:wanted]
    rng.shuffle(mixed)
    for i, (st, flag) in enumerate(mixed):
        prompts += _pair(st, i, DISTRACTOR, flag, question, answers, words)
    return prompts


def whole_subjects(statements: Sequence[Statement], n: int) -> list[Statement]:
    """The statements of the first subjects (in order of appearance) until at least ``n`` are taken,
    so a subject's true and false statements stay together."""
    order: dict[str, list[Statement]] = {}
    for st in statements:
        order.setdefault(st.subject, []).append(st)
    out: list[Statement] = []
    for group in order.values():
        if len(out) >= n:
            break
        out += group
    return out
