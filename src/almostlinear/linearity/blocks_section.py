"""Audit section: how linear is each attention and each MLP, what replacing one by its affine map
costs in loss, and how far apart the layers' last-token states are (angular distance).

The sublayers' inputs and outputs (``attn_in``/``attn_out``, ``mlp_in``/``mlp_out``) and the
residual states come from the audit's shared pass over the neutral texts; each text goes whole to
one split by its index, and each split's moments are folded in the groups of texts a pass over that
split alone would use, so they equal those of one pass per split. The moments (96 B·d² per block)
are fitted, scored and freed as soon as their group of layers is done; of the fitted maps only those
still among the most and least linear are kept for the replacement step."""

from __future__ import annotations

import dataclasses
import math
import time

import torch

from ..core.collect import Batch
from ..core.errors import EmptyDataError, StructureError
from ..core.report import Figure, Metric, SectionResult, Series
from ..core.section import AuditContext, LayeredSection, Need, last_token_rows
from ..core.sites import Site
from .blocks import angular_distance_profile, held_out_r2
from .passes import SplitMoments, next_token_loss, sublayer_sites
from .sublayers import KINDS, replace_sublayer, sublayer

R2_SOURCE = "arXiv 2606.19379"
LINEARISE_SOURCE = "arXiv 2405.12250"
ANGULAR_SOURCE = "arXiv 2403.17887"
R2_REFERENCE = ("GPT-2, Pythia-160m and llama-160m MLP blocks range from >0.99 to <0.3, "
                "non-monotone in depth (abstract)")
NAMES = {"attn": "attention", "mlp": "MLP"}
# Whole texts to one split by their index: of each 4, the first two train, the third validates,
# the fourth tests.
SPLITS = {"train": (0, 1), "val": (2,), "test": (3,)}


