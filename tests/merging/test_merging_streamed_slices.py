"""Entry-by-entry merges streamed in slices give the whole-tensor results, signals and checksums."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from almostlinear.core.errors import AlmostLinearError
from almostlinear.merging import merge_files, run as run_module
from almostlinear.merging import writer as writer_module
from almostlinear.merging.dispatch import merge_tensor
from almostlinear.merging.signals import MergeSignals
from almostlinear.merging.stream import Checkpoint
from almostlinear.merging.writer import AtomicShardedWriter, OutputTensor, verify


def test_read_part_equals_the_slice_of_a_whole_read(saved_models):
    ckpt = Checkpoint(saved_models["ft0"])
    buffer = torch.empty(1 << 16, dtype=torch.uint8)
    for name in ckpt.keys():
        whole = ckpt.read(name).reshape(-1)
        n = whole.numel()
        for start, count in ((0, n), (0, min(n, 7)), (n // 3, n - n // 3), (n, 0)):
            assert torch.equal(ckpt.read_part(name, start, count), whole[start:start + count])
            if count * whole.element_size() <= buffer.numel():
                assert torch.equal(ckpt.read_part(name, start, count, buffer=buffer), whole[start:start + count])
    with pytest.raises(AlmostLinearError, match="outside"):
        ckpt.read_part(name, n - 1, 2)


def _recipe(saved_models, method):
    models = [{"model": str(saved_models["ft0"]), "parameters": {"weight": 0.7}},
              {"model": str(saved_models["ft1"]), "parameters": {"weight": 0.4}}]
    recipe = {"merge_method": method, "models": models}
    if method == "task_arithmetic":
        recipe["base_model"] = str(saved_models["base"])
    return recipe


@pytest.mark.parametrize("method", ["linear", "task_arithmetic"])
@pytest.mark.parametrize("chunk", [64, 1000, 1 << 20])
def test_sliced_merge_equals_the_in_memory_merge_and_its_signals(saved_models, tmp_path, monkeypatch, method, chunk):
    monkeypatch.setattr(run_module, "SLICE", chunk)  # small slices: many per tensor, ragged last slices
    monkeypatch.setattr(writer_module, "HASH_IN_THREAD_BYTES", 0)
    result = merge_files(_recipe(saved_models, method), tmp_path / "out")
    merged = load_file(str(tmp_path / "out" / "model.safetensors"))
    inputs = [load_file(str(saved_models[k] / "model.safetensors")) for k in ("ft0", "ft1")]
    base = load_file(str(saved_models["base"] / "model.safetensors")) if method == "task_arithmetic" else None
    signals = MergeSignals(2)
    for name, got in merged.items():
        tensors = [m[name] for m in inputs]
        expected = merge_tensor(method, name, tensors, [0.7, 0.4], base[name] if base else None, {})
        assert torch.equal(got, expected), name
        signals.update(base[name] if base else tensors[0], tensors)
    assert all(verify(tmp_path / "out").values())
    reported = json.loads((tmp_path / "out" / "almostlinear_merge.json").read_text())["signals"]
    whole = signals.as_dict()
    assert reported["elements"] == whole["elements"]
    assert reported["sign_conflict_rate_top20"] == whole["sign_conflict_rate_top20"]
    torch.testing.assert_close(torch.tensor(reported["cosine"]), torch.tensor(whole["cosine"]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(reported["relative_norms"]), torch.tensor(whole["relative_norms"]))
    assert result.signals == reported


def test_write_parts_checks_sizes_and_keeps_order_and_checksums(tmp_path):
    layout = [OutputTensor("a", (1000,), torch.float32), OutputTensor("b", (3, 5), torch.float32)]
    a, b = torch.randn(1000), torch.randn(3, 5)
    with AtomicShardedWriter(tmp_path / "out", layout) as w:
        buffer = torch.empty(64)
        parts = []
        for s in range(0, 1000, 64):  # one reused buffer: each part is copied before the next is made
            piece = buffer[:min(64, 1000 - s)]
            piece.copy_(a[s:s + 64])
            parts.append(piece.clone())
        w.write_parts("a", (buffer[:p.numel()].copy_(p) for p in parts))
        w.write("b", b)
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert torch.equal(out["a"], a) and torch.equal(out["b"], b)
    assert all(verify(tmp_path / "out").values())
    for bad, match in (([torch.randn(999)], "planned"), ([torch.randn(1001)], "exceed"),
                       ([torch.randn(1000).double()], "float64")):
        with pytest.raises(AlmostLinearError, match=match):
            with AtomicShardedWriter(tmp_path / "bad", layout) as w:
                w.write_parts("a", iter(bad))
        assert not (tmp_path / "bad").exists()
        assert not list(tmp_path.glob(".bad.partial-*"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_radix_select_finds_what_kthvalue_finds_with_ties_and_zeros(dtype, monkeypatch):
    from almostlinear.merging import methods
    from almostlinear.merging.methods import kth_largest_nonnegative, magnitude_threshold

    monkeypatch.setattr(methods, "RADIX_MIN_ENTRIES", 1)  # the radix path at every size

    g = torch.Generator().manual_seed(0)
    for n in (1, 6, 1000, 20_011):
        for kind in ("distinct", "ties", "zeros"):
            x = torch.rand(n, generator=g, dtype=dtype)
            if kind == "ties":
                x = (x * 5).floor() / 5
            if kind == "zeros":
                x[: n // 2] = 0
            for k in sorted({1, n, max(1, n // 3)}):
                value, above = kth_largest_nonnegative(x, k, chunk=333)
                expected = torch.kthvalue(x, n - k + 1).values
                assert value == float(expected) and above == int((x > expected).sum())
                assert magnitude_threshold(x, k) == (float(expected), k - above)
    assert kth_largest_nonnegative(torch.tensor([1.0, -2.0, 3.0]), 1) == (-1.0, 0)  # refuses: falls back
    assert magnitude_threshold(torch.tensor([1.0, -2.0, 3.0]), 2) == (1.0, 1)


def test_ties_into_its_own_buffer_or_over_an_input_equals_the_in_memory_merge():
    from almostlinear.merging.dispatch import merge_into

    g = torch.Generator().manual_seed(3)
    base = torch.randn(5000, generator=g)
    tensors = [base + torch.randn(5000, generator=g) for _ in range(3)]
    options = {"density": 0.3}
    expected = merge_tensor("ties", "w", tensors, [1.0, 0.5, 2.0], base, options)
    out = torch.full((5000,), float("nan"))  # the output buffer doubles as scratch for the magnitudes
    merge_into("ties", "w", tensors, [1.0, 0.5, 2.0], base, options, out, chunk=700)
    assert torch.equal(out, expected)
    over = [t.clone() for t in tensors]  # writing over an input must not use it as scratch
    merge_into("ties", "w", over, [1.0, 0.5, 2.0], base, options, over[0], chunk=700)
    assert torch.equal(over[0], expected)
