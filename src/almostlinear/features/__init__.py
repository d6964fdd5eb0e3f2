"""Linear features found automatically: rank single neurons, residual coordinates or SAE latents by
how well each alone carries a labelled concept (the "sentiment neuron" search of arXiv 1704.01444),
and compare the best few units with a full linear probe and with SAE latents."""

from .ranking import UnitRanking, auroc, point_biserial, rank_units
from .sentiment import SentimentText, sentiment_texts, sentiment_words
from .views import ViewComparison, compare_views

__all__ = [
    "SentimentText",
    "UnitRanking",
    "ViewComparison",
    "auroc",
    "compare_views",
    "point_biserial",
    "rank_units",
    "sentiment_texts",
    "sentiment_words",
]
