"""Per-layer truth directions from contrast pairs: the shared result type and the closed forms.

Every method here reads the normalised difference ``z_pos - z_neg`` of a pair (see
:mod:`.normalise`) with a direction ``w`` and a bias ``c``: ``(z_pos - z_neg) @ w + c > 0`` says
the "Yes" answer is the consistent one, i.e. the statement is true.

* contrast PCA, unsupervised: the top principal component of the differences. The contrast pairs,
  not CCS's loss, carry most of CCS's accuracy (Emmons 2023, summarised in research/lenses.md).
* mean difference, supervised: the difference of the class means of the differences, thresholded
  half-way (mass-mean, arXiv 2310.06824), reusing :func:`almostlinear.probes.fit_mass_mean`.
* logistic, supervised: L2-penalised logistic regression on the differences, reusing
  :func:`almostlinear.probes.fit_logistic`; the supervised comparison of arXiv 2212.03827.

CCS lives in :mod:`.ccs` and returns the same :class:`ContrastDirections`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.artifact import Provenance, Where
from ..probes.linear import fit_logistic, fit_mass_mean
from .artifact import TruthDirection
from .normalise import PairNormaliser, check_labels, check_pairs, plain_accuracy, sign_free_accuracy


@dataclass(frozen=True)
class ContrastDirections:
    """Directions for every layer. ``weight`` ``[layers, d]`` and ``bias`` ``[layers]`` act on
    normalised differences; ``oriented`` is False when no labels fixed the sign."""

    method: str
    weight: torch.Tensor
    bias: torch.Tensor
    normaliser: PairNormaliser
    oriented: bool
    probe_bias: torch.Tensor | None = None  # CCS only: b in p(z) = sigmoid(z @ w + b)
    loss: torch.Tensor | None = None  # CCS only: the selected restart's loss per layer
    restart_objectives: torch.Tensor | None = None  # CCS only: [layers, restarts] loss + penalty

    def decision(self, x_pos: torch.Tensor, x_neg: torch.Tensor) -> torch.Tensor:
        """``[layers, n]`` scores of pairs ``[layers, n, d]`` (or ``[n, d]`` with one layer)."""
        z_pos, z_neg = self.normaliser(x_pos, x_neg)
        return torch.einsum("lnd,ld->ln", z_pos - z_neg, self.weight) + self.bias[:, None]

    def predict(self, x_pos: torch.Tensor, x_neg: torch.Tensor) -> torch.Tensor:
        return self.decision(x_pos, x_neg) > 0

    def accuracy(self, x_pos: torch.Tensor, x_neg: torch.Tensor, labels) -> torch.Tensor:
        """``[layers]`` accuracy; ``max(acc, 1 - acc)`` when not ``oriented`` (as arXiv 2212.03827)."""
        predicted = self.predict(x_pos, x_neg)
        labels = check_labels(labels, predicted.shape[1])
        return (plain_accuracy if self.oriented else sign_free_accuracy)(predicted, labels)

    def to_direction(self, index: int, *, layer: int | None = None, site: str = "resid_post") -> TruthDirection:
        """The direction of row ``index`` in raw activation units, as a saveable artifact."""
        norm = self.normaliser
        w = self.weight[index]
        s_pos = norm.scale_pos[index].expand_as(w)
        s_neg = norm.scale_neg[index].expand_as(w)
        w_pos, w_neg = w / s_pos, w / s_neg
        bias = self.bias[index] - (w_pos * norm.mean_pos[index]).sum() + (w_neg * norm.mean_neg[index]).sum()
        layer = index if layer is None else layer
        return TruthDirection(w_pos.clone(), w_neg.clone(), bias.reshape(()).clone(), self.method, self.oriented,
                              provenance=Provenance(where=Where.at(site, int(layer)), method=self.method))


def differences(normaliser: PairNormaliser, x_pos: torch.Tensor, x_neg: torch.Tensor) -> torch.Tensor:
    z_pos, z_neg = normaliser(x_pos, x_neg)
    return z_pos - z_neg


def fit_contrast_pca(x_pos: torch.Tensor, x_neg: torch.Tensor, *, per_dimension: bool = False
                     ) -> ContrastDirections:
    """Top principal component of the normalised differences, per layer, threshold at their mean.

    The sign is fixed without labels (largest-magnitude coordinate positive), so it is arbitrary
    with respect to truth: score it with ``max(acc, 1 - acc)``.
    """
    x_pos, x_neg, _ = check_pairs(x_pos, x_neg)
    normaliser = PairNormaliser.fit(x_pos, x_neg, per_dimension=per_dimension)
    diff = differences(normaliser, x_pos, x_neg)
    centre = diff.mean(1)
    centred = diff - centre[:, None]
    n, d = centred.shape[1:]
    if n < d:  # eigenvectors of the n x n Gram matrix map to those of the d x d covariance
        _, vectors = torch.linalg.eigh(centred @ centred.transpose(1, 2))
        top = torch.einsum("lnd,ln->ld", centred, vectors[..., -1])
    else:
        _, vectors = torch.linalg.eigh(centred.transpose(1, 2) @ centred)
        top = vectors[..., -1]
    top = top / top.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    biggest = top.abs().argmax(-1, keepdim=True)
    top = top * torch.sign(top.gather(-1, biggest))
    bias = -(top * centre).sum(-1)
    return ContrastDirections("contrast_pca", top, bias, normaliser, oriented=False)


def fit_mean_difference(x_pos: torch.Tensor, x_neg: torch.Tensor, labels, *, per_dimension: bool = False
                        ) -> ContrastDirections:
    """Difference of the class means of the normalised differences, threshold half-way."""
    x_pos, x_neg, _ = check_pairs(x_pos, x_neg)
    labels = check_labels(labels, x_pos.shape[1], both=True)
    normaliser = PairNormaliser.fit(x_pos, x_neg, per_dimension=per_dimension)
    weight, bias = fit_mass_mean(differences(normaliser, x_pos, x_neg), labels)
    return ContrastDirections("mean_difference", weight.double(), bias.double(), normaliser, oriented=True)


def fit_logistic_difference(x_pos: torch.Tensor, x_neg: torch.Tensor, labels, *, l2: float = 1e-2,
                            per_dimension: bool = False) -> ContrastDirections:
    """L2-penalised logistic regression on the normalised differences (penalty as in the probes)."""
    x_pos, x_neg, _ = check_pairs(x_pos, x_neg)
    labels = check_labels(labels, x_pos.shape[1], both=True)
    normaliser = PairNormaliser.fit(x_pos, x_neg, per_dimension=per_dimension)
    weight, bias = fit_logistic(differences(normaliser, x_pos, x_neg), labels, l2=l2)
    return ContrastDirections("logistic", weight.double(), bias.double(), normaliser, oriented=True)
