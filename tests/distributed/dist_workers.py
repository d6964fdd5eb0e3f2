"""Process bodies for ``torch.multiprocessing.spawn`` (gloo on CPU); each writes its results to a file.

They live in a module of their own so that spawned processes can import them by name.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from almostlinear.core.collect import stream
from almostlinear.core.sites import Site
from almostlinear.core.stats import RunningMoments
from almostlinear.editing.moments import SecondMoment
from almostlinear.erasure.leace import LeaceFitter
from almostlinear.lens.affine import AffineLensFitter
from almostlinear.linearity.blocks import PairMoments
from almostlinear.similarity.streaming import StreamingCKA
from tiny_models import TEXTS, build_model, make_tokenizer

ALL_TEXTS = [f"{t} {u}" for t in TEXTS for u in TEXTS[:3]]  # 24 texts of a few tokens
SITES = ["resid_pre.0", "resid_post.0", "resid_post.1", "mlp_key.1"]
BATCH = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(body, world: int, *args) -> None:
    """Run ``body(rank, world, port, *args)`` in ``world`` fresh processes."""
    mp.spawn(body, args=(world, free_port(), *args), nprocs=world, join=True)


def start(rank: int, world: int, port: int) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def labels(text_index: torch.Tensor) -> torch.Tensor:
    """A binary concept per token, from its text: which texts mention an animal."""
    marked = torch.tensor([("cat" in t) or ("dog" in t) or ("bird" in t) for t in ALL_TEXTS], dtype=torch.float64)
    return marked[text_index]


def fold(texts: list[str], shard=None):
    """Every reducible statistic over ``texts`` (or this rank's block of them)."""
    model, tok = build_model("llama").double(), make_tokenizer()
    d, d_mlp = 32, 64
    stats = {
        "moments": RunningMoments(d, 1), "leace": LeaceFitter(d), "keys": SecondMoment(d_mlp),
        "lens": AffineLensFitter(3, d, batch_dtype=torch.float64), "cka": StreamingCKA(d, d),
        "pairs": PairMoments(2, d, d, batch_dtype=torch.float64),
        "key_halves": (SecondMoment(d_mlp), SecondMoment(d_mlp)),  # texts alternate, as key statistics do
    }
    if not texts:
        return stats
    sites = [Site.parse(s) for s in SITES]
    for batch in stream(model, tok, texts, sites, batch_size=BATCH, shard=shard):
        acts = [batch.activations[s] for s in sites]
        z = labels(batch.text_index)
        stats["moments"].update(acts[2], z[:, None])
        stats["leace"].update(acts[2], z)
        stats["keys"].update(acts[3])
        stats["lens"].update(acts[:3], validation=batch.text_index % 4 == 3)
        stats["cka"].update(acts[1], acts[2])
        stats["pairs"].update(torch.stack(acts[:2]), torch.stack(acts[1:3]))
        odd = (batch.text_index % 2).bool()
        stats["key_halves"][0].update(acts[3][~odd])
        stats["key_halves"][1].update(acts[3][odd])
    return stats


def key_statistics(halves):
    """The ROME/MEMIT key-statistics artifact of one layer from its two halves."""
    from almostlinear.core.artifact import Provenance
    from almostlinear.editing.stats import _from_moments

    return _from_moments(*halves, 1, "texts", Provenance())


def summary(stats) -> dict[str, torch.Tensor]:
    """The numbers the tests compare: covariances, LEACE projection, key moment, lens maps, CKA."""
    from almostlinear.linearity.affine import fit_affine

    left, right, _ = stats["leace"].factors()
    cka = stats["cka"].result()
    out = {
        "n": torch.tensor(float(stats["moments"].n)),
        "cov_x": stats["moments"].cov_x(), "cross_cov": stats["moments"].cross_cov(),
        "leace_projection": torch.eye(32, dtype=torch.float64) - left @ right,
        "key_moment": stats["keys"].moment(),
        "cka": torch.tensor([cka.linear, cka.debiased], dtype=torch.float64),
        "pairs_cov": stats["pairs"].cov_x(), "pairs_cross": stats["pairs"].cross_cov(),
        "key_halves": torch.stack([h.moment() for h in stats["key_halves"]]),
    }
    for s in range(2):
        fit = fit_affine(stats["lens"]._both(s), ridge=1e-3)
        out[f"lens_A{s}"], out[f"lens_b{s}"] = fit.A, fit.y_mean - fit.x_mean @ fit.A
        out[f"lens_val_n{s}"] = torch.tensor(float(stats["lens"].validation[s].n))
    return out


def reduce_body(rank: int, world: int, port: int, out: str) -> None:
    from almostlinear.core.errors import DistributedError
    from almostlinear.distributed import reduce

    start(rank, world, port)
    for mode in ("uneven", "empty"):
        if mode == "uneven":  # 23 texts over 2 ranks in the stream's own blocks (12 and 11)
            stats = fold(ALL_TEXTS[:23], shard=(rank, world))
        else:  # rank 0 reads every text, rank 1 none
            stats = fold(ALL_TEXTS[:23] if rank == 0 else [])
        merged = reduce(stats)
        result = summary(merged)
        if mode == "uneven":  # the artifact itself needs tokens in both halves on every rank
            result["key_statistics"] = reduce(key_statistics(stats["key_halves"])).c
        torch.save(result, Path(out) / f"{mode}-rank{rank}.pt")
    try:  # statistics of different widths are refused on every rank instead of deadlocking
        reduce(RunningMoments(3 + rank))
        refused = False
    except DistributedError:
        refused = True
    torch.save(refused, Path(out) / f"refused-rank{rank}.pt")
    dist.destroy_process_group()


# -- SAE training -----------------------------------------------------------------------------------

SAE_D, SAE_WIDTH, SAE_STEPS, SAE_ROWS = 16, 64, 40, 24


def sae_data() -> torch.Tensor:
    """``[steps, 2 * rows, d]`` minibatches with a few strong directions (so latents specialise)."""
    g = torch.Generator().manual_seed(5)
    codes = torch.randn(SAE_STEPS, 2 * SAE_ROWS, 6, generator=g).relu()
    return codes @ torch.randn(6, SAE_D, generator=g) * 3 + torch.randn(SAE_D, generator=g)


def split_rows(mode: str) -> int:
    """Rows of each union minibatch that rank 0 takes (rank 1 the rest)."""
    return {"even": SAE_ROWS, "uneven": SAE_ROWS + 7, "empty": 2 * SAE_ROWS}[mode]


def sae_trainer(group=None, *, batch_size: int = SAE_ROWS, dead_tokens: int = 10**9):
    from almostlinear.sae.train import SAETrainer

    return SAETrainer(SAE_D, SAE_WIDTH, k=4, batch_size=batch_size, dead_tokens=dead_tokens, lr=1e-3,
                      process_group=group)


SAE_CASES = (("even", 10**9), ("uneven", 10**9), ("empty", 10**9), ("uneven", 60))


def sae_body(rank: int, world: int, port: int, out: str) -> None:
    """Every case of :data:`SAE_CASES` in turn (one start-up of the processes for all of them)."""
    start(rank, world, port)
    data = sae_data()
    for mode, dead_tokens in SAE_CASES:
        cut = split_rows(mode)
        trainer = sae_trainer(dist.group.WORLD, dead_tokens=dead_tokens)
        for step in range(SAE_STEPS):
            trainer.step(data[step, :cut] if rank == 0 else data[step, cut:])
        result = trainer.result()
        torch.save({"W_dec": result.W_dec, "W_enc": result.W_enc, "b_dec": result.b_dec, "b_enc": result.b_enc,
                    "frequency": result.latent_frequency, "mean": result.latent_mean,
                    "tokens": torch.tensor(result.tokens), "fvu": torch.tensor(trainer.log.fvu),
                    "dead": torch.tensor(trainer.log.dead)},
                   Path(out) / f"{mode}-{dead_tokens}-rank{rank}.pt")
    sae_stream(rank, out)
    dist.destroy_process_group()


def sae_stream(rank: int, out: str) -> None:
    """train_sae over this rank's block of the texts (uneven blocks), buffered and flushed."""
    from almostlinear.sae.train import train_sae

    model, tok = build_model("llama"), make_tokenizer()
    sae = train_sae(model, tok, ALL_TEXTS[:23], "resid_post.0", 64, k=4, batch_size=16, buffer_tokens=40,
                    text_batch_size=3, dead_tokens=30, process_group=dist.group.WORLD)
    torch.save({"W_dec": sae.W_dec, "frequency": sae.latent_frequency, "tokens": torch.tensor(sae.tokens)},
               Path(out) / f"stream-rank{rank}.pt")
