"""The steering family's levers: a steering vector, a directional ablation and an activation addition.

All follow :mod:`almostlinear.core.lever`: ``apply`` adds or ablates through hooks while a context
is open; for the first two ``bake_`` writes the same change into the weights and returns a record
whose ``undo_()`` is exact (a position-dependent addition has no permanent form).

A steering vector's strength is in natural units: by default a strength of 1 adds a vector as
long as the median residual norm at the vector's site (measured on the fitting texts, first token
excluded because it is an attention sink with an outlying norm), so one number means the same at
every layer and in every model. ``units="diff"`` counts in multiples of the fitted mean difference
(CAA's multiplier, arXiv 2312.06681) and ``units="raw"`` adds ``strength * direction`` as stored.
An ablation's strength is the fraction of the component removed. An activation addition (ActAdd,
arXiv 2308.10248) adds a per-position difference of two prompts at the front of each prompt; its
strength is the paper's coefficient.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.artifact import Artifact, Provenance, Where
from ..core.errors import ArtifactError, LeverError, NonFiniteError, ShapeError, check_choice
from ..core.hooks import Positions, add
from ..core.lever import UNITS as UNIT_NAMES
from ..core.lever import Baked, as_model, check_fingerprint, check_strength
from ..core.locate import Structure
from ..core.sites import Site, as_sites
from . import positions as policies
from .ablation import ABLATED_SITES, KIND as ABLATION_KIND, ablate, bake_ablation_, orthonormal_basis
from .bake import bake_bias_
from .choices import UNITS

_FUNCTION = "_position_function"  # a position function given in memory; files hold only its name


class _AtOneSite:
    """Where a lever acts, read from its provenance: one site at one layer."""

    @property
    def site(self) -> str:
        return self.provenance.where.site

    @property
    def layer(self) -> int:
        return self.provenance.where.layer

    def target(self) -> Site:
        return Site(self.site, self.layer)


@dataclass(frozen=True)
class SteeringVector(_AtOneSite, Artifact):
    """A direction added at one site and layer, with the norm statistics that give it units.

    ``direction`` is a unit vector ``[d]`` (float32). ``norms`` holds ``residual_median`` and
    ``residual_rms`` (token norms at the site on the fitting texts), ``diff_norm`` (the norm of the
    mean pair difference, i.e. of the CAA vector), ``projection_std`` (spread of the activations along
    the direction) and ``n_pairs``. Where it acts (site, layer and default position policy) is
    ``provenance.where``; :attr:`site`, :attr:`layer` and :attr:`positions` read it.
    """

    kind = "steering.vector"
    strength_units = UNITS  # residual, diff, raw
    bakes = True
    direction: torch.Tensor
    norms: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        d = torch.as_tensor(self.direction)
        if d.dim() != 1 or d.numel() == 0:
            raise ShapeError(f"a steering direction is a vector [d], got shape {tuple(d.shape)}")
        if not torch.isfinite(d).all():
            raise NonFiniteError("the steering direction contains NaN or infinite values")
        where = self.provenance.where
        if where is None or where.site is None or where.layer is None:
            raise ArtifactError("a steering vector needs provenance.where with a site and one layer "
                                "(build it with SteeringVector.from_direction)")

    @classmethod
    def _join(cls, tensors: dict, fields: dict, provenance: Provenance) -> SteeringVector:
        # Files of format 1 also held the method and the operation as fields (see ``_current``).
        fields = {k: v for k, v in fields.items() if k not in ("method", "operation")}
        return cls(**tensors, **fields, provenance=_current(provenance))

    @classmethod
    def from_direction(cls, direction: torch.Tensor, *, site: str = "resid_post", layer: int, method: str,
                       norms: dict | None = None, positions="all", model_fingerprint: str | None = None,
                       data_hash: str | None = None, extra: dict | None = None) -> SteeringVector:
        """Wrap a direction (any norm; stored as a unit vector) with its provenance.

        ``positions`` is the default policy of :meth:`apply`; a function is kept in memory, and a
        saved file records its name only (pass it again when applying the loaded vector).
        """
        d = torch.as_tensor(direction).detach().double().reshape(-1)
        norm = float(d.norm())
        if not math.isfinite(norm):
            raise NonFiniteError("the steering direction contains NaN or infinite values")
        if norm == 0.0:
            raise ShapeError("the steering direction is zero: the contrast pairs define no direction")
        stats = dict(norms or {})
        stats.setdefault("diff_norm", norm)
        provenance = Provenance(model_fingerprint=model_fingerprint,
                                where=Where.at(site, int(layer), policies.describe(positions)), method=method,
                                data_hash=data_hash, units=cls.strength_units[0], extra=dict(extra or {}))
        vector = cls((d / norm).float(), stats, provenance=provenance)
        if callable(positions) and not isinstance(positions, str):
            object.__setattr__(vector, _FUNCTION, positions)
        return vector

    # ---- where ----------------------------------------------------------------------------------

    @property
    def positions(self):
        """The default position policy (see :mod:`.positions`)."""
        function = getattr(self, _FUNCTION, None)
        return function if function is not None else policies.from_header(self.provenance.where.positions)

    # ---- strength -------------------------------------------------------------------------------

    @property
    def d(self) -> int:
        return int(self.direction.shape[0])

    def _units(self, units: str | None) -> str:
        return check_choice(self.provenance.units if units is None else units, self.strength_units, "strength unit")

    def unit_length(self, units: str | None = None) -> float:
        """How long a strength of 1 is, in activation units."""
        units = self._units(units)
        if units == "raw":
            return 1.0
        key = {"residual": "residual_median", "diff": "diff_norm"}[units]
        if key not in self.norms:
            raise LeverError(f"this vector has no {key} statistic; use units='raw'")
        return float(self.norms[key])

    def added(self, strength: float = 1.0, units: str | None = None) -> torch.Tensor:
        """The vector ``[d]`` that :meth:`apply` adds at ``strength`` (in ``units``, default the vector's)."""
        units = self._units(units)
        return self.direction * (check_strength(strength, units) * self.unit_length(units))

    def cosine(self, other: SteeringVector) -> float:
        if other.d != self.d:
            raise ShapeError(f"cannot compare vectors of widths {self.d} and {other.d}")
        return float(self.direction.double() @ other.direction.double())

    # ---- the lever ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def apply(self, model, strength: float = 1.0, *, units: str | None = None, positions=None,
              prompt_lengths: Sequence[int] | torch.Tensor | None = None, structure: Structure | None = None,
              strict: bool = False) -> Iterator[nn.Module]:
        """Add ``strength`` (in ``units``) times the direction at the vector's site while open.

        ``model`` is an ``nn.Module`` or a ``LoadedModel``; yields the module. On exit the model is
        exactly as before, also when the body raises (only hooks are installed; no weight is
        touched). A model other than the one the vector was fitted on warns, or raises when
        ``strict``. ``positions`` overrides the vector's default policy.
        """
        view = as_model(model, structure=structure)
        value = self.added(strength, units)
        (site,) = as_sites(view.structure, self.target())  # LayerError when the layer is out of range
        check_fingerprint(self, view, strict=strict)
        policy = policies.resolve(self.positions if positions is None else positions, prompt_lengths)
        with add(view.module, site, value, positions=policy, structure=view.structure):
            yield view.module

    def bake_(self, model, strength: float = 1.0, *, units: str | None = None, structure: Structure | None = None,
              strict: bool = False) -> Baked:
        """Make the addition permanent as a bias of the module writing the site (see :mod:`.bake`).

        Only the ``"all"`` position policy can be baked (a bias acts at every position). The
        record's ``undo_()`` restores the bias, or removes it when the bake created it.
        """
        if self.positions != "all":
            raise LeverError(f"only position policy 'all' can be baked, this vector uses {self.positions!r}; "
                             "steer with apply() instead")
        value = self.added(strength, units)
        view = as_model(model, structure=structure)
        check_fingerprint(self, view, strict=strict)
        return bake_bias_(view, self.site, self.layer, value, kind=self.kind)

    def footprint(self) -> dict:
        """What the vector writes: its direction at its site (for interference reports)."""
        return {"where": self.provenance.where, "basis": self.direction[None], "role": "writes"}

    def side_effects(self, model, texts: Sequence[str], strength: float = 1.0, *, tokenizer=None, positions=None,
                     units: str | None = None, max_length: int = 128, batch_size: int = 8):
        """KL(base || steered) and cross-entropy change on ``texts`` at ``strength`` (see :mod:`.cost`)."""
        from .cost import side_effects

        view = as_model(model)
        return side_effects(view.module, tokenizer or view.tokenizer, texts,
                            lambda: self.apply(view, strength, positions=positions, units=units),
                            max_length=max_length, batch_size=batch_size, skip_first=True)


