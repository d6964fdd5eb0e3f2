"""Audit section "weight_space": linear paths in weight space.

On the digits MLPs (trained once, cached): the barrier between independently trained networks
before and after permutation alignment, a model soup against its best ingredient, and task-vector
negation and addition. On the audited model: cross-entropy on neutral text along the straight line
to a copy with small Gaussian noise added to every weight, and how that rise is shaped (a quadratic
bowl around a minimum rises a quarter of the way at the midpoint; a linear slope, half).
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.lever import temporarily_changed
from ..core.report import Figure, Metric, SectionResult, Series
from ..core.section import AuditContext, Need, Section
from ..core.threads import one_thread
from . import digits as demos
from .line import interpolate

NOISE = 0.02  # Gaussian noise per tensor, as a fraction of the tensor's root-mean-square
REBASIN = "arXiv 2209.04836"
REPAIR = "arXiv 2211.08403"
SOUPS = "arXiv 2203.05482"
TASKS = "arXiv 2212.04089"
LMC = "arXiv 1912.05671"


class WeightSpaceSection(Section):
    id = "weight_space"
    title = "Weight space: barriers, alignment, soups, task vectors"

    def needs(self, ctx: AuditContext) -> list[Need]:
        # The line through the model's weights runs its own forward passes over the neutral texts'
        # token ids (tokenised as the shared pass does), so the source is needed, not activations.
        return [Need("neutral")] if ctx.causal else []

    def finish(self, ctx: AuditContext) -> SectionResult:
        result = SectionResult(self.id, self.title)
        quick = ctx.quick
        with one_thread():  # tiny MLPs and small assignment problems
            self._digits(result, quick)
        if ctx.causal:
            self._model_line(ctx, result, quick)
        else:
            result.notes.append("The line through the audited model's weights needs a causal language model "
                                "(cross-entropy on text); only the digits evidence is shown.")
        return result

    # --------------------------------------------------------------------------------------------
    def _digits(self, result: SectionResult, quick: bool) -> None:
        rb = demos.rebasin(64, alphas=11, activation=True, repair=True)
        m = result.metrics
        m += [
            Metric("digits_naive_barrier", rb["naive_barrier_points"], "accuracy points",
                   "large between independently trained networks", REBASIN,
                   note=f"width-64 MLPs, 2 hidden layers, seeds {rb['seeds']}; midpoint accuracy "
                        f"{rb['naive_midpoint_accuracy']:.3f} vs endpoints {rb['endpoint_accuracy'][0]:.3f}/"
                        f"{rb['endpoint_accuracy'][1]:.3f}"),
            Metric("digits_weight_matching_barrier", rb["weight_matching_barrier_points"], "accuracy points",
                   "near 0 after alignment for wide MLPs; shrinks with width", REBASIN,
                   note=f"{rb['weight_matching_sweeps']} sweeps, {1000 * rb['weight_matching_s']:.0f} ms"),
            Metric("digits_activation_matching_barrier", rb["activation_matching_barrier_points"], "accuracy points",
                   "near 0 after alignment for wide MLPs", REBASIN),
            Metric("digits_weight_matching_repair_barrier", rb["weight_matching_repair_barrier_points"],
                   "accuracy points", "REPAIR removes 60-100% of the remaining barrier (deep/wide nets)", REPAIR),
            Metric("digits_naive_loss_barrier", rb["naive_loss_barrier"], "nats", None, LMC),
            Metric("digits_weight_matching_loss_barrier", rb["weight_matching_loss_barrier"], "nats",
                   "near 0 after alignment", REBASIN),
        ]
        curves = []
        for tag, label in (("naive", "naive"), ("weight_matching", "weight matching"),
                           ("weight_matching_repair", "weight matching + REPAIR"),
                           ("activation_matching", "activation matching")):
            c = rb[f"{tag}_curve"]
            curves.append(Series(label, c["alphas"], c["values"]["accuracy"]))
        result.figures.append(Figure("digits_interpolation", "Test accuracy between two independently trained "
                                     "digits MLPs (width 64)", "alpha (0 = A, 1 = B)", "accuracy", curves))
        soup = demos.soups(64, lrs=(0.02, 0.05), weight_decays=(0.0,)) if quick else demos.soups(64)
        m += [
            Metric("digits_soup_gain_uniform", 100 * (soup["uniform_soup_accuracy"] - soup["best_single_accuracy"]),
                   "accuracy points", "+0.65 greedy, -0.41 uniform on ImageNet (CLIP ViT-B/32, 72 fine-tunes)",
                   SOUPS, note=f"{soup['fine_tunes']} fine-tunes of one pre-trained MLP; uniform soup "
                               f"{soup['uniform_soup_accuracy']:.3f}, best single {soup['best_single_accuracy']:.3f}"),
            Metric("digits_soup_gain_greedy", 100 * (soup["greedy_soup_accuracy"] - soup["best_single_accuracy"]),
                   "accuracy points", 0.65, SOUPS,
                   note=f"{soup['greedy_soup_ingredients']} ingredients kept by validation accuracy"),
            Metric("digits_independent_average_accuracy", soup["independent_init_average_accuracy"], "fraction",
                   "collapses without a shared initialisation", SOUPS,
                   note="weight average of two networks trained from different initialisations"),
        ]
        tv = demos.task_vectors(64)
        neg = tv.get("negated")
        m += [
            Metric("digits_task_negation_target_accuracy", neg["low"] if neg else None, "fraction",
                   "drops toward chance while control accuracy stays >= 95% of the base", TASKS,
                   note=f"task = digits 0-4; base {tv['base']['low']:.3f}; scale "
                        f"{tv.get('negation_scale')}; chance 0.1 (10-way)"),
            Metric("digits_task_negation_control_accuracy", neg["high"] if neg else None, "fraction",
                   ">= 95% of the base", TASKS, note=f"control = digits 5-9; base {tv['base']['high']:.3f}"),
            Metric("digits_task_addition_normalized_accuracy", tv["addition_normalized_accuracy"], "fraction",
                   "0.76 for 8 CLIP ViT-B/32 tasks (69.1 / 90.8 % absolute)", "arXiv 2310.02575",
                   note=f"tau(0-4) + tau(5-9), scale {tv['addition_scale']}; all-digit accuracy "
                        f"{tv['added']['all']:.3f} vs base {tv['base']['all']:.3f}"),
        ]
        result.notes.append(
            f"Digits (scikit-learn 8x8; 1200 train, 200 validation, 397 test images): width-64 ReLU MLPs trained "
            f"with SGD, cached after the first run. Barriers are the worst test error on the straight line minus "
            f"the mean of the endpoints ({LMC}), in accuracy points. Soups: {soup['fine_tunes']} fine-tunes on "
            f"500 images of a net pre-trained on 500 others. Task vectors: fine-tunes of one base on digits 0-4 "
            f"and on 5-9.")

    # --------------------------------------------------------------------------------------------
    def _model_line(self, ctx: AuditContext, result: SectionResult, quick: bool) -> None:
        model = ctx.loaded.model
        n_texts, alphas = (6, [0.0, 0.25, 0.5, 0.75, 1.0]) if quick else (16, [i / 10 for i in range(11)])
        seqs = [s for s in _token_ids(ctx, n_texts, max_tokens=64) if len(s) >= 2]
        if not seqs:
            result.notes.append("no neutral text long enough for the line through the model's weights")
            return
        if not quick and len(seqs) >= 4:
            # the full audit also walks toward a short fine-tune on half the texts, scored on the other half
            half = len(seqs) // 2
            self._fine_tune_line(model, result, seqs[:half], seqs[half:], alphas)
            seqs = seqs[half:]
        generator = torch.Generator().manual_seed(ctx.seed)
        target = {}
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator).to(p.device, p.dtype)
            target[name] = p.detach() + NOISE * p.detach().float().pow(2).mean().sqrt().to(p.dtype) * noise
        for name, b in model.named_buffers():
            target[name] = b.detach()
        curve = interpolate(model, target, lambda m: _cross_entropy(m, seqs), alphas)
        ces = list(curve.values["loss"])
        del target
        rise = ces[-1] - ces[0]
        mid = ces[alphas.index(0.5)]
        shape = (mid - ces[0]) / rise if rise > 0 else float("nan")
        n_tok = sum(len(s) - 1 for s in seqs)
        result.metrics += [
            Metric("model_ce_at_start", ces[0], "nats/token"),
            Metric("model_ce_at_noisy_copy", ces[-1], "nats/token",
                   note=f"every weight tensor plus Gaussian noise of {NOISE:.0%} of its RMS"),
            Metric("model_ce_midpoint_excess", mid - (ces[0] + ces[-1]) / 2, "nats/token",
                   "<= 0 in a convex basin", LMC),
            Metric("model_ce_rise_shape", shape, "fraction of the full rise at alpha = 0.5",
                   "0.25 for a quadratic bowl around a minimum; 0.5 for a linear slope",
                   note="(CE(0.5) - CE(0)) / (CE(1) - CE(0))"),
        ]
        result.figures.append(Figure("model_noise_line", "Cross-entropy on neutral text along the line to a noisy "
                                     "copy of the audited model", "alpha (0 = model, 1 = noisy copy)",
                                     "nats/token", [Series("cross-entropy", alphas, ces)]))
        result.notes.append(
            f"Line through the audited model: {len(seqs)} neutral texts, {n_tok} predicted tokens, "
            f"{len(alphas)} points; weights restored bit for bit afterwards. A rise shape near 0.25 means the "
            f"loss is locally quadratic (the model sits at a minimum along this direction); near 0.5, locally "
            f"linear.")

    def _fine_tune_line(self, model: nn.Module, result: SectionResult, train: list[list[int]],
                        held_out: list[list[int]], alphas: list[float]) -> None:
        target = _fine_tuned_weights(model, train, steps=FT_STEPS, lr=FT_LR)
        curve = interpolate(model, target, lambda m: _cross_entropy(m, held_out), alphas)
        del target
        ces = list(curve.values["loss"])
        result.metrics += [
            Metric("model_finetune_ce_start", ces[0], "nats/token", note="held-out neutral text"),
            Metric("model_finetune_ce_end", ces[-1], "nats/token",
                   note=f"after {FT_STEPS} Adam steps (lr {FT_LR:g}) on {len(train)} other neutral texts"),
            Metric("model_finetune_barrier", curve.barrier("loss"), "nats/token",
                   "about 0: a fine-tune stays in its pre-trained basin", "arXiv 2008.11687"),
            Metric("model_finetune_barrier_above_line", curve.barrier_linear("loss"), "nats/token",
                   "about 0", "arXiv 2008.11687"),
        ]
        result.figures.append(Figure("model_finetune_line", "Held-out cross-entropy along the line to a short "
                                     "fine-tune of the audited model", "alpha (0 = model, 1 = fine-tune)",
                                     "nats/token", [Series("cross-entropy", list(curve.alphas), ces)]))


FT_STEPS = 4
FT_LR = 3e-5


def _token_ids(ctx: AuditContext, n_texts: int, *, max_tokens: int) -> list[list[int]]:
    """The first ``max_tokens`` ids of the first ``n_texts`` neutral texts, as the shared pass tokenises them."""
    tokenizer, seqs = ctx.loaded.tokenizer, []
    for text in ctx.texts("neutral"):
        if len(seqs) == n_texts:
            break
        ids = list(tokenizer(text, truncation=True, max_length=ctx.budget.max_length)["input_ids"])
        if ids:
            seqs.append(ids[:max_tokens])
    return seqs


def _fine_tuned_weights(model: nn.Module, seqs: list[list[int]], *, steps: int, lr: float) -> dict:
    """Weights after ``steps`` full-batch Adam steps of next-token loss on ``seqs``; the model is restored."""
    device = next(model.parameters()).device
    params = dict(model.named_parameters())
    grad_flags = {k: v.requires_grad for k, v in params.items()}
    was_training = model.training
    optimiser = torch.optim.Adam(params.values(), lr=lr)
    # the optimiser's steps are the change: every parameter comes back bit for bit on exit
    with temporarily_changed(model, params, lambda: None):
        try:
            model.train()
            for p in params.values():
                p.requires_grad_(True)
            for _ in range(steps):
                optimiser.zero_grad(set_to_none=True)
                count = sum(len(s) - 1 for s in seqs)
                for s in seqs:  # one text at a time: gradients accumulate, memory stays small
                    ids = torch.tensor([s], device=device)
                    logits = model(input_ids=ids).logits[0, :-1].float()
                    (nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum") / count).backward()
                optimiser.step()
            target = {k: v.detach().clone() for k, v in params.items()}
            target.update({k: v.detach() for k, v in model.named_buffers()})
        finally:
            for k, p in params.items():
                p.requires_grad_(grad_flags[k])
                p.grad = None
            model.train(was_training)
    return target


@torch.no_grad()
def _cross_entropy(model: nn.Module, seqs: list[list[int]], batch_size: int = 8) -> float:
    """Mean next-token cross-entropy over token sequences, right-padded into batches."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(seqs), batch_size):
        part = seqs[start:start + batch_size]
        width = max(len(s) for s in part)
        ids = torch.zeros(len(part), width, dtype=torch.long)
        mask = torch.zeros(len(part), width, dtype=torch.long)
        for row, s in enumerate(part):
            ids[row, :len(s)] = torch.tensor(s)
            mask[row, :len(s)] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)  # padding is not predicted
        total += float(nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                   ignore_index=-100, reduction="sum"))
        count += int((targets != -100).sum())
    return total / count
