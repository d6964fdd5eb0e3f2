"""Tangent-space linearity: the jvp against finite differences, exact cases, task addition, the section."""

import pytest
import torch
from tiny_models import ENGLISH_TEXTS, TEXTS, WORDS, build_model, make_tokenizer

from almostlinear.core.section import AuditContext, Budget
from almostlinear.audit.plan import run_sections
from almostlinear.core.collect import tokenize
from almostlinear.core.errors import NonFiniteError, ShapeError
from almostlinear.core.models import LoadedModel
from almostlinear.linearity.tangent import (
    finetune_delta,
    finite_difference,
    first_order,
    lm_logits_function,
    lm_loss_function,
    module_function,
    select_parameters,
    tangent_profile,
    task_addition,
)
from almostlinear.linearity.tangent_section import TangentSection


# GPT-2 computes in float64 throughout, so a small step gives a tight check. Llama's RMSNorm rounds
# to float32 internally (about 1e-8 noise), so its check uses a larger step (error O(eps^2)).
@pytest.mark.parametrize("family, eps, tol", [("gpt2", 1e-5, 1e-8), ("llama", 1e-2, 1e-3)])
def test_first_order_term_agrees_with_a_finite_difference(family, eps, tol):
    model = build_model(family).double()
    inputs = tokenize(make_tokenizer(), list(TEXTS), max_length=16, device="cpu")
    params0 = select_parameters(model, lambda name, p: "mlp" in name and p.dim() == 2)
    g = torch.Generator().manual_seed(0)
    delta = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.01 for n, p in params0.items()}
    f = lm_logits_function(model, inputs)
    f0, jd = first_order(f, params0, delta)
    fd = finite_difference(f, params0, delta, eps=eps)
    assert (jd - fd).abs().max() < tol * jd.abs().max()
    assert jd.abs().max() > 1e-3  # the delta moves the output: the check is not vacuous
    with torch.no_grad():
        # f runs eager attention, the plain call fused attention: equal up to rounding
        torch.testing.assert_close(f0, model(**inputs).logits[inputs["attention_mask"].bool()])


def test_explained_fraction_is_one_for_a_linear_function_and_exact_for_a_square():
    layer = torch.nn.Linear(3, 2, bias=False).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    params0 = select_parameters(layer, ["weight"])
    delta = {"weight": torch.randn(2, 3, dtype=torch.float64)}
    profile = tangent_profile(module_function(layer, x), params0, delta, alphas=(0.5, 1.0, 10.0))
    assert profile.explained == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)

    theta0 = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    d = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    profile = tangent_profile(lambda p: p["t"] ** 2, {"t": theta0}, {"t": d}, alphas=(1.0, 2.0))
    for alpha, explained in zip((1.0, 2.0), profile.explained):
        change = 2 * alpha * theta0 * d + alpha ** 2 * d ** 2
        assert explained == pytest.approx(1 - float((alpha ** 2 * d ** 2).pow(2).sum() / change.pow(2).sum()))
    assert profile.delta_norm == pytest.approx(float(d.norm()))


def test_finetuning_and_profiles_leave_the_model_untouched():
    model = build_model("llama")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    implementation = model.config._attn_implementation
    inputs = tokenize(make_tokenizer(), list(TEXTS), max_length=16, device="cpu")
    params0 = select_parameters(model, lambda name, p: "down_proj" in name)
    loss = lm_loss_function(model, inputs)
    with torch.no_grad():
        before = float(loss(params0))
    delta = finetune_delta(loss, params0, steps=5, lr=0.5)
    with torch.no_grad():
        assert float(loss({n: params0[n] + delta[n] for n in params0})) < before
    profile = tangent_profile(lm_logits_function(model, inputs), params0, delta, alphas=(0.01, 1.0))
    assert profile.explained[0] > profile.explained[1] and profile.explained[0] > 0.99
    assert model.config._attn_implementation == implementation
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def test_linearised_finetuning_matches_training_the_linear_model_by_hand():
    layer = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    x = torch.randn(10, 3, dtype=torch.float64)
    target = torch.randn(10, 1, dtype=torch.float64)
    params0 = select_parameters(layer, lambda n, p: True)
    f = module_function(layer, x)
    delta = finetune_delta(None, params0, steps=3, lr=0.1, linearised_f=f,
                           linearised_loss=lambda out: (out - target).pow(2).mean())
    # by hand: the linear model is f0 + J d; gradient descent on it with the Jacobian built column by column
    flat0 = torch.cat([p.flatten() for p in params0.values()])
    shapes = [p.shape for p in params0.values()]

    def unflat(v):
        out, i = {}, 0
        for name, shape in zip(params0, shapes):
            out[name] = v[i:i + shape.numel()].view(shape)
            i += shape.numel()
        return out

    jac = torch.autograd.functional.jacobian(lambda v: f(unflat(v)).flatten(), flat0)
    f0 = f(params0).detach().flatten()
    d = torch.zeros_like(flat0)
    for _ in range(3):
        residual = f0 + jac @ d - target.flatten()
        d = d - 0.1 * (2 / 10) * jac.T @ residual
    torch.testing.assert_close(torch.cat([delta[n].flatten() for n in params0]), d)


