"""The tuned lens (arXiv 2303.08112): residual affine translators trained by SGD on the KL from the
model's final distribution to the lens distribution.

Recipe, as in the paper's library (AlignmentResearch/tuned-lens, ``scripts/ingredients.py`` and
``scripts/train_loop.py``): translators ``h + h @ A + b`` initialised at zero (the logit lens);
loss = sum over states of the mean forward KL(p_final ‖ p_lens); SGD with Nesterov momentum 0.9 at
learning rate ``lr_scale * (1 - momentum)`` (``lr_scale`` 1.0, undoing PyTorch's 1/(1 - β) scaling of
momentum steps), weight decay 1e-3 (which pulls the translators towards the identity), gradients
clipped to norm 1.0, learning rate decayed linearly to zero, no warm-up. The library trains 250
steps of 2^18 tokens (≈65M tokens), a GPU job; here the token budget is a parameter and the
translators can start from the closed-form affine lens, which gets most of the way at once.

The model's final norm and unembedding are applied with their weights detached, so training
touches neither the model nor its gradients. The translators, their optimiser state and the decoding
during training are float32 whatever the model's dtype: SGD steps of size ``lr x gradient`` vanish in
bfloat16's 8-bit mantissa, and a float32 translator cannot enter a half-precision head.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..core.artifact import Provenance
from ..core.collect import stream
from ..core.errors import EmptyDataError, LeverError, NonFiniteError, ShapeError
from ..core.locate import Structure, locate
from .artifact import LENS_WHERE, Translators, TunedLens
from .evaluate import states_of
from .logit import LogitLens, lens_sites


@dataclass(frozen=True)
class TunedLensSettings:
    """Optimiser settings; defaults are the tuned-lens library's, except the token budget."""

    lr_scale: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 1e-3
    clip: float = 1.0
    tokens_per_step: int = 256
    chunk: int = 256  # tokens per backward pass, to bound the memory of [tokens, vocab] logits


def _frozen(module: torch.nn.Module):
    """``module`` as a function of float32 inputs, with detached float32 copies of half-precision weights
    (float32 weights are used as they are, without a copy)."""
    params = {name: p.detach().float() if p.is_floating_point() else p.detach()
              for name, p in module.named_parameters()}
    return lambda x: torch.func.functional_call(module, params, (x,))


class TunedLensTrainer:
    """One optimiser step per call of :meth:`step`, over the states of ``tokens_per_step`` tokens."""

    def __init__(self, decoder: LogitLens, init: Translators, *, steps: int,
                 settings: TunedLensSettings = TunedLensSettings()) -> None:
        if steps < 1:
            raise ShapeError(f"steps must be at least 1, got {steps}")
        self.settings, self.total_steps = settings, steps
        norm = _frozen(decoder.final_norm) if decoder.convention == "final_norm" else (lambda x: x)
        head = _frozen(decoder.unembedding)
        self.decode = lambda h: head(norm(h))
        S, d = init.n_states, init.d_model
        A = init.A if init.A is not None else torch.zeros(S, d, d)
        device = decoder.unembedding.weight.device
        # the last state stays the identity: only states 0..S-2 are trained
        self.A = torch.nn.Parameter(A[:-1].detach().to(device=device, dtype=torch.float32).clone())
        self.b = torch.nn.Parameter(init.b[:-1].detach().to(device=device, dtype=torch.float32).clone())
        self.optimizer = torch.optim.SGD([self.A, self.b], lr=settings.lr_scale * (1 - settings.momentum),
                                         momentum=settings.momentum, nesterov=True,
                                         weight_decay=settings.weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda k: max(0.0, 1 - k / steps))
        self.steps_done, self.tokens_seen = 0, 0
        self.history: list[float] = []

    def kl(self, states: Sequence[torch.Tensor], *, backward: bool = False) -> float:
        """Mean over states (all but the last) of the mean KL(final ‖ lens); optionally accumulate gradients."""
        if len(states) != self.A.shape[0] + 1:
            raise ShapeError(f"expected {self.A.shape[0] + 1} states, got {len(states)}")
        device = self.A.device
        n = states[-1].shape[0]
        total = 0.0
        for start in range(0, n, self.settings.chunk):
            rows = slice(start, start + self.settings.chunk)
            with torch.no_grad():
                log_p = torch.log_softmax(self.decode(states[-1][rows].to(device).float()), -1)
            p = log_p.exp()
            for s in range(len(states) - 1):
                # clone: activations streamed under inference_mode cannot be saved for backward
                h = states[s][rows].to(device=device, dtype=torch.float32).clone()
                with torch.set_grad_enabled(backward):
                    log_q = torch.log_softmax(self.decode(h + h @ self.A[s] + self.b[s]), -1)
                    loss = (p * (log_p - log_q)).sum(-1).sum() / n
                    if backward:
                        loss.backward()
                total += float(loss.detach())
        return total / (len(states) - 1)

    def step(self, states: Sequence[torch.Tensor]) -> float:
        """One SGD step on these tokens; returns their mean KL before the step."""
        if self.steps_done >= self.total_steps:
            raise LeverError(f"all {self.total_steps} steps of the schedule are done: make a new trainer to train more")
        self.optimizer.zero_grad(set_to_none=False)
        loss = self.kl(states, backward=True)
        torch.nn.utils.clip_grad_norm_([self.A, self.b], self.settings.clip)
        self.optimizer.step()
        self.schedule.step()
        self.steps_done += 1
        self.tokens_seen += states[-1].shape[0]
        self.history.append(loss)
        return loss

    def result(self) -> TunedLens:
        d = self.A.shape[-1]
        A = torch.cat([self.A.detach().cpu(), torch.zeros(1, d, d)])
        b = torch.cat([self.b.detach().cpu(), torch.zeros(1, d)])
        return TunedLens(A, b, steps=self.steps_done, tokens=self.tokens_seen, history=list(self.history),
                         provenance=Provenance(where=LENS_WHERE, method="tuned lens (SGD on KL, arXiv 2303.08112)"))


