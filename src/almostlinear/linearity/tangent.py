"""Tangent-space linearity: how much of a fine-tuning's effect the first-order expansion explains.

For parameters ``theta0`` and a delta ``Delta`` (a short fine-tune, or a task vector), the model
linearised at ``theta0`` is ``f_lin(theta0 + a Delta) = f(theta0) + a J Delta``, where ``J Delta`` is
one Jacobian-vector product (``torch.func.jvp``, forward mode: about the cost of two or three forward
passes, whatever the number of parameters). The explained fraction

    1 - ||f(theta0 + a Delta) - f(theta0) - a J Delta||^2 / ||f(theta0 + a Delta) - f(theta0)||^2

is 1 when the output change is exactly linear in the weights and falls as the delta grows. Task
arithmetic in the linearised model against the real one follows arXiv 2305.12827 (task vectors add
without interfering when the model is in its tangent regime; linearised fine-tuning strengthens that).

Functions take ``f(params) -> tensor`` over a dict of the parameters that move; every other
parameter stays at the module's value (``torch.func.functional_call``), so a model is never edited.

Half precision: a short fine-tune moves weights by less than a bfloat16 step, and the output change
it causes is near the rounding noise of a bfloat16 forward pass. So for a model with bfloat16 or
float16 weights, the delta, its optimiser state and theta0 + a Delta are float32 (master weights),
and every function of a module runs the forward pass in float32 on float32 copies of the weights
(each weight is exactly representable in float32: this measures the half-precision model's own
function, without its rounding). Float32 and float64 models are computed as they are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, jvp

from ..core.errors import AlmostLinearError, EmptyDataError, NonFiniteError, ShapeError, check_choice

Params = dict[str, torch.Tensor]
Function = Callable[[Params], torch.Tensor]

HALF = (torch.bfloat16, torch.float16)


def _master(value: torch.Tensor) -> torch.Tensor:
    """A float32 copy of a half-precision tensor; other tensors as they are."""
    return value.float() if value.dtype in HALF else value


def _masters(params: Params) -> Params:
    return {n: _master(p) for n, p in params.items()}


def _has_half(tensors: Iterable[torch.Tensor]) -> bool:
    return any(t.dtype in HALF for t in tensors)


def select_parameters(model: nn.Module, chosen: Iterable[str] | Callable[[str, torch.Tensor], bool]) -> Params:
    """Detached copies of the named parameters (or of those for which ``chosen(name, p)`` is true)."""
    named = dict(model.named_parameters())
    if callable(chosen):
        names = [n for n, p in named.items() if chosen(n, p)]
    else:
        names = list(chosen)
        missing = [n for n in names if n not in named]
        if missing:
            raise ShapeError(f"the model has no parameters {missing[:3]}{'...' if len(missing) > 3 else ''}")
    if not names:
        raise EmptyDataError("no parameters were selected to move")
    return {n: named[n].detach().clone() for n in names}


def _check_delta(params0: Params, delta: Params) -> None:
    if set(delta) != set(params0):
        raise ShapeError(f"the delta moves {sorted(set(delta) ^ set(params0))[:3]} that the parameters do not "
                         "(or the other way round): give both for the same names")
    for name, value in delta.items():
        if value.shape != params0[name].shape:
            raise ShapeError(f"delta for {name} has shape {tuple(value.shape)}, "
                             f"the parameter {tuple(params0[name].shape)}")
        if not torch.isfinite(value).all():
            raise NonFiniteError(f"the delta for {name} contains NaN or infinite values")


def shifted(params0: Params, delta: Params, alpha: float = 1.0) -> Params:
    """``theta0 + alpha Delta``, in float32 where ``theta0`` is half precision (never rounded back)."""
    return {n: _master(params0[n]) + alpha * delta[n] for n in params0}


def first_order(f: Function, params0: Params, delta: Params) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f(theta0), J Delta)`` in one forward-mode pass."""
    _check_delta(params0, delta)
    primals = _masters(params0)
    tangents = {n: delta[n].to(primals[n].dtype) for n in primals}
    out, tangent = jvp(f, (primals,), (tangents,))
    return out.detach(), tangent.detach()


def finite_difference(f: Function, params0: Params, delta: Params, eps: float = 1e-3) -> torch.Tensor:
    """Central difference ``(f(theta0 + eps Delta) - f(theta0 - eps Delta)) / 2 eps``: a check on ``J Delta``."""
    with torch.no_grad():
        return (f(shifted(params0, delta, eps)) - f(shifted(params0, delta, -eps))) / (2 * eps)


