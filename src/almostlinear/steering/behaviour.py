"""Behaviour scores: what a steering vector is meant to change, one number per prompt.

A behaviour is any ``f(model, tokenizer, prompts) -> Tensor[n]`` run while a steering context is
open (or not, for the baseline). Two are provided:

* :class:`TokenPreference`: ``log P(positive words) - log P(negative words)`` for the next token
  after each prompt: one forward pass, smooth in the strength, and per prompt, so it serves the
  dose-response curve and the per-example steerability slopes (arXiv 2407.12404 uses a logit
  difference the same way).
* :class:`GeneratedScore`: generate a continuation and score its text (e.g. VADER sentiment).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..core.collect import model_device
from ..core.errors import EmptyDataError, NonFiniteError
from ..data._batching import left_padded
from .generate import chat_prompt, generate_steered

Behaviour = Callable[[torch.nn.Module, object, Sequence[str]], torch.Tensor]


def first_token_ids(tokenizer, words: Sequence[str]) -> list[int]:
    """The first token of each word (with its leading space, if given), deduplicated in order."""
    ids: list[int] = []
    for word in words:
        encoded = tokenizer(word, add_special_tokens=False)["input_ids"]
        if encoded and encoded[0] not in ids:
            ids.append(int(encoded[0]))
    if not ids:
        raise EmptyDataError(f"none of {list(words)!r} tokenizes to anything")
    return ids


@dataclass
class TokenPreference:
    """Next-token log-odds between two word sets; positive means the positive words are preferred."""

    positive: Sequence[str]
    negative: Sequence[str]
    chat: bool = False
    batch_size: int = 16

    def token_ids(self, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
        """The first tokens of the positive and of the negative words, those both sets share dropped."""
        pos_ids, neg_ids = first_token_ids(tokenizer, self.positive), first_token_ids(tokenizer, self.negative)
        shared = set(pos_ids) & set(neg_ids)  # e.g. an unknown-word token: it favours neither side
        pos = torch.tensor([i for i in pos_ids if i not in shared], dtype=torch.long)
        neg = torch.tensor([i for i in neg_ids if i not in shared], dtype=torch.long)
        if not len(pos) or not len(neg):
            raise EmptyDataError("after dropping first tokens the two word sets share, one set is empty: the "
                                 "tokenizer does not tell these words apart")
        return pos, neg

    def __call__(self, model, tokenizer, prompts: Sequence[str]) -> torch.Tensor:
        prompts = [chat_prompt(tokenizer, p) if self.chat else p for p in prompts]
        if not prompts:
            raise EmptyDataError("no prompts to score")
        pos, neg = self.token_ids(tokenizer)
        device = model_device(model)
        scores = []
        with left_padded(model, tokenizer), torch.inference_mode():
            for start in range(0, len(prompts), self.batch_size):
                enc = tokenizer(prompts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                add_special_tokens=not self.chat).to(device)
                kwargs = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
                logits = model(**enc, **kwargs).logits[:, -1].float()
                log_p = torch.log_softmax(logits, -1).cpu()
                scores.append(torch.logsumexp(log_p[:, pos], -1) - torch.logsumexp(log_p[:, neg], -1))
        out = torch.cat(scores).double()
        if not torch.isfinite(out).all():
            raise NonFiniteError("the model produced non-finite log-probabilities")
        return out


@dataclass
class GeneratedScore:
    """Generate up to ``max_new_tokens`` greedily and score each continuation with ``score``."""

    score: Callable[[Sequence[str]], Sequence[float]]
    max_new_tokens: int = 24
    chat: bool = False
    batch_size: int = 16
    keep_texts: bool = False

    def __post_init__(self) -> None:
        self.texts: list[list[str]] = []

    def __call__(self, model, tokenizer, prompts: Sequence[str]) -> torch.Tensor:
        texts = generate_steered(model, tokenizer, prompts, None, max_new_tokens=self.max_new_tokens,
                                 batch_size=self.batch_size, chat=self.chat)
        if self.keep_texts:
            self.texts.append(texts)
        return torch.as_tensor([float(s) for s in self.score(texts)], dtype=torch.float64)