def test_task_addition_in_a_linear_model_is_the_same_real_and_linearised():
    layer = torch.nn.Linear(4, 2).double()
    x = torch.randn(20, 4, dtype=torch.float64)
    params0 = select_parameters(layer, ["weight", "bias"])
    g = torch.Generator().manual_seed(1)
    deltas = [{n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params0.items()} for _ in range(2)]
    scores = [lambda out: float(out[:, 0].mean()), lambda out: float(out[:, 1].mean())]
    r = task_addition(module_function(layer, x), params0, deltas, scores, alpha=0.5)
    assert r.added_real == pytest.approx(r.added_linearised)
    assert r.single_real == pytest.approx(r.single_linearised)
    w = params0["weight"] + 0.5 * (deltas[0]["weight"] + deltas[1]["weight"])
    b = params0["bias"] + 0.5 * (deltas[0]["bias"] + deltas[1]["bias"])
    assert r.added_real[0] == pytest.approx(float((x @ w.T + b)[:, 0].mean()))


def test_bad_deltas_raise_clear_errors():
    layer = torch.nn.Linear(3, 2)
    params0 = select_parameters(layer, ["weight"])
    f = module_function(layer, torch.randn(4, 3))
    with pytest.raises(ShapeError, match="shape"):
        first_order(f, params0, {"weight": torch.zeros(3, 2)})
    with pytest.raises(ShapeError, match="moves"):
        first_order(f, params0, {"bias": torch.zeros(2)})
    with pytest.raises(NonFiniteError):
        first_order(f, params0, {"weight": torch.full((2, 3), float("nan"))})
    with pytest.raises(ShapeError, match="no parameters"):
        select_parameters(layer, ["nope"])
    with pytest.raises(ValueError, match="optimizer"):  # not a silent fall-back to Adam
        finetune_delta(lambda p: f(p).sum(), params0, optimizer="lbfgs")
    with pytest.raises(ValueError, match="both"):
        finetune_delta(None, params0, linearised_f=f)


def _texts(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (12,), generator=g)) for _ in range(n)]


def test_tangent_section_on_a_tiny_model():
    loaded = LoadedModel(build_model("llama"), make_tokenizer(), "tiny", "memory", "causal-lm")
    state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    implementation = loaded.model.config._attn_implementation
    budget = Budget(neutral_texts=8, neutral_new_tokens=8, lens_tokens=40, statements=40, fact_candidates=40,
                    quick_mode=True)
    ctx = AuditContext(loaded, budget, progress=lambda _: None, sources={"neutral": _texts(24)})
    (result,) = run_sections(ctx, [TangentSection()], lambda source: ctx.sources[source])
    assert result.status == "ok", result.notes
    for key, value in loaded.model.state_dict().items():  # the fine-tune is functional: the model is untouched
        assert torch.equal(value, state[key]), key
    assert loaded.model.config._attn_implementation == implementation
    explained = [result.metric(f"tangent_explained_a{a:g}").value for a in (1, 4, 16, 64)]
    assert explained[0] > 0.9 and explained[-1] < explained[0]
    assert result.metric("tangent_finetune_loss_last_step").value < result.metric("tangent_finetune_loss_before").value
    for name in ("digits_standard_ft_real_model_normalised_accuracy",
                 "digits_linearised_ft_linearised_model_normalised_accuracy"):
        assert 0.5 < result.metric(name).value <= 1.2
        assert result.metric(name).source == "arXiv 2305.12827"
    assert result.metric("digits_base_accuracy").value < 0.9
    assert {f.id for f in result.figures} == {"tangent_explained", "digits_task_addition"}


