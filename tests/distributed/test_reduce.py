"""Statistics reduced across 2 gloo processes equal one process reading all the data."""

from __future__ import annotations

import pytest
import torch

from almostlinear.core.errors import DistributedError
from almostlinear.core.stats import RunningMoments
from almostlinear.distributed import payload_bytes, reduce
from almostlinear.distributed.codecs import STREAMING_CKA, codec_for
from almostlinear.similarity.streaming import StreamingCKA
from dist_workers import ALL_TEXTS, fold, key_statistics, launch, reduce_body, summary


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = max(float(b.abs().max()), 1e-300)
    return float((a - b).abs().max()) / scale


@pytest.fixture(scope="module")
def single():
    torch.set_num_threads(1)
    stats = fold(ALL_TEXTS[:23])
    return {**summary(stats), "key_statistics": key_statistics(stats["key_halves"]).c}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("reduce")
    launch(reduce_body, 2, str(out))
    return out


@pytest.mark.parametrize("mode", ["uneven", "empty"])
def test_reduced_statistics_equal_one_process(two_ranks, single, mode):
    ranks = [torch.load(two_ranks / f"{mode}-rank{r}.pt") for r in range(2)]
    for name, expected in single.items():
        if name == "key_statistics" and mode == "empty":
            continue
        for rank, got in enumerate(ranks):
            assert _relative(got[name], expected) <= 1e-12, (mode, name, rank, _relative(got[name], expected))
        assert torch.equal(ranks[0][name], ranks[1][name]), (mode, name)  # every rank holds the same bits
    assert ranks[0]["lens_val_n0"] > 0  # the ridge's validation tokens came through the merge too


def test_statistics_of_different_layouts_are_refused_on_every_rank(two_ranks):
    assert [torch.load(two_ranks / f"refused-rank{r}.pt") for r in range(2)] == [True, True]


def test_without_a_process_group_reduce_returns_the_statistic():
    m = RunningMoments(3).update(torch.randn(5, 3, dtype=torch.float64))
    assert reduce(m) is m
    assert reduce({"a": [m]})["a"][0] is m


def test_an_unsupported_object_is_refused_with_the_supported_list():
    with pytest.raises(DistributedError, match="RunningMoments"):
        reduce(torch.zeros(3))


def test_payload_counts_every_tensor_of_the_state():
    m = RunningMoments(4, 2)
    # n (int64) + mean_x 4 + sxx 16 + mean_y 2 + syy 4 + sxy 8 (float64)
    assert payload_bytes(m) == 8 + 8 * (4 + 16 + 2 + 4 + 8)
    assert payload_bytes([m, m]) == 2 * payload_bytes(m)


def test_cka_merge_of_halves_with_different_shifts_equals_the_whole():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64) * 3 + 7
    y = x @ torch.randn(5, 4, generator=g, dtype=torch.float64) + torch.randn(40, 4, generator=g, dtype=torch.float64)
    whole = StreamingCKA(5, 4).update(x, y).result()
    a, b = StreamingCKA(5, 4).update(x[:13], y[:13]), StreamingCKA(5, 4).update(x[13:] - 0, y[13:])
    merged = STREAMING_CKA.merge(a, b).result()
    assert merged.n == 40
    assert merged.linear == pytest.approx(whole.linear, rel=1e-12)
    assert merged.debiased == pytest.approx(whole.debiased, rel=1e-12)
    # an empty side leaves the other unchanged
    empty = StreamingCKA(5, 4)
    assert STREAMING_CKA.merge(empty, a).result().debiased == pytest.approx(a.result().debiased, rel=1e-15)
    assert codec_for(a) is STREAMING_CKA


def test_shard_bounds_cover_the_list_in_order_with_uneven_and_empty_blocks():
    from almostlinear.distributed import shard_bounds, shard_of

    for n in range(0, 12):
        for world in range(1, 6):
            blocks = [shard_of(list(range(n)), (rank, world)) for rank in range(world)]
            assert [i for block in blocks for i in block] == list(range(n))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    assert shard_bounds(1, (1, 2)) == (1, 1)  # a rank beyond the items gets nothing
    with pytest.raises(Exception, match="rank < world"):
        shard_bounds(5, (2, 2))


def test_stream_and_collect_of_a_shard_keep_global_text_indices():
    from almostlinear.core.collect import collect, stream
    from tiny_models import build_model, make_tokenizer

    model, tok = build_model("llama"), make_tokenizer()
    texts = ALL_TEXTS[:5]
    whole = collect(model, tok, texts, "resid_post.0", batch_size=2)
    parts = [collect(model, tok, texts, "resid_post.0", batch_size=2, shard=(rank, 2)) for rank in range(2)]
    assert torch.equal(torch.cat([p.text_index for p in parts]), whole.text_index)
    assert torch.allclose(torch.cat([p["resid_post.0"] for p in parts]), whole["resid_post.0"], atol=1e-5)
    empty = collect(model, tok, texts[:1], "resid_post.0", shard=(1, 2))
    assert empty["resid_post.0"].shape == (0, 32) and len(empty) == 0
    assert list(stream(model, tok, texts[:1], "resid_post.0", shard=(1, 2))) == []
