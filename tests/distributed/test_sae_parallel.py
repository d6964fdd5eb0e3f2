"""Data-parallel SAE training over 2 gloo processes equals one process on the union minibatches."""

from __future__ import annotations

import pytest
import torch

from dist_workers import ALL_TEXTS, SAE_CASES, SAE_STEPS, launch, sae_body, sae_data, sae_trainer


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("sae")
    launch(sae_body, 2, str(out))
    return out


@pytest.mark.parametrize(("mode", "dead_tokens"), SAE_CASES)
def test_two_ranks_train_the_sae_of_the_union_minibatches(two_ranks, mode, dead_tokens):
    torch.set_num_threads(1)
    ranks = [torch.load(two_ranks / f"{mode}-{dead_tokens}-rank{r}.pt") for r in range(2)]
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # ranks stay bitwise identical
    data = sae_data()
    single = sae_trainer(batch_size=data.shape[1], dead_tokens=dead_tokens)
    for step in range(SAE_STEPS):
        single.step(data[step])
    expected = single.result()
    got = ranks[0]
    for name in ("W_dec", "W_enc", "b_dec", "b_enc"):
        error = _relative(got[name], getattr(expected, name))
        print(f"{mode} dead_tokens={dead_tokens} {name}: relative difference {error:.1e}")
        assert error <= 1e-6, (name, error)
    assert torch.equal(got["frequency"], expected.latent_frequency)
    assert int(got["tokens"]) == expected.tokens == SAE_STEPS * data.shape[1]
    assert torch.allclose(got["fvu"], torch.tensor(single.log.fvu, dtype=got["fvu"].dtype), rtol=1e-5)
    assert torch.equal(got["dead"], torch.tensor(single.log.dead))
    if dead_tokens < 10**9:
        assert max(single.log.dead) > 0  # the AuxK path ran


def test_streamed_training_over_uneven_shards_keeps_ranks_equal(two_ranks):
    from almostlinear.core.collect import stream
    from tiny_models import build_model, make_tokenizer

    ranks = [torch.load(two_ranks / f"stream-rank{r}.pt") for r in range(2)]
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    tokens = sum(len(b) for b in stream(build_model("llama"), make_tokenizer(), ALL_TEXTS[:23], "resid_post.0",
                                        skip_first=True))
    assert int(ranks[0]["tokens"]) == tokens  # every token of both blocks was trained on
