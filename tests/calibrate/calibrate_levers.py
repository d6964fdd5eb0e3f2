"""Small levers following the lever contract, built only on core.hooks and core.lever, so the
calibration tools are tested without any family's artifacts."""

from __future__ import annotations

import contextlib
import random

import torch

from almostlinear.calibrate import Footprint
from almostlinear.core import hooks
from almostlinear.core.artifact import Where
from almostlinear.core.collect import tokenize
from almostlinear.core.errors import LeverError
from almostlinear.core.lever import as_model, check_strength, temporarily_changed
from tiny_models import WORDS


class AddLever:
    """Adds ``strength * vector`` to the activation at ``site`` (a hook lever)."""

    kind = "toy.add"
    strength_units = ("raw",)
    bakes = False

    def __init__(self, site: str, vector: torch.Tensor, *, footprint: bool = True):
        self.site, self.vector, self.has_footprint = site, vector, footprint

    @contextlib.contextmanager
    def apply(self, model, strength=1.0, **options):
        module = as_model(model).module
        with hooks.add(module, self.site, self.vector * check_strength(strength, "raw"), **options):
            yield module

    def bake_(self, model, strength=1.0, **options):
        raise LeverError("a toy hook lever has no bake")

    def footprint(self):
        if not self.has_footprint:
            raise NotImplementedError
        return Footprint(Where.at(self.site), self.vector[None], "writes")


class WeightLever:
    """Adds ``strength * delta`` to one parameter while applied (a weight lever)."""

    kind = "toy.weight"
    strength_units = ("raw",)
    bakes = False

    def __init__(self, name: str, delta: torch.Tensor):
        self.name, self.delta = name, delta

    def apply(self, model, strength=1.0, **options):
        module = as_model(model).module
        scale = check_strength(strength, "raw")
        parameter = module.get_parameter(self.name)
        return temporarily_changed(module, [self.name], lambda: parameter.add_(scale * self.delta))

    def bake_(self, model, strength=1.0, **options):
        raise LeverError("a toy weight lever has no bake")


class FixedLever(AddLever):
    """A lever without a strength (units 'none')."""

    kind = "toy.fixed"
    strength_units = ("none",)

    @contextlib.contextmanager
    def apply(self, model, strength=1.0, **options):
        check_strength(strength, "none")
        with super().apply(model, 1.0, **options) as module:
            yield module


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct word sequences the tiny tokenizer knows."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 10)))
        if text not in out:
            out.append(text)
    return out


def unit(d: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    vector = torch.randn(d, generator=generator)
    return vector / vector.norm()


def next_token_logprob(token: int):
    """Behaviour: log-probability of ``token`` after each prompt's last real token."""

    def behaviour(module, tokenizer, prompts):
        inputs = tokenize(tokenizer, prompts, max_length=32, device="cpu")
        with torch.no_grad():
            logits = module(**inputs).logits
        last = inputs["attention_mask"].sum(1) - 1
        return torch.log_softmax(logits[torch.arange(len(prompts)), last].double(), -1)[:, token]

    return behaviour
