import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from almostlinear import Provenance, load_artifact
from almostlinear.core.errors import ArtifactError, NonFiniteError, ShapeError
from almostlinear.lens import AffineLens, TunedLens


def _translators(states, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(states, d, d, generator=g), torch.randn(states, d, generator=g)


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(2, 5), st.integers(1, 9), st.booleans(), st.integers(0, 1000))
def test_affine_lens_round_trip(tmp_path, states, d, bias_only, seed):
    A, b = _translators(states, d, seed)
    lens = AffineLens(None if bias_only else A, b, method="bias" if bias_only else "ridge",
                      ridge=None if bias_only else [0.1] * (states - 1) + [None], tokens=123,
                      provenance=Provenance(model_fingerprint="sha256:abc", method="affine lens"))
    path = lens.save(tmp_path / f"lens-{seed}.safetensors")
    back = AffineLens.load(path)
    assert back.method == lens.method and back.ridge == lens.ridge and back.tokens == 123
    assert torch.equal(back.b, b) and (back.A is None if bias_only else torch.equal(back.A, A))
    assert back.provenance.model_fingerprint == "sha256:abc"
    h = torch.randn(4, d)
    assert torch.equal(back.translate(h, 0), lens.translate(h, 0))


def test_tuned_lens_round_trip(tmp_path):
    A, b = _translators(3, 4, 0)
    lens = TunedLens(A, b, steps=7, tokens=70, history=[3.0, 2.5, 2.0])
    back = load_artifact(lens.save(tmp_path / "tuned.safetensors"))
    assert isinstance(back, TunedLens)
    assert back.history == [3.0, 2.5, 2.0] and back.steps == 7 and back.tokens == 70
    assert torch.equal(back.A, A) and torch.equal(back.b, b)
    with pytest.raises(ArtifactError, match="not a 'lens.affine'"):
        AffineLens.load(tmp_path / "tuned.safetensors")


def test_malformed_translators_are_refused():
    A, b = _translators(3, 4, 0)
    with pytest.raises(ShapeError, match="A must be"):
        AffineLens(A[:, :3], b)
    with pytest.raises(ShapeError, match="b must be"):
        TunedLens(A, b[0])
    with pytest.raises(NonFiniteError):
        TunedLens(A, b.masked_fill(b > 1, float("nan")))
