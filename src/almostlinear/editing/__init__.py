"""Rank-one and low-rank weight edits (ROME, MEMIT, AlphaEdit), reversible and evaluated offline.

    import almostlinear
    from almostlinear.editing import EditRequest, rome, predicted_shift

    model, tok = almostlinear.load("smollm2-135m")
    edit = rome(model, tok, EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome"))
    with edit.apply(model):            # weights restored bit for bit on exit
        ...
    baked = edit.bake_(model)          # permanent, until baked.undo_() (exact)
    edit.save("eiffel.safetensors")    # a few kB: the two factors, base-weight and statistics hashes
    predicted_shift(edit, model, tok, [("{} is located in the city of", "The Louvre")])

Key statistics (``key_statistics``) are computed once per model and layer from text the model
generates itself and cached by content; pass ``stats=`` to reuse them explicitly.
"""

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

# Names resolve on first use, so importing ``almostlinear.editing.cli`` to build the command-line
# parser does not import torch through this package. No module is named like a function it
# exports: importing the module would bind its name here and hide the function.
_PUBLIC = {
    "artifact": ("EditRoundingWarning", "KeyStatistics", "LowRankEdit", "RankOneEdit"),
    "counterfact": ("CounterfactCase", "Relation", "counterfact_cases"),
    "eval": ("CounterfactScores", "EditEvaluation", "evaluate_edits"),
    "hparams": ("EditHyperParams", "default_layer", "default_layers", "hparams_for"),
    "multi_layer": ("alphaedit", "memit"),
    "predict": ("ShiftPrediction", "predicted_shift"),
    "request": ("EditRequest", "EditRequestError"),
    "rank_one": ("rome",),
    "stats": ("key_statistics",),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _PUBLIC)


if TYPE_CHECKING:
    from .artifact import KeyStatistics, LowRankEdit, RankOneEdit
    from .counterfact import CounterfactCase, Relation, counterfact_cases
    from .eval import CounterfactScores, EditEvaluation, evaluate_edits
    from .hparams import EditHyperParams, default_layer, default_layers, hparams_for
    from .multi_layer import alphaedit, memit
    from .predict import ShiftPrediction, predicted_shift
    from .rank_one import rome
    from .request import EditRequest, EditRequestError
    from .stats import key_statistics
