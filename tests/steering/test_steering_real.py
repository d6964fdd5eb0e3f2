"""Sentiment steering on SmolLM2-135M, scored offline with VADER."""

import pytest
import torch

from almostlinear.data.sentiment import NEUTRAL_PROMPTS, SENTIMENT_PAIRS, vader_scores
from almostlinear.steering import fit_steering, generate_steered


@pytest.mark.real
def test_sentiment_steering_moves_vader_both_ways_and_restores(smollm2):
    before = {k: v.clone() for k, v in smollm2.model.state_dict().items()}
    vector = fit_steering(smollm2, pairs=SENTIMENT_PAIRS[:16], layer=9)
    prompts = list(NEUTRAL_PROMPTS[:4])
    scores = {}
    for strength in (-0.3, 0.3):
        texts = generate_steered(smollm2, prompts=prompts, vectors=vector, strength=strength, max_new_tokens=12,
                                 positions="all")
        scores[strength] = sum(vader_scores(texts)) / len(texts)
    assert scores[0.3] - scores[-0.3] > 0.3, scores
    after = smollm2.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_vader_helper():
    good, bad, flat = vader_scores(["What a wonderful day!", "This is awful and sad.", "The box is on the table."])
    assert good > 0.5 and bad < -0.5 and flat == 0.0
