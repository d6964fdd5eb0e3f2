"""Linear features found automatically: rank single neurons, residual coordinates or SAE latents by
how well each alone carries a labelled concept (the "sentiment neuron" search of arXiv 1704.01444),
and compare the best few units with a full linear probe and with SAE latents."""

from __future__ import annotations

from ..core.lazy import lazy_exports

_PUBLIC = {
    "ranking": ("UnitRanking", "auroc", "point_biserial", "rank_units"),
    "sentiment": ("SentimentText", "sentiment_texts", "sentiment_words"),
    "views": ("ViewComparison", "compare_views"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)
