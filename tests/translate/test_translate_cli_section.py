"""The translate command, the stitch command and the audit section, on tiny models saved as folders."""

import argparse
import io

import pytest
import torch
from tiny_models import TEXTS, build_model, make_tokenizer

from almostlinear.core.section import AuditContext, Budget
from almostlinear.audit.plan import run_sections
from almostlinear.core.artifact import load
from almostlinear.core.models import LoadedModel
from almostlinear.translate import LinearMap, cli
from almostlinear.translate.section import CrossModelMaps


def _folder(tmp_path, family, seed=0):
    path = tmp_path / f"{family}-{seed}"
    build_model(family, seed=seed).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return str(path)


def _parser():
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    return parser


def test_translate_command_between_two_models_prints_held_out_scores(tmp_path):
    texts = tmp_path / "texts.txt"
    words = "the cat dog bird fish sun moon star tree house road king queen man woman".split()
    lines = [f"the {a} and the {b} is in the {c}" for a in words[:6] for b in words[6:10] for c in words[10:12]]
    texts.write_text("\n".join(lines))
    out = io.StringIO()
    results = cli.translate_command(_folder(tmp_path, "llama"), _folder(tmp_path, "gpt2", 1), texts_file=str(texts),
                                    out=str(tmp_path / "map.safetensors"), stream=out, say=lambda _: None)
    printed = out.getvalue()
    assert "R² held out" in printed and "saved the" in printed
    forward = results[0]
    assert forward.held_out.n == round(len(lines) * 0.3)
    saved = load(tmp_path / "map.safetensors")
    assert isinstance(saved, LinearMap) and torch.equal(saved.weight, forward.map.weight)


def test_translate_parser_runs_the_stitch_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("ALMOSTLINEAR_CACHE", str(tmp_path / "cache"))
    args = _parser().parse_args(["translate", "--target", _folder(tmp_path, "llama"), "--stitch", "0:1",
                                 "--out", str(tmp_path / "stitch.safetensors")])
    assert args.stitch == (0, 1)
    assert args.func(args) == 0
    assert isinstance(load(tmp_path / "stitch.safetensors"), LinearMap)
    with pytest.raises(SystemExit):
        _parser().parse_args(["translate", "--stitch", "three"])


def test_section_on_a_tiny_model_with_a_tiny_partner(tmp_path, monkeypatch):
    import almostlinear.translate.section as section

    partner = LoadedModel(build_model("bert"), make_tokenizer(), "tiny-bert", "memory", "encoder")
    monkeypatch.setattr(section, "load", lambda name, device="cpu": partner)
    loaded = LoadedModel(build_model("llama"), make_tokenizer(), "tiny-llama", "memory", "causal-lm")
    budget = Budget(neutral_texts=8, neutral_new_tokens=8, lens_tokens=40, statements=40, fact_candidates=40)
    words = "cat dog bird fish sun moon star tree".split()
    neutral = [f"the {a} is on the {b}" for a in words for b in words[:5]]
    ctx = AuditContext(loaded, budget, progress=lambda _: None, sources={"neutral": neutral, "cities": []})
    (result,) = run_sections(ctx, [CrossModelMaps(partner="tiny-bert")],
                             lambda source: list(ctx.sources[source]))
    assert result.status == "ok", result.notes
    held = result.metric("to_model_affine_r2_held_out")
    assert held.source == "arXiv 2209.15162" and held.value is not None
    assert result.metric("texts_test").value + result.metric("texts_train").value == len(neutral)
    assert result.metric("retrieval_chance").value == pytest.approx(1 / result.metric("texts_test").value)
    assert result.figures[0].id == "translate_rank"


def test_section_skips_encoders():
    loaded = LoadedModel(build_model("bert"), make_tokenizer(), "tiny-bert", "memory", "encoder")
    ctx = AuditContext(loaded, Budget.quick(), progress=lambda _: None)
    (result,) = run_sections(ctx, [CrossModelMaps()], lambda source: list(TEXTS))
    assert result.status == "skipped"
