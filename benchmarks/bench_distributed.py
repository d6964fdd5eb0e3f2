"""Data-parallel statistics and the audit under torchrun.

``python benchmarks/bench_distributed.py volume``: the bytes each statistic's state takes on the wire,
measured from the reduction's own tensor lists at a small width and checked against closed forms,
which then project the traffic of a reduction over 8 and 64 ranks at Llama-3-8B width; plus the
wall time of one 2-rank gloo reduction on this machine.

``python benchmarks/bench_distributed.py audit [rounds]``: ``almostlinear audit --quick`` on SmolLM2-135M
(three pass-heavy sections, 32 of the package's neutral texts), one process with 2 threads against
``torchrun --nproc_per_node 2`` with one thread each, alternated, and whether the two reports agree.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

F64, I64 = 8, 8


# -- closed forms of each state's bytes ----------------------------------------------------------------

def moments_bytes(d: int, dy: int | None = None, maps: int = 1) -> int:
    per = d + d * d + (0 if dy is None else dy + dy * dy + d * dy)
    return I64 + F64 * maps * per


def leace_bytes(d: int, classes: int = 1) -> int:
    return moments_bytes(d, classes)


def second_moment_bytes(d_mlp: int) -> int:
    return I64 + F64 * d_mlp * d_mlp


def key_statistics_bytes(d_mlp: int) -> int:
    return F64 * d_mlp * d_mlp + 2 * 4 * d_mlp * d_mlp + 2 * I64  # C, two float32 halves, counts


def affine_lens_bytes(states: int, d: int) -> int:
    return 2 * (states - 1) * moments_bytes(d, d)  # training and validation moments per state


def cka_bytes(dx: int, dy: int) -> int:
    sums = (2 * dx + 2) + (2 * dy + 2) + dx * dx + dy * dy + dx * dy + dx + dy + 1
    return moments_bytes(dx, dy) + I64 + F64 * (dx + dy) + F64 * sums


def pair_moments_bytes(layers: int, d: int) -> int:
    # per layer: x mean and covariance, y mean, the trace of y's covariance, the cross-covariance
    return I64 + F64 * layers * (2 * d + 2 * d * d + 1)


def measured(width: int = 24, d_mlp: int = 40, layers: int = 3) -> dict[str, tuple[int, int]]:
    """``name: (bytes from the codec's tensors, closed form)`` at a small width."""
    from almostlinear.core.stats import RunningMoments
    from almostlinear.distributed import payload_bytes
    from almostlinear.editing.moments import SecondMoment
    from almostlinear.erasure.leace import LeaceFitter
    from almostlinear.lens.affine import AffineLensFitter
    from almostlinear.linearity.blocks import PairMoments
    from almostlinear.similarity.streaming import StreamingCKA

    return {
        "RunningMoments(d, d)": (payload_bytes(RunningMoments(width, width)), moments_bytes(width, width)),
        "LeaceFitter(d, 1 class)": (payload_bytes(LeaceFitter(width)), leace_bytes(width)),
        "SecondMoment(d_mlp)": (payload_bytes(SecondMoment(d_mlp)), second_moment_bytes(d_mlp)),
        "AffineLensFitter(L+1 states)": (payload_bytes(AffineLensFitter(layers + 1, width)),
                                         affine_lens_bytes(layers + 1, width)),
        "StreamingCKA(d, d)": (payload_bytes(StreamingCKA(width, width)), cka_bytes(width, width)),
        "PairMoments(L, d, d)": (payload_bytes(PairMoments(layers, width, width)), pair_moments_bytes(layers, width)),
    }


def projection(d: int = 4096, d_mlp: int = 14336, layers: int = 32) -> dict[str, int]:
    """State bytes at Llama-3-8B width (d 4096, MLP 14336, 32 layers)."""
    return {
        "RunningMoments(d, d)": moments_bytes(d, d),
        "LeaceFitter(d, 1 class)": leace_bytes(d),
        "SecondMoment(d_mlp)": second_moment_bytes(d_mlp),
        "KeyStatistics(d_mlp)": key_statistics_bytes(d_mlp),
        "AffineLensFitter(L+1 states)": affine_lens_bytes(layers + 1, d),
        "StreamingCKA(d, d)": cka_bytes(d, d),
        "PairMoments(L, d, d)": pair_moments_bytes(layers, d),
    }


def traffic(state: int, world: int) -> dict[str, float]:
    """Bytes of one reduction: the tree sends ``world - 1`` states, rank 0 receives ``ceil(log2 world)``
    of them in turn; the broadcast delivers one state to each other rank."""
    rounds = math.ceil(math.log2(world))
    return {"total": 2 * (world - 1) * state, "rank0_in": rounds * state, "rounds": rounds}


def _reduce_body(rank: int, world: int, port: int, width: int, out: str) -> None:
    import torch.distributed as dist

    from almostlinear.core.stats import RunningMoments
    from almostlinear.distributed import reduce

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    m = RunningMoments(width, width).update(torch.randn(64, width, dtype=torch.float64),
                                           torch.randn(64, width, dtype=torch.float64))
    times = []
    for _ in range(4):
        dist.barrier()
        began = time.perf_counter()
        reduce(m)
        times.append(time.perf_counter() - began)
    if rank == 0:
        Path(out).write_text(json.dumps(times))
    dist.destroy_process_group()


def volume() -> None:
    print("| statistic | measured bytes (small width) | closed form | equal |")
    print("|---|---|---|---|")
    for name, (got, formula) in measured().items():
        print(f"| {name} | {got} | {formula} | {got == formula} |")
    print()
    print("| statistic at Llama-3-8B width | state | 8 ranks: total on the wire | 8 ranks: into rank 0 "
          "| 64 ranks: total | 64 ranks: into rank 0 |")
    print("|---|---|---|---|---|---|")
    gb = 1e9
    for name, state in projection().items():
        t8, t64 = traffic(state, 8), traffic(state, 64)
        print(f"| {name} | {state / gb:.2f} GB | {t8['total'] / gb:.1f} GB | {t8['rank0_in'] / gb:.2f} GB "
              f"| {t64['total'] / gb:.0f} GB | {t64['rank0_in'] / gb:.2f} GB |")
    import socket

    import torch.multiprocessing as mp

    width = 1024
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.json")
        mp.spawn(_reduce_body, args=(2, port, width, out), nprocs=2, join=True)
        times = json.loads(Path(out).read_text())
    state = moments_bytes(width, width)
    best = min(times[1:])
    print(f"\n2-rank gloo reduce of RunningMoments({width}, {width}) ({state / 1e6:.1f} MB): "
          f"{best * 1e3:.0f} ms (best of 3 after a warm-up; all: {[round(t * 1e3) for t in times]} ms), "
          f"{2 * state / best / 1e9:.2f} GB/s through loopback; load average {os.getloadavg()[0]:.1f}")


def _metrics(folder: Path) -> dict:
    report = json.loads((folder / "report.json").read_text())
    return {(s["id"], m["name"], json.dumps(m.get("layer"))): m["value"] for s in report["sections"] for m in s["metrics"]}


def audit(rounds: int = 2, sections: str = "interlayer_linearity,logit_lens,block_linearity", n_texts: int = 32) -> None:
    from almostlinear.data import FALLBACK_TEXTS

    python = sys.executable
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    walls: dict[str, list[float]] = {"1 process x 2 threads": [], "2 processes x 1 thread": []}
    with tempfile.TemporaryDirectory() as tmp:
        # The package's own neutral texts (so no generation, which rank 0 would do alone), 4 batches of 8
        texts = Path(tmp) / "texts.txt"
        texts.write_text("\n".join((list(FALLBACK_TEXTS) * math.ceil(n_texts / len(FALLBACK_TEXTS)))[:n_texts]))
        common = ["-m", "almostlinear", "audit", "--quick", "--sections", sections, "--texts", str(texts), "--quiet"]
        for round_ in range(rounds):
            for label in walls:
                out = Path(tmp) / f"{label[0]}-{round_}"
                if label.startswith("1"):
                    command = [python, *common, "--threads", "2", "--out", str(out)]
                else:
                    command = [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               *common, "--out", str(out)]
                load = os.getloadavg()[0]
                began = time.perf_counter()
                subprocess.run(command, check=True, env=env, capture_output=True)
                walls[label].append(time.perf_counter() - began)
                print(f"round {round_} {label}: {walls[label][-1]:.1f} s (load average before: {load:.1f})")
        one, two = _metrics(Path(tmp) / "1-0"), _metrics(Path(tmp) / "2-0")
    numeric = [k for k, v in one.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    worst = max(abs(one[k] - two[k]) / max(abs(one[k]), 1e-12) for k in numeric)
    same = sum(one[k] == two[k] for k in numeric)
    a, b = (min(v) for v in walls.values())
    print(f"best wall: 1x2 {a:.1f} s, 2x1 {b:.1f} s, ratio (2x1 / 1x2) {b / a:.2f}; "
          f"{len(numeric)} metrics, {same} bit-equal, largest relative difference {worst:.1e}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "audit":
        audit(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
    else:
        volume()
