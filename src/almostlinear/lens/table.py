"""The classic lens picture: the top token that each state predicts at each position of one prompt.

:func:`lens_table` returns the rows (one per state: embeddings, then every block); a text table
(:func:`format_lens_table`) and a PNG (:func:`plot_lens_table`, matplotlib, imported only when
called) show them. Column ``i`` is read at input token ``i`` and predicts token ``i + 1``. Fitted
lenses are trained without each text's first token (an attention sink with outlying norms), so
their reading of the first column is outside what they were fitted on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.collect import collect, model_device, tokenize
from ..core.errors import ArtifactError, EmptyDataError, MissingDependencyError, check_choice
from ..core.locate import Structure, locate
from .logit import LogitLens, lens_sites
from .artifact import AffineLens, Translators, TunedLens

KINDS = ("logit", "affine", "tuned")


@dataclass(frozen=True)
class LensRow:
    """One state: its label, the block it follows (-1 = embeddings), and per position the top-1
    token with its probability under the lens."""

    label: str
    layer: int
    tokens: list[str]
    probs: list[float]


def _show(text: str) -> str:
    return text.replace("\n", "\\n").replace("\t", "\\t")


def prompt_tokens(tokenizer, prompt: str, *, max_length: int = 128) -> list[str]:
    """The prompt's tokens, tokenised exactly as :func:`lens_table` reads them."""
    ids = tokenize(tokenizer, [prompt], max_length=max_length, device="cpu")["input_ids"][0]
    return [_show(tokenizer.decode([int(i)])) for i in ids]


def _lens_for(kind: str, lens: Translators | None, structure: Structure):
    check_choice(kind, KINDS, "lens kind")
    if kind == "logit":
        return LogitLens.from_structure(structure)
    expected = AffineLens if kind == "affine" else TunedLens
    if lens is None:
        maker = "fit_affine_lens" if kind == "affine" else "train_tuned_lens"
        raise ArtifactError(f"kind={kind!r} needs a fitted lens: pass lens={maker}(model, tokenizer, texts)")
    if not isinstance(lens, expected):
        raise ArtifactError(f"kind={kind!r} needs a {expected.__name__}, got a {type(lens).__name__}")
    return lens.bind(structure)


@torch.inference_mode()
def lens_table(model, tokenizer, prompt: str, kind: str = "logit", lens: Translators | None = None, *,
               structure: Structure | None = None, max_length: int = 128) -> list[LensRow]:
    """Top-1 token and probability per state (rows: embeddings, block 0, ..., last block) and position."""
    if not isinstance(prompt, str) or not prompt:
        raise EmptyDataError("prompt must be a non-empty string")
    structure = structure or locate(model)
    reader = _lens_for(kind, lens, structure)
    acts = collect(model, tokenizer, [prompt], lens_sites(structure), max_length=max_length,
                   device=model_device(model), structure=structure)
    rows = []
    for s, site in enumerate(lens_sites(structure)):
        probs = torch.softmax(reader.logits(acts[site], s).float(), dim=-1)
        top_p, top_id = probs.max(-1)
        label = "embeddings" if s == 0 else f"block {s - 1}"
        rows.append(LensRow(label, s - 1, [_show(tokenizer.decode([int(i)])) for i in top_id.tolist()],
                            [float(p) for p in top_p.tolist()]))
    return rows


def _cell(text: str, width: int) -> str:
    return (text if len(text) <= width else text[: width - 1] + "…").ljust(width)


def format_lens_table(rows: Sequence[LensRow], inputs: Sequence[str] | None = None, *, width: int = 9) -> str:
    """A plain-text grid, last block on top (as the model's output sits above its input)."""
    label_width = max(len(r.label) for r in rows)
    lines = [f"{r.label.rjust(label_width)} | " + " ".join(_cell(t, width) for t in r.tokens) for r in reversed(rows)]
    if inputs is not None:
        lines.append("-" * len(lines[0]))
        lines.append(f"{'input'.rjust(label_width)} | " + " ".join(_cell(t, width) for t in inputs))
    return "\n".join(lines)


def plot_lens_table(rows: Sequence[LensRow], inputs: Sequence[str], path: str | Path, *,
                    title: str = "Lens: top-1 token per layer and position") -> Path:
    """Write a PNG: one cell per state and position, coloured by the top token's probability."""
    try:
        from matplotlib.figure import Figure
    except ModuleNotFoundError as error:
        raise MissingDependencyError("plotting needs matplotlib: pip install 'almostlinear[plot]'") from error
    grid = [list(r.probs) for r in reversed(rows)]
    n_rows, n_cols = len(grid), len(inputs)
    figure = Figure(figsize=(1.0 + 0.9 * n_cols, 1.0 + 0.28 * n_rows))
    axes = figure.add_subplot()
    image = axes.imshow(grid, aspect="auto", cmap="Blues", vmin=0.0, vmax=1.0)
    for i, row in enumerate(reversed(rows)):
        for j, (token, p) in enumerate(zip(row.tokens, row.probs)):
            axes.text(j, i, token[:10], ha="center", va="center", fontsize=6,
                      color="white" if p > 0.6 else "black")
    axes.set_xticks(range(n_cols), [t[:10] for t in inputs], rotation=45, ha="right", fontsize=7)
    axes.set_yticks(range(n_rows), [r.label for r in reversed(rows)], fontsize=6)
    axes.set_title(title, fontsize=9)
    figure.colorbar(image, ax=axes, label="probability of the shown token")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150)
    return path