def _current(provenance: Provenance) -> Provenance:
    """A loaded vector's provenance in today's shape. Files of format 1 described the unit in prose,
    kept the position policy in ``extra`` rather than in ``where``, and copied the operation there."""
    extra = dict(provenance.extra)
    where = provenance.where
    if "positions" in extra:
        where = dataclasses.replace(where, positions=policies.describe(policies.from_header(extra.pop("positions"))))
    extra.pop("operation", None)
    units = provenance.units if provenance.units in UNIT_NAMES else SteeringVector.strength_units[0]
    return dataclasses.replace(provenance, where=where, units=units, extra=extra)


@contextlib.contextmanager
def applied(model, vectors: Sequence[SteeringVector], strengths: Sequence[float], *, units: str | None = None,
            positions=None, prompt_lengths=None, strict: bool = False) -> Iterator[nn.Module]:
    """Several vectors at once (each at its own site), entered in order and all removed on exit."""
    if len(vectors) != len(strengths):
        raise ShapeError(f"{len(vectors)} vectors but {len(strengths)} strengths")
    view = as_model(model)
    with contextlib.ExitStack() as stack:
        for vector, strength in zip(vectors, strengths):
            stack.enter_context(vector.apply(view, strength, positions=positions, units=units,
                                             prompt_lengths=prompt_lengths, strict=strict))
        yield view.module


