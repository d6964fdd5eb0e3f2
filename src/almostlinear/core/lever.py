"""The lever contract: one shape for every fitted object that acts on a model.

Every model-facing artifact (steering vectors, ablations, erasers, edits, task vectors, LoRA
adapters, permutations, SAE splices) follows :class:`Lever`:

* ``with lever.apply(model, strength=1.0, ...) as module:`` changes the model while the context is
  open and restores weights and hooks bit for bit on exit, also when the body raises;
* ``record = lever.bake_(model, strength=1.0)`` makes the change permanent and returns a
  :class:`Baked` record whose ``undo_()`` restores the replaced weights bit for bit. A record can be
  saved and undone in another process when the weights' hashes still match. A lever with no exact
  permanent form (``bakes = False``) raises :class:`~.errors.LeverError` from ``bake_`` and changes
  nothing;
* ``model`` is an ``nn.Module`` or a :class:`~.models.LoadedModel` (:func:`as_model`);
* ``strength`` is the one keyword for "how much", in a unit from :data:`UNITS` that the artifact
  stores in ``provenance.units``;
* a model other than the one the artifact was fitted on warns, or raises with ``strict=True``
  (:func:`check_fingerprint`).

Weight levers share :func:`temporarily_changed` and :func:`bake_weights`, which save exactly the
parameters a change touches and put them back. While any lever is applied or baked, the model
carries the fingerprint it had before (:func:`base_fingerprint`), so caches keyed by the model
(key statistics, neutral texts) are found again instead of being recomputed for every edited state.

Operations on codes rather than on models (latent directions, linear maps between models) are not
levers and use their own verbs (``shift``, ``transform``).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, ContextManager, Protocol, runtime_checkable

import torch
from torch import nn

from .artifact import FORMAT_VERSION, Artifact, read_header, write_file
from .digest import tensor_digest
from .errors import ArtifactError, LeverError, NonFiniteError, ShapeError, check_choice
from .offload import is_offloaded, offloaded_modules, readable
from .units import UNITS

def check_strength(strength: Any, units: str = "raw") -> float:
    """``strength`` as a finite float, valid for ``units``; a library error otherwise."""
    check_choice(units, UNITS, "strength unit")
    if isinstance(strength, bool) or not isinstance(strength, (numbers.Real, torch.Tensor)):
        raise ShapeError(f"strength must be a number, got {strength!r}")
    if isinstance(strength, torch.Tensor) and strength.numel() != 1:
        raise ShapeError(f"strength must be one number, got a tensor of shape {tuple(strength.shape)}")
    value = float(strength)
    if not math.isfinite(value):
        raise NonFiniteError(f"strength must be finite, got {value}")
    if units == "none" and value != 1.0:
        raise LeverError(f"this lever has no strength (units 'none'); it accepts only strength=1, got {value}")
    return value


@runtime_checkable
class Lever(Protocol):
    """What every model-facing artifact offers (see the module docstring)."""

    kind: ClassVar[str]
    strength_units: ClassVar[tuple[str, ...]]  # the units ``strength`` may be given in; the first is the default
    bakes: ClassVar[bool]  # whether ``bake_`` exists (else it raises LeverError and changes nothing)

    def apply(self, model: Any, strength: float = 1.0, **options: Any) -> ContextManager[nn.Module]: ...

    def bake_(self, model: Any, strength: float = 1.0, **options: Any) -> Baked: ...


# --- the model a lever acts on -----------------------------------------------------------------


class ModelView:
    """A model as a lever sees it: the module, its tokenizer when known, its structure and fingerprint.

    Built by :func:`as_model`; structure and fingerprint are computed on first use, so levers on
    models that are not transformers (a digits MLP) never ask for them.
    """

    def __init__(self, module: nn.Module, tokenizer: Any = None, *, loaded: Any = None, structure: Any = None):
        self.module, self.tokenizer, self.loaded, self._structure = module, tokenizer, loaded, structure

    @property
    def structure(self):
        if self._structure is None:
            if self.loaded is not None:
                self._structure = self.loaded.structure
            else:
                from .locate import locate

                self._structure = locate(self.module)
        return self._structure

    @property
    def fingerprint(self) -> str:
        """The model's fingerprint before any lever was applied or baked."""
        marked = getattr(self.module, BASE_ATTR, None)
        if marked:
            return marked[0]
        if self.loaded is not None:
            return self.loaded.fingerprint
        from .models import fingerprint

        return fingerprint(self.module)


