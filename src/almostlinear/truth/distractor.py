"""Fit every method on the same split and ask whether each direction follows truth or a distractor.

The sanity check of Farquhar et al. (arXiv 2312.10029): plant a binary feature that is
independent of truth (see :mod:`.prompts`), refit each method, and score its held-out predictions
against both labels. A method that finds knowledge should keep following truth; the paper shows
that CCS and PCA instead follow whichever feature is most prominent.

Both scores are balanced accuracies (the mean recall of the two classes), so a direction that
predicts one class for everything scores 0.5 even when the held-out pairs are not exactly
balanced. Scores against the distractor are sign-free (``max(b, 1 - b)``) for every method, since
"follows the distractor" does not depend on which word is called positive; scores against truth
are sign-free for the unsupervised methods only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.errors import EmptyDataError, ShapeError, check_choice
from .ccs import fit_ccs
from .methods import ContrastDirections, fit_contrast_pca, fit_logistic_difference, fit_mean_difference
from .normalise import balanced_accuracy, check_labels, check_pairs

UNSUPERVISED = ("ccs", "contrast_pca")
SUPERVISED = ("mean_difference", "logistic")
ALL_METHODS = UNSUPERVISED + SUPERVISED


def fit_methods(x_pos: torch.Tensor, x_neg: torch.Tensor, labels=None, *, methods=ALL_METHODS,
                restarts: int = 10, seed: int = 0, ccs_l2: float = 0.1, logistic_l2: float = 1e-2,
                per_dimension: bool = False) -> dict[str, ContrastDirections]:
    """Each named method fitted on the same training pairs; ``labels`` only reach the supervised ones."""
    for method in methods:
        check_choice(method, ALL_METHODS, "truth-direction method")
    if labels is None and any(m in SUPERVISED for m in methods):
        raise EmptyDataError(f"the supervised methods {list(SUPERVISED)} need labels: pass labels, or choose "
                             f"methods={list(UNSUPERVISED)}")
    fits = {}
    for method in methods:
        if method == "ccs":
            fits[method] = fit_ccs(x_pos, x_neg, restarts=restarts, seed=seed, l2=ccs_l2,
                                   per_dimension=per_dimension)
        elif method == "contrast_pca":
            fits[method] = fit_contrast_pca(x_pos, x_neg, per_dimension=per_dimension)
        elif method == "mean_difference":
            fits[method] = fit_mean_difference(x_pos, x_neg, labels, per_dimension=per_dimension)
        else:
            fits[method] = fit_logistic_difference(x_pos, x_neg, labels, l2=logistic_l2,
                                                   per_dimension=per_dimension)
    return fits


@dataclass(frozen=True)
class DistractorResult:
    """Held-out balanced accuracy of one method against truth and against the planted distractor."""

    method: str
    truth_accuracy: float
    distractor_accuracy: float
    chance_margin: float = 0.1

    @property
    def follows(self) -> str:
        """``"truth"``, ``"distractor"``, or ``"neither"`` when both are within the margin of chance."""
        if max(self.truth_accuracy, self.distractor_accuracy) < 0.5 + self.chance_margin:
            return "neither"
        return "distractor" if self.distractor_accuracy > self.truth_accuracy else "truth"


def distractor_check(x_pos: torch.Tensor, x_neg: torch.Tensor, truth, distractor, *, train, test,
                     methods=ALL_METHODS, restarts: int = 10, seed: int = 0, chance_margin: float = 0.1,
                     **options) -> list[DistractorResult]:
    """Fit on the ``train`` pairs of ``[n, d]`` activations, score on the ``test`` pairs.

    ``truth`` and ``distractor`` are binary ``[n]`` labels; only ``truth`` reaches the supervised
    methods. ``options`` go to :func:`fit_methods`.
    """
    x_pos, x_neg, squeeze = check_pairs(x_pos, x_neg)
    if not squeeze:
        raise ShapeError("distractor_check reads one layer: pass [n, d] activations")
    n = x_pos.shape[1]
    truth, distractor = check_labels(truth, n, "truth"), check_labels(distractor, n, "distractor")
    train, test = torch.as_tensor(train, dtype=torch.long), torch.as_tensor(test, dtype=torch.long)
    if test.numel() == 0:
        raise EmptyDataError("the test split is empty: hold out some pairs to score on")
    fits = fit_methods(x_pos[:, train], x_neg[:, train], truth[train], methods=methods, restarts=restarts,
                       seed=seed, **options)
    results = []
    for method, fit in fits.items():
        predicted = fit.predict(x_pos[:, test], x_neg[:, test])[0]
        results.append(DistractorResult(
            method,
            float(balanced_accuracy(predicted, truth[test], sign_free=not fit.oriented)),
            float(balanced_accuracy(predicted, distractor[test], sign_free=True)),
            chance_margin,
        ))
    return results
