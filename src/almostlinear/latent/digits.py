"""The latent levers demonstrated on the digits VAE, with numbers rather than only pictures.

Directions are fitted on the training digits' codes; paths and transfers are scored on test digits
by a separate classifier of decoded images (:func:`almostlinear.zoo.vae.digits_scorer`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from ..core.errors import ShapeError
from ..core.threads import one_thread
from ..zoo.digits_data import digits
from ..zoo.vae import DigitsVAE, classify, digits_scorer, digits_vae
from .artifact import AttributeDirection
from .paths import lerp, slerp
from .score import path_agreement, path_predictions, per_step_agreement, transfer_success

KINDS = ("lerp", "slerp", "pixels")


@dataclass
class DigitsLatentScores:
    """Agreement of the classifier with the intended class, over ordered pairs of digits."""

    steps: int
    pairs: list[tuple[int, int]]
    per_pair: int
    agreement: dict[str, float]  # path kind -> mean agreement over all pairs and paths
    confidence: dict[str, float]  # path kind -> classifier's mean top probability at the interior steps
    agreement_given_endpoints: dict[str, float]  # the same over paths whose two endpoints are classified right
    per_step: dict[str, list[float]]  # path kind -> agreement per step (NaN at an exact midpoint)
    transfer: float  # codes of a moved by mean_b - mean_a, classified as b
    transfer_baseline: float  # the same codes unmoved, classified as b
    reconstruction_accuracy: float  # test digits, encoded and decoded, classified correctly
    scorer_accuracy: float  # the classifier on the raw test digits
    n_test: int
    per_pair_agreement: dict[str, dict[str, float]] = field(default_factory=dict)


def _examples(y: torch.Tensor, label: int, k: int, generator: torch.Generator) -> torch.Tensor:
    rows = (y == label).nonzero()[:, 0]
    return rows[torch.randperm(len(rows), generator=generator)[:k]]


def score_digits(*, pairs: list[tuple[int, int]] | None = None, per_pair: int = 8, steps: int = 9, seed: int = 0,
                 vae: DigitsVAE | None = None, scorer=None) -> DigitsLatentScores:
    """Score straight, spherical and pixel-space paths and class-mean arithmetic on the digits VAE.

    Each ordered pair ``(a, b)`` uses ``per_pair`` test digits of ``a`` matched with as many of ``b``.
    The pixel-space path (a cross-fade of the two images) is the baseline a latent path should beat.
    """
    if steps < 2:
        raise ShapeError(f"a path needs at least 2 steps, got {steps}")
    if per_pair < 1:
        raise ShapeError(f"score at least one test pair per digit pair, got per_pair={per_pair}")
    if pairs is None:
        pairs = list(itertools.permutations(range(10), 2))
    if not pairs or any(a == b or not (0 <= a <= 9 and 0 <= b <= 9) for a, b in pairs):
        raise ShapeError(f"pairs must be a non-empty list of two different digits 0..9, got {pairs!r}")
    with one_thread():
        vae = vae or digits_vae()
        scorer = scorer or digits_scorer()
        data = digits("vae")
        decode, judge = vae.decode, (lambda images: classify(scorer, images))
        z_train, z_test = vae.encode(data.x_train), vae.encode(data.x_test)
        generator = torch.Generator().manual_seed(seed)
        predictions: dict[str, list[torch.Tensor]] = {k: [] for k in KINDS}
        confident: dict[str, list[torch.Tensor]] = {k: [] for k in KINDS}

        def top_probability(images: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                probs = scorer(images.reshape(-1, images.shape[-1]).float()).softmax(-1).amax(-1)
            return probs.reshape(steps, -1)[1:-1].flatten()
        starts, ends, moved_hits, unmoved_hits = [], [], [], []
        per_pair_agreement: dict[str, dict[str, float]] = {k: {} for k in KINDS}
        for a, b in pairs:
            rows_a, rows_b = _examples(data.y_test, a, per_pair, generator), _examples(data.y_test, b, per_pair, generator)
            k = min(len(rows_a), len(rows_b))
            rows_a, rows_b = rows_a[:k], rows_b[:k]
            za, zb = z_test[rows_a], z_test[rows_b]
            paths = {"lerp": lerp(za, zb, steps), "slerp": slerp(za, zb, steps)}
            start, end = torch.full((k,), a), torch.full((k,), b)
            for kind, codes in paths.items():
                predicted = path_predictions(codes, decode, judge)
                predictions[kind].append(predicted)
                confident[kind].append(top_probability(decode(codes.reshape(-1, codes.shape[-1]).float())))
                per_pair_agreement[kind][f"{a}->{b}"] = path_agreement(predicted, start, end)
            fade = lerp(data.x_test[rows_a], data.x_test[rows_b], steps)
            predicted = judge(fade.reshape(-1, fade.shape[-1])).reshape(steps, k)
            predictions["pixels"].append(predicted)
            confident["pixels"].append(top_probability(fade))
            per_pair_agreement["pixels"][f"{a}->{b}"] = path_agreement(predicted, start, end)
            starts.append(start)
            ends.append(end)
            direction = AttributeDirection.fit(z_train, data.y_train, a, b, space="digits-vae")
            moved_hits.append(transfer_success(direction.shift(za), b, decode, judge) * k)
            unmoved_hits.append(transfer_success(za, b, decode, judge) * k)
        start, end = torch.cat(starts), torch.cat(ends)
        total = len(start)
        agreement, per_step, given_ends = {}, {}, {}
        confidence = {kind: float(torch.cat(confident[kind]).double().mean()) for kind in KINDS}
        for kind in KINDS:
            predicted = torch.cat(predictions[kind], dim=1)
            agreement[kind] = path_agreement(predicted, start, end)
            ends_right = (predicted[0] == start) & (predicted[-1] == end)
            given_ends[kind] = (path_agreement(predicted[:, ends_right], start[ends_right], end[ends_right])
                                if bool(ends_right.any()) else float("nan"))
            per_step[kind] = per_step_agreement(predicted, start, end).tolist()
        recon = float((judge(decode(z_test)) == data.y_test).double().mean())
        raw = float((judge(data.x_test) == data.y_test).double().mean())
    return DigitsLatentScores(steps, list(pairs), per_pair, agreement, confidence, given_ends, per_step, sum(moved_hits) / total,
                              sum(unmoved_hits) / total, recon, raw, len(data.y_test), per_pair_agreement)


def demo_grid(a: int, b: int, *, steps: int = 9, seed: int = 0, vae: DigitsVAE | None = None,
              ) -> tuple[torch.Tensor, list[str]]:
    """Rows of images for one pair: pixel cross-fade, straight path, spherical path, and arithmetic.

    The arithmetic row moves one test digit ``a`` by ``(mean_b - mean_a) * s`` for ``s`` from 0 to 1.
    """
    vae = vae or digits_vae()
    data = digits("vae")
    generator = torch.Generator().manual_seed(seed)
    ia = int(_examples(data.y_test, a, 1, generator)[0])
    ib = int(_examples(data.y_test, b, 1, generator)[0])
    za, zb = vae.encode(data.x_test[ia:ia + 1])[0], vae.encode(data.x_test[ib:ib + 1])[0]
    direction = AttributeDirection.fit(vae.encode(data.x_train), data.y_train, a, b, space="digits-vae")
    strengths = torch.linspace(0, 1, steps)
    rows = [
        lerp(data.x_test[ia], data.x_test[ib], steps),
        vae.decode(lerp(za, zb, steps)),
        vae.decode(slerp(za, zb, steps)),
        vae.decode(torch.stack([direction.shift(za, float(s)) for s in strengths])),
    ]
    labels = ["pixels", "lerp", "slerp", f"{a} - mean {a} + mean {b}"]
    return torch.stack(rows), labels