@dataclass(frozen=True)
class TangentProfile:
    """Per scale ``alpha``: the share of the output change the first-order term explains."""

    alphas: list[float]
    explained: list[float]
    relative_error: list[float]  # ||f(a) - f0 - a J Delta|| / ||f(a) - f0||
    change_norm: list[float]  # ||f(a) - f0||, root mean square per output element
    delta_norm: float  # ||Delta||
    params_norm: float  # ||theta0|| over the moved parameters

    @property
    def relative_delta(self) -> float:
        return self.delta_norm / self.params_norm if self.params_norm else float("nan")


def tangent_profile(f: Function, params0: Params, delta: Params,
                    alphas: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0)) -> TangentProfile:
    """Explained fraction of the first-order expansion at each scale of the delta."""
    if not alphas:
        raise EmptyDataError("give at least one scale alpha")
    f0, jd = first_order(f, params0, delta)
    f0, jd = f0.double(), jd.double()
    explained, relative, change_norm = [], [], []
    with torch.no_grad():
        for alpha in alphas:
            change = f(shifted(params0, delta, alpha)).double() - f0
            error = change - alpha * jd
            total = change.pow(2).sum()
            ratio = float(error.pow(2).sum() / total) if total > 0 else float("nan")
            explained.append(1.0 - ratio)
            relative.append(ratio ** 0.5)
            change_norm.append(float(change.pow(2).mean().sqrt()))
    norm = lambda ps: float(sum(p.double().pow(2).sum() for p in ps.values()) ** 0.5)  # noqa: E731
    return TangentProfile([float(a) for a in alphas], explained, relative, change_norm, norm(delta), norm(params0))


# -- functions of a module ------------------------------------------------------------------------


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Use the plain-matmul attention while the context is open (restored on exit).

    PyTorch's fused attention kernels have no forward-mode derivative, so a ``jvp`` through a model
    using them fails; the eager implementation computes the same function with ordinary ops.
    """
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    switch = before not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(before)


def module_function(model: nn.Module, *args, output: Callable[[object], torch.Tensor] | None = None,
                    **kwargs) -> Function:
    """``f(params) = output(model(*args, **kwargs))`` with ``params`` swapped in functionally.

    Every call runs with eager attention, so the values and the jvp come from one implementation. A
    model with half-precision weights or buffers runs in float32 on float32 copies of them, made per
    call (so they live only while the call and its backward do).
    """
    half = _has_half(model.parameters()) or _has_half(model.buffers())

    def f(params: Params) -> torch.Tensor:
        if half:
            values = {n: _master(t.detach()) for n, t in model.named_parameters()}
            values.update((n, _master(t)) for n, t in model.named_buffers())
            values.update(_masters(params))
            params = values
        with eager_attention(model):
            out = functional_call(model, params, args, kwargs)
        return output(out) if output is not None else out

    return f


def lm_logits_function(model: nn.Module, inputs: dict[str, torch.Tensor]) -> Function:
    """Logits of a causal LM at the real (non-padding) tokens of ``inputs``, ``[n_tokens, vocab]``."""
    mask = inputs["attention_mask"].bool()
    extra = {"use_cache": False}
    return module_function(model, output=lambda out: out.logits[mask], **inputs, **extra)


def lm_loss_function(model: nn.Module, inputs: dict[str, torch.Tensor]) -> Function:
    """Mean next-token cross-entropy over real tokens, as a function of the moved parameters."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    valid = mask[:, 1:] & mask[:, :-1]
    if not valid.any():
        raise EmptyDataError("the texts are one token long: nothing to predict")

    def output(out) -> torch.Tensor:
        logits = out.logits[:, :-1][valid]
        return torch.nn.functional.cross_entropy(logits.float(), ids[:, 1:][valid])

    return module_function(model, output=output, **inputs, use_cache=False)


# -- making a delta -------------------------------------------------------------------------------


