"""Context templates: short texts the model writes itself, put before the edit prompt.

ROME (arXiv 2202.05262, appendix E.5) averages the subject key and optimises the value over the
bare prompt and ten 5-token plus ten 10-token prefixes sampled from the model; without them its
score drops from 89.2 to 86.1. Sampling is seeded, so the same model gives the same templates.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.collect import model_device

_CACHE: dict[tuple, tuple[str, ...]] = {}


def _clean(text: str) -> str:
    # Braces would be read as format fields; line breaks make the prompt a new document.
    return " ".join(text.replace("{", " ").replace("}", " ").split())


def context_templates(model: nn.Module, tokenizer, *, lengths: tuple[int, ...] = (5, 10), n: int = 5,
                      seed: int = 0, cache_key: str | None = None) -> tuple[str, ...]:
    """``"{}"`` followed by ``n`` templates ``"<prefix>. {}"`` per prefix length in tokens."""
    key = (cache_key, tuple(lengths), n, seed)
    if cache_key is not None and key in _CACHE:
        return _CACHE[key]
    templates = ["{}"]
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if n > 0 and start is not None and callable(getattr(model, "generate", None)):
        device = model_device(model)
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []), \
                torch.inference_mode():
            torch.manual_seed(seed)
            for length in lengths:
                inputs = torch.full((n, 1), int(start), dtype=torch.long, device=device)
                out = model.generate(inputs, attention_mask=torch.ones_like(inputs), do_sample=True, top_k=5,
                                     max_new_tokens=length, min_new_tokens=length,
                                     pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                     else int(start))
                for row in tokenizer.batch_decode(out[:, 1:], skip_special_tokens=True):
                    prefix = _clean(row)
                    templates.append(f"{prefix}. {{}}" if prefix else "{}")
    result = tuple(templates)
    if cache_key is not None:
        _CACHE[key] = result
    return result
