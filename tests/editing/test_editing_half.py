"""Low-rank edits on half-precision weights: the realised error at the edited keys is reported and
matches a direct measurement, large losses warn, and the exact mode keeps the change in float32."""

import warnings

import pytest
import torch
from editing_helpers import REQUEST, fast_hparams, random_texts
from tiny_models import build_model, make_tokenizer

from almostlinear.core.artifact import Provenance
from almostlinear.core.digest import tensor_digest
from almostlinear.core.locate import linear_weight, locate
from almostlinear.core.models import fingerprint
from almostlinear.editing import LowRankEdit, key_statistics, memit, rome
from almostlinear.editing.artifact import REALISED_TOLERANCE, EditRoundingWarning

HALF = [torch.bfloat16, torch.float16]


def _model(dtype):
    return build_model("llama").to(dtype)


def _edit(model, keys=3, rank=2, layer=0):
    """A random low-rank edit on one down projection, as in the lever contract suite."""
    down = locate(model).block(layer).mlp_down_proj
    d_out, d_in = linear_weight(down).shape
    g = torch.Generator().manual_seed(3)
    a = torch.randn(1, rank, d_in, generator=g) / d_in ** 0.5
    b = torch.randn(1, d_out, rank, generator=g)
    keys = torch.randn(1, keys, d_in, generator=g).to(down.weight.dtype).float()  # keys the model can carry
    return down, LowRankEdit(a=a, b=b, keys=keys,
                             base_hashes=[tensor_digest(down.weight)], stats_hashes=["none"], layers=[layer],
                             provenance=Provenance(model_fingerprint=fingerprint(model)))


def _measured(model, edit, down, strength):
    """Inside ``apply``: the change written into the weight, at the keys, against the intended one."""
    w0 = down.weight.detach().double().clone()
    keys = edit.keys[0].double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EditRoundingWarning)
        with torch.no_grad(), edit.apply(model, strength=strength):
            realised = keys @ (down.weight.detach().double() - w0).T
    intended = strength * keys @ edit.delta(0).T
    return float((realised - intended).norm() / intended.norm())


def _setup(dtype):
    model = _model(dtype)
    down, edit = _edit(model)
    return model, down, edit


def _small(edit, down, ratio):
    """The strength at which ‖strength ΔW‖ / ‖W‖ = ratio (a realistic ROME edit is about 0.003)."""
    return ratio * float(down.weight.detach().double().norm() / edit.delta(0).norm())


@pytest.mark.parametrize("dtype", HALF)
def test_reported_realised_error_matches_a_direct_measurement(dtype):
    model, down, edit = _setup(dtype)
    for ratio in (1.0, 0.03, 0.0033):
        strength = _small(edit, down, ratio)
        [reported] = edit.realised_error(model, strength=strength)
        assert reported == pytest.approx(_measured(model, edit, down, strength), rel=1e-9, abs=1e-15)
    # a realistic small edit loses a noticeable part of its change in half precision
    assert edit.realised_error(model, strength=_small(edit, down, 0.0033))[0] > (0.03 if dtype == torch.bfloat16
                                                                                else 0.003)


def test_float32_edits_are_written_as_before_and_lose_almost_nothing():
    model, down, edit = _setup(torch.float32)
    strength = _small(edit, down, 0.0033)
    expected = down.weight.detach() + (edit.delta(0) * strength).float()
    with edit.apply(model, strength=strength):
        assert torch.equal(down.weight.detach(), expected)  # the float32 write rule is unchanged
    assert edit.realised_error(model, strength=strength)[0] < 1e-4
    assert edit.realised_error(model, strength=strength)[0] == pytest.approx(_measured(model, edit, down, strength))


def test_half_precision_write_rounds_the_exact_sum_once():
    model, down, edit = _setup(torch.bfloat16)
    strength = _small(edit, down, 0.01)
    w0 = down.weight.detach().clone()
    expected = (w0.double() + edit.delta(0) * strength).to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EditRoundingWarning)
        with edit.apply(model, strength=strength):
            assert torch.equal(down.weight.detach(), expected)
    assert torch.equal(down.weight.detach(), w0)


