"""Audit section: inter-layer linearity (arXiv 2405.12250), in-sample and held out, with and without
the residual path."""

from __future__ import annotations

import torch

from ..core.section import AuditContext, Need, Section
from ..core.report import Figure, Metric, SectionResult, Series
from ..core.collect import Batch
from ..core.sites import Site
from ..core.stats import RunningMoments
from .affine import affine_r2, fit_affine, residual_moments

SOURCE = "arXiv 2405.12250"
RIDGES = (1e-4, 1e-2, 1.0)
SPLITS = ("train", "validation", "test")


def _split_of(text_index: torch.Tensor) -> torch.Tensor:
    # Whole texts go to one split, so neighbouring tokens of one text never straddle train and test.
    return torch.tensor([0, 0, 1, 2])[text_index % 4]


class InterLayerLinearity(Section):
    id = "interlayer_linearity"
    title = "Inter-layer linearity"

    def needs(self, ctx: AuditContext) -> list[Need]:
        s = ctx.structure
        self.states = [Site("resid_pre", 0)] + [Site("resid_post", i) for i in range(s.n_layers)]
        d = s.d_model
        # moments of (h_l, h_{l+1} - h_l) per transition and split
        self.moments = [[RunningMoments(d, d, batch_dtype=torch.float32) for _ in SPLITS] for _ in range(s.n_layers)]
        return [Need("neutral", tuple(self.states), positions="all", skip_first=True)]

    def consume(self, source: str, batch: Batch) -> None:
        split = _split_of(batch.text_index)
        rows = [(split == k).nonzero()[:, 0] for k in range(len(SPLITS))]
        for layer, per_split in enumerate(self.moments):
            x = batch.activations[self.states[layer]].float().cpu()
            delta = batch.activations[self.states[layer + 1]].float().cpu() - x
            for chosen, moments in zip(rows, per_split):
                if chosen.numel():
                    moments.update(x[chosen], delta[chosen])

    def finish(self, ctx: AuditContext) -> SectionResult:
        result = SectionResult(self.id, self.title)
        curves = {key: [] for key in ("in_sample", "held_out", "no_residual_in_sample", "no_residual_held_out")}
        for layer, (train, val, test) in enumerate(self.moments):
            whole = train.merge(val).merge(test)
            with_residual = [residual_moments(m) for m in (train, val, test)]
            scores = {
                "in_sample": _in_sample(residual_moments(whole)),
                "no_residual_in_sample": _in_sample(whole),
                "held_out": _held_out(*with_residual),
                "no_residual_held_out": _held_out(train, val, test),
            }
            for key, value in scores.items():
                curves[key].append(value)
        n_tokens = sum(m.n for m in self.moments[0])
        n_test = self.moments[0][2].n
        d = ctx.structure.d_model
        refs = {
            "in_sample": (0.99, "≈0.99 between consecutive layers of GPT, LLaMA, OPT, BLOOM (abstract)"),
            "held_out": (None, "not reported in the literature (the paper scores in-sample)"),
            "no_residual_in_sample": ("lower than with the residual: the block's update has a small norm", None),
            "no_residual_held_out": ("lower than with the residual", None),
        }
        names = {
            "in_sample": "linearity_in_sample",
            "held_out": "linearity_held_out",
            "no_residual_in_sample": "linearity_without_residual_in_sample",
            "no_residual_held_out": "linearity_without_residual_held_out",
        }
        for key, values in curves.items():
            reference = refs[key][0]
            for layer, value in enumerate(values):
                result.metrics.append(Metric(names[key], value, "R²", reference, SOURCE, layer=layer))
            result.metrics.append(Metric(names[key] + "_mean", sum(values) / len(values), "R²", reference,
                                         SOURCE, note=refs[key][1]))
        worst = min(range(len(curves["no_residual_held_out"])), key=lambda i: curves["no_residual_held_out"][i])
        best = max(range(len(curves["no_residual_held_out"])), key=lambda i: curves["no_residual_held_out"][i])
        result.metrics += [
            Metric("least_linear_block_without_residual", worst, "layer", note=f"held-out R² {curves['no_residual_held_out'][worst]:.3f}"),
            Metric("most_linear_block_without_residual", best, "layer", note=f"held-out R² {curves['no_residual_held_out'][best]:.3f}"),
            Metric("tokens", n_tokens, "tokens"),
            Metric("in_sample_noise_floor", d / max(n_tokens, 1), "R²",
                   note="expected in-sample R² of a map fitted to pure noise (d / n)"),
        ]
        layers = list(range(len(self.moments)))
        result.figures.append(Figure(
            "linearity", "Linearity of each block's map h_l → h_{l+1}", "block", "R²",
            [Series("in-sample (paper's score)", layers, curves["in_sample"]),
             Series("held-out", layers, curves["held_out"])], reference=0.99))
        result.figures.append(Figure(
            "linearity_without_residual", "Linearity without the residual path: h_l → h_{l+1} − h_l",
            "block", "R²",
            [Series("in-sample", layers, curves["no_residual_in_sample"]),
             Series("held-out", layers, curves["no_residual_held_out"])]))
        mean_in = sum(curves["in_sample"]) / len(layers)
        mean_nr = sum(curves["no_residual_held_out"]) / len(layers)
        result.notes += [
            f"{n_tokens} tokens of model-generated neutral text (first token of each text excluded: attention "
            f"sinks carry outlying norms); whole texts split 2:1:1 into train, validation and test; the test "
            f"split has {n_test} tokens.",
            "In-sample follows the paper: centre, normalise, least squares, score on the same tokens "
            f"(optimistic by about d/n = {d / max(n_tokens, 1):.3f}). Held-out fits a ridge map on train, "
            f"picks the ridge among {RIDGES} (relative to the mean input variance) on validation, refits on "
            "train+validation and scores on test.",
            _verdict(mean_in, mean_nr),
        ]
        return result


def _in_sample(moments: RunningMoments) -> float:
    return affine_r2(fit_affine(moments), moments)


def _held_out(train: RunningMoments, val: RunningMoments, test: RunningMoments) -> float:
    best = max(RIDGES, key=lambda r: affine_r2(fit_affine(train, ridge=r), val))
    return affine_r2(fit_affine(train.merge(val), ridge=best), test)


def _verdict(mean_in: float, mean_without: float) -> str:
    match = "matches" if mean_in >= 0.98 else "falls short of"
    return (
        f"This model {match} the paper's headline: mean in-sample score {mean_in:.3f} against ≈0.99. "
        f"Without the residual path the mean held-out R² is {mean_without:.3f}: "
        + ("the blocks' own updates are far from linear, so the high score comes from the residual carry-over."
           if mean_without < 0.5 else
           "a large share of each block's update is itself an affine function of its input.")
    )
