"""A labelled concept to search for: sentiment, from the VADER lexicon's human word ratings.

Words rated clearly positive or negative (|mean rating| >= ``min_strength`` on VADER's -4..4 scale)
that the model's tokenizer spells as one token (common words, not chat acronyms) are placed in a
few neutral frames; the label is the sign of the rating. Every word appears in every frame, so split
train and test by word (``SentimentText.word``), not by text, to test on unseen words.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..core.errors import EmptyDataError, MissingDependencyError

FRAMES = (
    "The film was {word}.",
    "Honestly, the meal tonight was {word}.",
    "Everyone agreed that the trip had been {word}.",
    "My first day at the new job felt {word}.",
)


@dataclass(frozen=True)
class SentimentText:
    text: str
    word: str
    label: int  # 1 positive, 0 negative
    rating: float


def _lexicon() -> dict[str, float]:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as error:
        raise MissingDependencyError(
            "sentiment texts need the package vaderSentiment: pip install vaderSentiment") from error
    return dict(SentimentIntensityAnalyzer().lexicon)


def sentiment_words(tokenizer, *, min_strength: float = 1.5) -> list[tuple[str, float]]:
    """Single-token, lower-case alphabetic words with a clear VADER rating, sorted by word."""
    words = []
    for word, rating in sorted(_lexicon().items()):
        if not (word.isalpha() and word.islower() and abs(rating) >= min_strength and len(word) > 2):
            continue
        if len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1:
            words.append((word, float(rating)))
    return words


def sentiment_texts(tokenizer, n_words: int = 80, *, seed: int = 0, min_strength: float = 1.5,
                    frames: tuple[str, ...] = FRAMES) -> list[SentimentText]:
    """``n_words`` words, half positive and half negative, each in every frame."""
    words = sentiment_words(tokenizer, min_strength=min_strength)
    positive = [w for w in words if w[1] > 0]
    negative = [w for w in words if w[1] < 0]
    half = min(n_words // 2, len(positive), len(negative))
    if half < 2:
        raise EmptyDataError("too few single-token sentiment words for this tokenizer")
    rng = random.Random(seed)
    chosen = rng.sample(positive, half) + rng.sample(negative, half)
    rng.shuffle(chosen)
    return [SentimentText(frame.format(word=word), word, int(rating > 0), rating)
            for word, rating in chosen for frame in frames]
