"""Models dispatched with accelerate: where offloaded weights live and where inputs must go.

When accelerate offloads a module (to the CPU behind a GPU, or to disk), its parameters become
tensors on the ``meta`` device, which hold no values; the values sit in the ``weights_map`` of the
module's ``AlignDevicesHook`` (``module._hf_hook``), which loads them just for each forward pass.
Anything that reads weights must read them from there, and anything that writes weights must know
that writing the meta tensor changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def _hooks(module: nn.Module) -> list:
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", None) or [hook])  # a SequentialHook holds several


def is_offloaded(tensor: torch.Tensor | None) -> bool:
    """Whether ``tensor`` is a placeholder on the meta device (its values are stored elsewhere)."""
    return tensor is not None and tensor.device.type == "meta"


def stored_value(model: nn.Module, name: str) -> torch.Tensor | None:
    """The values of offloaded tensor ``name`` read from accelerate's weights map, or ``None``.

    The hook holding the map may sit on the owning module or on an ancestor (``place_submodules``),
    so every module on the path is asked, nearest first.
    """
    parts = name.split(".")
    for cut in range(len(parts) - 1, -1, -1):
        path, key = ".".join(parts[:cut]), ".".join(parts[cut:])
        try:
            owner = model.get_submodule(path) if path else model
        except AttributeError:
            continue
        for hook in _hooks(owner):
            weights = getattr(hook, "weights_map", None)
            if weights is None:
                continue
            try:
                return weights[key]
            except KeyError:
                continue
    return None


def is_offload_hooked(module: nn.Module) -> bool:
    """Whether accelerate loads ``module``'s own weights from an offload store for each forward pass."""
    return any(getattr(hook, "offload", False) for hook in _hooks(module))


def readable(model: nn.Module, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` itself, or its stored values when it is offloaded; a library error when they are nowhere."""
    if not is_offloaded(tensor):
        return tensor
    value = stored_value(model, name)
    if value is None:
        from .errors import LeverError

        raise LeverError(f"{name!r} is on the meta device and no accelerate weights map holds its values: "
                         "load the model with its weights (or dispatch it with accelerate) before reading them")
    return value


def offloaded_modules(model: nn.Module, names: Iterable[str]) -> list[str]:
    """The modules owning the parameters ``names`` whose weights accelerate keeps off the model (meta
    tensors). A name that does not exist yet (a bias a bake would create) counts when its module is
    offloaded."""
    found: list[str] = []
    for name in dict.fromkeys(names):
        path, _, leaf = name.rpartition(".")
        owner = model.get_submodule(path) if path else model
        tensor = owner._parameters.get(leaf)
        held = is_offloaded(tensor) if tensor is not None else (
            any(is_offloaded(p) for p in owner.parameters(recurse=False)) or is_offload_hooked(owner))
        if held and (path or "(the model)") not in found:
            found.append(path or "(the model)")
    return found


def execution_device(module: nn.Module) -> torch.device | None:
    """The device accelerate runs ``module`` on (its hook's ``execution_device``), if it is dispatched."""
    for hook in _hooks(module):
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return torch.device(device) if not isinstance(device, torch.device) else device
    return None
