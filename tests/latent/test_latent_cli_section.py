"""The latent command (scores and PNG) and the latent audit section."""

import argparse
import io

import pytest
from tiny_models import build_model, make_tokenizer

from almostlinear.core.section import AuditContext, Budget
from almostlinear.audit.plan import run_sections
from almostlinear.core.artifact import load
from almostlinear.core.errors import ShapeError
from almostlinear.core.models import LoadedModel
from almostlinear.latent import AttributeDirection, cli
from almostlinear.latent.section import LatentPaths


def _parser():
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    return parser


def test_latent_command_prints_scores_and_writes_png(tmp_path):
    out = io.StringIO()
    result = cli.latent_command(1, 7, steps=5, per_pair=4, out=tmp_path / "grid.png",
                                direction_out=str(tmp_path / "d.safetensors"), stream=out, say=lambda _: None)
    printed = out.getvalue()
    assert "slerp" in printed and "arithmetic" in printed and "wrote" in printed
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    assert isinstance(load(tmp_path / "d.safetensors"), AttributeDirection)
    assert 0 <= result["scores"].agreement["lerp"] <= 1


def test_latent_parser_and_bad_input(tmp_path):
    args = _parser().parse_args(["latent", "--from", "0", "--to", "6", "--steps", "3", "--per-pair", "2",
                                 "--out", str(tmp_path / "g.png")])
    assert args.func(args) == 0 and (tmp_path / "g.png").is_file()
    with pytest.raises(ShapeError, match="at least 2 steps"):
        cli.latent_command(0, 6, steps=1, out=None, stream=io.StringIO(), say=lambda _: None)
    with pytest.raises(ShapeError, match="different digits"):
        cli.latent_command(4, 4, out=None, stream=io.StringIO(), say=lambda _: None)


def test_latent_section_reports_agreement_against_the_pixel_baseline():
    loaded = LoadedModel(build_model("llama"), make_tokenizer(), "tiny-llama", "memory", "causal-lm")
    ctx = AuditContext(loaded, Budget.quick(), progress=lambda _: None)
    (result,) = run_sections(ctx, [LatentPaths()], lambda source: [])
    assert result.status == "ok", result.notes
    for kind in ("lerp", "slerp", "pixels"):
        assert 0 <= result.metric(f"path_agreement_{kind}").value <= 1
    assert result.metric("attribute_transfer_success").value > result.metric("attribute_transfer_baseline").value
    assert result.metric("paths_scored").value == 90 * 4
    assert {s.name for s in result.figures[0].series} == {"lerp", "slerp", "pixels"}


@pytest.mark.real
def test_latent_section_in_an_audit_of_smollm2(smollm2):
    ctx = AuditContext(smollm2, Budget.quick(), progress=lambda _: None)
    (result,) = run_sections(ctx, [LatentPaths()], lambda source: [])
    assert result.status == "ok", result.notes
    assert result.metric("reconstruction_accuracy").value > 0.85
    assert result.metric("path_agreement_lerp").value > 0.5
