"""Audit section: latent paths and attribute arithmetic on the digits VAE, scored by a digit classifier.

It does not read the audited model: it is the reference case of latent-space linearity that the
library's latent levers are checked against, a VAE small enough to train in seconds.
"""

from __future__ import annotations

import importlib.util

from ..core.section import AuditContext, Section
from ..core.report import Figure, Metric, SectionResult, Series
from ..core.threads import one_thread
from ..zoo.digits_data import digits
from ..zoo.vae import digits_vae, elbo
from .digits import KINDS, score_digits

SLERP_SOURCE = "arXiv 1609.04468"


class LatentPaths(Section):
    id = "latent"
    title = "Latent paths on a digits VAE"

    def applicable(self, ctx: AuditContext) -> str | None:
        if importlib.util.find_spec("sklearn") is None:
            return "the digits come with scikit-learn, which is not installed"
        return None

    def finish(self, ctx: AuditContext) -> SectionResult:
        result = SectionResult(self.id, self.title)
        per_pair, steps = (4, 9) if ctx.quick else (12, 11)
        with one_thread():
            vae = digits_vae()
            scores = score_digits(per_pair=per_pair, steps=steps, seed=ctx.seed, vae=vae)
            test_elbo = elbo(vae, digits("vae").x_test)
        for kind in KINDS:
            result.metrics.append(Metric(f"path_agreement_{kind}", scores.agreement[kind], "fraction",
                                         note="decoded steps classified as the nearer endpoint's digit"
                                         if kind != "pixels" else "baseline: a cross-fade of the two images"))
            result.metrics.append(Metric(f"path_agreement_given_endpoints_{kind}",
                                         scores.agreement_given_endpoints[kind], "fraction",
                                         note="over the paths whose two endpoints are classified as their digits"))
            result.metrics.append(Metric(f"path_confidence_{kind}", scores.confidence[kind], "probability",
                                         "interior of slerp paths stays in high-density regions (qualitative)"
                                         if kind == "slerp" else None, SLERP_SOURCE if kind == "slerp" else None,
                                         note="classifier's mean top probability at the interior steps"))
        result.metrics += [
            Metric("attribute_transfer_success", scores.transfer, "fraction",
                   note="test codes of digit a moved by mean_b − mean_a (train codes), decoded, classified as b"),
            Metric("attribute_transfer_baseline", scores.transfer_baseline, "fraction",
                   note="the same codes unmoved, classified as b"),
            Metric("reconstruction_accuracy", scores.reconstruction_accuracy, "fraction",
                   note="test digits encoded, decoded and classified correctly"),
            Metric("classifier_accuracy", scores.scorer_accuracy, "fraction", note="on the raw test digits"),
            Metric("vae_test_neg_elbo", test_elbo, "nats per image"),
            Metric("paths_scored", len(scores.pairs) * per_pair, "paths"),
        ]
        xs = [i / (steps - 1) for i in range(steps)]
        result.figures.append(Figure(
            "latent_path_agreement", "Share of paths classified as intended at each step", "fraction of the path",
            "agreement", [Series(kind, xs, [None if v != v else v for v in scores.per_step[kind]]) for kind in KINDS]))
        best = max(("lerp", "slerp"), key=lambda k: scores.agreement[k])
        result.notes += [
            f"VAE with an 8-dimensional Gaussian code on scikit-learn's 8x8 digits ({len(digits('vae').y_train)} "
            f"training, {scores.n_test} test images); a separate one-hidden-layer classifier judges decoded images. "
            f"{len(scores.pairs)} ordered digit pairs × {per_pair} test pairs each, {steps} steps per path.",
            f"Latent paths agree with the intended digit at {scores.agreement['lerp']:.2f} (lerp) and "
            f"{scores.agreement['slerp']:.2f} (slerp) of their steps; the pixel cross-fade at "
            f"{scores.agreement['pixels']:.2f}; over paths whose endpoints are recognised, "
            f"{scores.agreement_given_endpoints['lerp']:.2f}, {scores.agreement_given_endpoints['slerp']:.2f} and "
            f"{scores.agreement_given_endpoints['pixels']:.2f}. The cross-fade is a strong baseline for this score: a superposition of "
            "two images is read as whichever dominates, though it is not a digit. "
            f"Best latent path: {best}.",
            f"Attribute arithmetic (z − mean_a + mean_b) turns {scores.transfer:.0%} of test digits into the "
            f"intended one (unmoved: {scores.transfer_baseline:.0%}).",
        ]
        return result
