"""SWA / EMA against torch.optim.swa_utils, checkpoint averages, batch-norm recomputation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.optim.swa_utils import update_bn as torch_update_bn

from almostlinear.averaging import WeightAverage, average_checkpoints, update_bn
from almostlinear.core.errors import AlmostLinearError, ChoiceError, EmptyDataError, ShapeError


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _steps(model: nn.Module, n: int, seed: int = 1):
    """Yield the model after each of ``n`` SGD steps on random data (BN statistics move too)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(n):
        x = torch.randn(16, 6, generator=gen)
        y = torch.randint(0, 3, (16,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        yield model


@pytest.mark.parametrize("mode", ["swa", "ema"])
@pytest.mark.parametrize("buffers", ["copy", "average"])
def test_weight_average_equals_averaged_model(mode, buffers):
    model = _net()
    kwargs = {"multi_avg_fn": get_ema_multi_avg_fn(0.9)} if mode == "ema" else {}
    reference = AveragedModel(model, use_buffers=buffers == "average", **kwargs)
    ours = WeightAverage(model, mode, decay=0.9, buffers=buffers)
    for m in _steps(model, 7):
        reference.update_parameters(m)
        ours.update(m)
    for (name, a), b in zip(ours.module.named_parameters(), reference.module.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    if buffers == "average":
        for (name, a), b in zip(ours.module.named_buffers(), reference.module.buffers()):
            if a.is_floating_point():
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    else:  # the latest statistics, not the stale ones AveragedModel keeps
        for a, b in zip(ours.module.buffers(), model.buffers()):
            assert torch.equal(a, b)
    assert ours.n_averaged == 7


def test_checkpoint_average_matches_streaming_average():
    model = _net()
    checkpoints, ours = [], WeightAverage(model, "swa", buffers="average")
    for m in _steps(model, 5):
        checkpoints.append(copy.deepcopy(m.state_dict()))
        ours.update(m)
    averaged = average_checkpoints(checkpoints)
    for name, value in ours.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(averaged[name], value, rtol=1e-6, atol=1e-7)
    manual = torch.stack([c["0.weight"] for c in checkpoints]).double().mean(0).float()
    torch.testing.assert_close(averaged["0.weight"], manual)
    assert averaged["1.num_batches_tracked"] == checkpoints[-1]["1.num_batches_tracked"]


def test_checkpoint_average_from_files(tmp_path):
    from safetensors.torch import save_file

    states = [{"w": torch.full((2, 2), float(i))} for i in range(4)]
    paths = []
    for i, s in enumerate(states):
        save_file(s, str(tmp_path / f"{i}.safetensors"))
        paths.append(tmp_path / f"{i}.safetensors")
    assert torch.allclose(average_checkpoints(paths)["w"], torch.full((2, 2), 1.5))
    ema = average_checkpoints(paths, "ema", decay=0.5)["w"]  # 0 -> 0.5 -> 1.25 -> 2.125
    assert torch.allclose(ema, torch.full((2, 2), 2.125))


def test_update_bn_equals_torch():
    model = _net()
    list(_steps(model, 3))
    data = [torch.randn(10, 6, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    ours, theirs = copy.deepcopy(model).eval(), copy.deepcopy(model).eval()
    update_bn(data, ours)
    torch_update_bn(data, theirs)
    for a, b in zip(ours.buffers(), theirs.buffers()):
        torch.testing.assert_close(a.float(), b.float())
    assert not ours.training and ours[1].momentum == theirs[1].momentum == 0.1


def test_bad_input():
    with pytest.raises(EmptyDataError):
        average_checkpoints([])
    with pytest.raises(ShapeError):
        average_checkpoints([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])
    with pytest.raises(ChoiceError, match="averaging mode 'mean'; choose one of 'swa', 'ema'"):
        WeightAverage(_net(), "mean")
    with pytest.raises(ChoiceError, match="buffer handling"):
        WeightAverage(_net(), buffers="keep")
    with pytest.raises(AlmostLinearError, match="EMA decay"):
        average_checkpoints([{"w": torch.zeros(2)}], "ema", decay=1.0)
    with pytest.raises(ShapeError, match="parameters"):  # a deeper network, not a silent partial average
        WeightAverage(_net()).update(nn.Sequential(_net(), nn.Linear(3, 3)))
    with pytest.raises(EmptyDataError):
        update_bn([], _net())


def test_swa_during_digits_training_equals_averaged_model():
    from almostlinear.zoo import digits, make_mlp, train

    d = digits()
    model = make_mlp(16)
    ours, reference = WeightAverage(model), AveragedModel(model)

    def every_tenth(step, m):
        if step % 10 == 0:
            ours.update(m)
            reference.update_parameters(m)

    train(model, d.x_train[:320], d.y_train[:320], epochs=2, callback=every_tenth)
    assert ours.n_averaged == 2
    for a, b in zip(ours.module.parameters(), reference.module.parameters()):
        torch.testing.assert_close(a, b)


def test_package_face_is_lazy():
    import subprocess
    import sys

    code = ("import sys, almostlinear.averaging as a; assert 'WeightAverage' in a.__all__;"
            " sys.exit(int('torch' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