def test_large_loss_warns_on_apply_and_bake_and_a_lossless_one_does_not():
    model, down, edit = _setup(torch.bfloat16)
    w0 = down.weight.detach().clone()
    strength = _small(edit, down, 0.0033)
    [expected] = edit.realised_error(model, strength=strength)
    assert expected > REALISED_TOLERANCE
    with pytest.warns(EditRoundingWarning, match="exact=True") as caught:
        with edit.apply(model, strength=strength):
            pass
    assert caught[0].message.errors == [pytest.approx(expected)]
    assert issubclass(EditRoundingWarning, UserWarning)
    with pytest.warns(EditRoundingWarning):
        baked = edit.bake_(model, strength=strength)
    baked.undo_()
    assert torch.equal(down.weight.detach(), w0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EditRoundingWarning)
        assert edit.realised_error(model)[0] < REALISED_TOLERANCE  # the full-size random edit survives rounding
        with edit.apply(model):
            pass


@pytest.mark.parametrize("dtype", HALF)
def test_exact_mode_keeps_the_change_as_a_float32_hook(dtype):
    model, down, edit = _setup(dtype)
    strength = _small(edit, down, 0.0033)
    w0 = down.weight.detach().clone()
    keys = edit.keys[0].to(dtype)
    with torch.no_grad():
        plain = down(keys)
        with edit.apply(model, strength=strength, exact=True) as module:
            assert module is model and torch.equal(down.weight, w0)  # the weights are not touched
            hooked = down(keys)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", EditRoundingWarning)
            with edit.apply(model, strength=strength):
                weighted_weight = down.weight.detach().clone()
        assert torch.equal(down(keys), plain) and not down._forward_hooks  # the hook is gone
    # the hook adds strength · B (A x) in float32 to W x: the change loses < 0.1 % at the edited keys
    [lost] = edit.realised_error(model, strength=strength, exact=True)
    assert lost < 1e-3
    term = (keys.float() @ edit.a[0].T) @ (edit.b[0].double() * strength).float().T
    assert torch.equal(hooked, (plain.float() + term).to(dtype))  # one rounding of the sum, as for any activation
    intended = strength * keys.double() @ edit.delta(0).T
    assert float((term.double() - intended).norm() / intended.norm()) == pytest.approx(lost, rel=1e-6)
    # written into the weights instead, the same edit keeps far less of its change at the keys
    stored = keys.double() @ (weighted_weight.double() - w0.double()).T
    assert float((stored - intended).norm() / intended.norm()) > 30 * lost


def test_exact_mode_restores_hooks_on_exceptions_and_at_zero_strength():
    model, down, edit = _setup(torch.bfloat16)
    ids = torch.tensor([[5, 9, 14, 22]])
    with torch.no_grad():
        before = model(input_ids=ids).logits.clone()
        with pytest.raises(RuntimeError, match="inside"):
            with edit.apply(model, exact=True):
                assert not torch.equal(model(input_ids=ids).logits, before)
                raise RuntimeError("inside")
        assert not down._forward_hooks and torch.equal(model(input_ids=ids).logits, before)
        with edit.apply(model, strength=0.0, exact=True):
            assert torch.equal(model(input_ids=ids).logits, before)


def test_rome_and_memit_record_the_realised_error_for_their_dtype():
    tokenizer = make_tokenizer()
    texts = random_texts(40)
    for dtype in (torch.float32, torch.bfloat16):
        model = _model(dtype)
        stats = key_statistics(model, tokenizer, 1, texts=texts, cache=False)
        edit = rome(model, tokenizer, REQUEST, layer=1, stats=stats, hparams=fast_hparams(model))
        # (with these fast settings the tiny model's edit is ~1e-9 of W: below even float32's resolution)
        assert edit.diagnostics["realised_error"] == pytest.approx(edit.realised_error(model)[0])
        edit = memit(model, tokenizer, [REQUEST], layers=[1], stats={1: stats}, hparams=fast_hparams(model))
        assert [info["realised_error"] for info in edit.diagnostics["layers"]] == pytest.approx(
            edit.realised_error(model))
