"""Small levers on tiny models for the export tests, and one way to compare next-token logits."""

from __future__ import annotations

import copy

import torch
from tiny_models import TEXTS, make_tokenizer

from almostlinear.core.artifact import Provenance, Where
from almostlinear.core.digest import tensor_digest
from almostlinear.core.lever import as_model
from almostlinear.core.locate import linear_weight
from almostlinear.editing import LowRankEdit
from almostlinear.merging import TaskVector
from almostlinear.steering import DirectionalAblation, SteeringVector


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def token_ids() -> torch.Tensor:
    tokenizer = make_tokenizer()
    return tokenizer(list(TEXTS[:3]), return_tensors="pt", padding=True)["input_ids"]


def logits(model, ids: torch.Tensor | None = None) -> torch.Tensor:
    ids = token_ids() if ids is None else ids
    with torch.no_grad():
        return model(input_ids=ids).logits.double()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def edit(model, layer: int = 0, rank: int = 2, seed: int = 3, scale: float = 1.0) -> LowRankEdit:
    """A random low-rank edit of one down projection (factors as ROME/MEMIT store them)."""
    module = as_model(model).structure.block(layer).mlp_down_proj
    d_out, d_in = linear_weight(module).shape
    g = gen(seed)
    a = torch.randn(1, rank, d_in, generator=g) / d_in ** 0.5
    b = scale * torch.randn(1, d_out, rank, generator=g)
    return LowRankEdit(a=a, b=b, keys=torch.randn(1, 1, d_in, generator=g), base_hashes=[tensor_digest(module.weight)],
                       stats_hashes=["none"], layers=[layer], method="memit",
                       provenance=Provenance(model_fingerprint=as_model(model).fingerprint, method="memit",
                                             data_hash="sha256:0123456789abcdef"))


def ablation(model, k: int = 1, seed: int = 1) -> DirectionalAblation:
    d = as_model(model).structure.d_model
    return DirectionalAblation.from_direction(torch.randn(k, d, generator=gen(seed)),
                                              model_fingerprint=as_model(model).fingerprint, method="diff_in_means")


def task_vector(model, *, embeddings: bool = False, vectors: bool = False, seed: int = 4) -> TaskVector:
    """Small random deltas on the matrices (optionally the embeddings, or also the norm weights and biases)."""
    g = gen(seed)
    deltas = {}
    for name, p in model.named_parameters():
        is_embedding = "embed" in name or "wte" in name or "wpe" in name
        if (p.dim() == 2 and (embeddings or not is_embedding)) or (vectors and p.dim() == 1):
            deltas[name] = 0.05 * torch.randn(p.shape, generator=g)
    return TaskVector(deltas, provenance=Provenance(model_fingerprint=as_model(model).fingerprint, where=Where(),
                                                    units="raw", method="difference"))


def low_rank_task_vector(model, rank: int = 2, seed: int = 5) -> TaskVector:
    """A task vector whose every matrix has rank ``rank`` (as from a LoRA fine-tune)."""
    g = gen(seed)
    deltas = {}
    for name, p in model.named_parameters():
        if p.dim() == 2 and "embed" not in name and "wte" not in name and "wpe" not in name:
            deltas[name] = 0.1 * torch.randn(p.shape[0], rank, generator=g) @ torch.randn(rank, p.shape[1], generator=g)
    return TaskVector(deltas, provenance=Provenance(model_fingerprint=as_model(model).fingerprint, where=Where(),
                                                    units="raw"))


def steering_vector(model, layer: int = 1, site: str = "resid_post", seed: int = 0, width: int | None = None,
                    **options) -> SteeringVector:
    d = width or as_model(model).structure.d_model
    return SteeringVector.from_direction(torch.randn(d, generator=gen(seed)), site=site, layer=layer,
                                         method="mean_diff", norms={"residual_median": 3.0},
                                         model_fingerprint=as_model(model).fingerprint if model is not None else None,
                                         data_hash="sha256:fedcba9876543210", **options)


def peft_logits(model, folder, ids: torch.Tensor | None = None) -> torch.Tensor:
    from peft import PeftModel

    loaded = PeftModel.from_pretrained(copy.deepcopy(model), str(folder)).eval()
    return logits(loaded, ids)
