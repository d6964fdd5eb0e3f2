"""Stochastic weight averaging and exponential moving averages (arXiv 1803.05407).

:class:`WeightAverage` is a streaming fitter: ``update(model)`` after each step or epoch, the
average is in ``.module``. It computes what ``torch.optim.swa_utils.AveragedModel`` computes (SWA:
running mean; EMA: ``avg <- decay avg + (1 - decay) theta`` after the first copy), in the model's
own dtype, plus:

* ``buffers="average"`` averages floating buffers too (AveragedModel's ``use_buffers=True``);
  ``buffers="copy"`` (default) copies the latest buffers, so the average never carries the stale
  batch-norm statistics that AveragedModel keeps when ``use_buffers=False`` (pytorch/pytorch#84053).
  Recompute batch-norm statistics of an average with :func:`update_bn` before evaluating it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable

import torch
from torch import nn

from ..core.errors import AlmostLinearError, EmptyDataError, ShapeError, check_choice

MODES = ("swa", "ema")
BUFFERS = ("copy", "average")


def _check_mode(mode: str, decay: float) -> None:
    check_choice(mode, MODES, "averaging mode")
    if mode == "ema" and not 0.0 <= decay < 1.0:
        raise AlmostLinearError(f"an EMA decay must lie in [0, 1), got {decay}: use e.g. 0.999 (the weight of the "
                                "average so far)")


class WeightAverage:
    """Running SWA or EMA of a model's weights, kept in a separate copy ``.module``."""

    def __init__(self, model: nn.Module, mode: str = "swa", *, decay: float = 0.999, buffers: str = "copy") -> None:
        _check_mode(mode, decay)
        check_choice(buffers, BUFFERS, "buffer handling")
        self.mode, self.decay, self.buffers = mode, decay, buffers
        self.module = copy.deepcopy(model)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.n_averaged = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights into the average."""
        own, other = list(self.module.parameters()), list(model.parameters())
        own_bufs, other_bufs = list(self.module.buffers()), list(model.buffers())
        if (len(own), len(own_bufs)) != (len(other), len(other_bufs)):
            # zip would silently average only the common prefix
            raise ShapeError(f"the model has {len(other)} parameters and {len(other_bufs)} buffers; the average "
                             f"has {len(own)} and {len(own_bufs)}")
        pairs = list(zip(own, other))
        float_bufs = list(zip(own_bufs, other_bufs))
        for avg, new in pairs + float_bufs:
            if avg.shape != new.shape:
                raise ShapeError(f"the model changed shape: {tuple(new.shape)} vs {tuple(avg.shape)} in the average")
        averaged = pairs + ([(a, b) for a, b in float_bufs if a.is_floating_point()]
                            if self.buffers == "average" else [])
        for avg, new in averaged:
            new = new.detach().to(avg.device)
            if self.n_averaged == 0:
                avg.copy_(new)
            elif self.mode == "swa":
                avg.add_((new - avg) / (self.n_averaged + 1))
            else:
                avg.lerp_(new, 1.0 - self.decay)
        for avg, new in float_bufs:
            if self.buffers == "copy" or not avg.is_floating_point():
                avg.copy_(new.detach())
        self.n_averaged += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()


def _read(checkpoint) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, nn.Module):
        return checkpoint.state_dict()
    if isinstance(checkpoint, (str, os.PathLike)):
        from safetensors.torch import load_file

        return load_file(str(checkpoint))
    return dict(checkpoint)


@torch.no_grad()
def average_checkpoints(checkpoints: Iterable, mode: str = "swa", *, decay: float = 0.999
                        ) -> dict[str, torch.Tensor]:
    """SWA (equal weights) or EMA (in the order given) of saved checkpoints, one in memory at a time.

    ``checkpoints`` holds state dicts, modules or ``.safetensors`` paths. Integer tensors (step
    counters) come from the last checkpoint. Accumulates in float64, returns the input dtypes.
    """
    _check_mode(mode, decay)
    total: dict[str, torch.Tensor] | None = None
    dtypes: dict[str, torch.dtype] = {}
    n = 0
    for checkpoint in checkpoints:
        state = _read(checkpoint)
        if total is None:
            total = {k: v.double().clone() if v.is_floating_point() else v.clone() for k, v in state.items()}
            dtypes = {k: v.dtype for k, v in state.items()}
        else:
            if set(state) != set(total):
                raise ShapeError(f"checkpoint {n} has other tensors: {sorted(set(state) ^ set(total))[:6]}")
            for k, v in state.items():
                if v.shape != total[k].shape:
                    raise ShapeError(f"{k!r} has shape {tuple(v.shape)} in checkpoint {n}, "
                                     f"{tuple(total[k].shape)} before")
                if not v.is_floating_point():
                    total[k] = v.clone()
                elif mode == "swa":
                    total[k] += (v.double() - total[k]) / (n + 1)
                else:
                    total[k].lerp_(v.double(), 1.0 - decay)
        n += 1
    if total is None:
        raise EmptyDataError("no checkpoints to average")
    return {k: v.to(dtypes[k]) for k, v in total.items()}


def _bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def update_bn(batches: Iterable, model: nn.Module) -> nn.Module:
    """Recompute batch-norm running statistics as a plain average over ``batches`` (in place).

    Same result as ``torch.optim.swa_utils.update_bn``: statistics are reset, momentum is set to
    ``None`` (a cumulative average) for one pass, then momenta and the training flag are restored.
    Batches are tensors, tuples whose first item is the input, or dicts of keyword arguments.
    """
    layers = _bn_layers(model)
    if not layers:
        return model
    momenta = {m: m.momentum for m in layers}
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    seen = 0
    try:
        for batch in batches:
            if isinstance(batch, dict):
                model(**batch)
            else:
                model(batch[0] if isinstance(batch, (tuple, list)) else batch)
            seen += 1
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        model.train(was_training)
    if not seen:
        raise EmptyDataError("update_bn needs at least one batch")
    return model
