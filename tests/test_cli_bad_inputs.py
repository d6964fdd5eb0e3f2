"""Every family subcommand refuses bad arguments and files with one line and a non-zero exit, before
any model, network or input checkpoint is loaded, and writes nothing.

Each case runs in-process through ``almostlinear.cli.main``. The functions that would start the work
(loading a model or an artifact, training the digits networks, reading checkpoints or adapters, planning
a merge) are replaced by one that raises :class:`Reached`: a bad input that got that far fails the test.
``test_good_arguments_reach_the_work`` shows that each command's well-formed arguments do get there, so
each bad case fails because of its one bad value.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from almostlinear.cli import main


class Reached(BaseException):
    """The command started its work (a BaseException, so the command line's handler lets it through)."""


WORK = [  # (module, attribute): the first step of real work in each command
    ("almostlinear.core.models", "load"),
    ("almostlinear.zoo.vae", "digits_vae"),
    ("almostlinear.connectivity.digits", "rebasin"),
    ("almostlinear.merging.plan", "plan_merge"),
    ("almostlinear.merging.stream", "Checkpoint"),
    ("almostlinear.adapters.combine", "combine_exact"),
    ("almostlinear.adapters.combine", "combine_svd"),
    ("almostlinear.audit.run", "load"),
    ("almostlinear.audit.compare", "read_report"),
]
# reading a saved artifact checks the file the user named, so bad inputs may reach it; good ones stop there
ARTIFACTS = [("almostlinear.steering.cli", "load_artifact"), ("almostlinear.editing.cli", "load_artifact"),
             ("almostlinear.sae.cli", "load_artifact"), ("almostlinear.export.cli", "load_artifact")]

# commands that take --model: it is given after the bad value, as a folder that does not exist
TAKES_MODEL = {("steer", "fit"), ("steer", "generate"), ("steer", "dose"), ("erase",), ("edit",), ("generate",),
               ("sae", "train"), ("sae", "eval"), ("lens",), ("probe",), ("audit",)}

EDIT = ["edit", "--subject", "Paris", "--prompt", "{} is in", "--target", "Rome"]
SAE_TRAIN = ["sae", "train", "--out", "{new_file}"]
MERGE = ["merge", "{recipe}", "--out", "{new_dir}"]
TASK_VECTOR = ["task-vector", "{model_a}", "{model_b}", "--out", "{new_file}"]
LORA = ["lora-combine", "{adapter_a}", "{adapter_b}", "--out", "{new_dir}"]
EXPORT = ["export", "{afile}", "--to", "peft", "--out", "{new_dir}"]

BAD = {
    "steer fit": [
        ["steer", "fit", "--layer", "3", "--out", "{new_file}", "--pairs", "{missing}"],
        ["steer", "fit", "--layer", "3", "--out", "{new_file}", "--pairs", "{binary}"],
        ["steer", "fit", "--layer", "3", "--out", "{new_file}", "--pairs", "{bad_jsonl}"],
        ["steer", "fit", "--layer", "3", "--out", "{new_file}", "--pairs", "{one_column_csv}"],
        ["steer", "fit", "--layer", "3", "--out", "{under_file}"],
        ["steer", "fit", "--layer", "3", "--out", "{folder}"],
        ["steer", "fit", "--layer", "3", "--out", "{new_file}", "--positions", "last:abc"],
        ["steer", "fit", "--layer", "3", "--out", "{new_file}", "--positions", "bogus"],
        ["steer", "fit", "--layer", "3", "--out", "{new_file}", "--site", "bogus"],
        ["steer", "fit", "--layer", "abc", "--out", "{new_file}"],
        ["steer", "fit", "--out", "{new_file}"],
    ],
    "steer generate": [
        ["steer", "generate", "--vector", "{afile}", "--max-new-tokens", "0"],
        ["steer", "generate", "--vector", "{afile}", "--max-new-tokens", "-1"],
        ["steer", "generate", "--vector", "{afile}", "--prompt", ""],
        ["steer", "generate", "--vector", "{afile}", "--positions", "last:abc"],
        ["steer", "generate", "--vector", "{afile}", "--positions", "last:0"],
        ["steer", "generate", "--vector", "{afile}", "--strength", "nan"],
        ["steer", "generate", "--vector", "{afile}", "--strength", "abc"],
        ["steer", "generate", "--vector", "{afile}", "--side-effects", "-1"],
        ["steer", "generate", "--vector", "{missing}"],
        ["steer", "generate", "--vector", "{folder}"],
        ["steer", "generate", "--vector", "{afile}", "--units", "bogus"],
    ],
    "steer dose": [
        ["steer", "dose", "--vector", "{afile}", "--strengths", "a,b"],
        ["steer", "dose", "--vector", "{afile}", "--strengths", "nan"],
        ["steer", "dose", "--vector", "{afile}", "--strengths", "0.1,,0.2"],
        ["steer", "dose", "--vector", "{afile}", "--strengths", ""],
        ["steer", "dose", "--vector", "{afile}", "--prompts", "0"],
        ["steer", "dose", "--vector", "{afile}", "--words", "good"],
        ["steer", "dose", "--vector", "{afile}", "--words", ",", "--against", "bad"],
        ["steer", "dose", "--vector", "{missing}"],
        ["steer", "dose", "--vector", "{afile}", "--behaviour", "bogus"],
    ],
    "erase": [
        ["erase", "--data", "{missing}"],
        ["erase", "--data", "{binary}"],
        ["erase", "--data", "{empty}"],
        ["erase", "--data", "{one_class}"],
        ["erase", "--data", "x\x00y"],
        ["erase", "--neutral-file", "{missing}"],
        ["erase", "--neutral-file", "{binary}"],
        ["erase", "--max-length", "0"],
        ["erase", "--max-length", "-1"],
        ["erase", "--layers", "abc"],
        ["erase", "--out", "{under_file}"],
        ["erase", "--out", "{folder}"],
        ["erase", "--threads", "-3"],
        ["erase", "--neutral", "-1"],
        ["erase", "--statements", "0"],
    ],
    "edit": [
        EDIT + ["--prompt", ""],
        EDIT + ["--subject", "  "],
        EDIT + ["--target", ""],
        EDIT + ["--prompt", "nothing to replace"],
        EDIT + ["--out", "{under_file}"],
        EDIT + ["--out", "{folder}"],
        EDIT + ["--stats-tokens", "0"],
        EDIT + ["--threads", "-3"],
        EDIT + ["--layer", "abc"],
        EDIT + ["--method", "bogus"],
    ],
    "generate": [
        ["generate", "--edit", "{afile}", "--prompt", "hi", "--max-new-tokens", "0"],
        ["generate", "--edit", "{afile}", "--prompt", "hi", "--max-new-tokens", "-1"],
        ["generate", "--edit", "{afile}", "--prompt", ""],
        ["generate", "--edit", "{missing}", "--prompt", "hi"],
        ["generate", "--edit", "{folder}", "--prompt", "hi"],
        ["generate", "--edit", "{afile}", "--prompt", "hi", "--threads", "0"],
    ],
    "sae train": [
        SAE_TRAIN + ["--lr", "nan"],
        SAE_TRAIN + ["--lr", "0"],
        SAE_TRAIN + ["--l1", "nan"],
        SAE_TRAIN + ["--batch-size", "0"],
        SAE_TRAIN + ["--device", "bogus"],
        SAE_TRAIN + ["--device", "cuda:99"],
        SAE_TRAIN + ["--text-file", "{binary}"],
        SAE_TRAIN + ["--text-file", "{empty}"],
        SAE_TRAIN + ["--out", "{under_file}"],
        SAE_TRAIN + ["--width", "0"],
        SAE_TRAIN + ["--epochs", "0"],
        SAE_TRAIN + ["--max-length", "0"],
        SAE_TRAIN + ["--site", "resid_post"],
        SAE_TRAIN + ["--site", "bogus.3"],
    ],
    "sae eval": [
        ["sae", "eval", "{missing}"],
        ["sae", "eval", "{folder}"],
        ["sae", "eval", "{afile}", "--texts", "0"],
        ["sae", "eval", "{afile}", "--text-file", "{binary}"],
        ["sae", "eval", "{afile}", "--device", "gpu"],
        ["sae", "eval", "{afile}", "--site", "nolayer"],
        ["sae", "eval", "{afile}", "--ablation", "bogus"],
    ],
    "merge": [
        ["merge", "{missing}", "--out", "{new_dir}"],
        ["merge", "{binary}", "--out", "{new_dir}"],
        ["merge", "{folder}", "--out", "{new_dir}"],
        ["merge", "{recipe_list_method}", "--out", "{new_dir}"],
        ["merge", "{recipe}", "--out", "{under_file}"],
        ["merge", "{recipe}", "--out", "{afile}"],
        MERGE + ["--shard-size", "0"],
        MERGE + ["--shard-size", "abc"],
    ],
    "task-vector": [
        ["task-vector", "{missing}", "{model_b}", "--out", "{new_file}"],
        ["task-vector", "{model_a}", "{missing}", "--out", "{new_file}"],
        ["task-vector", "{model_a}", "{model_b}", "--out", "{under_file}"],
        ["task-vector", "{model_a}", "{model_b}", "--out", "{folder}"],
        ["task-vector", "{model_a}", "{model_b}"],
    ],
    "export": [
        ["export", "{missing}", "--to", "peft", "--out", "{new_dir}"],
        ["export", "{folder}", "--to", "peft", "--out", "{new_dir}"],
        ["export", "{afile}", "--to", "bogus", "--out", "{new_dir}"],
        ["export", "{afile}", "--to", "peft", "--out", "{under_file}"],
        ["export", "{afile}", "--to", "peft", "--out", "{afile}"],
        EXPORT + ["--strength", "nan"],
        EXPORT + ["--rank", "0"],
        EXPORT + ["--target-error", "1.5"],
        EXPORT + ["--rank", "2", "--target-error", "0.1"],
        EXPORT + ["--units", "bogus"],
        EXPORT + ["--side-effects", "-1"],
        ["export", "{afile}", "--to", "artifact", "--out", "{new_dir}"],
    ],
    "lora-combine": [
        ["lora-combine", "{missing}", "{adapter_b}", "--out", "{new_dir}"],
        ["lora-combine", "{afile}", "{adapter_b}", "--out", "{new_dir}"],
        LORA + ["--weights", "nan", "1"],
        LORA + ["--weights", "inf", "1"],
        LORA + ["--weights", "abc", "1"],
        LORA + ["--rank", "0"],
        LORA + ["--rank", "-1"],
        ["lora-combine", "{adapter_a}", "{adapter_b}", "--out", "{under_file}"],
        ["lora-combine", "{adapter_a}", "{adapter_b}", "--out", "{afile}"],
        ["lora-combine", "{adapter_a}", "{folder}", "--out", "{new_dir}"],
        ["lora-combine", "{adapter_a}", "--weights", "1", "2", "--out", "{new_dir}"],
        *(["lora-combine", "{adapter_a}", f"{{adapter_{bad}}}", "--out", "{new_dir}"]
          for bad in ("not_json", "a_list", "alpha_text", "bad_regex", "rank_0")),
    ],
    "interpolate": [
        ["interpolate", "{no_model}", "--texts", "0"],
        ["interpolate", "{no_model}", "--texts", "-2"],
        ["interpolate", "{no_model}", "--max-tokens", "0"],
        ["interpolate", "{no_model}", "--alphas", "1"],
        ["interpolate", "{no_model}", "--noise", "nan"],
        ["interpolate", "{no_model}", "--out", "{under_file}"],
        ["interpolate", "{no_model}", "--out", "{folder}"],
    ],
    "rebasin": [
        ["rebasin", "--out", "{under_file}"],
        ["rebasin", "--out", "{folder}"],
        ["rebasin", "--widths", "0"],
        ["rebasin", "--widths", "-4"],
        ["rebasin", "--seeds", "1"],
        ["rebasin", "--seeds", "a", "b"],
    ],
    "latent": [
        ["latent", "--out", "{new_png}", "--from", "11"],
        ["latent", "--out", "{new_png}", "--to", "-1"],
        ["latent", "--out", "{new_png}", "--steps", "1"],
        ["latent", "--out", "{new_png}", "--per-pair", "0"],
        ["latent", "--out", "{new_png}", "--from", "3", "--to", "3"],
        ["latent", "--out", "{under_file}"],
        ["latent", "--out", "{new_png}", "--direction-out", "{folder}"],
        ["latent", "--out", "nul\x00.png"],
    ],
    "translate": [
        ["translate", "--texts", "{missing}", "--source", "{no_model}"],
        ["translate", "--texts", "{binary}", "--source", "{no_model}"],
        ["translate", "--texts", "{short}", "--source", "{no_model}"],
        ["translate", "--out", "{under_file}", "--source", "{no_model}"],
        ["translate", "--rank", "0", "--source", "{no_model}"],
        ["translate", "--statements", "-1", "--source", "{no_model}"],
        ["translate", "--stitch", "abc", "--target", "{no_model}"],
        ["translate", "--stitch", "1:2", "--scale", "nan", "--target", "{no_model}"],
        ["translate", "--source-site", "resid_post", "--source", "{no_model}"],
        ["translate", "--source-site", "nosuch.3", "--source", "{no_model}"],
    ],
    "lens": [
        ["lens", "--prompt", ""],
        ["lens", "--prompt", "hi", "--out", "{under_file}"],
        ["lens", "--prompt", "hi", "--out", "{folder}"],
        ["lens", "--prompt", "hi", "--threads", "-3"],
        ["lens", "--prompt", "hi", "--kind", "bogus"],
        ["lens", "--prompt", "hi", "--out", "x\x00y.png"],
        ["lens"],
    ],
    "probe": [
        ["probe", "--layers", "abc"],
        ["probe", "--layers", "1,,2"],
        ["probe", "--statements", "-5"],
        ["probe", "--candidates", "0"],
        ["probe", "--out", "{under_file}"],
        ["probe", "--threads", "0"],
        ["probe", "--dataset", "bogus"],
    ],
    "compare": [
        ["compare", "{missing}", "{afile}"],
        ["compare", "{afile}", "{folder}"],
        ["compare", "{afile}"],
        ["compare", "{afile}", "{afile}", "--out", "{afile}"],
        ["compare", "{afile}", "{afile}", "--out", "{under_file}"],
        ["compare", "x\x00y", "{afile}"],
    ],
    "audit": [
        ["audit", "--apply", "{missing}"],
        ["audit", "--apply", "{folder}"],
        ["audit", "--threads", "-3"],
        ["audit", "--device", "bogus"],
        ["audit", "--texts", "{missing}"],
        ["audit", "--texts", "{binary}"],
        ["audit", "--out", "{afile}"],
        ["audit", "--sections", "nonsense"],
        ["audit", "--sections", "steering,,erasure"],
        ["audit", "--dtype", "float8"],
        ["audit", "--seed", "x"],
        ["audit", "--state-memory", "lots"],
        ["audit", "--state-memory", "0GB"],
        ["audit", "--state-memory", "5 parsecs"],
    ],
}

GOOD = {
    "steer fit": ["steer", "fit", "--layer", "3", "--out", "{new_file}", "--pairs", "{pairs_jsonl}"],
    "steer generate": ["steer", "generate", "--vector", "{afile}", "--prompt", "hi", "--max-new-tokens", "4"],
    "steer dose": ["steer", "dose", "--vector", "{afile}", "--strengths=-0.1,0,0.1", "--words", "good",
                   "--against", "bad"],
    "erase": ["erase", "--data", "{labels}", "--layers", "1-2", "--out", "{new_file}"],
    "edit": EDIT + ["--out", "{new_file}"],
    "generate": ["generate", "--edit", "{afile}", "--prompt", "hi"],
    "sae train": SAE_TRAIN + ["--text-file", "{texts}", "--site", "resid_post.2", "--lr", "1e-3"],
    "sae eval": ["sae", "eval", "{afile}", "--text-file", "{texts}"],
    "merge": MERGE,
    "task-vector": TASK_VECTOR,
    "lora-combine": LORA + ["--weights", "1", "-1", "--rank", "2"],
    "export": EXPORT + ["--strength", "0.5", "--target-error", "0.05"],
    "interpolate": ["interpolate", "{no_model}", "--out", "{new_file}"],
    "rebasin": ["rebasin", "--widths", "8", "--out", "{new_file}"],
    "latent": ["latent", "--out", "{new_png}", "--direction-out", "{new_file}"],
    "translate": ["translate", "--texts", "{texts}", "--source", "{no_model}", "--source-site", "resid_post.1",
                  "--out", "{new_file}"],
    "lens": ["lens", "--prompt", "hi", "--out", "{new_png}"],
    "probe": ["probe", "--layers", "1,-1", "--out", "{new_file}"],
    "audit": ["audit", "--quick", "--sections", "steering,erasure", "--texts", "{texts}", "--out", "{new_dir}"],
    "compare": ["compare", "{afile}", "{afile}", "--out", "{new_dir}"],
}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, Path]:
    """Two good PEFT LoRA folders and hostile ones (written once: they are only read)."""
    root = tmp_path_factory.mktemp("adapters")
    lora = {"peft_type": "LORA", "r": 2, "lora_alpha": 4}
    configs = {"a": lora, "b": lora, "not_json": "{nope", "a_list": [1, 2],
               "alpha_text": dict(lora, lora_alpha="eight"), "bad_regex": dict(lora, alpha_pattern={"(": 3}),
               "rank_0": lora}
    return {f"adapter_{name}": _adapter(root / name, config, rank=0 if name == "rank_0" else 2)
            for name, config in configs.items()}


