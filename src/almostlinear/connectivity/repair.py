"""REPAIR (arXiv 2211.08403): undo the variance collapse of interpolated networks.

After alignment, matched units of A and B are imperfectly correlated, so the interpolated network's
pre-activations shrink. REPAIR rescales each hidden unit of the interpolated network so that its
mean and standard deviation equal the interpolation of the endpoints' statistics. This is the exact
variant: statistics of the mixed network are measured layer by layer with forward passes, so each
correction sees the corrections before it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.errors import AlmostLinearError, EmptyDataError, StructureError
from ..core.lever import as_model
from .spec import PermutationSpec

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def hidden_layers(spec: PermutationSpec) -> list[str]:
    """Names of the layers whose outputs are hidden units of a feed-forward spec, in order."""
    layers = []
    for name, aps in spec.axes.items():
        if name.endswith(".weight") and any(ap.axis == 0 and ap.perm.startswith("hidden.") for ap in aps):
            layers.append(name[: -len(".weight")])
    if not layers:
        raise StructureError("the spec names no hidden layers; REPAIR needs a feed-forward spec")
    return layers


@torch.no_grad()
def _unit_stats(model: nn.Module, layer: str, batches) -> tuple[torch.Tensor, torch.Tensor]:
    module = model.get_submodule(layer)
    sums = {"n": 0, "s": None, "ss": None}

    def hook(_m, _i, out):
        t = out.detach().double()
        t = t.movedim(1, -1) if t.dim() > 2 else t  # channels of a convolution
        t = t.reshape(-1, t.shape[-1])
        sums["n"] += t.shape[0]
        sums["s"] = t.sum(0) if sums["s"] is None else sums["s"] + t.sum(0)
        sums["ss"] = (t * t).sum(0) if sums["ss"] is None else sums["ss"] + (t * t).sum(0)

    handle = module.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            model(x)
    finally:
        handle.remove()
        model.train(was_training)
    if not sums["n"]:
        raise EmptyDataError("REPAIR needs at least one batch of inputs")
    mean = sums["s"] / sums["n"]
    var = (sums["ss"] / sums["n"] - mean * mean).clamp_min(0)
    return mean, var.sqrt()


@torch.no_grad()
def repair_(model: Any, model_a: Any, model_b: Any, alpha: float, batches,
            layers: list[str] | PermutationSpec, *, eps: float = 1e-8) -> nn.Module:
    """Rescale ``layers`` of the interpolated ``model`` in place so their unit statistics interpolate A's and B's.

    ``model_b`` must already be aligned to ``model_a`` (permuted). ``batches`` is a list of inputs.
    ``model`` must be a separate network: the endpoints' statistics are measured on ``model_a`` and
    ``model_b`` as they are (with :func:`interpolate`, which works in ``model_a``, pass a copy of A).
    """
    model, model_a, model_b = (as_model(m).module for m in (model, model_a, model_b))
    if model is model_a or model is model_b:
        raise AlmostLinearError("repair_ needs the interpolated network apart from both endpoints: the endpoint "
                         "statistics would otherwise be read from the network being rescaled (pass a copy of A)")
    batches = list(batches)
    names = hidden_layers(layers) if isinstance(layers, PermutationSpec) else list(layers)
    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, _WEIGHTED) or module.bias is None:
            raise StructureError(f"{name} is not a Linear/Conv layer with a bias; REPAIR rescales those")
        mean_a, std_a = _unit_stats(model_a, name, batches)
        mean_b, std_b = _unit_stats(model_b, name, batches)
        mean, std = _unit_stats(model, name, batches)
        target_mean = (1 - alpha) * mean_a + alpha * mean_b
        target_std = (1 - alpha) * std_a + alpha * std_b
        scale = target_std / (std + eps)
        shape = (-1,) + (1,) * (module.weight.dim() - 1)
        module.weight.mul_(scale.to(module.weight.dtype).view(shape))
        module.bias.copy_(((module.bias.double() - mean) * scale + target_mean).to(module.bias.dtype))
    return model
