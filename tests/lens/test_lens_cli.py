import pytest
from tiny_models import build_model, make_tokenizer

from almostlinear.core.errors import ChoiceError
from almostlinear.lens import AffineLens
from almostlinear.lens.cli import lens_command


@pytest.fixture
def tiny_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("ALMOSTLINEAR_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "tiny-llama"
    build_model("llama").save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def test_lens_command_prints_the_table_and_writes_the_png(tiny_folder, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "lens.png"
    assert lens_command(str(tiny_folder), "Paris is the capital of", "logit", str(out)) == 0
    printed = capsys.readouterr().out
    assert "block 1" in printed and "embeddings" in printed and "input" in printed
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_affine_lens_is_fitted_once_then_read_from_the_cache(tiny_folder, tmp_path, capsys):
    assert lens_command(str(tiny_folder), "the cat is on the road", "affine") == 0
    cached = list((tmp_path / "cache" / "lenses").glob("affine-*.safetensors"))
    assert len(cached) == 1 and isinstance(AffineLens.load(cached[0]), AffineLens)
    first = capsys.readouterr()
    assert "fitting the affine lens" in first.err
    assert lens_command(str(tiny_folder), "the cat is on the road", "affine") == 0
    second = capsys.readouterr()
    assert "using the cached affine lens" in second.err and second.out == first.out


def test_unknown_kind_is_refused(tiny_folder):
    with pytest.raises(ChoiceError, match="unknown lens kind 'magic'"):
        lens_command(str(tiny_folder), "a dog", "magic")


def test_tuned_lens_is_trained_from_the_affine_lens_and_cached(tiny_folder, tmp_path, capsys):
    from almostlinear.lens import TunedLens

    assert lens_command(str(tiny_folder), "a dog", "tuned") == 0
    [cached] = (tmp_path / "cache" / "lenses").glob("tuned-*.safetensors")
    lens = TunedLens.load(cached)
    assert lens.provenance.extra["init"] == "AffineLens" and lens.steps >= 1
    assert "training the tuned lens" in capsys.readouterr().err
