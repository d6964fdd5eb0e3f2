"""Moving a steering vector or a probe from one representation space to another through a fitted map.

A map ``y ≈ x W + b`` sends a direction ``v`` (a difference between two source activations) to
``v W``: the bias cancels in differences. A probe ``y·w + c`` on the target reads the source through
the adjoint, as ``x·(W w) + (b·w + c)``. The effect of a transferred steering vector is measured in
the target model itself, here on a sentiment contrast: how much adding it raises the log-probability
of positive over negative next words, beside the vector fitted natively at the target layer and a
random vector of the same norm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..core.collect import collect, model_device, tokenize
from ..core.errors import EmptyDataError, ShapeError
from ..core.hooks import add
from ..core.locate import Structure, locate
from ..core.sites import as_sites
from .artifact import LinearMap
from .pool import pool_rows

# Short contrast sentences written for this module: the same scene, opposite sentiment.
SCENES = ("The food at the new place was", "Our trip to the coast was", "The film we saw last night was",
          "The service at the hotel was", "My first week at the job was", "The concert in the park was",
          "The weather on the weekend was", "The book she lent me was", "The new phone I bought is",
          "The match on Saturday was", "Dinner with the neighbours was", "The garden this spring looks")
POSITIVE = ("wonderful", "delightful", "excellent", "lovely", "fantastic", "great")
NEGATIVE = ("terrible", "awful", "dreadful", "horrible", "miserable", "bad")
PROMPTS = ("I think that the day was", "Honestly, the whole experience felt", "Looking back, the evening was",
           "Everyone agreed that the show was", "In my opinion, the meal was", "She said the visit was")


def sentiment_texts() -> tuple[list[str], list[str]]:
    """Matched positive and negative sentences (every scene with every adjective)."""
    pos = [f"{scene} {word}." for scene in SCENES for word in POSITIVE]
    neg = [f"{scene} {word}." for scene in SCENES for word in NEGATIVE]
    return pos, neg


def mean_difference(model, tokenizer, positive: Sequence[str], negative: Sequence[str], site, *,
                    structure: Structure | None = None, skip_first: bool = True) -> torch.Tensor:
    """Mean over the positive texts of each text's mean activation at ``site``, minus the same for the
    negative texts: every text weighs the same whatever its length (with ``skip_first``, its first
    token is left out)."""
    structure = structure or locate(model)
    out = []
    for texts in (positive, negative):
        acts = collect(model, tokenizer, list(texts), [site], positions="all", skip_first=skip_first,
                       structure=structure)
        (key,) = as_sites(structure, site)
        out.append(pool_rows(acts[key], acts.text_index, len(texts)).mean(0))
    return out[0] - out[1]


def _word_ids(tokenizer, words: Sequence[str]) -> list[int]:
    """The first token of each word with a leading space (how it follows a prompt)."""
    ids = []
    for word in words:
        encoded = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if encoded:
            ids.append(encoded[0])
    if not ids:
        raise EmptyDataError("none of the words could be tokenised")
    return sorted(set(ids))


@torch.inference_mode()
def _sentiment_score(model, tokenizer, prompts: Sequence[str], up: list[int], down: list[int]) -> float:
    inputs = tokenize(tokenizer, list(prompts), max_length=64, device=model_device(model))
    logits = model(**inputs, use_cache=False).logits
    last = inputs["attention_mask"].sum(-1) - 1
    logp = logits[torch.arange(len(prompts)), last].float().log_softmax(-1)
    return float((logp[:, up].logsumexp(-1) - logp[:, down].logsumexp(-1)).mean())


def sentiment_shift(model, tokenizer, site, vector: torch.Tensor, *, scale: float = 1.0,
                    prompts: Sequence[str] = PROMPTS, up_words: Sequence[str] = POSITIVE,
                    down_words: Sequence[str] = NEGATIVE, structure: Structure | None = None) -> float:
    """Change (nats) of ``log P(up word) - log P(down word)`` at the next token when ``scale * vector``
    is added at ``site`` on every token of neutral prompts (by default positive and negative words)."""
    structure = structure or locate(model)
    up, down = _word_ids(tokenizer, up_words), _word_ids(tokenizer, down_words)
    base = _sentiment_score(model, tokenizer, prompts, up, down)
    with add(model, site, vector, scale=scale, structure=structure):
        steered = _sentiment_score(model, tokenizer, prompts, up, down)
    return steered - base


@dataclass(frozen=True)
class SteeringTransfer:
    """A sentiment vector fitted at one site, pushed through a map to another, and its effect there."""

    source_site: str
    target_site: str
    cosine: float  # between the transferred and the natively fitted target vector
    shift_native: float  # sentiment shift (nats) of the natively fitted target vector
    shift_transferred: float  # ... of the transferred vector
    shift_random: float  # ... of a random vector of the transferred vector's norm
    scale: float
    norm_ratio: float  # |transferred| / |native|


def transfer_vector(mapping: LinearMap, vector: torch.Tensor) -> torch.Tensor:
    """``vector`` (a source-space direction) in the target space: ``vector @ W``."""
    return mapping.push_direction(vector)


def transfer_probe(mapping: LinearMap, weight: torch.Tensor, bias: float = 0.0) -> tuple[torch.Tensor, float]:
    """A target-space linear probe read through the map, as a probe on the source space (the adjoint)."""
    return mapping.pull_probe(weight, bias)


def steering_transfer(model, tokenizer, mapping: LinearMap, source_site, target_site, *, scale: float = 4.0,
                      seed: int = 0, contrast: tuple[Sequence[str], Sequence[str]] | None = None,
                      prompts: Sequence[str] = PROMPTS, up_words: Sequence[str] = POSITIVE,
                      down_words: Sequence[str] = NEGATIVE, structure: Structure | None = None) -> SteeringTransfer:
    """Fit a steering vector at ``source_site``, push it through ``mapping`` to ``target_site`` of the same
    model, and compare its effect there with the vector fitted at ``target_site`` and a random one.

    The vector is the mean difference of ``contrast`` (positive, negative texts; default: the sentiment
    sentences), its effect the shift of ``log P(up word) - log P(down word)`` after ``prompts``.
    ``scale`` multiplies each vector as fitted (a difference of means, so in activation units).
    """
    structure = structure or locate(model)
    (s_site,) = as_sites(structure, source_site)
    (t_site,) = as_sites(structure, target_site)
    if mapping.d_in != s_site.width(structure) or mapping.d_out != t_site.width(structure):
        raise ShapeError(f"the map is {mapping.d_in} → {mapping.d_out} wide, the sites "
                         f"{s_site.width(structure)} → {t_site.width(structure)}")
    positive, negative = contrast if contrast is not None else sentiment_texts()
    v_source = mean_difference(model, tokenizer, positive, negative, s_site, structure=structure)
    v_native = mean_difference(model, tokenizer, positive, negative, t_site, structure=structure)
    v_moved = transfer_vector(mapping, v_source)
    generator = torch.Generator().manual_seed(seed)
    v_random = torch.randn(v_moved.shape, generator=generator)
    v_random = v_random * v_moved.norm() / v_random.norm()
    shift = {name: sentiment_shift(model, tokenizer, t_site, v, scale=scale, prompts=prompts, up_words=up_words,
                                   down_words=down_words, structure=structure)
             for name, v in (("native", v_native), ("moved", v_moved), ("random", v_random))}
    cosine = float(torch.nn.functional.cosine_similarity(v_moved, v_native, dim=0))
    return SteeringTransfer(str(s_site), str(t_site), cosine, shift["native"], shift["moved"], shift["random"],
                            scale, float(v_moved.norm() / v_native.norm()))
