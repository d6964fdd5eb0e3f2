"""Prompts built from a request and templates, and activations read at the subject's last token."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.collect import model_device
from ..core.hooks import StopForward, record
from ..core.locate import Structure
from ..core.sites import Site
from .request import EditRequest
from .tokens import pad_id, pad_right, subject_last_index


@dataclass(frozen=True)
class Prompt:
    """One tokenised prompt and the index of the subject's last token in it."""

    ids: list[int]
    subject_index: int


def compose(template: str, prompt: str, subject: str) -> tuple[str, int, int]:
    """``template`` (one ``{}``) around ``prompt`` (one ``{}``) around ``subject``; the subject's span."""
    full = template.replace("{}", prompt, 1)
    start = full.index("{}")
    return full.replace("{}", subject, 1), start, start + len(subject)


def encode(tokenizer, template: str, prompt: str, subject: str) -> Prompt:
    text, start, end = compose(template, prompt, subject)
    ids, index = subject_last_index(tokenizer, text, start, end)
    return Prompt(ids, index)


def read_at_subject(model: nn.Module, tokenizer, requests: Sequence[EditRequest], templates: Sequence[str],
                    sites: Sequence[Site], *, structure: Structure, batch_size: int = 32) -> dict[Site, torch.Tensor]:
    """Activations at ``sites`` at the subject's last token: ``[n_requests, n_templates, d]`` per site.

    The forward pass stops after the deepest site.
    """
    prompts = [encode(tokenizer, t, r.prompt, r.subject) for r in requests for t in templates]
    out: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
    device = model_device(model)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ids, mask = pad_right([p.ids for p in chunk], pad_id(tokenizer))
        index = torch.tensor([p.subject_index for p in chunk], device=device)
        rows = torch.arange(len(chunk), device=device)
        with torch.no_grad(), record(model, sites, keep_full=True, stop_after=True, structure=structure) as rec:
            try:
                model(input_ids=ids.to(device), attention_mask=mask.to(device))
            except StopForward:
                pass
        for site in sites:
            (full,) = rec.full(site)
            out[site].append(full[rows, index].double().cpu())
    shape = (len(requests), len(templates))
    return {s: torch.cat(v).reshape(*shape, -1) for s, v in out.items()}