def _token_stream(model, tokenizer, texts: list[str], structure: Structure, *, batch_size: int, max_length: int,
                  skip_first: bool, seed: int):
    """Endless lens states of ``texts``, one shuffled epoch after another."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(texts), generator=generator).tolist()
        for batch in stream(model, tokenizer, [texts[i] for i in order], lens_sites(structure),
                            batch_size=batch_size, max_length=max_length, skip_first=skip_first, structure=structure):
            if len(batch):
                yield states_of(batch)


def train_tuned_lens(model, tokenizer, texts: Sequence[str], *, structure: Structure | None = None,
                     init: Translators | None = None, token_budget: int = 4096,
                     settings: TunedLensSettings = TunedLensSettings(), max_seconds: float | None = None,
                     batch_size: int = 8, max_length: int = 128, skip_first: bool = True, seed: int = 0,
                     progress: bool = True) -> TunedLens:
    """Train a tuned lens on ``texts`` for ``token_budget`` tokens (cycling through the texts).

    ``init`` is a warm start (an :class:`AffineLens` from :func:`fit_affine_lens` is cheap and good);
    by default the translators start at zero, the logit lens. ``max_seconds`` stops early, with the
    schedule unfinished. CPU cost: about ``3 x tokens x (blocks) x d_model x vocab`` multiply-adds.
    """
    from tqdm.auto import tqdm

    from ..core.models import fingerprint
    from ..core.digest import data_hash

    texts = list(texts)
    if not texts:
        raise EmptyDataError("no texts to train the tuned lens on")
    structure = structure or locate(model)
    decoder = LogitLens.from_structure(structure)
    if init is None:
        init = TunedLens.zeros(structure.n_layers + 1, structure.d_model)
    init.check_structure(structure)
    steps = max(1, token_budget // settings.tokens_per_step)
    trainer = TunedLensTrainer(decoder, init, steps=steps, settings=settings)
    source = _token_stream(model, tokenizer, texts, structure, batch_size=batch_size, max_length=max_length,
                           skip_first=skip_first, seed=seed)
    buffer: list[list[torch.Tensor]] = []
    held = 0
    began = time.perf_counter()
    with tqdm(total=steps, desc="tuned lens", unit="step", disable=not progress) as bar, \
            contextlib.closing(source):
        while trainer.steps_done < steps:
            while held < settings.tokens_per_step:
                states = next(source)
                buffer.append(states)
                held += states[0].shape[0]
            joined = [torch.cat([part[s] for part in buffer]) for s in range(len(buffer[0]))]
            take = settings.tokens_per_step
            loss = trainer.step([s[:take] for s in joined])
            buffer, held = [[s[take:] for s in joined]], joined[0].shape[0] - take
            bar.update(1)
            bar.set_postfix(kl=f"{loss:.3f}")
            if max_seconds is not None and time.perf_counter() - began > max_seconds:
                break
    lens = trainer.result()
    if not math.isfinite(lens.history[-1]):
        raise NonFiniteError("the tuned lens diverged (non-finite KL): lower settings.lr_scale")
    provenance = Provenance(model_fingerprint=fingerprint(model), where=LENS_WHERE,
                            method="tuned lens (SGD on KL, arXiv 2303.08112)", data_hash=data_hash(texts),
                            extra={"init": type(init).__name__, "token_budget": token_budget,
                                   "settings": dataclasses.asdict(settings)})
    return TunedLens(lens.A, lens.b, steps=lens.steps, tokens=lens.tokens, history=lens.history,
                     provenance=provenance)
