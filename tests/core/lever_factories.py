"""One small factory per artifact kind, for the lever contract suite (``test_lever_contract.py``).

A factory takes a tiny model and returns an artifact fitted (or built) for it, recording the model's
fingerprint. Levers get random but meaningful contents (a unit direction at a residual site, small
low-rank factors on a down projection, a perturbation as a task vector), so that applying them
changes the model and the suite can see whether it is restored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tiny_models import MOE_ARCHITECTURES, POST_NORM_ARCHITECTURES, TEXTS, build_model, make_tokenizer

from almostlinear.core.artifact import Provenance, Where
from almostlinear.core.digest import tensor_digest
from almostlinear.core.errors import AlmostLinearError
from almostlinear.core.lever import as_model
from almostlinear.core.locate import is_conv1d, is_linear, linear_shape, linear_weight


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unit(d: int, seed: int = 0) -> torch.Tensor:
    v = torch.randn(d, generator=_gen(seed))
    return v / v.norm()


# --- levers ------------------------------------------------------------------------------------------


def _steering_vector(model, fp):
    from almostlinear.steering import SteeringVector

    d = as_model(model).structure.d_model
    return SteeringVector.from_direction(_unit(d), site="resid_post", layer=0, method="mean_diff",
                                         norms={"residual_median": 2.0}, model_fingerprint=fp)


def _activation_addition(model, fp):
    from almostlinear.steering import ActivationAddition

    d = as_model(model).structure.d_model
    difference = torch.randn(3, d, generator=_gen(14))
    return ActivationAddition.from_difference(difference, site="resid_pre", layer=1, prompts=("a b", "c"),
                                              tokens=((5, 9, 3), (14, 3, 3)), model_fingerprint=fp)


def _ablation(model, fp):
    from almostlinear.steering import DirectionalAblation

    d = as_model(model).structure.d_model
    return DirectionalAblation.from_direction(torch.randn(2, d, generator=_gen(1)), model_fingerprint=fp)


def _eraser(model, fp):
    from almostlinear.erasure import LeaceEraser

    d = as_model(model).structure.d_model
    x = torch.randn(64, d, generator=_gen(2)) * 3
    z = (x[:, 0] > 0).long()
    return LeaceEraser.fit(x, z, site="resid_post.0", model_fingerprint=fp)


def _low_rank(model, fp, cls_name: str = "LowRankEdit"):
    import almostlinear.editing as editing

    structure = as_model(model).structure
    block = structure.block(0)
    if block.moe:  # the refusal under test: the library's own entry point, on this model
        editing.key_statistics(model, make_tokenizer(), layer=0, texts=list(TEXTS))
    module = block.mlp_down_proj
    d_out, d_in = linear_weight(module).shape
    rank = 1 if cls_name == "RankOneEdit" else 2
    g = _gen(3)
    a = torch.randn(1, rank, d_in, generator=g) / d_in ** 0.5
    b = torch.randn(1, d_out, rank, generator=g)
    fields: dict[str, Any] = {}
    if cls_name == "RankOneEdit":
        fields["value"] = torch.randn(d_out, generator=g)
    return getattr(editing, cls_name)(a=a, b=b, keys=torch.randn(1, 1, d_in, generator=g),
                                      base_hashes=[tensor_digest(module.weight)], stats_hashes=["none"],
                                      layers=[0], provenance=Provenance(model_fingerprint=fp), **fields)


def _task_vector(model, fp):
    from almostlinear.merging import TaskVector

    g = _gen(4)
    deltas = {name: 0.05 * torch.randn(p.shape, generator=g).to(p.dtype)
              for name, p in model.named_parameters() if p.dim() == 2 and "embed" not in name and "wte" not in name}
    return TaskVector(deltas, provenance=Provenance(model_fingerprint=fp, where=Where(), units="raw"))


def _permutation(model, fp):
    from almostlinear.connectivity import Permutation, random_perms, transformer_spec

    spec = transformer_spec(model)
    return Permutation.from_perms(spec, random_perms(spec, seed=5), provenance=Provenance(model_fingerprint=fp))


def _sae(model, fp):
    from almostlinear.sae import SparseAutoencoder

    d = as_model(model).structure.d_model
    width = 2 * d
    g = _gen(6)
    w_enc = torch.randn(d, width, generator=g) / d ** 0.5
    return SparseAutoencoder(w_enc, torch.zeros(width), w_enc.T.contiguous(), torch.zeros(d),
                             torch.ones(width), torch.full((width,), 0.1), activation="topk", k=4,
                             provenance=Provenance(model_fingerprint=fp, where=Where.at("resid_post", 0),
                                                   units="fraction"))


def _latent_direction(model, fp):
    return _sae(model, fp).direction(3)


def _lora(model, fp):
    from almostlinear.adapters import LoraAdapter, LoraFactors

    g = _gen(7)
    modules = {}
    for name, module in model.named_modules():
        if is_linear(module) and name.count(".") >= 2 and len(modules) < 3:  # inside the blocks
            out, inp = linear_shape(module)
            modules[name] = LoraFactors(torch.randn(2, inp, generator=g) * 0.1, torch.randn(out, 2, generator=g) * 0.1,
                                        fan_in_fan_out=is_conv1d(module))
    assert modules, "no linear layer found for the adapter"
    return LoraAdapter(modules)


# --- read-only artifacts (save/load only) ----------------------------------------------------------------


def _probe(model, fp):
    from almostlinear.probes import LinearProbe

    x = torch.randn(40, 8, generator=_gen(8))
    return LinearProbe.fit(x, x[:, 0] > 0, site="resid_post.1", model_fingerprint=fp)


def _truth_direction(model, fp):
    from almostlinear.truth import TruthDirection

    g = _gen(9)
    return TruthDirection(torch.randn(8, generator=g), torch.randn(8, generator=g), torch.tensor(0.5), "ccs", True,
                          provenance=Provenance(model_fingerprint=fp, where=Where.at("resid_post", 1), method="ccs"))


def _lens(kind):
    def build(model, fp):
        from almostlinear.lens import AffineLens, TunedLens

        g = _gen(10)
        cls = AffineLens if kind == "affine" else TunedLens
        return cls(torch.randn(3, 8, 8, generator=g), torch.randn(3, 8, generator=g),
                   provenance=Provenance(model_fingerprint=fp, where=Where("resid_post", ())))

    return build


def _key_statistics(model, fp):
    from almostlinear.editing import KeyStatistics

    c = torch.eye(8, dtype=torch.float64)
    return KeyStatistics(c, c.float(), c.float(), 10, 10, "texts",
                         provenance=Provenance(model_fingerprint=fp, where=Where.at("mlp_key", 0)))


def _attribute_direction(model, fp):
    from almostlinear.latent import AttributeDirection

    z = torch.randn(30, 4, generator=_gen(11))
    return AttributeDirection.fit(z, torch.arange(30) % 2, 0, 1)


def _linear_map(model, fp):
    from almostlinear.translate import LinearMap

    x = torch.randn(40, 6, generator=_gen(12))
    return LinearMap.fit(x, x @ torch.randn(6, 5, generator=_gen(13)))


FACTORIES: dict[str, Callable[[torch.nn.Module, str], Any]] = {
    "steering.vector": _steering_vector,
    "steering.ablation": _ablation,
    "steering.activation_addition": _activation_addition,
    "erasure.leace": _eraser,
    "editing.low_rank": _low_rank,
    "editing.rank_one": lambda model, fp: _low_rank(model, fp, "RankOneEdit"),
    "merging.task_vector": _task_vector,
    "connectivity.permutation": _permutation,
    "sae.autoencoder": _sae,
    "sae.latent_direction": _latent_direction,
    "adapters.lora": _lora,
    "probes.linear": _probe,
    "truth.direction": _truth_direction,
    "lens.affine": _lens("affine"),
    "lens.tuned": _lens("tuned"),
    "editing.key_statistics": _key_statistics,
    "latent.attribute_direction": _attribute_direction,
    "translate.linear_map": _linear_map,
}
# Model-facing kinds, which the whole contract applies to.
LEVERS = {"steering.vector", "steering.ablation", "steering.activation_addition", "erasure.leace", "editing.low_rank",
          "editing.rank_one", "merging.task_vector", "connectivity.permutation", "sae.autoencoder",
          "sae.latent_direction", "adapters.lora"}
# Levers stored in another project's format (a PEFT folder), not as almostlinear artifact files.
NOT_ARTIFACTS = {"adapters.lora"}
# Levers that record no model fingerprint (a PEFT folder has none): only shapes are checked.
UNFINGERPRINTED = {"adapters.lora"}
# Where a lever refuses by name rather than acting: every use (apply) on these architectures ...
REFUSES = {kind: set(MOE_ARCHITECTURES) for kind in ("editing.low_rank", "editing.rank_one")}
# Permutation specs are derived for the attention layouts they know; the others are refused by name
# (Phi-3 and Falcon fuse q, k and v with grouped heads; OLMo 2 normalises whole q and k vectors).
REFUSES["connectivity.permutation"] = set(MOE_ARCHITECTURES) | {"phi3", "falcon", "olmo2"}
# ... or only its permanent form (a bias or an orthogonalised writer cannot stand for the hook there).
BAKE_REFUSES = {kind: set(MOE_ARCHITECTURES) | set(POST_NORM_ARCHITECTURES)
                for kind in ("steering.vector", "steering.ablation")}


@dataclass
class Case:
    """One kind on one tiny architecture: the model, its artifact, and how to use it."""

    kind: str
    arch: str
    model: torch.nn.Module
    tokenizer: Any
    make: Callable[[], Any]
    artifact: Any = None
    refused: str | None = None
    options: dict = field(default_factory=dict)

    def apply(self, model, strength: float = 1.0, **options):
        return self.artifact.apply(model, strength=strength, **self.options, **options)

    def bake(self, model, strength: float = 1.0):
        return self.artifact.bake_(model, strength=strength)

    def other_model(self) -> torch.nn.Module:
        return build_model(self.arch, seed=1)


def build_case(kind: str, arch: str) -> Case:
    """The case; ``refused`` holds the library's message where the lever refuses this architecture."""
    from almostlinear.core.models import fingerprint

    model = build_model(arch)
    case = Case(kind, arch, model, make_tokenizer(), lambda: FACTORIES[kind](model, fingerprint(model)))
    if kind == "sae.autoencoder":
        case.options = {"mode": "splice"}
    try:
        case.artifact = case.make()
        if kind in LEVERS:
            with case.apply(model):  # some levers refuse only when asked to act
                pass
    except AlmostLinearError as error:  # a refusal by name: a library error, never a crash
        if arch not in REFUSES.get(kind, ()):
            raise
        case.refused = str(error)
    return case


def logits(model: torch.nn.Module) -> torch.Tensor:
    """The model's logits on a fixed batch of token ids (no padding)."""
    ids = torch.tensor([[5, 9, 14, 22, 31, 7], [40, 3, 12, 18, 27, 11]])
    with torch.no_grad():
        return model(input_ids=ids).logits.detach().clone()
