"""``torchrun --nproc_per_node 2 -m almostlinear audit`` reports what one process reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed

from almostlinear.cli import main
from almostlinear.core.threads import available_cores, default_threads
from tiny_models import TEXTS, build_model, make_tokenizer

SECTIONS = "interlayer_linearity,logit_lens,block_linearity,similarity"


def _metrics(folder) -> dict:
    report = json.loads((folder / "report.json").read_text())
    return {(s["id"], m["name"], json.dumps(m.get("layer"))): m["value"]
            for s in report["sections"] for m in s["metrics"]}, report


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_two_rank_audit_equals_one_process(tmp_path):
    folder = tmp_path / "tiny"
    build_model("llama").save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    texts = tmp_path / "texts.txt"
    # 37 texts in batches of 8: five batches, three on rank 0 and two on rank 1
    texts.write_text("\n".join([f"{a} {b} {c}" for a in TEXTS for b in TEXTS for c in TEXTS][:37]) + "\n")
    common = ["audit", "--model", str(folder), "--quick", "--texts", str(texts), "--sections", SECTIONS, "--quiet"]
    assert main([*common, "--out", str(tmp_path / "one"), "--threads", "1"]) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "almostlinear", *common, "--out", str(tmp_path / "two")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote ") == 1  # rank 0 alone reports and writes
    one, one_report = _metrics(tmp_path / "one")
    two, two_report = _metrics(tmp_path / "two")
    assert two_report["settings"]["processes"] == 2
    assert two_report["settings"]["threads"] == max(1, available_cores() // 2)  # cores / local world size
    assert {s["id"]: s["status"] for s in two_report["sections"]} == {s["id"]: s["status"] for s in one_report["sections"]}
    assert all(s["status"] == "ok" for s in one_report["sections"]), [(s["id"], s["notes"]) for s in one_report["sections"]]
    assert one.keys() == two.keys() and len(one) > 20
    for key, value in one.items():
        if value is None:
            assert two[key] is None, key
        else:
            assert two[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_threads_per_process_under_torchrun(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_threads() == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_threads() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert default_threads() == 1
