"""Reversible interventions at sites: record, add, project out, replace.

Every context manager here installs PyTorch hooks on entry and removes them in ``finally``, so on
exit the model is exactly as before, also when the body raises. Weights are never touched and
activations are never edited in place: each hook returns a new tensor. Hooks run before any hook
another library added, and after those of almostlinear contexts already open, so nested contexts
act in the order they were entered.

Token positions are chosen per sequence among its real tokens (padding excluded), from the
``attention_mask`` the model was called with. During ``generate`` with a KV cache each forward
sees only the new tokens; positions are still counted from the start of the whole sequence (from
the attention mask, or, when a call passes none because nothing is padded, from its position ids
or cache positions).

Position policies: ``"all"`` (every real token), ``"last"`` (the last real token of each forward
call, so every new token while generating), ``"first"``, an int or a list of ints (indices among
the real tokens; negative ones count from the end), or a callable ``f(index, mask) -> bool[batch,
seq]`` receiving each position's index among real tokens and the padding mask.
"""

from __future__ import annotations

import contextlib
import inspect
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import ChoiceError, NonFiniteError, ShapeError
from .locate import Structure, locate
from .sites import Point, Site, as_sites

Positions = str | Sequence[int] | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Edit = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class StopForward(Exception):
    """Raised from a hook to end a forward pass early, once everything needed has been read."""


@dataclass
class _Call:
    """What the hooks need to know about the forward pass in progress."""

    attention_mask: torch.Tensor | None = None
    depth: int = 0  # how many entry modules are inside their forward


def _mask_from_call(signature, args, kwargs) -> torch.Tensor | None:
    mask = kwargs.get("attention_mask")
    if mask is None and args and signature is not None:
        try:
            mask = signature.bind_partial(*args, **kwargs).arguments.get("attention_mask")
        except TypeError:
            mask = None
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return mask
    # Without padding, transformers 5 ``generate`` passes no mask but position ids (older and remote
    # code models: ``cache_position``); under a KV cache they say how many tokens came before, so
    # positions keep counting from the sequence start. Nothing is padded then, so every row is real.
    positions = kwargs.get("position_ids")
    if not (isinstance(positions, torch.Tensor) and positions.dim() == 2):
        positions = kwargs.get("cache_position")
        positions = positions[None] if isinstance(positions, torch.Tensor) and positions.dim() == 1 else None
    if positions is not None and positions.numel():
        length = int(positions[:, -1].max()) + 1
        if length >= positions.shape[1]:
            batch = _batch_size(args, kwargs, positions.shape[0])
            return torch.ones(batch, length, dtype=torch.long, device=positions.device)
    return None


def _batch_size(args, kwargs, default: int) -> int:
    """Rows of the call's ``input_ids``/``inputs_embeds`` (position ids may be one broadcast row)."""
    for value in (kwargs.get("input_ids"), kwargs.get("inputs_embeds"), args[0] if args else None):
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return int(value.shape[0])
    return default


def position_mask(policy: Positions, attention_mask: torch.Tensor | None, shape: tuple[int, int],
                  device: torch.device) -> torch.Tensor:
    """Boolean ``[batch, seq]`` of the positions of the current forward chosen by ``policy``."""
    batch, seq = shape
    if attention_mask is None or attention_mask.shape[0] != batch or attention_mask.shape[1] < seq:
        full = torch.ones(batch, seq, dtype=torch.bool, device=device)
    else:
        full = attention_mask.to(device=device).bool()
    real_index = full.long().cumsum(-1) - 1
    n_real = full.sum(-1, keepdim=True)
    mask, index = full[:, -seq:], real_index[:, -seq:]
    if isinstance(policy, str):
        if policy == "all":
            return mask
        if policy == "last":
            last = torch.where(mask, torch.arange(seq, device=device), -1).amax(-1, keepdim=True)
            return mask & (torch.arange(seq, device=device) == last)
        if policy == "first":
            return mask & (index == 0)
        raise ChoiceError(f"unknown position policy {policy!r}: use 'all', 'last', 'first', ints or a function")
    if callable(policy):
        chosen = policy(index, mask)
        if chosen.shape != mask.shape:
            raise ShapeError(f"position function returned shape {tuple(chosen.shape)}, expected {(batch, seq)}")
        return mask & chosen.bool()
    # ints, also given as a numpy array or tensor (compared with "all" above, those would be ambiguous)
    if isinstance(policy, numbers.Integral) or (isinstance(policy, torch.Tensor) and policy.dim() == 0):
        policy = [policy]
    wanted = torch.as_tensor([int(p) for p in policy], dtype=torch.long, device=device)
    if wanted.numel() == 0:
        return torch.zeros_like(mask)
    absolute = torch.where(wanted[None, :] < 0, n_real + wanted[None, :], wanted[None, :])
    return mask & (index[..., None] == absolute[:, None, :]).any(-1)