@dataclass(frozen=True)
class DirectionalAblation(Artifact):
    """A direction (or span, ``[k, d]``) to ablate from the residual stream at ``layers`` (empty = all).

    The hooks act at :data:`~.ablation.ABLATED_SITES` of those layers; ``provenance.where`` records
    where the direction was read, when known. ``strength`` is the fraction of the component removed.
    """

    kind = ABLATION_KIND
    strength_units = ("fraction",)
    bakes = True
    directions: torch.Tensor
    layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        if self.directions.dim() != 2:
            raise ShapeError("directions must be [k, d]")

    @classmethod
    def _join(cls, tensors: dict, fields: dict, provenance: Provenance) -> DirectionalAblation:
        # Files of format 1 described the unit in prose and copied the operation into ``extra``.
        extra = {k: v for k, v in provenance.extra.items() if k != "operation"}
        return cls(**tensors, **fields, provenance=dataclasses.replace(provenance, units="fraction", extra=extra))

    @classmethod
    def from_direction(cls, direction: torch.Tensor, *, layers: Sequence[int] | None = None,
                       model_fingerprint: str | None = None, method: str | None = None,
                       data_hash: str | None = None, site: str | None = None) -> DirectionalAblation:
        """Store the orthonormalised span of ``direction``; ``site``/``method`` record where it came from."""
        basis = orthonormal_basis(direction).float()
        provenance = Provenance(model_fingerprint=model_fingerprint, where=Where.at(site), method=method,
                                data_hash=data_hash, units="fraction",
                                extra={"ablated_sites": list(ABLATED_SITES)})
        return cls(basis, tuple(layers or ()), provenance=provenance)

    def footprint(self) -> list[dict]:
        """The span it removes from the residual stream: read there and written back (for interference)."""
        where = Where("resid_pre", tuple(self.layers))
        return [{"where": where, "basis": self.directions, "role": role} for role in ("reads", "writes")]

    @contextlib.contextmanager
    def apply(self, model, strength: float = 1.0, *, positions: Positions = "all",
              structure: Structure | None = None, strict: bool = False) -> Iterator[nn.Module]:
        """Hooked ablation of ``strength`` (a fraction) while the context is open; the model is untouched on exit."""
        fraction = check_strength(strength, "fraction")
        view = as_model(model, structure=structure)
        check_fingerprint(self, view, strict=strict)
        with ablate(view, self.directions, strength=fraction, layers=self.layers or None,
                    positions=positions) as module:
            yield module

    def bake_(self, model, strength: float = 1.0, *, structure: Structure | None = None,
              strict: bool = False) -> Baked:
        """Orthogonalise the residual-stream writers until ``undo_()``; only for all-layer ablations."""
        if self.layers:
            raise LeverError("only an all-layer ablation (layers=()) can be baked into the weights; "
                             "apply this one with hooks")
        fraction = check_strength(strength, "fraction")
        view = as_model(model, structure=structure)
        check_fingerprint(self, view, strict=strict)
        return bake_ablation_(view, self.directions, strength=fraction)