@pytest.fixture
def paths(tmp_path, monkeypatch, adapters):
    """Input files of every kind, and output paths; the working folder is ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    _stop_at(WORK, monkeypatch)
    files = {
        "binary": b"\xff\xfe\x00\x81 not text\n",
        "afile": b"previous output\n",
        "empty": b"",
        "one_class": b"a\tParis is in France\na\tRome is in Italy\n",
        "labels": b"a\tParis is in France\nb\tRome is in Spain\n",
        "bad_jsonl.jsonl": b'{"positive": "good"\n',
        "one_column_csv.csv": b"good\n",
        "pairs_jsonl.jsonl": b'{"positive": "good", "negative": "bad"}\n',
        "texts": "".join(f"text number {i}\n" for i in range(10)).encode(),
        "short": b"one\ntwo\n",
    }
    p = {}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        p[name.split(".")[0]] = tmp_path / name
    for name in ("folder", "model_a", "model_b"):
        (tmp_path / name).mkdir()
        p[name] = tmp_path / name
    p.update(adapters)
    (tmp_path / "recipe.yaml").write_text(f"merge_method: linear\nmodels:\n  - model: {p['model_a']}\n"
                                          f"    parameters: {{weight: 1.0}}\n  - model: {p['model_b']}\n"
                                          "    parameters: {weight: 1.0}\n")
    (tmp_path / "recipe_list_method.yaml").write_text(f"merge_method: [1, 2]\nmodels:\n  - model: {p['model_a']}\n")
    p.update(recipe=tmp_path / "recipe.yaml", recipe_list_method=tmp_path / "recipe_list_method.yaml",
             missing=tmp_path / "missing.txt", under_file=tmp_path / "afile" / "out.safetensors",
             new_file=tmp_path / "new" / "out.safetensors", new_dir=tmp_path / "new-dir",
             new_png=tmp_path / "new" / "grid.png", no_model=tmp_path / "no-model")
    return {k: str(v) for k, v in p.items()}


def _adapter(folder: Path, config, rank: int) -> Path:
    """A PEFT LoRA folder with one module; ``config`` is written as it is when it is a string."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir()
    prefix = "base_model.model.layers.0.self_attn.q_proj"
    save_file({f"{prefix}.lora_A.weight": torch.ones(rank, 4), f"{prefix}.lora_B.weight": torch.ones(4, rank)},
              str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return folder


def _stop_at(steps, monkeypatch) -> None:
    for module, name in steps:
        def refuse(*args, _name=name, **kwargs):
            raise Reached(_name)
        monkeypatch.setattr(f"{module}.{name}", refuse)


def _argv(template: list[str], paths: dict) -> list[str]:
    argv = [paths[part[1:-1]] if re.fullmatch(r"\{\w+\}", part) else part for part in template]
    command = tuple(argv[:2]) if argv[0] in ("steer", "sae") else (argv[0],)
    return argv + (["--model", paths["no_model"]] if command in TAKES_MODEL else [])


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def _run(argv: list[str]) -> int:
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    return code


@functools.cache
def _subcommands() -> dict[str, argparse.ArgumentParser]:
    from almostlinear.cli import build_parser

    found = {}
    for name, parser in build_parser()._subparsers._group_actions[0].choices.items():
        inner = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for sub, subparser in (inner[0].choices.items() if inner else [(None, parser)]):
            found[f"{name} {sub}" if sub else name] = subparser
    return found


CASES = [pytest.param(command, argv, id=f"{command}:{' '.join(argv[len(command.split()):])}")
         for command, table in BAD.items() for argv in table]


@pytest.mark.parametrize(("command", "template"), CASES)
def test_a_bad_input_fails_fast_with_one_line(command, template, paths, tmp_path, capsys):
    before = _snapshot(tmp_path)
    code = _run(_argv(template, paths))
    captured = capsys.readouterr()
    assert code == 2  # a user's mistake, not the exit code of an unexpected error
    assert "Traceback" not in captured.err + captured.out and "looks like a bug" not in captured.err
    lines = [line for line in captured.err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or ": error: " in line]
    assert len(errors) == 1, captured.err
    assert lines[-1] == errors[0] and len(errors[0]) < 300
    # the rest is argparse's usage text, never a progress line of work that began
    assert all(line.startswith(("usage:", " ")) for line in lines[:-1]), captured.err
    assert _snapshot(tmp_path) == before  # nothing written, earlier files untouched


def test_every_subcommand_with_arguments_has_at_least_five_bad_inputs():
    assert set(_subcommands()) - {"models"} == set(BAD) == set(GOOD)
    assert min(len(table) for table in BAD.values()) >= 5


@pytest.mark.parametrize("command", sorted(GOOD))
def test_good_arguments_reach_the_work(command, paths, monkeypatch):
    _stop_at(ARTIFACTS, monkeypatch)
    with pytest.raises(Reached):
        _run(_argv(GOOD[command], paths))


NASTY = ["", " ", "0", "-1", "-3", "1", "3", "2.5", "nan", "inf", "-inf", "1e308", "abc", "a,b", ",", "1,,2",
         "last:abc", "last:0", "resid_post", "resid_post.2", "bogus.3", "cuda:99", "x\x00y", "{missing}",
         "{binary}", "{folder}", "{afile}", "{under_file}", "{empty}", "{texts}", "{new_file}"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_arguments_never_end_in_a_traceback(data, paths, tmp_path, capsys, monkeypatch):
    """A command's good arguments plus hostile values for some of its options (the last value given
    wins): the work starts, or a usage error or one error line ends the command, never a traceback."""
    _stop_at(ARTIFACTS, monkeypatch)
    commands = _subcommands()
    command = data.draw(st.sampled_from(sorted(GOOD)))
    options = [a for a in commands[command]._actions if a.option_strings and a.dest != "help"]
    value = st.one_of(st.sampled_from(NASTY), st.text(max_size=12))
    argv = list(GOOD[command])
    for action in data.draw(st.lists(st.sampled_from(options), min_size=1, max_size=2)):
        argv.append(action.option_strings[-1])
        if action.nargs != 0:
            argv += data.draw(st.lists(value, min_size=1, max_size=2 if action.nargs in ("+", 2) else 1))
    if data.draw(st.booleans()):
        argv.append(data.draw(value))  # a stray word, or a positional out of place
    before = _snapshot(tmp_path)
    capsys.readouterr()
    try:
        code = _run(_argv(argv, paths))
    except Reached:
        code = None
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out and "looks like a bug" not in captured.err
    if code not in (0, None):
        errors = [line for line in captured.err.splitlines() if line.startswith("error:") or ": error: " in line]
        assert len(errors) == 1, (argv, captured.err)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(("check", "good", "bad"), [
    ("positive_int", {"1": 1, " 7 ": 7}, ["0", "-3", "1.5", "abc", ""]),
    ("nonnegative_int", {"0": 0, "12": 12}, ["-1", "nan", ""]),
    ("finite_float", {"-0.5": -0.5, "1e3": 1000.0}, ["nan", "inf", "-inf", "abc", ""]),
    ("positive_float", {"2e-4": 2e-4}, ["0", "-1", "nan"]),
    ("nonnegative_float", {"0": 0.0, "5": 5.0}, ["-0.1", "inf"]),
    ("unit_interval", {"0": 0.0, "1": 1.0, "0.25": 0.25}, ["1.01", "-0.01", "nan"]),
    ("int_list", {"0,5,-1": [0, 5, -1], " 3 ": [3]}, ["abc", "1,,2", ",", "", "1.5"]),
    ("float_list", {"-0.2,0,0.1": [-0.2, 0.0, 0.1]}, ["a,b", "nan", "0.1,", ""]),
    ("word_list", {"good, great": ["good", "great"]}, [",", "", "a,,b"]),
    ("nonempty_text", {"hi": "hi"}, ["", "   "]),
    ("site_spec", {"resid_post.5": "resid_post.5", "mlp_out.-1": "mlp_out.-1"}, ["resid_post", ".3", "a.b"]),
    ("device", {"cpu": "cpu", "cuda:1": "cuda:1", "mps": "mps"}, ["gpu", "cuda:", "cuda:x", ""]),
])
def test_argument_types(check, good, bad):
    from almostlinear import clitools

    parse = getattr(clitools, check)
    assert {text: parse(text) for text in good} == good
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_path_types(paths):
    from almostlinear import clitools

    assert clitools.text_file(paths["texts"]) == paths["texts"]
    assert clitools.output_file(paths["new_file"]) == paths["new_file"]  # its folder is created when written
    assert clitools.output_folder(paths["folder"]) == paths["folder"]
    assert clitools.input_path(paths["model_a"]) == paths["model_a"] and clitools.input_path(paths["afile"])
    for check, text in [("text_file", "binary"), ("text_file", "folder"), ("input_file", "missing"),
                        ("input_folder", "afile"), ("output_file", "folder"), ("output_file", "under_file"),
                        ("output_folder", "afile"), ("output_folder", "under_file")]:
        with pytest.raises(argparse.ArgumentTypeError):
            getattr(clitools, check)(paths[text])
    assert not Path(paths["new_file"]).parent.exists()  # checking created nothing
