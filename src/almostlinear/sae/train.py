"""Training sparse autoencoders on activations, in memory or streamed from a model.

:class:`SAETrainer` is the streaming fitter: ``update(activations)`` many times, then ``result()``.
Activations go into a buffer; when it is full it is shuffled and half of it is trained on, so
consecutive minibatches mix tokens from many texts (tokens of one text are strongly correlated).

Inputs are rescaled so that their mean squared distance from the mean is ``d`` (then one learning
rate suits every layer and model); the scale is folded back into the weights of the result, which
works in the site's own units. Decoder rows are kept at unit norm (their gradient is projected
onto the sphere's tangent space, then the rows are renormalised). A latent is dead when it has
not fired for ``dead_tokens`` tokens; for TopK the AuxK loss (arXiv 2406.04093, appendix A.2)
asks the dead latents to model the reconstruction's residual, which brings them back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..core.artifact import Provenance, Where
from ..core.errors import EmptyDataError, ShapeError, check_choice
from .artifact import ACTIVATIONS, SparseAutoencoder
from . import parallel
from .autoencoder import ReluSAE, SparseAutoencoderModule, TopKSAE, check_activations, check_width

AUX_COEF = 1 / 32  # arXiv 2406.04093, appendix A.2


@dataclass
class TrainingLog:
    """Per optimiser step: tokens seen, batch FVU, L0 and the share of dead latents."""

    tokens: list[int] = field(default_factory=list)
    fvu: list[float] = field(default_factory=list)
    l0: list[float] = field(default_factory=list)
    dead: list[float] = field(default_factory=list)


def _parallel(group) -> bool:
    if group is None:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def default_lr(width: int) -> float:
    # arXiv 2406.04093 scales the learning rate as 1/sqrt(width) from 2e-4 at 2^14 latents.
    return min(2e-3, 2e-4 * math.sqrt(2 ** 14 / width))


class SAETrainer:
    """Streaming trainer of one TopK or ReLU SAE on ``[n, d]`` activation batches."""

    def __init__(self, d: int, width: int, *, activation: str = "topk", k: int = 32, l1: float = 5.0,
                 lr: float | None = None, batch_size: int = 512, buffer_tokens: int = 8192,
                 dead_tokens: int = 100_000, k_aux: int | None = None, aux_coef: float = AUX_COEF,
                 seed: int = 0, device: str | torch.device = "cpu", process_group=None) -> None:
        check_width(d, width)
        check_choice(activation, ACTIVATIONS, "SAE activation")
        if activation == "topk":
            self.sae: SparseAutoencoderModule = TopKSAE(d, width, k, seed=seed)  # k > width raises
        else:
            self.sae = ReluSAE(d, width, l1, seed=seed)
        if batch_size < 1 or buffer_tokens < 1:
            raise ShapeError(f"batch_size and buffer_tokens must be positive, got {batch_size} and {buffer_tokens}")
        self.sae.to(device)
        self.device = torch.device(device)
        self.d, self.width, self.activation = d, width, activation
        self.batch_size, self.buffer_tokens = batch_size, max(buffer_tokens, batch_size)
        self.dead_tokens = dead_tokens
        self.k_aux = k_aux if k_aux is not None else min(max(d // 2, 1), width)
        self.aux_coef = aux_coef
        self.optimiser = torch.optim.Adam(self.sae.parameters(), lr=lr or default_lr(width), betas=(0.9, 0.999))
        self.generator = torch.Generator().manual_seed(seed)
        self.scale: float | None = None
        self.buffer: list[torch.Tensor] = []
        self.buffered = 0
        self.tokens = 0
        self.since_fired = torch.zeros(width, dtype=torch.long, device=self.device)
        self.log = TrainingLog()
        self.reset_stats()
        # Data-parallel training: every rank holds the same SAE (same seed) and steps on its share
        # of each minibatch; ``None`` (or a world of one) is ordinary training.
        self.process_group = process_group if _parallel(process_group) else None

    # -- statistics of the latents, for their typical strength ----------------------------------

    def reset_stats(self) -> None:
        self.fired = torch.zeros(self.width, dtype=torch.float64, device=self.device)
        self.activation_sum = torch.zeros(self.width, dtype=torch.float64, device=self.device)
        self.stat_tokens = 0

    def _initialise(self, x: torch.Tensor) -> None:
        if self.process_group is not None:  # the scale and b_dec of every rank's first rows together
            ((total, mean, m2),) = parallel.pooled_moments([x], self.process_group)
            if total == 0:
                raise EmptyDataError("no rank had activations to set the SAE's input scale from")
            spread = m2 / total
        else:
            mean = x.double().mean(0)
            spread = (x.double() - mean).pow(2).sum(-1).mean()
        if spread == 0:
            raise EmptyDataError("the activations have no variance: nothing for an SAE to learn")
        self.scale = float(math.sqrt(self.d / spread))
        with torch.no_grad():
            self.sae.b_dec.copy_((mean * self.scale).to(self.sae.b_dec.dtype))

    # -- training ----------------------------------------------------------------------------

    def step(self, x: torch.Tensor) -> float:
        """One optimiser step on a minibatch ``[n, d]`` in site units; returns the batch FVU.

        Data-parallel: every rank calls ``step`` together with its share of the minibatch (any
        number of rows, none included); the step is that of the union minibatch."""
        if self.process_group is not None:
            return self._parallel_step(x)
        x, x_hat, z, values, index, pre = self._encode(x)
        sparse = z is None
        err = x - x_hat
        spread = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
        # Inputs are scaled to mean squared spread d, so dividing by d makes the reconstruction
        # term about the FVU and puts the L1 coefficient on the scale of Anthropic's April 2024 lambda.
        loss = err.pow(2).sum(-1).mean() / self.d
        if z is not None:
            loss = loss + self.sae.sparsity_loss(z) / self.d
        dead = self.since_fired >= self.dead_tokens
        if sparse and bool(dead.any()):
            loss = loss + self.aux_coef * self.sae.aux_loss(pre, err.detach(), dead, self.k_aux)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.sae.project_decoder_grad_()
        self.optimiser.step()
        self.sae.normalise_decoder_()
        with torch.no_grad():
            if sparse:
                active = values > 0
                counts = torch.zeros(self.width, dtype=torch.float64, device=self.device)
                counts.index_add_(0, index[active], torch.ones_like(values[active], dtype=torch.float64))
                self.activation_sum.index_add_(0, index[active], values[active].double())
                l0 = float(active.sum(-1).double().mean())
            else:
                counts = (z != 0).sum(0).double()
                self.activation_sum += z.sum(0).double()
                l0 = float((z != 0).sum(-1).double().mean())
            self.since_fired += x.shape[0]
            self.since_fired[counts > 0] = 0
            self.fired += counts
            self.stat_tokens += x.shape[0]
            batch_fvu = float(err.pow(2).sum() / spread)
        return self._log_step(x.shape[0], batch_fvu, l0, dead)

    def _parallel_step(self, x: torch.Tensor) -> float:
        group = self.process_group
        x, x_hat, z, values, index, pre = self._encode(x)
        sparse = z is None
        err = x - x_hat
        (total, _, spread_x), (_, _, spread_err) = parallel.pooled_moments([x, err], group)
        if total == 0:
            raise EmptyDataError("a data-parallel step where no rank had rows: give some rank activations")
        rows = x.shape[0]
        # This rank's share of the union minibatch's loss: sums over its rows divided by the union's
        # count, so that the gradients summed over ranks are the union's.
        loss = err.pow(2).sum() / (total * self.d)
        if z is not None and rows:
            loss = loss + self.sae.sparsity_loss(z) * (rows / total) / self.d
        dead = self.since_fired >= self.dead_tokens
        if sparse and bool(dead.any()):
            spread = spread_err.clamp_min(1e-12).to(pre.dtype)
            loss = loss + self.aux_coef * self.sae.aux_loss(pre, err.detach(), dead, self.k_aux, spread=spread)
        self.optimiser.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
        parallel.sum_gradients_(list(self.sae.parameters()), group)
        self.sae.project_decoder_grad_()
        self.optimiser.step()
        self.sae.normalise_decoder_()
        with torch.no_grad():
            counts = torch.zeros(self.width, dtype=torch.float64, device=self.device)
            strength = torch.zeros(self.width, dtype=torch.float64, device=self.device)
            if sparse:
                active = values > 0
                counts.index_add_(0, index[active], torch.ones_like(values[active], dtype=torch.float64))
                strength.index_add_(0, index[active], values[active].double())
            else:
                counts += (z != 0).sum(0).double()
                strength += z.sum(0).double()
            squared = err.double().pow(2).sum().reshape(1)
            summed = parallel.sum_across(torch.cat([counts, strength, squared]), group)
            counts, strength, squared = summed[:self.width], summed[self.width:2 * self.width], summed[-1]
            self.activation_sum += strength
            self.since_fired += total
            self.since_fired[counts > 0] = 0
            self.fired += counts
            self.stat_tokens += total
            batch_fvu = float(squared / spread_x.clamp_min(1e-12))
            l0 = float(counts.sum() / total)
        return self._log_step(total, batch_fvu, l0, dead)

    def _encode(self, x: torch.Tensor):
        """``(x scaled, x_hat, z, values, index, pre)``: a TopK SAE gives ``z = None`` and its top
        values and indices, other SAEs their dense code ``z`` and ``None`` for values and indices."""
        if self.scale is None:
            self._initialise(x)
        x = (x.to(self.device, torch.float32)) * self.scale
        if isinstance(self.sae, TopKSAE):
            x_hat, values, index, pre = self.sae.sparse_forward(x)
            return x, x_hat, None, values, index, pre
        x_hat, z, pre = self.sae(x)
        return x, x_hat, z, None, None, pre

    def _log_step(self, rows: int, batch_fvu: float, l0: float, dead: torch.Tensor) -> float:
        self.tokens += rows
        self.log.tokens.append(self.tokens)
        self.log.fvu.append(batch_fvu)
        self.log.l0.append(l0)
        self.log.dead.append(float(dead.double().mean()))
        return batch_fvu

    def _train_on(self, rows: torch.Tensor) -> None:
        if self.process_group is not None:  # every rank takes as many steps as the fullest one
            steps = parallel.max_across(rows.shape[0] // self.batch_size, self.process_group)
            for i in range(steps):
                self.step(rows[i * self.batch_size:(i + 1) * self.batch_size])
            return
        for start in range(0, rows.shape[0] - self.batch_size + 1, self.batch_size):
            self.step(rows[start:start + self.batch_size])

    def _buffered_anywhere(self) -> int:
        """This rank's buffered rows, or data-parallel the most any rank holds (a collective)."""
        if self.process_group is None:
            return self.buffered
        return parallel.max_across(self.buffered, self.process_group)

    def update(self, x: torch.Tensor) -> None:
        """Add activations ``[n, d]``; trains whenever the buffer fills.

        Data-parallel every rank calls ``update`` together (a rank without data passes ``[0, d]``):
        training starts when any rank's buffer is full."""
        check_activations(x, self.d)
        self.buffer.append(x.detach().to(self.device, torch.float32))
        self.buffered += x.shape[0]
        if self._buffered_anywhere() >= self.buffer_tokens:
            rows = self._shuffled()
            half = max(self.batch_size, (rows.shape[0] // 2) // self.batch_size * self.batch_size)
            if self.scale is None:
                self._initialise(rows)
            self._train_on(rows[:half])
            self.buffer, self.buffered = [rows[half:]], rows.shape[0] - half

    def _shuffled(self) -> torch.Tensor:
        rows = torch.cat(self.buffer) if self.buffer else torch.zeros(0, self.d, device=self.device)
        return rows[torch.randperm(rows.shape[0], generator=self.generator).to(rows.device)]

    def flush(self) -> None:
        """Train on what is left in the buffer (the last partial minibatch too)."""
        if not self._buffered_anywhere():
            return
        rows = self._shuffled()
        if self.scale is None:
            self._initialise(rows)
        full = rows.shape[0] // self.batch_size * self.batch_size
        self._train_on(rows[:full])
        left = rows.shape[0] - full
        if self.process_group is not None:
            left = int(parallel.sum_across(torch.tensor([left]), self.process_group).item())
        if left >= 2:
            self.step(rows[full:])
        self.buffer, self.buffered = [], 0

    def result(self, *, provenance: Provenance | None = None) -> SparseAutoencoder:
        """The trained SAE in site units (flushes the buffer first)."""
        self.flush()
        if self.scale is None or self.tokens == 0:
            raise EmptyDataError("the SAE saw no activations: call update() with some first")
        s = self.scale
        sae = self.sae
        with torch.no_grad():
            frequency = (self.fired / max(self.stat_tokens, 1)).float()
            mean_active = torch.where(self.fired > 0, self.activation_sum / self.fired.clamp_min(1), 0).float()
            # In scaled units z = act((s x - b) W_enc + b_enc); in site units the same latents come
            # from W_enc' = s W_enc and b_dec' = b / s, and decode as z (W_dec / s) + b / s.
            return SparseAutoencoder(
                W_enc=(sae.W_enc * s).detach().cpu().clone(), b_enc=sae.b_enc.detach().cpu().clone(),
                W_dec=(sae.W_dec / s).detach().cpu().clone(), b_dec=(sae.b_dec / s).detach().cpu().clone(),
                latent_mean=mean_active.cpu(), latent_frequency=frequency.cpu(), activation=self.activation,
                k=getattr(sae, "k", 0), l1=getattr(sae, "l1", 0.0), tokens=self.tokens,
                provenance=provenance or Provenance(method=f"sae-{self.activation}", units="fraction"),
            )


def fit_sae(x: torch.Tensor, width: int, *, activation: str = "topk", k: int = 32, l1: float = 5.0,
            epochs: int = 1, lr: float | None = None, batch_size: int = 512, dead_tokens: int | None = None,
            seed: int = 0, device: str | torch.device = "cpu", provenance: Provenance | None = None,
            progress: bool = False, trainer_out: list | None = None) -> SparseAutoencoder:
    """Train an SAE on activations held in memory, ``epochs`` shuffled passes over ``x`` ``[n, d]``.

    Latent statistics (typical strength, frequency) are those of the last pass.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ShapeError("activations must be a [n_tokens, d] tensor")
    check_width(x.shape[1], width)
    check_activations(x, x.shape[1])
    if x.shape[0] < 2:
        raise EmptyDataError(f"an SAE needs at least two tokens of activations, got {x.shape[0]}")
    batch_size = min(batch_size, x.shape[0])
    trainer = SAETrainer(x.shape[1], width, activation=activation, k=k, l1=l1, lr=lr, batch_size=batch_size,
                         buffer_tokens=x.shape[0], dead_tokens=dead_tokens or max(4 * x.shape[0] // 5, batch_size),
                         seed=seed, device=device)
    trainer._initialise(x)
    bar = _bar(epochs * (x.shape[0] // batch_size), "training the SAE", progress)
    for epoch in range(epochs):
        if epoch == epochs - 1:
            trainer.reset_stats()
        order = torch.randperm(x.shape[0], generator=trainer.generator)
        for start in range(0, x.shape[0] - batch_size + 1, batch_size):
            trainer.step(x[order[start:start + batch_size]])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(fvu=f"{trainer.log.fvu[-1]:.3f}", l0=f"{trainer.log.l0[-1]:.1f}")
    if bar is not None:
        bar.close()
    if trainer_out is not None:
        trainer_out.append(trainer)
    return trainer.result(provenance=provenance)


def _bar(total: int, description: str, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, leave=False)


def train_sae(model, tokenizer, texts: Sequence[str], site, width: int, *, activation: str = "topk", k: int = 32,
              l1: float = 5.0, max_tokens: int | None = None, lr: float | None = None, batch_size: int = 512,
              buffer_tokens: int = 8192, dead_tokens: int = 100_000, seed: int = 0, text_batch_size: int = 8,
              max_length: int = 128, structure=None, model_fingerprint: str | None = None,
              data_hash: str | None = None, progress: bool = False, device: str | torch.device | None = None,
              on_step: Callable[[SAETrainer], None] | None = None, process_group=None) -> SparseAutoencoder:
    """Stream activations at ``site`` over ``texts`` (first token of each text skipped: it is an
    attention sink with an outlying norm) and train an SAE on them in one pass.

    The SAE trains on ``device`` (default: where the model takes its inputs, so a model on a GPU
    trains its SAE there without a round trip of every batch through the CPU).

    With ``process_group`` (under torchrun: ``torch.distributed.group.WORLD``) every rank passes the
    same ``texts`` and reads its own block of them; the ranks train one SAE data-parallel and all
    return it. ``max_tokens`` is then the total over the ranks, each reading at most its share."""
    from ..core.collect import model_device, stream
    from ..core.locate import locate
    from ..core.sites import as_sites

    structure = structure or locate(model)
    (chosen,) = as_sites(structure, site)
    d = chosen.width(structure)
    trainer = SAETrainer(d, width, activation=activation, k=k, l1=l1, lr=lr, batch_size=batch_size,
                         buffer_tokens=buffer_tokens, dead_tokens=dead_tokens, seed=seed,
                         device=model_device(model) if device is None else device, process_group=process_group)
    bar = _bar(len(texts), f"training an SAE at {chosen}", progress)
    batches = stream(model, tokenizer, texts, chosen, batch_size=text_batch_size, max_length=max_length,
                     skip_first=True, structure=structure, progress=bar.update if bar else None,
                     shard=_shard(trainer.process_group))
    if trainer.process_group is not None:
        _train_parallel(trainer, batches, chosen, max_tokens, on_step)
    else:
        for batch in batches:
            acts = batch.activations[chosen].float()
            if max_tokens is not None:
                acts = acts[: max(0, max_tokens - trainer.tokens - trainer.buffered)]
            if acts.shape[0]:
                trainer.update(acts)
            if on_step is not None:
                on_step(trainer)
            if max_tokens is not None and trainer.tokens + trainer.buffered >= max_tokens:
                break
    if bar is not None:
        bar.close()
    provenance = Provenance(model_fingerprint=model_fingerprint, where=Where.at(str(chosen)),
                            method=f"sae-{activation}", data_hash=data_hash, units="fraction",
                            extra={"width": width, "k": k if activation == "topk" else None,
                                   "l1": l1 if activation == "relu" else None})
    return trainer.result(provenance=provenance)


def _shard(group) -> tuple[int, int] | None:
    if group is None:
        return None
    import torch.distributed as dist

    return dist.get_rank(group), dist.get_world_size(group)


def _train_parallel(trainer: SAETrainer, batches, site, max_tokens: int | None, on_step) -> None:
    """Feed every rank's stream to the trainer in lock-step: a rank whose block ran out (or that
    reached its share of ``max_tokens``) passes empty batches until no rank has data left."""
    group = trainer.process_group
    share = None if max_tokens is None else -(-max_tokens // parallel.world_of(group))
    read = 0
    empty = torch.zeros(0, trainer.d)
    while True:
        batch = next(batches, None) if share is None or read < share else None
        acts = empty if batch is None else batch.activations[site].float()
        if share is not None:
            acts = acts[: max(0, share - read)]
        if parallel.max_across(int(batch is not None), group) == 0:
            break
        read += acts.shape[0]
        trainer.update(acts.to(trainer.device))
        if on_step is not None:
            on_step(trainer)
