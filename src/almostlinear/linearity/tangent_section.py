"""Audit section: tangent-space linearity.

Part one, on the audited model: a short fine-tune of some MLP weights on neutral text gives a delta
``Delta``; the first-order expansion ``f(theta0) + a J Delta`` (one jvp) is compared with the real
``f(theta0 + a Delta)`` on other texts for several scales ``a``. Part two, on small MLPs trained on
scikit-learn's 8x8 digits in seconds: task vectors for two tasks added, in the real model and in the
model linearised at the starting point, after standard and after linearised fine-tuning
(arXiv 2305.12827).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..core.section import AuditContext, Section
from ..core.report import Figure, Metric, SectionResult, Series
from ..core.collect import model_device, tokenize
from ..core.threads import one_thread
from ..zoo.digits_data import digits
from .tangent import (
    HALF,
    TaskAddition,
    finetune_delta,
    lm_logits_function,
    lm_loss_function,
    module_function,
    select_parameters,
    tangent_profile,
    task_addition,
)

SOURCE = "arXiv 2305.12827"
ALPHAS = (1.0, 4.0, 16.0, 64.0)
LR = 3e-4


def down_projection_names(model: nn.Module, structure, blocks) -> list[str]:
    """Parameter names of the MLP down-projection weights of the given blocks."""
    names = {id(module): name for name, module in model.named_modules()}
    return [f"{names[id(structure.blocks[i].mlp_down_proj)]}.weight" for i in blocks]


# -- the digits experiment -----------------------------------------------------------------------


def digit_task_arithmetic(seed: int = 0, steps: int = 60, alpha: float = 1.0,
                          hidden: int = 64) -> dict[str, TaskAddition]:
    """Two tasks on the digits (tell 0-4 apart, tell 5-9 apart), each a fine-tune of one small MLP.

    The starting point is an MLP trained briefly on 150 digits. Each task's delta comes from full-batch
    Adam on its own digits, either on the real network (``"standard"``) or on its linearisation at
    the start (``"linearised"``); both are then added. Scores are held-out accuracies within each task.
    """
    d = digits("tangent", seed)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(64, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(net(d.x_train[:150]), d.y_train[:150]).backward()
        opt.step()
    params0 = select_parameters(net, lambda _name, _p: True)
    tasks = [torch.arange(0, 5), torch.arange(5, 10)]

    def task_loss(out: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        chosen = torch.isin(d.y_train, classes)
        return F.cross_entropy(out[chosen][:, classes], d.y_train[chosen] - classes[0])

    def score(classes: torch.Tensor):
        chosen = torch.isin(d.y_test, classes)

        def accuracy(out: torch.Tensor) -> float:
            return float((out[chosen][:, classes].argmax(1) == d.y_test[chosen] - classes[0]).float().mean())

        return accuracy

    f_train, f_test = module_function(net, d.x_train), module_function(net, d.x_test)
    results = {}
    for mode in ("standard", "linearised"):
        deltas = []
        for classes in tasks:
            if mode == "standard":
                delta = finetune_delta(lambda p, c=classes: task_loss(f_train(p), c), params0, steps=steps, lr=1e-3,
                                       optimizer="adam")
            else:
                delta = finetune_delta(None, params0, steps=steps, lr=1e-3, optimizer="adam", linearised_f=f_train,
                                       linearised_loss=lambda out, c=classes: task_loss(out, c))
            deltas.append(delta)
        results[mode] = task_addition(f_test, params0, deltas, [score(c) for c in tasks], alpha=alpha)
    return results


# -- the section ---------------------------------------------------------------------------------


class TangentSection(Section):
    id = "tangent"
    title = "Tangent-space linearity"

    def finish(self, ctx: AuditContext) -> SectionResult:
        result = SectionResult(self.id, self.title)
        if ctx.causal:
            self._model_profile(ctx, result)
        else:
            result.notes.append("The fine-tuning profile needs a causal language model; only the digits "
                                "task arithmetic ran.")
        with one_thread():  # many tiny MLP steps: a second thread only adds synchronisation
            self._digits(ctx, result)
        return result

    def _model_profile(self, ctx: AuditContext, result: SectionResult) -> None:

        quick = ctx.quick
        loaded, structure = ctx.loaded, ctx.structure
        texts = ctx.texts("neutral")
        if len(texts) < 2:
            result.notes.append("Too few neutral texts for the fine-tuning profile.")
            return
        small = ctx.budget.neutral_texts <= 8  # a smoke-test budget
        n = min(2 if small else 3 if quick else 8, len(texts) // 2)
        max_length = 16 if small else 32 if quick else 64
        steps = 2 if quick else 8
        layers = structure.n_layers
        # Quick: two blocks a third and two thirds deep, so the change still passes through many
        # non-linear blocks on its way to the logits; full: every block.
        blocks = sorted({layers // 3, (2 * layers) // 3}) if quick else list(range(layers))
        device = model_device(loaded.model)
        train = tokenize(loaded.tokenizer, texts[:n], max_length=max_length, device=device)
        held = tokenize(loaded.tokenizer, texts[n:2 * n], max_length=max_length, device=device)
        names = down_projection_names(loaded.model, structure, blocks)
        params0 = select_parameters(loaded.model, names)
        losses: list[float] = []
        delta = finetune_delta(lm_loss_function(loaded.model, train), params0, steps=steps, lr=LR,
                               optimizer="adam", losses=losses)
        before, after = losses[0], losses[-1]
        profile = tangent_profile(lm_logits_function(loaded.model, held), params0, delta, ALPHAS)
        for alpha, explained, rel in zip(profile.alphas, profile.explained, profile.relative_error):
            result.metrics.append(Metric(
                f"tangent_explained_a{alpha:g}", explained, "fraction",
                "fine-tuned CLIP models are not fully in the linear regime; linearised fine-tuning helps "
                "task arithmetic (qualitative)", SOURCE,
                note=f"delta scaled by {alpha:g}; relative error {rel:.3g}"))
        result.metrics += [
            Metric("tangent_relative_delta", profile.relative_delta, "fraction",
                   note="||Delta|| / ||theta0|| over the fine-tuned weights"),
            Metric("tangent_finetune_loss_before", before, "nats/token"),
            Metric("tangent_finetune_loss_last_step", after, "nats/token",
                   note=f"training loss before the last of {steps} steps"),
        ]
        result.figures.append(Figure(
            "tangent_explained", "Output change explained by the first-order expansion, by scale of the delta",
            "scale of the fine-tuning delta", "explained fraction",
            [Series("logits on held-out text", profile.alphas, profile.explained)], reference=1.0))
        where = ", ".join(map(str, blocks)) if len(blocks) <= 4 else f"{blocks[0]}–{blocks[-1]}"
        moved = sum(p.numel() for p in params0.values())
        result.notes.append(
            f"Fine-tuning delta: {steps} Adam steps (lr {LR:g}) on the next-token loss of {n} neutral texts "
            f"(≤{max_length} tokens each), moving only the MLP down-projection weights of blocks {where} "
            f"({moved:,} parameters); loss {before:.2f} → {after:.2f} (before the last step). Explained fraction = "
            f"1 − ||f(θ0+aΔ) − f(θ0) − aJΔ||² / ||f(θ0+aΔ) − f(θ0)||² over the logits of {n} other texts "
            f"({int(held['attention_mask'].sum())} tokens); JΔ is one forward-mode jvp. At a = 1 the expansion "
            f"explains {profile.explained[ALPHAS.index(1.0)]:.4f} of the change (relative weight change "
            f"{profile.relative_delta:.2g}); at a = {ALPHAS[-1]:g}, {profile.explained[-1]:.3f}."
        )
        dtype = next(iter(params0.values())).dtype
        if dtype in HALF:
            result.notes.append(
                f"The model's weights are {str(dtype).removeprefix('torch.')}: the delta, Adam's state and every "
                "forward pass and jvp here run in float32 on float32 copies of the weights (exact), because "
                "the change a short fine-tune causes is near the rounding noise of a half-precision forward pass.")

    def _digits(self, ctx: AuditContext, result: SectionResult) -> None:
        steps = 20 if ctx.budget.neutral_texts <= 8 else 30 if ctx.quick else 150
        found = digit_task_arithmetic(seed=ctx.seed, steps=steps)
        summary = {}
        for mode, r in found.items():
            evaluated = {"real": (r.single_real, r.added_real, r.normalised_real),
                         "linearised": (r.single_linearised, r.added_linearised, r.normalised_linearised)}
            for model, (single, added, per_task) in evaluated.items():
                normalised = sum(per_task) / len(per_task)
                summary[(mode, model)] = normalised
                result.metrics.append(Metric(
                    f"digits_{mode}_ft_{model}_model_normalised_accuracy", normalised, "fraction",
                    "linearised fine-tuning gives a higher normalised task-addition accuracy than standard "
                    "fine-tuning (qualitative)", SOURCE,
                    note=f"added {[round(a, 3) for a in added]} / single {[round(s, 3) for s in single]}"))
        result.metrics.append(Metric("digits_base_accuracy", sum(found["standard"].base) / 2, "fraction",
                                     note="both tasks, before fine-tuning"))
        labels = ["standard FT, real model", "standard FT, linearised model", "linearised FT, real model",
                  "linearised FT, linearised model"]
        values = [summary[("standard", "real")], summary[("standard", "linearised")], summary[("linearised", "real")],
                  summary[("linearised", "linearised")]]
        result.figures.append(Figure(
            "digits_task_addition", "Task addition on digits: normalised accuracy (added / single task)",
            "setting", "normalised accuracy",
            [Series(label, [i], [v]) for i, (label, v) in enumerate(zip(labels, values))],
            reference=1.0))
        result.notes.append(
            f"Digits task arithmetic: an MLP (64-64-64-10, GELU) trained for 20 steps on 150 digits is the start; "
            f"task A tells 0–4 apart, task B 5–9, each fine-tuned with {steps} full-batch Adam steps on its own digits among "
            f"1200 training digits; "
            f"the two task vectors are added (coefficient 1) and scored on the 597 held-out digits. Normalised "
            f"accuracy = added / single-task accuracy, as in arXiv 2305.12827: standard fine-tuning evaluated in "
            f"the real model {values[0]:.3f}, linearised fine-tuning in the linearised model {values[3]:.3f}."
        )