def as_model(model: Any, *, structure: Any = None) -> ModelView:
    """Accept an ``nn.Module``, a :class:`~.models.LoadedModel` or a :class:`ModelView` alike."""
    if isinstance(model, ModelView):
        if structure is not None and model._structure is None:
            model._structure = structure
        return model
    from .models import LoadedModel

    if isinstance(model, LoadedModel):
        return ModelView(model.model, model.tokenizer, loaded=model, structure=structure)
    if isinstance(model, nn.Module):
        return ModelView(model, structure=structure)
    raise LeverError(f"expected a torch model (nn.Module) or a LoadedModel, got {type(model).__name__}")


def check_fingerprint(artifact: Artifact, model: Any, *, strict: bool = False) -> None:
    """Warn (or raise, when ``strict``) when ``model`` is not the one ``artifact`` was fitted on."""
    if artifact.provenance.model_fingerprint is None:
        return
    artifact.check_model(as_model(model).fingerprint, strict=strict)


# --- the model's identity while levers are in place --------------------------------------------

BASE_ATTR = "_almostlinear_base"  # [fingerprint before the first lever, number of levers in place]


def base_fingerprint(model: Any) -> str:
    """The fingerprint of ``model`` before any lever now in place was applied or baked."""
    return as_model(model).fingerprint


def mark_base(model: Any) -> None:
    """Note that one more lever is in place; the first one records the fingerprint (a loaded model's
    cached one, so applying a lever to it does not hash its weights again)."""
    view = as_model(model)
    marked = getattr(view.module, BASE_ATTR, None)
    if marked:
        marked[1] += 1
        return
    object.__setattr__(view.module, BASE_ATTR, [view.fingerprint, 1])


def release_base(module: nn.Module) -> None:
    """Note that a lever was removed; with none left the model is its own base again."""
    marked = getattr(module, BASE_ATTR, None)
    if not marked:
        return
    marked[1] -= 1
    if marked[1] <= 0:
        object.__delattr__(module, BASE_ATTR)


# --- weights: save exactly what a change touches, put it back exactly ----------------------------


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    try:
        return (module.get_submodule(path) if path else module), leaf
    except AttributeError as error:
        raise LeverError(f"the model has no module {path!r} (for parameter {name!r})") from error


def parameter_name(module: nn.Module, parameter: torch.Tensor) -> str:
    """The qualified name of ``parameter`` in ``module`` (the first, for tied weights)."""
    for name, candidate in module.named_parameters(remove_duplicate=False):
        if candidate is parameter:
            return name
    raise LeverError("the parameter to change is not part of this model")


def get_parameter(module: nn.Module, name: str) -> torch.Tensor | None:
    """The parameter ``name``, or ``None`` when its module has no such parameter (a missing bias)."""
    owner, leaf = _owner(module, name)
    if leaf in owner._buffers:
        # Snapshots restore parameters only; a buffer changed by a lever would silently stay changed.
        raise LeverError(f"{name!r} is a buffer, not a parameter; levers change parameters only")
    return owner._parameters.get(leaf)


def parameter_value(model: Any, parameter: str | torch.Tensor) -> torch.Tensor:
    """The values of a parameter (by name, or the tensor itself), read from accelerate's store when offloaded.

    An offloaded parameter is a meta tensor without values; reading it directly fails in torch.
    """
    module = as_model(model).module
    if isinstance(parameter, str):
        name, value = parameter, get_parameter(module, parameter)
        if value is None:
            raise LeverError(f"the model has no parameter {name!r}")
    else:
        name, value = (parameter_name(module, parameter) if is_offloaded(parameter) else ""), parameter
    return readable(module, name, value)


class WeightSnapshot:
    """Exact copies of some parameters (``None`` for one that did not exist), restorable in place."""

    def __init__(self, module: nn.Module, names: Iterable[str]):
        self.module = module
        self.saved: dict[str, torch.Tensor | None] = {}
        for name in dict.fromkeys(names):
            value = get_parameter(module, name)
            self.saved[name] = None if value is None else value.detach().clone()

    def restore(self) -> None:
        with torch.no_grad():
            for name, original in self.saved.items():
                restore_parameter(self.module, name, original)