@dataclass
class _Slot:
    """One dispatcher hook on one (module, point); runs its edits in the order they were attached."""

    edits: list[tuple[Positions, Edit]] = field(default_factory=list)
    handle: torch.utils.hooks.RemovableHandle | None = None


def order_after_ours(hooks, new_id: int) -> None:
    """Order a module's hooks as: ours from enclosing contexts, the new one, everything else.

    ``prepend=True`` puts the new hook before hooks other libraries added; this also keeps it after
    the hooks of almostlinear contexts already open, so nested contexts act in the order they were
    entered (``record`` inside ``add`` at the same site reads the steered activation).
    """
    ours = [k for k, fn in hooks.items() if k != new_id and getattr(fn, "_almostlinear", False)]
    others = [k for k in hooks if k != new_id and k not in ours]
    for key in (*ours, new_id, *others):
        hooks.move_to_end(key)


class _Dispatcher:
    """Owns all hooks that one context installs on one model."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.call = _Call()
        self.slots: dict[tuple[int, Point], _Slot] = {}
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def install_call_hooks(self, entries: list[nn.Module]) -> None:
        """Read ``attention_mask`` wherever a forward pass may start: the model or its inner base model.

        The outermost call that states a 2-D mask wins; a nested call (the base model inside the
        causal LM) only fills it in when the outer call had none.
        """
        for entry in entries:
            try:
                signature = inspect.signature(entry.forward)
            except (TypeError, ValueError):
                signature = None

            def before(_module, args, kwargs, signature=signature):
                mask = _mask_from_call(signature, args, kwargs)
                if self.call.depth == 0 or self.call.attention_mask is None:
                    self.call.attention_mask = mask
                self.call.depth += 1

            def after(_module, _args, _kwargs, _output):
                self.call.depth -= 1
                if self.call.depth == 0:
                    self.call.attention_mask = None

            self.handles.append(entry.register_forward_pre_hook(before, with_kwargs=True, prepend=True))
            self.handles.append(entry.register_forward_hook(after, with_kwargs=True, always_call=True))

    def attach(self, module: nn.Module, point: Point, positions: Positions, edit: Edit) -> None:
        key = (id(module), point)
        slot = self.slots.get(key)
        if slot is None:
            slot = self.slots[key] = _Slot()
            slot.handle = self._register(module, point, slot)
            self.handles.append(slot.handle)
        slot.edits.append((positions, edit))

    def _run(self, slot: _Slot, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.dim() != 3:
            raise ShapeError(f"expected activations [batch, seq, d], got shape {tuple(hidden.shape)}")
        for positions, edit in slot.edits:
            chosen = position_mask(positions, self.call.attention_mask, hidden.shape[:2], hidden.device)
            result = edit(hidden, chosen)
            if result is not None:
                if result.shape != hidden.shape:
                    raise ShapeError(
                        f"an edit returned shape {tuple(result.shape)} for activations {tuple(hidden.shape)}"
                    )
                hidden = result
        return hidden

    def _register(self, module: nn.Module, point: Point, slot: _Slot):
        if point == "input":
            def pre_hook(_module, args, kwargs):
                if args:
                    new = self._run(slot, args[0])
                    return (new, *args[1:]), kwargs
                if "hidden_states" not in kwargs:
                    raise ShapeError(f"{type(_module).__name__} was called without a positional tensor or "
                                     "hidden_states, so its input cannot be read at this site")
                new = self._run(slot, kwargs["hidden_states"])
                return args, {**kwargs, "hidden_states": new}

            pre_hook._almostlinear = True  # type: ignore[attr-defined]
            handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=True)
            order_after_ours(module._forward_pre_hooks, handle.id)
            return handle

        def hook(_module, _args, output):
            if isinstance(output, tuple):
                return (self._run(slot, output[0]), *output[1:])
            if isinstance(output, torch.Tensor):
                return self._run(slot, output)
            raise ShapeError(f"cannot hook output of type {type(output).__name__}")

        hook._almostlinear = True  # type: ignore[attr-defined]
        handle = module.register_forward_hook(hook, prepend=True)
        order_after_ours(module._forward_hooks, handle.id)
        return handle

    def remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()
        self.slots.clear()


def _entry_modules(model: nn.Module, structure: Structure) -> list[nn.Module]:
    """The model and the module that owns its blocks (e.g. ``model.model``), if different."""
    owner_path = structure.blocks_path.rsplit(".", 1)[0] if "." in structure.blocks_path else ""
    owner = model.get_submodule(owner_path) if owner_path else model
    return [model] if owner is model else [model, owner]


@contextlib.contextmanager
def intervene(model: nn.Module, edits: dict, *, positions: Positions = "all",
              structure: Structure | None = None) -> Iterator[None]:
    """Run ``edit(hidden, chosen) -> new hidden`` at each site while the context is open.

    ``edits`` maps sites (``Site`` or ``"name.layer"``) to functions receiving the activation
    ``[batch, seq, d]`` and the boolean ``[batch, seq]`` of chosen positions; a function may
    return ``None`` to leave the activation unchanged (for reading).
    """
    structure = structure or locate(model)
    dispatcher = _Dispatcher(model)
    try:
        dispatcher.install_call_hooks(_entry_modules(model, structure))
        for site_key, edit in edits.items():
            (site,) = as_sites(structure, site_key)
            module, point = site.target(structure)
            dispatcher.attach(module, point, positions, edit)
        yield
    finally:
        dispatcher.remove()


def _vector_for(vector: torch.Tensor, like: torch.Tensor, cache: dict) -> torch.Tensor:
    key = (like.dtype, like.device)
    if key not in cache:
        cache[key] = vector.to(dtype=like.dtype, device=like.device)
    return cache[key]


def _check_width(structure: Structure, site: Site, size: int, what: str) -> None:
    width = site.width(structure)
    if size != width:
        raise ShapeError(f"{what} has {size} features but {site} carries {width}")


def _checked_vector(structure: Structure, site: Site, value, what: str, hint: str = "") -> torch.Tensor:
    """``value`` as a detached ``[d]`` tensor of the site's width with finite entries, or a clear error."""
    vector = torch.as_tensor(value).detach()
    if vector.dim() != 1:
        raise ShapeError(f"expected a vector [d]{hint}, got shape {tuple(vector.shape)}")
    _check_width(structure, site, vector.shape[0], what)
    if not torch.isfinite(vector).all():
        raise NonFiniteError(f"{what} contains NaN or infinite values")
    return vector