def finetune_delta(loss: Callable[[Params], torch.Tensor] | None, params0: Params, *, steps: int = 10, lr: float = 1e-2,
                   optimizer: str = "sgd", linearised_f: Function | None = None,
                   linearised_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   progress: bool = False, losses: list[float] | None = None) -> Params:
    """A short fine-tune from ``params0``; returns ``theta - theta0``.

    With ``linearised_f`` and ``linearised_loss`` the fine-tune runs in the tangent space: the loss
    is ``linearised_loss(f(theta0) + J (theta - theta0))`` (linearised fine-tuning, arXiv 2305.12827).
    ``losses``, when given, receives the loss before each step. For half-precision ``params0`` the
    delta and the optimiser state are float32 (Adam's second moment underflows in float16, and steps
    below a bfloat16 step would be lost), and so is the returned delta.
    """
    if steps < 1:
        raise ShapeError(f"steps must be at least 1, got {steps}")
    check_choice(optimizer, ("sgd", "adam"), "optimizer")
    if (linearised_f is None) != (linearised_loss is None):
        raise AlmostLinearError("linearised fine-tuning needs both linearised_f and linearised_loss")
    if linearised_f is None and loss is None:
        raise AlmostLinearError("give a loss, or linearised_f and linearised_loss")
    delta = {n: torch.zeros_like(_master(p), requires_grad=True) for n, p in params0.items()}
    opt = torch.optim.SGD(delta.values(), lr=lr) if optimizer == "sgd" else torch.optim.Adam(delta.values(), lr=lr)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="fine-tuning the delta", leave=False)
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        if linearised_f is not None:
            out, tangent = jvp(linearised_f, (_masters(params0),), (dict(delta),))
            value = linearised_loss(out.detach() + tangent)
        else:
            value = loss(shifted(params0, delta))
        if not torch.isfinite(value):
            raise NonFiniteError(_non_finite_message(step, params0, value))
        if losses is not None:
            losses.append(float(value.detach()))
        value.backward()
        opt.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(value):.3f}")
    if bar is not None:
        bar.close()
    return {n: d.detach() for n, d in delta.items()}


def _non_finite_message(step: int, params0: Params, value: torch.Tensor) -> str:
    """Name the likely cause: before any step the learning rate cannot be it."""
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in (*params0.values(), value)})
    if step == 0:
        return (f"the fine-tuning loss is NaN or infinite before any step (dtypes {', '.join(dtypes)}), so the "
                "learning rate is not the cause: the loss function overflows or its inputs are not finite"
                + ("; float16 ends at 65504: compute the loss in float32 or load the model in bfloat16"
                   if "float16" in dtypes else ""))
    return (f"the fine-tuning loss became NaN or infinite at step {step + 1}: lower the learning rate"
            + (f" (dtypes {', '.join(dtypes)}: a loss computed in float16 can also overflow, so compute it in "
               "float32)" if "float16" in dtypes else ""))


# -- task arithmetic, real and linearised ---------------------------------------------------------


@dataclass(frozen=True)
class TaskAddition:
    """Scores of task vectors added to ``theta0``, in the real and in the linearised model.

    ``single[i]`` is task ``i``'s score with its own delta alone, ``added[i]`` with the sum of all
    deltas; ``normalised[i] = added[i] / single[i]`` (the normalised accuracy of arXiv 2305.12827).
    """

    alpha: float
    single_real: list[float]
    added_real: list[float]
    single_linearised: list[float]
    added_linearised: list[float]
    base: list[float]

    @staticmethod
    def _normalised(added, single) -> list[float]:
        return [a / s if s else float("nan") for a, s in zip(added, single)]

    @property
    def normalised_real(self) -> list[float]:
        return self._normalised(self.added_real, self.single_real)

    @property
    def normalised_linearised(self) -> list[float]:
        return self._normalised(self.added_linearised, self.single_linearised)


def task_addition(f: Function, params0: Params, deltas: Sequence[Params],
                  scores: Sequence[Callable[[torch.Tensor], float]], *, alpha: float = 1.0) -> TaskAddition:
    """Score each task (``scores[i](f(...))``) with its delta alone and with ``alpha`` times the sum.

    The linearised model's output is ``f(theta0) + alpha * sum_i J Delta_i`` (one jvp per delta).
    """
    if len(deltas) != len(scores) or not deltas:
        raise ShapeError("give one score function per task delta, and at least one task")
    f0 = None
    tangents = []
    for delta in deltas:
        out, tangent = first_order(f, params0, delta)
        f0 = out
        tangents.append(tangent)
    total = {n: sum(alpha * d[n] for d in deltas) for n in params0}
    with torch.no_grad():
        single_real = [score(f(shifted(params0, d, alpha))) for d, score in zip(deltas, scores)]
        added_out = f(shifted(params0, total))
    summed_tangent = alpha * sum(tangents)
    return TaskAddition(
        alpha=alpha,
        single_real=single_real,
        added_real=[score(added_out) for score in scores],
        single_linearised=[score(f0 + alpha * t) for t, score in zip(tangents, scores)],
        added_linearised=[score(f0 + summed_tangent) for score in scores],
        base=[score(f0) for score in scores],
    )