@pytest.mark.real
def test_tangent_section_on_smollm2(smollm2):
    texts = list(ENGLISH_TEXTS)
    budget = Budget(neutral_texts=8, neutral_new_tokens=8, lens_tokens=40, statements=40, fact_candidates=40,
                    quick_mode=True)
    ctx = AuditContext(smollm2, budget, progress=lambda _: None, sources={"neutral": texts})
    (result,) = run_sections(ctx, [TangentSection()], lambda source: ctx.sources[source])
    assert result.status == "ok", result.notes
    a1 = result.metric("tangent_explained_a1").value
    a64 = result.metric("tangent_explained_a64").value
    assert 0.5 < a1 <= 1 and a64 < a1
    assert result.metric("tangent_relative_delta").value < 0.01


# -- half precision: float32 master weights, optimiser state and forward passes -----------------------


def _section(dtype):
    loaded = LoadedModel(build_model("llama").to(dtype), make_tokenizer(), "tiny", "memory", "causal-lm")
    state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    budget = Budget(neutral_texts=8, neutral_new_tokens=8, lens_tokens=40, statements=40, fact_candidates=40,
                    quick_mode=True)
    ctx = AuditContext(loaded, budget, progress=lambda _: None, sources={"neutral": _texts(24)})
    (result,) = run_sections(ctx, [TangentSection()], lambda source: ctx.sources[source])
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[key]) and value.dtype == state[key].dtype, key
    return result


def test_tangent_section_in_half_precision_matches_float32():
    reference = _section(torch.float32)
    assert reference.status == "ok", reference.notes
    assert reference.metric("tangent_explained_a1").value >= 0.999
    assert not any("float32 copies" in note for note in reference.notes)
    for dtype in (torch.bfloat16, torch.float16):  # float16 raised NonFiniteError (Adam state in float16)
        result = _section(dtype)
        assert result.status == "ok", result.notes
        assert result.metric("tangent_explained_a1").value >= 0.99
        for a in (1, 4, 16, 64):
            assert result.metric(f"tangent_explained_a{a}").value == pytest.approx(
                reference.metric(f"tangent_explained_a{a}").value, abs=1e-3)
        assert any(f"weights are {str(dtype)[6:]}" in note for note in result.notes)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_finetune_keeps_float32_master_weights(dtype):
    model = build_model("llama").to(dtype)
    inputs = tokenize(make_tokenizer(), list(TEXTS), max_length=16, device="cpu")
    params0 = select_parameters(model, lambda name, p: "down_proj" in name)
    assert all(p.dtype == dtype for p in params0.values())
    losses = []
    delta = finetune_delta(lm_loss_function(model, inputs), params0, steps=3, lr=3e-4, optimizer="adam",
                           losses=losses)
    assert all(d.dtype == torch.float32 for d in delta.values())
    # Adam's first step moves every weight by about lr: far below a half-precision step of the weights
    step = max(float((d - (p.float() + d).to(dtype).float() + p.float()).abs().max()) for p, d in
               zip(params0.values(), delta.values()))
    assert step > 0  # rounding theta0 + delta back to the dtype would lose part of the delta
    assert losses[-1] < losses[0]
    profile = tangent_profile(lm_logits_function(model, inputs), params0, delta, alphas=(1.0,))
    assert profile.explained[0] > 0.999


def test_non_finite_loss_before_any_step_does_not_blame_the_learning_rate():
    params0 = {"t": torch.ones(3, dtype=torch.float16)}
    with pytest.raises(NonFiniteError, match="before any step.*not the cause.*65504"):
        finetune_delta(lambda p: (p["t"].half() * 1e5).sum(), params0, steps=2)
    with pytest.raises(NonFiniteError, match=r"at step \d: lower the learning rate"):  # diverging steps
        finetune_delta(lambda p: p["t"].pow(4).sum(), {"t": torch.full((3,), 10.0)}, steps=5, lr=1.0)
