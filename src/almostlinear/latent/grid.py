"""Image grids of decoded codes, written as PNG with matplotlib."""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.errors import MissingDependencyError, ShapeError


def save_grid(images: torch.Tensor, out: str | Path, *, row_labels: list[str] | None = None,
              title: str | None = None, side: int | None = None) -> Path:
    """Save ``[rows, cols, pixels]`` (square images, values in ``[0, 1]``) as one PNG grid."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise MissingDependencyError("image output needs matplotlib: pip install matplotlib") from error
    if images.dim() != 3:
        raise ShapeError(f"images must be [rows, cols, pixels], got shape {tuple(images.shape)}")
    rows, cols, pixels = images.shape
    side = side or round(pixels ** 0.5)
    if side * side != pixels:
        raise ShapeError(f"{pixels} pixels do not make a square image; pass side=")
    fig, axes = plt.subplots(rows, cols, figsize=(0.9 * cols + (1.4 if row_labels else 0.2), 0.9 * rows + 0.5),
                             squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(images[r, c].reshape(side, side).cpu().numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        if row_labels:
            axes[r][0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out
