"""Hostile or damaged checkpoints are refused with a library error before anything is allocated or written."""

from __future__ import annotations

import json
import struct

import pytest

from almostlinear.core.errors import AlmostLinearError
from almostlinear.merging.stream import Checkpoint


def _raw(path, header_text: str, data: bytes = b"\0" * 8) -> None:
    encoded = header_text.encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
HEADERS = {
    "a JSON list": json.dumps([ENTRY]),
    "a string entry": json.dumps({"w": "F32"}),
    "missing offsets": json.dumps({"w": {"dtype": "F32", "shape": [2]}}),
    "deep nesting": "[" * 100_000 + "]" * 100_000,
    "a huge shape over 8 bytes": json.dumps({"w": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 8]}}),
    "offsets past the end": json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}),
    "negative shape": json.dumps({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}),
    "metadata not an object": json.dumps({"__metadata__": ["x"], "w": ENTRY}),
}


@pytest.mark.parametrize("what", sorted(HEADERS))
def test_a_malformed_safetensors_header_is_refused(tmp_path, what):
    _raw(tmp_path / "model.safetensors", HEADERS[what])
    with pytest.raises(AlmostLinearError):
        Checkpoint(tmp_path)


def test_a_well_formed_file_is_read(tmp_path):
    _raw(tmp_path / "model.safetensors", json.dumps({"w": ENTRY}))
    assert Checkpoint(tmp_path).keys() == ["w"]


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", 5])
def test_an_index_cannot_point_outside_its_folder(tmp_path, shard):
    folder = tmp_path / "model"
    folder.mkdir()
    _raw(tmp_path / "outside.safetensors", json.dumps({"w": ENTRY}))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard}}))
    with pytest.raises(AlmostLinearError, match="index"):
        Checkpoint(folder)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "[" * 100_000])
def test_a_bad_config_is_a_library_error(tmp_path, text):
    _raw(tmp_path / "model.safetensors", json.dumps({"w": ENTRY}))
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(AlmostLinearError):
        Checkpoint(tmp_path).config()
