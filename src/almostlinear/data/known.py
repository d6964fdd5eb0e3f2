"""Keep the facts a model already predicts, so probes and edits study knowledge it has.

A truth direction fitted on facts the model does not know measures noise; an edit of an unknown
fact has nothing to overwrite. The test is a ranking among the candidate answers (not the whole
vocabulary): the first token of the right answer must be among the model's ``top_k`` first
tokens of all distinct answers. Answers that share a first token ("United States", "United
Kingdom") cannot be told apart by this test.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from ..core import progress
from ..core.errors import AlmostLinearError, EmptyDataError
from ..core.tokens import first_answer_token
from ._batching import left_padded
from .facts import Fact

CITY_PROMPT = "The city of {subject} is in the country of"


def _accepts(model: Any, name: str) -> bool:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def known_facts(
    model: Any,
    tokenizer: Any,
    facts: Sequence[Fact],
    *,
    prompt: str = CITY_PROMPT,
    top_k: int = 1,
    batch_size: int = 32,
    device: torch.device | str | None = None,
) -> list[Fact]:
    """The facts whose answer the model ranks within ``top_k`` among all candidate answers.

    ``prompt`` is formatted with ``subject`` and must end right before the answer. Works with
    any HuggingFace causal LM and its tokenizer; the model's mode and the tokenizer's padding
    settings are restored on return.
    """
    facts = list(facts)
    if not facts:
        raise EmptyDataError("known_facts got no facts; pass e.g. city_country_facts().")
    if top_k < 1 or batch_size < 1:
        raise AlmostLinearError(f"top_k and batch_size must be >= 1; got {top_k} and {batch_size}.")
    context = prompt.format(subject=facts[0].subject)
    answers = sorted({f.answer for f in facts})
    answer_token = {a: first_answer_token(tokenizer, context, a) for a in answers}
    candidates = sorted(set(answer_token.values()))
    column = {tok: j for j, tok in enumerate(candidates)}
    if device is None:
        device = next(model.parameters()).device
    send_positions = _accepts(model, "position_ids")
    # Only the last position's logits are needed; skipping the others saves most of the head's cost.
    last_only = _accepts(model, "logits_to_keep")

    kept: list[Fact] = []
    cand = torch.tensor(candidates, device=device)
    bar = progress.bar(len(facts), f"checking which of {len(facts)} facts the model knows", unit="fact")
    with bar, left_padded(model, tokenizer), torch.inference_mode():
        for start in range(0, len(facts), batch_size):
            chunk = facts[start : start + batch_size]
            batch = tokenizer(
                [prompt.format(subject=f.subject) for f in chunk],
                return_tensors="pt",
                padding=True,
            ).to(device)
            mask = batch["attention_mask"]
            inputs = {"input_ids": batch["input_ids"], "attention_mask": mask}
            if send_positions:  # absolute-position models must not count the left padding
                inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
            # Last real token of each row, whatever side the tokenizer actually padded.
            steps = torch.arange(mask.shape[1], device=mask.device)
            last = (mask.long() * (steps + 1)).argmax(dim=1)
            if last_only and bool((last == mask.shape[1] - 1).all()):
                final = model(**inputs, logits_to_keep=1).logits[:, -1]
            else:
                logits = model(**inputs).logits
                final = logits[torch.arange(len(chunk), device=logits.device), last.to(logits.device)]
            scores = final[:, cand.to(final.device)].float()
            for fact, row in zip(chunk, scores):
                own = row[column[answer_token[fact.answer]]]
                if int((row > own).sum()) < top_k:
                    kept.append(fact)
            bar.update(len(chunk))
    return kept