def restore_parameter(module: nn.Module, name: str, original: torch.Tensor | None) -> None:
    """Put ``original`` back as parameter ``name`` (removing it when ``original`` is ``None``)."""
    owner, leaf = _owner(module, name)
    current = owner._parameters.get(leaf)
    if original is None:
        if leaf in owner._parameters:
            if leaf in getattr(owner, _NONE_PARAMS, ()):
                owner._parameters[leaf] = None  # registered as None (bias=False) before the bake
            else:
                del owner._parameters[leaf]
        return
    if current is None or current.shape != original.shape or current.dtype != original.dtype:
        raise LeverError(f"parameter {name!r} no longer has the shape and dtype it had; it cannot be restored")
    current.data.copy_(original.to(current.device))


_NONE_PARAMS = "_almostlinear_none_params"


def set_parameter(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Create or overwrite parameter ``name`` with ``value`` (used to add a bias where there is none)."""
    owner, leaf = _owner(module, name)
    if leaf in owner._parameters and owner._parameters[leaf] is None:
        object.__setattr__(owner, _NONE_PARAMS, set(getattr(owner, _NONE_PARAMS, ())) | {leaf})
    current = owner._parameters.get(leaf)
    if current is None:
        owner._parameters[leaf] = nn.Parameter(value.detach().clone(), requires_grad=False)
    else:
        with torch.no_grad():
            current.copy_(value.to(device=current.device, dtype=current.dtype))


def check_resident(model: Any, names: Iterable[str]) -> None:
    """Refuse, before anything changes, to write weights that accelerate has offloaded.

    Writing an offloaded parameter would change only its meta placeholder while accelerate keeps
    loading the stored values, a silent partial write; hook levers act on such models unchanged.
    """
    module, names = as_model(model).module, list(names)
    for name in names:
        _owner(module, name)  # a name of no module is a library error, before any offload question
    held = offloaded_modules(module, names)
    if held:
        shown = ", ".join(held[:6]) + (f" and {len(held) - 6} more" if len(held) > 6 else "")
        raise LeverError(f"these weights are offloaded by accelerate: {shown}; a weight lever cannot change them. "
                         "Load the model without offload (device_map=None, or a map that keeps these modules on a "
                         "device) for weight levers, or use a hook lever (apply) instead")


def _changed(view: ModelView, names: Iterable[str], change: Callable[[], None]) -> WeightSnapshot:
    """Snapshot ``names``, mark the base, run ``change``; on failure put everything back and re-raise."""
    module = view.module
    names = list(names)
    check_resident(module, names)
    snapshot = WeightSnapshot(module, names)
    mark_base(view)
    try:
        with torch.no_grad():
            change()
    except BaseException:
        snapshot.restore()
        release_base(module)
        raise
    return snapshot


@contextlib.contextmanager
def temporarily_changed(model: Any, names: Iterable[str], change: Callable[[], None]) -> Iterator[nn.Module]:
    """Run ``change()`` (which may write only the parameters ``names``) while the context is open.

    The named parameters are copied first and copied back on exit, also when ``change`` or the
    body raises, so the model is restored bit for bit. Yields the module.

    Contexts may close in any order. One that closes while a later one still changes the same
    parameters leaves them as they are and hands its copy to that later context, which restores it
    on its own exit (with a :class:`LeverOrderWarning`): once all are closed the model is exactly as
    before, never left with a change half undone.
    """
    view = as_model(model)
    module = view.module
    snapshot = _changed(view, names, change)
    open_contexts = getattr(module, _OPEN_ATTR, None)
    if open_contexts is None:
        open_contexts = []
        object.__setattr__(module, _OPEN_ATTR, open_contexts)
    open_contexts.append(snapshot)
    try:
        yield module
    finally:
        _close(module, open_contexts, snapshot)
        release_base(module)


_OPEN_ATTR = "_almostlinear_open_changes"  # weight contexts now open on a module, in the order entered


class LeverOrderWarning(UserWarning):
    """A weight lever's context closed before one entered after it on the same parameters."""


def _close(module: nn.Module, open_contexts: list[WeightSnapshot], snapshot: WeightSnapshot) -> None:
    later = open_contexts[open_contexts.index(snapshot) + 1:]
    open_contexts.remove(snapshot)
    if not open_contexts:
        object.__delattr__(module, _OPEN_ATTR)
    handed = []
    with torch.no_grad():
        for name, original in snapshot.saved.items():
            heir = next((s for s in later if name in s.saved), None)
            if heir is None:
                restore_parameter(module, name, original)
            else:  # the later context restores to the state before this one
                heir.saved[name] = original
                handed.append(name)
    if handed:
        warnings.warn(f"a weight lever's context closed before one entered after it; its change to {handed[:3]} stays "
                      "until that later context closes, which then restores the weights exactly",
                      LeverOrderWarning, stacklevel=4)


def bake_weights(model: Any, names: Iterable[str], change: Callable[[], None], *, kind: str,
                 on_undo: Callable[[], None] | None = None) -> Baked:
    """Run ``change()`` permanently and return the :class:`Baked` record that undoes it exactly.

    When ``change`` raises, the named parameters are put back first, so a failed bake changes nothing.
    """
    view = as_model(model)
    module = view.module
    snapshot = _changed(view, names, change)
    hashes = {name: _hash_of(module, name) for name in snapshot.saved}
    return Baked(kind, snapshot.saved, hashes, module=module, on_undo=on_undo)


def _hash_of(module: nn.Module, name: str) -> str | None:
    value = get_parameter(module, name)
    return None if value is None else tensor_digest(readable(module, name, value))


# --- the record of a bake ----------------------------------------------------------------------

BAKED_KIND = "core.baked"


@dataclass(eq=False)
class Baked:
    """What one ``bake_`` replaced, so that :meth:`undo_` puts it back bit for bit.

    ``originals`` maps parameter names to their values before the bake (``None``: the parameter did
    not exist); ``baked_hashes`` are the digests of the same parameters right after it, checked
    before undoing so that an undo never overwrites a change made later (undo later bakes first).
    """

    lever: str
    originals: dict[str, torch.Tensor | None]
    baked_hashes: dict[str, str | None]
    module: nn.Module | None = None
    on_undo: Callable[[], None] | None = None  # structural repairs (re-tying heads); not saved
    undone: bool = field(default=False, init=False)

    @property
    def names(self) -> list[str]:
        return list(self.originals)

    def undo_(self, model: Any = None) -> nn.Module:
        """Restore the baked parameters of ``model`` (default: the model baked), bit for bit."""
        if self.undone:
            raise LeverError(f"this {self.lever} bake was already undone")
        module = as_model(model).module if model is not None else self.module
        if module is None:
            raise LeverError("this record was loaded from a file: pass the model to undo_(model)")
        changed = [name for name, expected in self.baked_hashes.items() if _hash_of(module, name) != expected]
        if changed:
            raise LeverError(
                f"parameters {changed} are not as this {self.lever} bake left them (another change came later, or "
                "this is another model): undo later bakes first"
            )
        with torch.no_grad():
            for name, original in self.originals.items():
                restore_parameter(module, name, original)
        if self.on_undo is not None:
            self.on_undo()
        release_base(module)
        self.undone = True
        return module

    def save(self, path: str | os.PathLike) -> Path:
        """Write the record (the replaced weights and the hashes that guard the undo) to one file."""
        if self.on_undo is not None:
            raise LeverError(f"this {self.lever} bake also changed the model's structure (e.g. untied its head), "
                             "which a file cannot restore; undo it in this process")
        tensors = {name: value for name, value in self.originals.items() if value is not None}
        header = {"kind": BAKED_KIND, "format_version": FORMAT_VERSION, "lever": self.lever,
                  "created": [name for name, value in self.originals.items() if value is None],
                  "baked_hashes": self.baked_hashes}
        return write_file(path, tensors, header, what="baked record")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Baked:
        header = read_header(path)
        if header.get("kind") != BAKED_KIND:
            raise ArtifactError(f"{path} holds a {header.get('kind')!r}, not a baked record")
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            originals: dict[str, torch.Tensor | None] = {name: handle.get_tensor(name) for name in handle.keys()}
        for name in header.get("created", []):
            originals[name] = None
        return cls(header["lever"], originals, dict(header["baked_hashes"]))