class BlockLinearitySection(LayeredSection):
    id = "block_linearity"
    title = "Per-block linearity of attention and MLP"

    def applicable(self, ctx: AuditContext) -> str | None:
        try:
            sublayer(ctx.structure, 0, "mlp")
        except StructureError as error:
            return str(error)
        return None

    def layer_state_bytes(self, ctx: AuditContext) -> int:
        d = ctx.structure.d_model
        return len(SPLITS) * len(KINDS) * 8 * (2 * d * d + 2 * d + 1)  # sxx, sxy, means, trace of syy

    def layer_needs(self, ctx: AuditContext, layers: range) -> list[Need]:
        s = ctx.structure
        if layers.start == 0:
            self.r2: dict[str, dict[int, float]] = {kind: {} for kind in KINDS}
            self.fits: dict[str, dict[int, object]] = {kind: {} for kind in KINDS}
            self.last_states: dict[int, list[torch.Tensor]] = {}
            self.fit_seconds = 0.0
            self.n_fit = self.n_test = 0
        # residual states read at the last token, for the angular distances: state l is block l's input
        final = layers.stop == s.n_layers
        self.state_index = list(layers) + ([s.n_layers] if final else [])
        self.states = tuple(Site("resid_pre", 0) if i == 0 else Site("resid_post", i - 1) for i in self.state_index)
        self.parts = [sublayer(s, layer, kind) for layer in layers for kind in KINDS]
        # each split folds its texts in the groups a pass over that split alone would batch them in
        self.moments = SplitMoments(self.parts, s.d_model, SPLITS, ctx.budget.batch_size)
        return [Need("neutral", self.states + sublayer_sites(self.parts), positions="all", skip_first=True)]

    def consume(self, source: str, batch: Batch) -> None:
        began = time.perf_counter()
        self.moments.add(batch)
        self.fit_seconds += time.perf_counter() - began
        last = last_token_rows(batch)
        for index, site in zip(self.state_index, self.states):
            state = batch.activations[site]
            self.last_states.setdefault(index, []).append(state[last.to(state.device)].float().cpu())

    def reduce_layers(self, ctx: AuditContext, layers: range) -> None:
        began = time.perf_counter()
        moments, self.moments = self.moments.result(), None
        k = 2 if ctx.quick else 3  # how many of the most and of the least linear blocks are replaced
        for kind in KINDS:
            r2, fits = held_out_r2(moments["train"][kind], moments["val"][kind], moments["test"][kind])
            for layer, value, fit in zip(layers, r2.tolist(), fits):
                self.r2[kind][layer] = value
                # a fit's map is a view into the group's [layers, d, d] solve: a copy lets the rest go
                self.fits[kind][layer] = dataclasses.replace(fit, A=fit.A.clone())
            # keep only the maps that can still be among the k most or k least linear blocks
            order = sorted(self.r2[kind], key=self.r2[kind].__getitem__, reverse=True)
            keep = set(order[:k] + order[-k:])
            self.fits[kind] = {layer: fit for layer, fit in self.fits[kind].items() if layer in keep}
        self.n_fit = moments["train"]["mlp"].n + moments["val"]["mlp"].n
        self.n_test = moments["test"]["mlp"].n
        self.fit_seconds += time.perf_counter() - began

    def report(self, ctx: AuditContext) -> SectionResult:
        result = SectionResult(self.id, self.title)
        s = ctx.structure
        texts = ctx.texts("neutral")
        split = {name: [t for i, t in enumerate(texts) if i % 4 in rests] for name, rests in SPLITS.items()}
        train, val, test = split["train"], split["val"], split["test"]
        if min(len(train), len(val), len(test)) == 0:
            raise EmptyDataError(f"need at least 4 neutral texts for train/validation/test, got {len(texts)}")
        r2 = {kind: torch.tensor([self.r2[kind][layer] for layer in range(s.n_layers)], dtype=torch.float64)
              for kind in KINDS}
        fits, fit_seconds = self.fits, self.fit_seconds
        layers = list(range(s.n_layers))
        for kind in KINDS:
            name = f"{kind}_r2_held_out"
            reference = R2_REFERENCE if kind == "mlp" else "not reported for attention"
            for layer in layers:
                result.metrics.append(Metric(name, float(r2[kind][layer]), "R²", reference if kind == "mlp" else None,
                                             R2_SOURCE if kind == "mlp" else None, layer=layer))
            values = r2[kind]
            lo, hi = int(values.argmin()), int(values.argmax())
            result.metrics += [
                Metric(f"{kind}_r2_held_out_mean", float(values.mean()), "R²", reference, R2_SOURCE),
                Metric(f"{kind}_r2_held_out_min", float(values[lo]), "R²", note=f"block {lo}"),
                Metric(f"{kind}_r2_held_out_max", float(values[hi]), "R²", note=f"block {hi}"),
            ]
        result.figures.append(Figure(
            "sublayer_r2", "Held-out R² of the best affine map from each sublayer's input to its output",
            "block", "R²", [Series(NAMES[k], layers, [float(v) for v in r2[k]]) for k in KINDS]))
        n_test = self.n_test
        result.metrics.append(Metric("tokens_fit", self.n_fit, "tokens"))
        result.metrics.append(Metric("tokens_test", n_test, "tokens"))
        if ctx.causal:
            self._replacement(ctx, result, r2, fits, test)
        else:
            result.notes.append("No output head: the loss cost of replacing a sublayer was not measured.")
        self._angular(result)
        result.notes[:0] = [
            f"Sublayer inputs are the tensors the attention and the MLP modules receive (attn_in, mlp_in: after "
            f"the block's norms), outputs what they write (attn_out, mlp_out). Maps are fitted on "
            f"{len(train)} texts, the ridge (relative to the mean input variance) is chosen per block on "
            f"{len(val)} more, and R² is scored on {len(test)} held-out texts ({n_test} tokens); first tokens "
            f"are excluded throughout. Accumulating the moments in the shared pass and fitting took "
            f"{fit_seconds:.1f} s.",
            _r2_verdict(r2),
        ]
        return result

    def _replacement(self, ctx: AuditContext, result: SectionResult, r2, fits, test: list[str]) -> None:
        loaded, budget = ctx.loaded, ctx.budget
        k = 2 if ctx.quick else 3
        per_text = max(budget.neutral_new_tokens, 16)
        n_texts = max(1, min(len(test), -(-budget.lens_tokens // per_text)))
        texts = test[:n_texts]
        run = dict(batch_size=budget.batch_size, max_length=budget.max_length)
        base, tokens = next_token_loss(loaded.model, loaded.tokenizer, texts, **run)
        series = []
        for kind in KINDS:
            order = torch.argsort(r2[kind], descending=True).tolist()
            chosen = list(dict.fromkeys(order[:k] + order[-k:]))
            deltas = {}
            for layer in chosen:
                part = sublayer(ctx.structure, layer, kind)
                with replace_sublayer(loaded.model, part, fits[kind][layer], skip_first=True, structure=ctx.structure):
                    loss, _ = next_token_loss(loaded.model, loaded.tokenizer, texts, **run)
                deltas[layer] = loss - base
                most = layer in order[:k]
                reference = ("barely changes the loss (most linear blocks; qualitative)" if most else None)
                result.metrics.append(Metric(
                    f"{kind}_replacement_delta_ce", loss - base, "nats/token", reference,
                    LINEARISE_SOURCE if most else None, layer=layer,
                    note=f"{'most' if most else 'least'} linear; held-out R² {float(r2[kind][layer]):.3f}; "
                         f"perplexity {math.exp(base):.2f} → {math.exp(loss):.2f}"))
            xs = sorted(deltas)
            series.append(Series(NAMES[kind], xs, [deltas[x] for x in xs]))
        result.metrics += [
            Metric("baseline_cross_entropy", base, "nats/token"),
            Metric("replacement_eval_tokens", tokens, "tokens"),
        ]
        result.figures.append(Figure(
            "replacement_delta_ce", f"Loss increase when one sublayer is replaced by its affine map ({k} most and "
            f"{k} least linear of each kind)", "block", "Δ cross-entropy (nats/token)", series, reference=0.0))
        most = {kind: [m for m in result.metrics if m.name == f"{kind}_replacement_delta_ce" and m.source]
                for kind in KINDS}
        least = {kind: [m for m in result.metrics if m.name == f"{kind}_replacement_delta_ce" and not m.source]
                 for kind in KINDS}
        worst_most = max(m.value for ms in most.values() for m in ms)

        def listed(metrics) -> str:
            return ", ".join(f"{m.value:+.3f} (block {m.layer})" for m in metrics) or "none besides those"

        result.notes.append(
            f"Replacement: the sublayer's output is swapped for its affine map's prediction at every position but "
            f"the first, one sublayer at a time, on {len(texts)} held-out texts ({tokens} predicted tokens, baseline "
            f"{base:.3f} nats). arXiv 2405.12250 reports that linearising the most linear blocks barely changes "
            f"the loss; arXiv 2606.19379 replaces GPT-2's early FFN at 8x fewer parameters for +0.77 perplexity "
            f"(another model and text). Here the most linear MLPs cost {listed(most['mlp'])} and the least linear "
            f"{listed(least['mlp'])} nats/token; the most linear attentions {listed(most['attn'])}, the least "
            f"linear {listed(least['attn'])}. "
            + ("As in the literature, replacing the most linear sublayers barely moves the loss."
               if worst_most < 0.05 else
               "Unlike arXiv 2405.12250's finding, even the most linear sublayers cost a clear loss increase here: "
               "R² is relative to each sublayer's own output variance, and a sublayer with large outputs leaves a "
               "large absolute error at a high R²."))

    def _angular(self, result: SectionResult) -> None:
        states = torch.stack([torch.cat(self.last_states[i]) for i in sorted(self.last_states)])  # [S, texts, d]
        profile = angular_distance_profile(states)  # [S-1 shifts, S-1 starts]
        count = states.shape[0]
        blocks = count - 1
        for block in range(blocks):
            result.metrics.append(Metric("angular_distance_across_block", float(profile[0, block]), "fraction of π",
                                         layer=block, note="between the block's input and its output"))
        minima, starts = [], []
        for shift in range(1, count):
            row = profile[shift - 1, : count - shift]
            minima.append(float(row.min()))
            starts.append(int(row.argmin()))  # first block of the most similar run of `shift` blocks
        shifts = list(range(1, count))
        deep = sum(1 for n, a in zip(shifts, starts) if a + (n - 1) / 2 >= (blocks - 1) / 2) / len(shifts)
        for n in sorted({1, 2, 4, 8, blocks // 2} & set(shifts)):
            result.metrics.append(Metric(
                f"angular_distance_min_n{n}", minima[n - 1], "fraction of π",
                "the most similar run of n blocks lies deep in the network (qualitative)", ANGULAR_SOURCE,
                note=f"blocks {starts[n - 1]}..{starts[n - 1] + n - 1}"))
        result.figures.append(Figure(
            "angular_distance", "Angular distance between the input of block ℓ and the output of block ℓ+n-1 "
            "(last token)", "first block ℓ", "arccos(cos)/π",
            [Series(f"n={n}", list(range(count - n)), [float(v) for v in profile[n - 1, : count - n]])
             for n in sorted({1, 2, 4, 8} & set(shifts))]))
        result.figures.append(Figure("angular_distance_min", "Smallest angular distance over ℓ for each n",
                                     "n (blocks spanned)", "arccos(cos)/π", [Series("min over ℓ", shifts, minima)]))
        result.notes.append(
            f"Angular distance (arXiv 2403.17887) at the last token of {states.shape[1]} neutral texts. The most "
            f"similar run of n blocks sits in the deeper half for {deep:.0%} of n; "
            + ("as in the paper, the deeper blocks are the most redundant." if deep >= 0.5 else
               "unlike the paper's finding that deeper blocks are the most redundant, here the most similar runs sit "
               "mostly in the first half and the middle.")
            + f" Across single blocks the distance is largest at block {int(profile[0].nan_to_num(-1).argmax())} "
            f"({float(profile[0].nan_to_num(-1).max()):.2f}) and smallest at block {starts[0]} ({minima[0]:.3f}).")


def _r2_verdict(r2: dict[str, torch.Tensor]) -> str:
    mlp, attn = r2["mlp"], r2["attn"]
    spread = float(mlp.max() - mlp.min())
    return (f"MLP held-out R² ranges from {float(mlp.min()):.2f} (block {int(mlp.argmin())}) to {float(mlp.max()):.2f} "
            f"(block {int(mlp.argmax())}), mean {float(mlp.mean()):.2f}; attention mean {float(attn.mean()):.2f}. "
            + ("Like the small models of arXiv 2606.19379, blocks differ widely in how linear they are"
               if spread > 0.3 else "The blocks are more alike than in the small models of arXiv 2606.19379")
            + ("; none comes near their most linear blocks (>0.99)." if float(mlp.max()) < 0.95 else "."))
