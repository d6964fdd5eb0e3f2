"""Neutral text: what a lever's side effects are measured on (KL, cross-entropy).

The texts are sampled from the model itself, from short openings written for this library, so
they sit inside the model's own distribution and need no external corpus. They can be cached
per model fingerprint. ``FALLBACK_TEXTS`` serve tests and models that cannot generate.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..core import progress
from ..core.digest import file_key
from ..core.errors import AlmostLinearError, EmptyDataError
from ._batching import left_padded

NEUTRAL_SEEDS: tuple[str, ...] = (
    "The history of the bicycle",
    "In the kitchen, she",
    "Rainfall in the region",
    "Most people who keep bees",
    "The old bridge across the river",
    "When the train finally arrived,",
    "A good loaf of bread needs",
    "The committee met on Tuesday to",
    "Under a microscope, a single drop of pond water",
    "My grandfather used to say that",
    "The recipe calls for",
    "In the early morning, the harbour",
    "Learning to play the violin",
    "The library on Elm Street",
    "Winter in the mountains",
    "The first thing you notice about the town is",
    "After the storm passed,",
    "A simple way to fix a squeaky door",
    "The museum's newest exhibit",
    "Children in the village",
    "The price of coffee",
    "On the last day of the festival,",
    "Gardeners often plant tomatoes",
    "The manual explains how to",
    "Every spring, the birds",
    "The small bakery on the corner",
    "Our neighbour's dog",
    "The report found that",
    "At the edge of the forest,",
    "Building a wooden table",
    "The bus to the airport",
    "In many old houses, the floors",
    "The lecture began with",
    "Tides are caused by",
    "The painter mixed",
    "A walk along the coast",
    "The chess club meets",
    "Fresh snow had covered",
    "The farmer checked the fence",
    "The letter arrived three weeks late and",
)

FALLBACK_TEXTS: tuple[str, ...] = (
    "The morning market opens at seven. Farmers bring crates of apples, potatoes and onions, "
    "and by noon most of the bread is gone.",
    "A bicycle chain needs a little oil every few weeks. Wipe off the old grease first, then "
    "turn the pedals slowly while adding a drop to each link.",
    "The river runs slowly through the valley in late summer. Children wade near the shallow "
    "bank while their parents sit in the shade of the willows.",
    "Our office moved to the third floor last spring. The new rooms are brighter, although "
    "the lift is often out of order.",
    "To make a simple soup, soften an onion in butter, add chopped carrots and stock, and let "
    "it simmer for twenty minutes before blending.",
    "The library keeps its oldest maps in a cool room downstairs. Visitors may look at them "
    "on weekday afternoons if they ask at the front desk.",
    "Snow fell through the night, and by morning the roads were quiet. A few neighbours "
    "cleared their paths while the cat watched from the window.",
    "The train to the coast leaves every hour. It stops at four small towns and reaches the "
    "sea in a little under two hours.",
    "Tomatoes grow best in full sun and need regular watering. Tie the stems to a cane as "
    "the plants get taller and the fruit gets heavy.",
    "The school band practised in the hall after lessons. By the end of term they could play "
    "three songs without stopping.",
    "An old clock hung above the fireplace. It ran a few minutes slow, so everyone in the "
    "house had learned to add five minutes to whatever it said.",
    "The hiking trail climbs gently for the first mile, then turns steep and rocky near the "
    "ridge, where the view opens over the lake.",
)


def _seed_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def generate_neutral_texts(
    model: Any,
    tokenizer: Any,
    n: int = 32,
    *,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 16,
    device: torch.device | str | None = None,
) -> list[str]:
    """``n`` texts: each opening in ``NEUTRAL_SEEDS`` followed by a sampled continuation.

    Openings are used in turn; sampling uses temperature 1, top-p 0.95, no top-k, under a forked,
    seeded RNG, so the same call gives the same texts and the caller's random state is left as
    it was. The model's mode and the tokenizer's padding settings are restored on return.
    """
    if n < 1:
        raise EmptyDataError(f"n must be >= 1; got {n}.")
    if not callable(getattr(model, "generate", None)) or (
        hasattr(model, "can_generate") and not model.can_generate()
    ):
        raise AlmostLinearError(
            f"{type(model).__name__} cannot generate text; use FALLBACK_TEXTS for such models."
        )
    device = torch.device(device) if device is not None else next(model.parameters()).device
    prompts = [NEUTRAL_SEEDS[i % len(NEUTRAL_SEEDS)] for i in range(n)]
    texts: list[str] = []
    batches = -(-n // batch_size)
    # One tick per generated token of each batch: a batch of long continuations takes a while.
    bar = progress.bar(batches * max_new_tokens, f"sampling {n} neutral texts", unit="token step")
    with (
        bar,
        left_padded(model, tokenizer),
        torch.random.fork_rng(devices=_seed_devices(device)),
        torch.inference_mode(),
    ):
        torch.manual_seed(seed)
        for start in range(0, n, batch_size):
            batch = tokenizer(
                prompts[start : start + batch_size], return_tensors="pt", padding=True
            ).to(device)
            out = model.generate(
                **batch,
                do_sample=True,
                temperature=1.0,
                top_p=0.95,
                top_k=0,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                **_counting(bar),
            )
            bar.update(max(0, bar.total * (start // batch_size + 1) // batches - bar.done))  # a batch that ended early
            texts.extend(t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True))
    return texts


def _counting(bar: progress.Bar) -> dict:
    """``generate`` options that tick ``bar`` once per new token; none while progress is off."""
    if not bar.active:
        return {}
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Tick(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):  # never stops: it only counts
            bar.update(1)
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return {"stopping_criteria": StoppingCriteriaList([_Tick()])}


def _cache_file(cache_key: str, n: int, max_new_tokens: int, seed: int) -> Path:
    from ..core.paths import cache_dir

    return cache_dir("texts") / f"neutral-{file_key(json.dumps([cache_key, n, max_new_tokens, seed]))}.json"


def _read(path: Path, n: int) -> list[str] | None:
    try:
        texts = json.loads(path.read_text(encoding="utf-8"))["texts"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ok = isinstance(texts, list) and len(texts) == n and all(isinstance(t, str) for t in texts)
    return texts if ok else None


def _write_atomic(path: Path, payload: dict) -> None:
    from ..core.paths import follow_umask

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, ensure_ascii=False, indent=1)
        follow_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def neutral_texts(
    model: Any,
    tokenizer: Any,
    n: int = 32,
    *,
    max_new_tokens: int = 64,
    seed: int = 0,
    cache_key: str | None = None,
    batch_size: int = 16,
    device: torch.device | str | None = None,
) -> list[str]:
    """:func:`generate_neutral_texts`, cached on disk under ``cache_key`` (a model fingerprint).

    The cache lives under ``cache_dir("texts")``, one JSON file per (key, n, max_new_tokens,
    seed); an unreadable file is regenerated.
    """
    path = _cache_file(cache_key, n, max_new_tokens, seed) if cache_key is not None else None
    if path is not None and (cached := _read(path, n)) is not None:
        return cached
    texts = generate_neutral_texts(
        model, tokenizer, n, max_new_tokens=max_new_tokens, seed=seed,
        batch_size=batch_size, device=device,
    )
    if path is not None:
        payload = {"cache_key": cache_key, "n": n, "max_new_tokens": max_new_tokens,
                   "seed": seed, "texts": texts}
        _write_atomic(path, payload)
    return texts
