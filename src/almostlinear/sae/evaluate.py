"""Scoring an SAE on a model: L0 and FVU at its site, and the cross-entropy recovered when it is
spliced into the forward pass in place of the activation it reconstructs."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..core.collect import model_device, tokenize
from ..core.errors import EmptyDataError, ShapeError, check_choice
from ..core.hooks import record, replace
from ..core.locate import locate
from ..core.sites import as_sites
from .artifact import SparseAutoencoder
from .metrics import ce_recovered, dead_fraction, fvu, l0

ABLATIONS = ("zero", "mean")


@dataclass(frozen=True)
class SaeEvaluation:
    """Scores of one SAE on held-out text (cross-entropies in nats per token)."""

    l0: float
    fvu: float
    ce_clean: float
    ce_sae: float
    ce_ablated: float
    ce_recovered: float
    tokens: int  # tokens whose activations were reconstructed
    predicted_tokens: int  # next-token predictions the cross-entropies average over
    dead_fraction: float  # latents that never fired on these tokens
    ablation: str

    @property
    def variance_explained(self) -> float:
        return 1.0 - self.fvu

    def as_dict(self) -> dict:
        return {**self.__dict__, "variance_explained": self.variance_explained}


def _not_first(index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return index > 0


def _ce_sum(model: nn.Module, inputs: dict) -> tuple[float, int]:
    extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    logits = model(**inputs, **extra).logits.float()
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    valid = mask[:, 1:] & mask[:, :-1]
    losses = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    losses = losses.view(valid.shape)[valid]
    return float(losses.double().sum()), int(valid.sum())


@torch.inference_mode()
def evaluate_sae(sae: SparseAutoencoder, model: nn.Module, tokenizer, texts: Sequence[str], *, site=None,
                 ablation: str = "zero", skip_first: bool = True, batch_size: int = 8, max_length: int = 128,
                 structure=None) -> SaeEvaluation:
    """L0, FVU and CE recovered of ``sae`` on ``texts``.

    Three forward passes per batch: clean (also recording the site), with the SAE's reconstruction
    spliced in, and with the site ablated (``"zero"``, as SAELens's ``ce_loss_score``, or ``"mean"``:
    the mean activation over the batch's tokens). With ``skip_first`` the first token of each text is
    neither scored nor replaced (its activation is an outlying attention sink in most models).
    """
    texts = [t for t in texts if t]
    if not texts:
        raise EmptyDataError("no texts to evaluate the SAE on")
    check_choice(ablation, ABLATIONS, "ablation")
    structure = structure or locate(model)
    (chosen,) = as_sites(structure, site or sae.site)
    width = chosen.width(structure)
    if width != sae.d:
        raise ShapeError(f"{chosen} carries {width} features but the SAE reads {sae.d}")
    positions = _not_first if skip_first else "all"
    device = model_device(model)
    xs, zs = [], []
    sums = {"clean": 0.0, "sae": 0.0, "ablated": 0.0}
    count = 0
    for start in range(0, len(texts), batch_size):
        inputs = tokenize(tokenizer, texts[start:start + batch_size], max_length=max_length, device=device)
        with record(model, chosen, positions=positions, structure=structure) as rec:
            clean, n = _ce_sum(model, inputs)
        x = rec[chosen].float()
        if x.shape[0] == 0:
            continue
        sae.check_inputs(x)
        xs.append(x.cpu())
        zs.append(sae.encode(x).cpu())
        with sae.apply(model, site=chosen, positions=positions, structure=structure):
            spliced, _ = _ce_sum(model, inputs)
        fill = torch.zeros(width) if ablation == "zero" else x.mean(0)
        with replace(model, chosen, fill.to(device), positions=positions, structure=structure):
            ablated, _ = _ce_sum(model, inputs)
        sums["clean"] += clean
        sums["sae"] += spliced
        sums["ablated"] += ablated
        count += n
    if not xs or count == 0:
        raise EmptyDataError("the texts are too short: no token besides the first to evaluate on")
    x, z = torch.cat(xs), torch.cat(zs)
    ce = {key: value / count for key, value in sums.items()}
    return SaeEvaluation(
        l0=l0(z), fvu=fvu(x, sae.decode(z)), ce_clean=ce["clean"], ce_sae=ce["sae"], ce_ablated=ce["ablated"],
        ce_recovered=ce_recovered(ce["clean"], ce["sae"], ce["ablated"]), tokens=int(x.shape[0]),
        predicted_tokens=count, dead_fraction=dead_fraction((z != 0).double().mean(0)), ablation=ablation,
    )
