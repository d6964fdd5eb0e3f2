"""The shortcuts that make streamed merges fast give the same answers as the plain computations."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from almostlinear.core.errors import AlmostLinearError, NonFiniteError
from almostlinear.merging import writer as writer_module
from almostlinear.merging.chunked import _all_finite
from almostlinear.merging.dispatch import merge_into
from almostlinear.merging.signals import MergeSignals
from almostlinear.merging.stream import Checkpoint
from almostlinear.merging.writer import AtomicShardedWriter, OutputTensor, verify


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_finite_check_agrees_with_isfinite(dtype, bad):
    x = torch.randn(1000).to(dtype)
    assert _all_finite(x) and _all_finite(x[:0])
    for where in (0, 517, 999):
        y = x.clone()
        y[where] = bad
        assert not _all_finite(y) and not bool(torch.isfinite(y).all())


def test_streamed_linear_refuses_a_nan_in_the_last_slice():
    a, b = torch.randn(50), torch.randn(50)
    b[-1] = float("nan")
    with pytest.raises(NonFiniteError, match="'w'"):
        merge_into("linear", "w", [a, b], [1.0, 1.0], None, {}, torch.empty(50), chunk=8)
    # float16 output: an overflow in the cast is caught as well
    with pytest.raises(NonFiniteError, match="'w'"):
        merge_into("linear", "w", [a * 1e5, a * 1e5], [1.0, 1.0], None, {"normalize": False},
                   torch.empty(50, dtype=torch.float16), chunk=8)


def test_signals_equal_the_direct_computation():
    g = torch.Generator().manual_seed(0)
    base = [torch.randn(300, generator=g), torch.randn(7, 9, generator=g)]
    models = [[b + torch.randn(b.shape, generator=g) for b in base] for _ in range(3)]
    with_base, without = MergeSignals(3), MergeSignals(3)
    for i, b in enumerate(base):
        tensors = [m[i] for m in models]
        with_base.update(b, tensors, chunk=64)
        without.update(tensors[0], tensors, chunk=64)  # the reference is the first model itself
    for signals, ref in ((with_base, base), (without, [m for m in models[0]])):
        deltas = torch.stack([torch.cat([(m[i] - ref[i]).reshape(-1) for i in range(2)]) for m in models]).double()
        expected = deltas @ deltas.T
        torch.testing.assert_close(signals.gram, expected, rtol=1e-5, atol=1e-6)
        norm = torch.cat([r.reshape(-1) for r in ref]).double().norm()
        got = signals.as_dict()["relative_norms"]
        torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), expected.diagonal().sqrt() / norm)
    assert without.gram[0].abs().max() == 0


def test_read_into_a_reused_buffer_equals_a_fresh_read(saved_models):
    ckpt = Checkpoint(saved_models["ft0"])
    buffer = torch.empty(max(i.nbytes for i in ckpt.infos.values()), dtype=torch.uint8)
    for name in ckpt.keys():
        assert torch.equal(ckpt.read(name, buffer=buffer), ckpt.read(name))
    with pytest.raises(AlmostLinearError, match="buffer"):
        ckpt.read(name, buffer=torch.empty(1, dtype=torch.uint8))


def test_threaded_checksums_match_the_written_bytes_and_abort_cleans_up(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "HASH_IN_THREAD_BYTES", 0)  # every tensor goes through the thread
    layout = [OutputTensor(f"t{i}", (64, 33), torch.float32) for i in range(5)]
    tensors = {t.name: torch.randn(t.shape) for t in layout}
    with AtomicShardedWriter(tmp_path / "out", layout, shard_bytes=3 * 64 * 33 * 4) as w:
        for t in w.order:
            w.write(t.name, tensors[t.name])
    checks = verify(tmp_path / "out")
    assert len(checks) == 2 and all(checks.values())
    for name in w.checksums:
        assert w.checksums[name] == hashlib.sha256((tmp_path / "out" / name).read_bytes()).hexdigest()
    loaded = {}
    for name in w.checksums:
        loaded.update(load_file(str(tmp_path / "out" / name)))
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    with pytest.raises(RuntimeError, match="stop"):
        with AtomicShardedWriter(tmp_path / "other", layout) as w:
            w.write("t0", tensors["t0"])
            raise RuntimeError("stop")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and w._hasher is None


def test_cli_modules_do_not_import_torch():
    code = ("import sys, almostlinear.merging.cli, almostlinear.adapters.cli; "
            "print(sorted(m for m in ('torch', 'scipy', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
