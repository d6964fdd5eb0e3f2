"""Three views of one concept, side by side on held-out data: the best single units (top-k
neurons by AUROC, read by a logistic probe on just those k), a linear probe on every unit, and the
best SAE latents. How much of the concept sits in a few units shows whether it is a "feature" the
basis exposes or only a direction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..core.errors import EmptyDataError, ShapeError
from ..probes.linear import accuracy, fit_logistic
from .ranking import UnitRanking, auroc, rank_units


@dataclass(frozen=True)
class ViewComparison:
    """Held-out accuracies (and AUROCs of the single best unit / the probe's score)."""

    ks: list[int]
    neurons: list[float]  # logistic probe on the top-k units chosen on the training rows
    probe: float  # logistic probe on all units
    probe_auroc: float
    best_neuron: int
    best_neuron_auroc: float  # on held-out rows, sign-corrected (>= 0.5 means the training sign held)
    latents: list[float] | None = None
    best_latent: int | None = None
    best_latent_auroc: float | None = None
    neuron_ranking: UnitRanking | None = None
    latent_ranking: UnitRanking | None = None


def _top_k_accuracy(ranking: UnitRanking, ks, x_train, y_train, x_test, y_test, l2) -> list[float]:
    out = []
    for k in ks:
        chosen = ranking.top(min(k, x_train.shape[1]))
        w, b = fit_logistic(x_train[:, chosen], y_train, l2=l2)
        out.append(float(accuracy(w, b, x_test[:, chosen], y_test)))
    return out


def _signed_auroc(ranking: UnitRanking, unit: int, x_test, y_test) -> float:
    value = float(auroc(x_test[:, unit:unit + 1], y_test)[0])
    return value if ranking.sign(unit) > 0 else 1.0 - value


def compare_views(x_train: torch.Tensor, y_train, x_test: torch.Tensor, y_test, *,
                  ks: Sequence[int] = (1, 2, 4, 8, 16), sae=None, l2: float = 1e-2) -> ViewComparison:
    """Top-k units vs a full probe vs SAE latents (``sae`` a :class:`~almostlinear.sae.SparseAutoencoder`)."""
    x_train, x_test = torch.as_tensor(x_train).float(), torch.as_tensor(x_test).float()
    if x_train.shape[1] != x_test.shape[1]:
        raise ShapeError(f"training rows have {x_train.shape[1]} units, test rows {x_test.shape[1]}")
    y_train, y_test = torch.as_tensor(y_train).long(), torch.as_tensor(y_test).long()
    ranking = rank_units(x_train, y_train)
    neurons = _top_k_accuracy(ranking, ks, x_train, y_train, x_test, y_test, l2)
    w, b = fit_logistic(x_train, y_train, l2=l2)
    probe = float(accuracy(w, b, x_test, y_test))
    probe_auroc = float(auroc((x_test.double() @ w.double())[:, None], y_test)[0])
    result = dict(ks=list(ks), neurons=neurons, probe=probe, probe_auroc=probe_auroc, best_neuron=ranking.best,
                  best_neuron_auroc=_signed_auroc(ranking, ranking.best, x_test, y_test), neuron_ranking=ranking)
    if sae is not None:
        z_train, z_test = sae.encode(x_train).float(), sae.encode(x_test).float()
        alive = (z_train != 0).any(0) & ((z_train != 0).float().mean(0) < 1)
        if not bool(alive.any()):
            raise EmptyDataError("no SAE latent fires on some but not all training rows: nothing to rank")
        z_train_alive = z_train[:, alive]
        latent_ranking = rank_units(z_train_alive, y_train)
        index = alive.nonzero()[:, 0]
        mapped = UnitRanking(order=index[latent_ranking.order],
                             auroc=torch.full((z_train.shape[1],), 0.5).index_put((index,), latent_ranking.auroc),
                             correlation=torch.zeros(z_train.shape[1]).index_put((index,), latent_ranking.correlation))
        result.update(latents=_top_k_accuracy(mapped, ks, z_train, y_train, z_test, y_test, l2),
                      best_latent=mapped.best, best_latent_auroc=_signed_auroc(mapped, mapped.best, z_test, y_test),
                      latent_ranking=mapped)
    return ViewComparison(**result)