@dataclass(frozen=True)
class ActivationAddition(_AtOneSite, Artifact):
    """ActAdd (arXiv 2308.10248): two prompts' activations subtracted position by position and added,
    times a coefficient, to the first positions of every prompt at one site.

    ``difference`` is ``[n_positions, d]``: ``h(positive)[i] - h(negative)[i]`` at the site, the
    shorter prompt padded on the right first (the paper pads with space tokens). Row ``i`` is added
    to the real token at index ``alignment + i`` of each sequence (default 0: the front of the
    prompt), whether that token is in the prompt or generated later, so cached and uncached decoding
    agree (the paper's prompts are never shorter than the pair); every later token runs unchanged.
    ``strength`` is the paper's coefficient ``c`` (units ``raw``: ``c = 1`` adds the difference as
    measured). There is no permanent form: a bias acts at every position.
    """

    kind = "steering.activation_addition"
    strength_units = ("raw",)
    bakes = False
    difference: torch.Tensor
    prompts: tuple = ()  # (positive, negative) as given, for the record
    tokens: tuple = ()  # (positive ids, negative ids) after padding, for the record

    def __post_init__(self) -> None:
        diff = torch.as_tensor(self.difference)
        if diff.dim() != 2 or diff.shape[0] == 0 or diff.shape[1] == 0:
            raise ShapeError(f"an activation addition is [positions, d], got shape {tuple(diff.shape)}")
        if not torch.isfinite(diff).all():
            raise NonFiniteError("the activation difference contains NaN or infinite values")
        object.__setattr__(self, "prompts", tuple(self.prompts))
        object.__setattr__(self, "tokens", tuple(tuple(int(t) for t in ids) for ids in self.tokens))
        where = self.provenance.where
        if where is None or where.site is None or where.layer is None:
            raise ArtifactError("an activation addition needs provenance.where with a site and one layer "
                                "(build it with ActivationAddition.from_difference)")

    @classmethod
    def from_difference(cls, difference: torch.Tensor, *, site: str = "resid_pre", layer: int,
                        prompts: Sequence[str] = (), tokens: Sequence[Sequence[int]] = (),
                        model_fingerprint: str | None = None, extra: dict | None = None) -> ActivationAddition:
        """Wrap a per-position difference ``[n_positions, d]`` (stored in float32) with its provenance."""
        diff = torch.as_tensor(difference).detach().float()
        provenance = Provenance(model_fingerprint=model_fingerprint, where=Where.at(site, int(layer), "front"),
                                method="actadd", units=cls.strength_units[0], extra=dict(extra or {}))
        return cls(diff.clone(), tuple(prompts), tuple(tuple(t) for t in tokens), provenance=provenance)

    @property
    def n_positions(self) -> int:
        return int(self.difference.shape[0])

    @contextlib.contextmanager
    def apply(self, model, strength: float = 1.0, *, alignment: int = 0, structure: Structure | None = None,
              strict: bool = False) -> Iterator[nn.Module]:
        """Add ``strength`` times row ``i`` of the difference at real-token index ``alignment + i``.

        Positions count real tokens from the start of each sequence (padding excluded, also with
        left padding and a KV cache), so batched and cached generation steer the same tokens as a
        single unpadded pass. Only hooks are installed; the model is exactly as before on exit.
        """
        c = check_strength(strength, "raw")
        if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment < 0:
            raise ShapeError(f"alignment must be a non-negative integer (a token index), got {alignment!r}")
        view = as_model(model, structure=structure)
        (site,) = as_sites(view.structure, self.target())
        check_fingerprint(self, view, strict=strict)
        rows = self.difference * c
        with contextlib.ExitStack() as stack:
            # One addition per position: each row goes to exactly one real-token index.
            for i in range(self.n_positions):
                stack.enter_context(add(view.module, site, rows[i], positions=[alignment + i],
                                        structure=view.structure))
            yield view.module

    def bake_(self, model, strength: float = 1.0, **options) -> Baked:
        raise LeverError("an activation addition acts on the first positions of each prompt only, which no weight "
                         "change can express; use apply()")

    def footprint(self) -> dict:
        """What it writes: the span of its non-zero rows at its site (for interference reports); a
        shared leading token gives a zero row, which spans nothing."""
        rows = self.difference[self.difference.norm(dim=-1) > 0]
        return {"where": self.provenance.where, "basis": rows if rows.shape[0] else self.difference, "role": "writes"}
