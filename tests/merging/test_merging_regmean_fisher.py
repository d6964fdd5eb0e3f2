"""RegMean against a direct least-squares solve; Fisher merging against its formula and autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import build_model

from almostlinear.merging import merge_state_dicts
from almostlinear.merging.fisher import diagonal_fisher, fisher_merge
from almostlinear.merging.regmean import collect_grams, regmean_merge, regmean_weight


def test_regmean_is_least_squares_on_the_stacked_inputs():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(50, 6, generator=g) @ torch.diag(torch.tensor(s)) for s in
          ([1.0, 1, 1, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 1, 1, 1])]
    ws = [torch.randn(4, 6, generator=g, dtype=torch.float64) for _ in xs]
    grams = [(x.double().T @ x.double()) for x in xs]
    merged = regmean_weight(ws, grams, alpha=1.0, ridge=0.0)
    X = np.concatenate([x.double().numpy() for x in xs])
    Y = np.concatenate([x.double().numpy() @ w.numpy().T for x, w in zip(xs, ws)])
    expected = np.linalg.lstsq(X, Y, rcond=None)[0].T
    np.testing.assert_allclose(merged.numpy(), expected, rtol=1e-8, atol=1e-10)
    # equal Gram matrices reduce to the average
    same = regmean_weight(ws, [grams[0], grams[0]], alpha=0.7, ridge=0.0)
    np.testing.assert_allclose(same.numpy(), ((ws[0] + ws[1]) / 2).numpy(), atol=1e-10)


def test_regmean_on_models_with_collected_grams():
    torch.manual_seed(0)
    a, b = build_model("llama"), build_model("llama")
    batches = [{"input_ids": torch.randint(3, 90, (2, 6)), "attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2])}]
    grams = [collect_grams(m, batches) for m in (a, b)]
    name = "model.layers.0.mlp.down_proj.weight"
    assert grams[0][name].shape == (64, 64)
    # the Gram matrix counts the 10 real tokens only
    recorded = []
    handle = dict(a.named_modules())["model.layers.0.mlp.down_proj"].register_forward_pre_hook(
        lambda m, inp: recorded.append(inp[0].detach()))
    with torch.no_grad():
        a(**batches[0])
    handle.remove()
    x = recorded[0][batches[0]["attention_mask"].bool()].double()
    torch.testing.assert_close(grams[0][name], x.T @ x)
    merged = regmean_merge([a.state_dict(), b.state_dict()], grams, alpha=0.9)
    torch.testing.assert_close(merged[name], regmean_weight(
        [a.state_dict()[name], b.state_dict()[name]], [grams[0][name], grams[1][name]], alpha=0.9))
    norm = "model.norm.weight"
    torch.testing.assert_close(merged[norm], (a.state_dict()[norm] + b.state_dict()[norm]) / 2)
    # the same through the registry's record
    by_record = merge_state_dicts("regmean", [a.state_dict(), b.state_dict()], grams=grams, alpha=0.9)
    assert all(torch.equal(by_record[k], v) for k, v in merged.items())


def test_fisher_merge_formula_and_equal_fishers_average():
    g = torch.Generator().manual_seed(1)
    sds = [{"w": torch.randn(5, generator=g)} for _ in range(2)]
    fs = [{"w": torch.rand(5, generator=g)} for _ in range(2)]
    out = fisher_merge(sds, fs, weights=[1.0, 2.0], eps=0.0)
    expected = (fs[0]["w"] * sds[0]["w"] + 2 * fs[1]["w"] * sds[1]["w"]) / (fs[0]["w"] + 2 * fs[1]["w"])
    torch.testing.assert_close(out["w"], expected)
    assert torch.equal(merge_state_dicts("fisher", sds, weights=[1.0, 2.0], fishers=fs, eps=0.0)["w"], out["w"])
    same = fisher_merge(sds, [fs[0], fs[0]])
    torch.testing.assert_close(same["w"], (sds[0]["w"] + sds[1]["w"]) / 2)


def test_diagonal_fisher_matches_per_sequence_autograd():
    torch.manual_seed(0)
    model = build_model("llama")
    ids = torch.randint(3, 90, (2, 5))
    fisher = diagonal_fisher(model, [{"input_ids": ids}], empirical=True)
    name = "model.layers.1.mlp.up_proj.weight"
    total = torch.zeros_like(dict(model.named_parameters())[name])
    for row in ids:
        model.zero_grad()
        logp = torch.log_softmax(model(input_ids=row[None]).logits[0, :-1], -1)
        logp.gather(1, row[1:, None]).sum().backward()
        total += dict(model.named_parameters())[name].grad ** 2
    torch.testing.assert_close(fisher[name], total / 2, rtol=1e-4, atol=1e-10)


def test_diagonal_fisher_ignores_padding_on_either_side():
    torch.manual_seed(0)
    model = build_model("llama")
    ids = torch.randint(3, 90, (1, 5))
    plain = diagonal_fisher(model, [{"input_ids": ids}], empirical=True)
    pad = torch.zeros(1, 2, dtype=ids.dtype)
    ones, zeros = torch.ones(1, 5, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long)
    left = diagonal_fisher(model, [{"input_ids": torch.cat([pad, ids], 1),
                                    "attention_mask": torch.cat([zeros, ones], 1)}], empirical=True)
    right = diagonal_fisher(model, [{"input_ids": torch.cat([ids, pad], 1),
                                     "attention_mask": torch.cat([ones, zeros], 1)}], empirical=True)
    for name in plain:
        torch.testing.assert_close(left[name], plain[name])
        torch.testing.assert_close(right[name], plain[name])


def test_fisher_merge_refuses_partial_fishers_and_bad_weights():
    from almostlinear.core.errors import AlmostLinearError, NonFiniteError

    sds = [{"w": torch.randn(3), "ids": torch.arange(2)} for _ in range(2)]
    fs = [{"w": torch.rand(3)}, {"w": torch.rand(3)}]
    with pytest.raises(AlmostLinearError, match="'w'.*model 1"):
        fisher_merge(sds, [fs[0], {}])
    with pytest.raises(NonFiniteError, match="'w'"):  # no model is sensitive and eps = 0: 0/0
        fisher_merge(sds, [{"w": torch.zeros(3)}, {"w": torch.zeros(3)}], eps=0.0)
    with pytest.raises(AlmostLinearError, match="'ids'"):
        fisher_merge([sds[0], dict(sds[1], ids=torch.arange(2) + 1)], fs)
