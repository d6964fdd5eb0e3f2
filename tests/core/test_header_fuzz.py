"""Property tests: whatever JSON a file's header holds, readers answer with a library error or a value."""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from almostlinear.core.artifact import load
from almostlinear.core.errors import AlmostLinearError
from almostlinear.merging.stream import Checkpoint

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20)
KINDS = st.sampled_from(["steering.vector", "erasure.leace", "editing.rank_one", "merging.task_vector",
                         "sae.autoencoder", "probes.linear", "steering-vector", "nonsense"])
HEADERS = st.fixed_dictionaries({"kind": KINDS | JSON, "format_version": st.sampled_from([1, 2]) | JSON},
                                optional={"fields": JSON | st.dictionaries(st.text(max_size=8), JSON, max_size=4),
                                          "provenance": JSON | st.dictionaries(
                                              st.sampled_from(["where", "units", "site", "layer", "method"]),
                                              JSON, max_size=3)}) | JSON


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(header=HEADERS)
def test_an_artifact_header_is_read_or_refused_with_an_artifact_error(header):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "a.safetensors"
        save_file({"direction": torch.ones(4)}, str(path), metadata={"almostlinear": json.dumps(header)})
        try:
            load(path)
        except AlmostLinearError:
            pass


ENTRIES = st.dictionaries(st.text(max_size=6), JSON | st.fixed_dictionaries(
    {"dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "X"]) | JSON,
     "shape": st.lists(st.integers(-2, 1 << 40), max_size=3) | JSON,
     "data_offsets": st.lists(st.integers(-8, 1 << 40), min_size=2, max_size=2) | JSON}), max_size=3)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(header=ENTRIES | JSON, data=st.binary(max_size=64))
def test_a_checkpoint_header_is_read_or_refused_with_a_library_error(header, data):
    with tempfile.TemporaryDirectory() as folder:
        text = json.dumps(header).encode()
        (Path(folder) / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + data)
        try:
            checkpoint = Checkpoint(folder)
        except AlmostLinearError:
            return
        for info in checkpoint.infos.values():  # what was accepted fits in the file
            assert info.numel * info.dtype.itemsize == info.nbytes <= len(data)
