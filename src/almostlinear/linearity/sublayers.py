"""Reading and replacing whole sublayers: the attention and the MLP of a block, input to output.

The core sites hold what a sublayer writes (``attn_out``, ``mlp_out``) but not what it reads: in a
pre-norm block that is the residual stream after the block's norm. :func:`record_sublayers` reads
both with forward pre-hooks on the attention module and on the MLP module (the child of the block
that owns the MLP's down projection) and forward hooks on their output projections.
:func:`replace_sublayer` makes a sublayer write an affine function of its input instead.

Hooks are removed in ``finally`` blocks, so the model is left as it was also when the body raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..core.errors import ShapeError, StructureError
from ..core.hooks import StopForward
from ..core.locate import Structure, is_linear, linear_shape
from .affine import AffineFit

Kind = Literal["attn", "mlp"]
KINDS: tuple[Kind, ...] = ("attn", "mlp")


@dataclass(frozen=True)
class Sublayer:
    """A sublayer's module (whose input is read) and its output projection (whose output is read)."""

    layer: int
    kind: Kind
    module: nn.Module
    out_proj: nn.Module


def mlp_module(structure: Structure, layer: int) -> nn.Module:
    """The child of block ``layer`` that holds the whole MLP: its down projection and an up projection
    from ``d_model`` (``mlp``, ``feed_forward``...), and not the attention."""
    block = structure.block(layer)
    for _, child in block.module.named_children():
        inside = any(m is block.mlp_down_proj for m in child.modules())
        if inside:
            up = any(is_linear(m) and linear_shape(m)[1] == structure.d_model and linear_shape(m)[0] > structure.d_model
                     for m in child.modules())
            if up and not any(m is block.attention for m in child.modules()):
                return child
            break
    raise StructureError(
        f"block {layer} has no child module holding only its MLP (e.g. BERT splits the MLP across "
        "'intermediate' and 'output'); sublayer linearity needs one"
    )


def sublayer(structure: Structure, layer: int, kind: Kind) -> Sublayer:
    block = structure.block(layer)
    if kind == "attn":
        return Sublayer(block.index, kind, block.attention, block.attn_out_proj)
    if kind == "mlp":
        return Sublayer(block.index, kind, mlp_module(structure, layer), block.mlp_down_proj)
    raise ValueError(f"unknown sublayer kind {kind!r}; use 'attn' or 'mlp'")


def _input_of(args: tuple, kwargs: dict) -> torch.Tensor:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    hidden = kwargs.get("hidden_states")
    if isinstance(hidden, torch.Tensor):
        return hidden
    raise ShapeError("cannot find the sublayer's input: neither a first positional tensor nor hidden_states")


def _output_of(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@contextlib.contextmanager
def _hooks(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        while handles:
            handles.pop().remove()


@dataclass
class SublayerReading:
    """The last forward pass's inputs and outputs, ``[batch, seq, d]``, keyed by ``(layer, kind)``."""

    inputs: dict[tuple[int, str], torch.Tensor]
    outputs: dict[tuple[int, str], torch.Tensor]

    def clear(self) -> None:
        self.inputs.clear()
        self.outputs.clear()


@contextlib.contextmanager
def record_sublayers(model: nn.Module, structure: Structure, parts: Sequence[Sublayer], *,
                     stop_after: bool = False) -> Iterator[SublayerReading]:
    """Record each sublayer's input and output on every forward pass inside the context.

    With ``stop_after=True`` the pass ends (raising :class:`StopForward`, for the caller to catch)
    once the last of ``parts`` has written its output, skipping later blocks and the head.
    """
    reading = SublayerReading({}, {})
    last = max(parts, key=lambda p: (p.layer, KINDS.index(p.kind))) if parts else None
    handles: list = []

    def reader(key):
        def pre_hook(_module, args, kwargs):
            reading.inputs[key] = _input_of(args, kwargs).detach()

        return pre_hook

    def writer(key, final):
        def hook(_module, _args, output):
            reading.outputs[key] = _output_of(output).detach()
            if final:
                raise StopForward

        return hook

    with _hooks(handles):
        for part in parts:
            key = (part.layer, part.kind)
            handles.append(part.module.register_forward_pre_hook(reader(key), with_kwargs=True))
            handles.append(part.out_proj.register_forward_hook(writer(key, stop_after and part is last)))
        yield reading


@contextlib.contextmanager
def replace_sublayer(model: nn.Module, part: Sublayer,
                     fn: AffineFit | Callable[[torch.Tensor], torch.Tensor], *,
                     skip_first: bool = False) -> Iterator[None]:
    """Make ``part`` write ``fn(its input)`` in place of its own output while the context is open.

    ``fn`` is an :class:`AffineFit` (``(x - x_mean) @ A + y_mean``) or any function of the input
    ``[batch, seq, d]``. The sublayer still runs (its output is discarded), so the model's other
    hooks and caches see a normal call. ``skip_first`` keeps the true output at sequence position 0
    (right-padded batches: each text's first token), for maps fitted without first tokens.
    """
    if isinstance(fn, AffineFit):
        fn = affine_map(fn)
    held: list[torch.Tensor] = []
    handles: list = []

    def pre_hook(_module, args, kwargs):
        held[:] = [_input_of(args, kwargs)]

    def hook(_module, _args, output):
        if not held:
            raise ShapeError("the sublayer's output projection ran without its module's input being seen")
        new = fn(held[0])
        current = _output_of(output)
        if new.shape != current.shape:
            raise ShapeError(f"the replacement gives {tuple(new.shape)}, the sublayer writes {tuple(current.shape)}")
        new = new.to(dtype=current.dtype, device=current.device)
        if skip_first:
            new = torch.cat([current[:, :1], new[:, 1:]], dim=1)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    with _hooks(handles):
        handles.append(part.module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(part.out_proj.register_forward_hook(hook))
        yield


def affine_map(fit: AffineFit) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> (x - x_mean) @ A + y_mean``, computed in float64 and cast back by the caller."""
    cache: dict = {}

    def apply(x: torch.Tensor) -> torch.Tensor:
        key = x.device
        if key not in cache:
            cache[key] = (fit.A.to(device=key, dtype=torch.float64), fit.x_mean.to(key, torch.float64),
                          fit.y_mean.to(key, torch.float64))
        A, mx, my = cache[key]
        return (x.double() - mx) @ A + my

    return apply
