"""Audit section: inter-layer linearity (arXiv 2405.12250), in-sample and held out, with and without
the residual path.

Each transition keeps its own float64 moments (48 B·d² over the three splits), scored and freed as
soon as its group of layers is done, so the runner can bound the memory by serving a few layers per
pass."""

from __future__ import annotations

import torch

from ..core.section import AuditContext, LayeredSection, Need
from ..core.report import Figure, Metric, SectionResult, Series
from ..core.collect import Batch
from ..core.sites import Site
from ..core.stats import RunningMoments
from .affine import affine_r2, fit_affine, residual_moments

SOURCE = "arXiv 2405.12250"
RIDGES = (1e-4, 1e-2, 1.0)
SPLITS = ("train", "validation", "test")
CURVES = ("in_sample", "held_out", "no_residual_in_sample", "no_residual_held_out")


def _split_of(text_index: torch.Tensor) -> torch.Tensor:
    # Whole texts go to one split, so neighbouring tokens of one text never straddle train and test.
    return torch.tensor([0, 0, 1, 2])[text_index % 4]


class InterLayerLinearity(LayeredSection):
    id = "interlayer_linearity"
    title = "Inter-layer linearity"

    def layer_state_bytes(self, ctx: AuditContext) -> int:
        d = ctx.structure.d_model
        return len(SPLITS) * 8 * (2 * d * d + 2 * d + 1)  # sxx, sxy, means, trace of syy per split

    def layer_needs(self, ctx: AuditContext, layers: range) -> list[Need]:
        d = ctx.structure.d_model
        if layers.start == 0:
            self.curves: dict[str, dict[int, float]] = {key: {} for key in CURVES}
            self.n_tokens = self.n_test = 0
        # state l is the input of block l (resid_pre.0, then resid_post.l-1)
        self.states = {l: Site("resid_pre", 0) if l == 0 else Site("resid_post", l - 1)
                       for l in range(layers.start, layers.stop + 1)}
        # moments of (h_l, h_{l+1} - h_l) per transition and split; R² needs only the trace of y's covariance
        self.moments = {l: [RunningMoments(d, d, batch_dtype=torch.float32, y_trace_only=True) for _ in SPLITS]
                        for l in layers}
        return [Need("neutral", tuple(self.states.values()), positions="all", skip_first=True)]

    def consume(self, source: str, batch: Batch) -> None:
        split = _split_of(batch.text_index)
        rows = [(split == k).nonzero()[:, 0] for k in range(len(SPLITS))]
        for layer, per_split in self.moments.items():
            x = batch.activations[self.states[layer]].float().cpu()
            delta = batch.activations[self.states[layer + 1]].float().cpu() - x
            for chosen, moments in zip(rows, per_split):
                if chosen.numel():
                    moments.update(x[chosen], delta[chosen])

    def reduce_layers(self, ctx: AuditContext, layers: range) -> None:
        for layer in layers:
            train, val, test = self.moments.pop(layer)
            whole = train.merge(val).merge(test)
            with_residual = [residual_moments(m) for m in (train, val, test)]
            scores = {
                "in_sample": _in_sample(residual_moments(whole)),
                "no_residual_in_sample": _in_sample(whole),
                "held_out": _held_out(*with_residual),
                "no_residual_held_out": _held_out(train, val, test),
            }
            for key, value in scores.items():
                self.curves[key][layer] = value
            self.n_tokens, self.n_test = whole.n, test.n

    def report(self, ctx: AuditContext) -> SectionResult:
        result = SectionResult(self.id, self.title)
        curves = {key: [values[l] for l in sorted(values)] for key, values in self.curves.items()}
        n_tokens, n_test = self.n_tokens, self.n_test
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
        layers = list(range(len(curves["in_sample"])))
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
