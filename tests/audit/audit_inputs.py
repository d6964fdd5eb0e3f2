"""The small budget and texts of the report tests' tiny audits."""

from almostlinear.core.section import Budget
from tiny_models import TEXTS, toy_statements

BUDGET = Budget(neutral_texts=24, neutral_new_tokens=8, lens_tokens=40, statements=40, fact_candidates=40,
                batch_size=4)


def audit_texts() -> dict:
    return {"neutral": list(TEXTS) * 4, "cities": toy_statements(4)}