@contextlib.contextmanager
def add(model: nn.Module, site, vector: torch.Tensor, *, scale: float = 1.0,
        positions: Positions = "all", structure: Structure | None = None) -> Iterator[None]:
    """Add ``scale * vector`` to the activation at ``site`` on the chosen positions."""
    structure = structure or locate(model)
    (site,) = as_sites(structure, site)
    vector = _checked_vector(structure, site, vector, "the vector")
    cache: dict = {}
    scaled = vector * scale

    def edit(hidden, chosen):
        v = _vector_for(scaled, hidden, cache)
        return hidden + chosen[..., None].to(hidden.dtype) * v

    with intervene(model, {site: edit}, positions=positions, structure=structure):
        yield


@contextlib.contextmanager
def project_out(model: nn.Module, site, directions: torch.Tensor, *, positions: Positions = "all",
                structure: Structure | None = None) -> Iterator[None]:
    """Remove the span of ``directions`` (``[d]`` or ``[k, d]``) from the activation at ``site``.

    The directions need not be orthonormal: they are orthonormalised (QR) first, so the edit is
    the orthogonal projection onto their complement, and applying it twice equals applying it once.
    """
    structure = structure or locate(model)
    (site,) = as_sites(structure, site)
    directions = torch.as_tensor(directions).detach().double()
    if directions.dim() == 1:
        directions = directions[None]
    _check_width(structure, site, directions.shape[-1], "the directions")
    if not torch.isfinite(directions).all():
        raise NonFiniteError("the directions contain NaN or infinite values")
    q, r = torch.linalg.qr(directions.T)
    keep = r.diagonal().abs() > 1e-10 * r.diagonal().abs().max().clamp_min(1e-300)
    basis = q[:, keep].T.contiguous()  # [k, d], orthonormal rows
    cache: dict = {}

    def edit(hidden, chosen):
        b = _vector_for(basis, hidden, cache)
        removed = (hidden @ b.T) @ b
        return hidden - chosen[..., None].to(hidden.dtype) * removed

    with intervene(model, {site: edit}, positions=positions, structure=structure):
        yield


