"""Every merge method, declared once: one :class:`MergeMethod` record per method.

A record says what the method needs (a base model, a fixed number of models), which parameters it
takes with their defaults, what a recipe calls them and which ones a recipe may set per model,
whether it can stream in slices, and the function that merges. In-memory merges
(:func:`~.state_dicts.merge_state_dicts`), the per-tensor dispatcher, recipes and streamed merges
all read the record, so adding a method is one :func:`register_method` call::

    register_method(MergeMethod("median", median_fn, base="ignored"))

A per-tensor ``fn`` is called as ``fn(base, tensors, weights, *, name, **options)`` and returns the
merged tensor (``base`` is ``None`` when the method ignores it or none was given; ``name`` is the
tensor's name, for per-tensor random streams and messages). An ``in_memory_only`` method merges
whole state dicts with statistics of each model (RegMean's Gram matrices, Fisher information) and
is called as ``fn(state_dicts, weights, **options)``; recipes refuse it with a pointer to
``merge_state_dicts``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..core.errors import AlmostLinearError, ChoiceError, check_choice
from . import chunked, methods


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


REQUIRED = _Marker("REQUIRED")  # no default: the caller must give the value
SAME = _Marker("SAME")  # a recipe's default is the library's default
BASE_ROLES = ("required", "optional", "ignored")


@dataclass(frozen=True)
class ParamDef:
    """One parameter of a merge method.

    ``default`` is the library's (in-memory) default; ``recipe_default`` is mergekit's where a recipe
    means something else (TIES's density is 0.2 in the paper but 1.0 in mergekit), so that a recipe
    means here what it means there. ``recipe_key`` is the recipe's name when it differs from the
    option's (``lambda`` is a Python keyword, so the option is ``lam``); ``from_recipe`` turns a
    recipe value into the option's terms. ``ignored`` marks a key recipes accept for mergekit's sake
    (``int8_mask``, a memory option there) that changes nothing here.
    """

    default: Any = REQUIRED
    recipe_key: str | None = None
    per_model: bool = False
    recipe_default: Any = SAME
    from_recipe: Callable[[Any], Any] | None = None
    ignored: bool = False
    doc: str = ""


@dataclass(frozen=True)
class MergeMethod:
    """One merge method: its function, what it needs and its parameters (see the module docstring).

    ``base`` is ``"required"`` (task vectors are differences from it), ``"optional"`` (merged as an
    input when given, as SLERP's t = 0 end) or ``"ignored"``; recipes name a ``base_model`` for every
    method that uses one. ``inputs`` is the exact number of models merged, the base included, when
    the method fixes it. A parameter named ``weight`` is the per-model weight list (``weights=`` in
    memory). ``chunked`` is a kernel of :mod:`.chunked` that streams the method in slices.
    """

    name: str
    fn: Callable[..., Any]
    params: Mapping[str, ParamDef] = field(default_factory=dict)
    base: str = "required"
    inputs: int | None = None
    chunked: Callable[..., None] | None = None
    in_memory_only: bool = False
    elementwise: bool = False  # each output entry needs only the same entry of the inputs
    doc: str = ""

    def __post_init__(self) -> None:
        check_choice(self.base, BASE_ROLES, "base role")
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        keys = [p.recipe_key or option for option, p in self.params.items()]
        if len(set(keys)) != len(keys):
            raise AlmostLinearError(f"merge method {self.name!r} gives two parameters one recipe key")
        if "weight" in self.params and not self.params["weight"].per_model:
            raise AlmostLinearError(f"merge method {self.name!r}: 'weight' is a per-model parameter")
        if self.elementwise and self.chunked is None:
            raise AlmostLinearError(f"merge method {self.name!r}: an entry-by-entry method needs a slice kernel")
        if self.in_memory_only and self.chunked is not None:
            raise AlmostLinearError(f"merge method {self.name!r} cannot be in memory only and streamed in slices")

    @property
    def needs_base(self) -> bool:
        return self.base == "required"

    @property
    def uses_base(self) -> bool:
        return self.base != "ignored"

    @property
    def chunkable(self) -> bool:
        return self.chunked is not None

    def options(self) -> dict[str, Any]:
        """The in-memory options and their defaults (the weights and recipe-only keys apart)."""
        return {k: p.default for k, p in self.params.items() if k != "weight" and not p.ignored}

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The defaults updated with ``given``; unknown or missing options raise, naming them."""
        defaults = self.options()
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise ChoiceError(
                f"option(s) {', '.join(map(repr, unknown))} do not apply to {self.name!r}; it accepts "
                f"{', '.join(defaults) or 'none'}")
        resolved = {**defaults, **given}
        missing = [k for k, v in resolved.items() if v is REQUIRED]
        if missing:
            raise AlmostLinearError(f"{self.name} needs option(s) {', '.join(map(repr, missing))}"
                                    + "".join(f" ({self.params[k].doc})" for k in missing if self.params[k].doc))
        return resolved

    def recipe_keys(self) -> dict[str, str]:
        """Recipe key -> option name, for every parameter a recipe may set."""
        return {p.recipe_key or option: option for option, p in self.params.items()}

    def recipe_default(self, key: str) -> Any:
        """What a recipe that does not set ``key`` means (:data:`REQUIRED` when it must set it)."""
        option = self.recipe_keys().get(key)
        if option is None:
            return REQUIRED
        p = self.params[option]
        return p.default if p.recipe_default is SAME else p.recipe_default


METHODS: dict[str, MergeMethod] = {}


def register_method(method: MergeMethod) -> MergeMethod:
    """Make ``method`` known to in-memory merges, the dispatcher and recipes."""
    if method.name in METHODS:
        raise AlmostLinearError(f"merge method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


def lookup(name: Any, what: str = "merge method") -> MergeMethod:
    """The record of merge method ``name``; a :class:`ChoiceError` listing the methods otherwise."""
    return METHODS[check_choice(name, METHODS, what)]


# --- the methods -----------------------------------------------------------------------------


def _rescale(value: Any) -> str:
    # mergekit's ``rescale: true`` restores the L1 norm; the library also names its rules
    return value if isinstance(value, str) else ("l1" if value else "none")


WEIGHT = ParamDef(1.0, per_model=True, from_recipe=float, doc="one weight per model")
INT8_MASK = ParamDef(None, ignored=True, doc="mergekit's memory option; no effect here")
LAM = ParamDef(1.0, recipe_key="lambda", from_recipe=float, doc="scale of the merged task vector")
ELECTION = ParamDef("paper", doc="TIES sign rule: 'paper' (arXiv 2306.01708) or 'weighted' (mergekit)")


def _density(default: float) -> ParamDef:
    return ParamDef(default, per_model=True, recipe_default=1.0, from_recipe=float,
                    doc="fraction of each task vector kept")


def _dare_params() -> dict[str, ParamDef]:
    return {"weight": WEIGHT, "density": _density(0.5), "lam": LAM, "normalize": ParamDef(False),
            "rescale": ParamDef("inverse", recipe_default=True, from_recipe=_rescale,
                                doc="'inverse' (1/density), 'l1' (mergekit) or 'none'"),
            "seed": ParamDef(0, from_recipe=int, doc="seed of the random drops"), "int8_mask": INT8_MASK}


def _linear(base, tensors, weights, *, name, normalize):
    return methods.linear(tensors, weights, normalize=normalize)


def _slerp(base, tensors, weights, *, name, t):
    pair = list(tensors) if base is None else [base, *tensors]
    if len(pair) != 2:
        raise AlmostLinearError(f"slerp merges exactly two models (base included), got {len(pair)}")
    return methods.slerp(pair[0], pair[1], float(t))


def _task_arithmetic(base, tensors, weights, *, name, lam, normalize):
    return methods.task_arithmetic(base, tensors, weights, lam=lam, normalize=normalize)


def _ties(base, tensors, weights, *, name, density, lam, normalize, election):
    return methods.ties(base, tensors, weights, density=density, lam=lam, normalize=normalize, election=election)


def _dare_linear(base, tensors, weights, *, name, density, lam, normalize, rescale, seed):
    return methods.dare_linear(base, tensors, weights, density=density, lam=lam, normalize=normalize,
                               rescale=rescale, seed=seed, name=name)


def _dare_ties(base, tensors, weights, *, name, density, lam, normalize, rescale, seed, election):
    return methods.dare_ties(base, tensors, weights, density=density, lam=lam, normalize=normalize,
                             rescale=rescale, seed=seed, name=name, election=election)


# RegMean and Fisher import the in-memory merges, which read this registry: imported on use.
def _regmean(state_dicts, weights, *, grams, alpha, ridge):
    from .regmean import regmean_merge

    return regmean_merge(state_dicts, grams, alpha=alpha, ridge=ridge)


def _fisher(state_dicts, weights, *, fishers, eps):
    from .fisher import fisher_merge

    return fisher_merge(state_dicts, fishers, weights=weights, eps=eps)


for _method in (
    MergeMethod("linear", _linear, {"weight": WEIGHT, "normalize": ParamDef(True), "int8_mask": INT8_MASK},
                base="ignored", chunked=chunked.linear_chunks, elementwise=True, doc="weighted average (model soup)"),
    MergeMethod("slerp", _slerp, {"t": ParamDef(0.5, recipe_default=REQUIRED, from_recipe=float,
                                                doc="0 gives the base model, 1 the other")},
                base="optional", inputs=2, doc="spherical interpolation of two whole tensors"),
    MergeMethod("task_arithmetic", _task_arithmetic,
                {"weight": WEIGHT, "lam": LAM, "normalize": ParamDef(False), "int8_mask": INT8_MASK},
                chunked=chunked.task_arithmetic_chunks, elementwise=True, doc="base + λ Σ wᵢ τᵢ (arXiv 2212.04089)"),
    MergeMethod("ties", _ties, {"weight": WEIGHT, "density": _density(0.2), "lam": LAM, "normalize": ParamDef(True),
                                "election": ELECTION, "int8_mask": INT8_MASK},
                chunked=chunked.ties_chunks, doc="trim, elect sign, disjoint mean (arXiv 2306.01708)"),
    MergeMethod("dare_linear", _dare_linear, _dare_params(), doc="drop and rescale, then task arithmetic"),
    MergeMethod("dare_ties", _dare_ties, {**_dare_params(), "election": ELECTION},
                doc="drop and rescale, then TIES's sign election"),
    MergeMethod("regmean", _regmean, {"grams": ParamDef(doc="one dict of Gram matrices per model, from collect_grams"),
                                      "alpha": ParamDef(0.9), "ridge": ParamDef(1e-8)},
                base="ignored", in_memory_only=True, doc="least squares on each layer's inputs (arXiv 2212.09849)"),
    MergeMethod("fisher", _fisher, {"weight": WEIGHT, "fishers": ParamDef(
                    doc="one dict of diagonal Fishers per model, from diagonal_fisher"), "eps": ParamDef(1e-10)},
                base="ignored", in_memory_only=True, doc="Fisher-weighted average (arXiv 2111.09832)"),
):
    register_method(_method)
del _method