@contextlib.contextmanager
def replace(model: nn.Module, site, values: torch.Tensor | Callable[[torch.Tensor], torch.Tensor], *,
            positions: Positions = "all", structure: Structure | None = None) -> Iterator[None]:
    """Replace the activation at ``site`` on the chosen positions.

    ``values`` is a vector ``[d]`` (the same everywhere) or a function mapping the activation
    ``[batch, seq, d]`` to its replacement of the same shape.
    """
    structure = structure or locate(model)
    (site,) = as_sites(structure, site)
    cache: dict = {}
    if not callable(values):
        vector = _checked_vector(structure, site, values, "the replacement", " or a function")

    def edit(hidden, chosen):
        new = values(hidden) if callable(values) else _vector_for(vector, hidden, cache).expand_as(hidden)
        return torch.where(chosen[..., None], new.to(hidden.dtype), hidden)

    with intervene(model, {site: edit}, positions=positions, structure=structure):
        yield


class Recording:
    """Activations read by :func:`record`: per site, the chosen positions of every forward call."""

    def __init__(self, sites: list[Site], structure: Structure) -> None:
        self.sites = sites
        self._structure = structure
        self._values: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
        self._full: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}

    def _store(self, site: Site, hidden: torch.Tensor, chosen: torch.Tensor, keep_full: bool) -> None:
        self._values[site].append(hidden.detach()[chosen])
        if keep_full:
            # A copy: some blocks (Falcon) add into a sublayer's output in place after it is read.
            self._full[site].append(hidden.detach().clone())

    def _key(self, site) -> Site:
        (key,) = as_sites(self._structure, site)
        if key not in self._values:
            raise KeyError(f"{key} was not recorded; recorded sites: {[str(s) for s in self.sites]}")
        return key

    def __getitem__(self, site) -> torch.Tensor:
        parts = self._values[self._key(site)]
        if not parts:
            raise ShapeError(f"nothing was recorded at {site}: did a forward pass run inside the context?")
        return parts[0] if len(parts) == 1 else torch.cat(parts)  # one pass (collect's case): no copy

    def full(self, site) -> list[torch.Tensor]:
        """The whole ``[batch, seq, d]`` activation of each forward call (needs ``keep_full=True``)."""
        return self._full[self._key(site)]


@contextlib.contextmanager
def record(model: nn.Module, sites, *, positions: Positions = "all", keep_full: bool = False,
           stop_after: bool = False, structure: Structure | None = None) -> Iterator[Recording]:
    """Read activations at ``sites`` for every forward pass run inside the context.

    ``recording[site]`` is ``[n_chosen_tokens, d]`` over all calls, in batch-major order.
    With ``stop_after=True`` the forward pass ends (raising :class:`StopForward`, which the caller
    catches) as soon as the deepest site has been read.
    """
    structure = structure or locate(model)
    sites = list(dict.fromkeys(as_sites(structure, sites)))
    recording = Recording(sites, structure)
    deepest = max(sites, key=execution_order)

    def reader(site: Site) -> Edit:
        def edit(hidden, chosen):
            recording._store(site, hidden, chosen, keep_full)
            if stop_after and site == deepest:
                raise StopForward
            return None

        return edit

    with intervene(model, {s: reader(s) for s in sites}, positions=positions, structure=structure):
        yield recording


_ORDER = {"resid_pre": 0, "attn_in": 1, "attn_out": 2, "mlp_in": 3, "mlp_key": 4, "mlp_out": 5, "resid_post": 6}


def execution_order(site: Site) -> tuple[int, int]:
    """Sort key: the order in which a forward pass reaches sites."""
    return site.layer, _ORDER[site.name]
