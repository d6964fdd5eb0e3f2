"""Rank-one and low-rank weight edits (ROME, MEMIT, AlphaEdit), reversible and evaluated offline.

    import almostlinear
    from almostlinear.editing import EditRequest, rome, predicted_shift

    model, tok = almostlinear.load("smollm2-135m")
    edit = rome(model, tok, EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome"))
    with edit.apply(model):            # weights restored bit for bit on exit
        ...
    edit.save("eiffel.safetensors")    # a few kB: the two factors, base-weight and statistics hashes
    predicted_shift(edit, model, tok, [("{} is located in the city of", "The Louvre")])

Key statistics (``key_statistics``) are computed once per model and layer from text the model
generates itself and cached by content; pass ``stats=`` to reuse them explicitly.
"""

from .edit import LowRankEdit, RankOneEdit, weight_hash
from .memit import alphaedit, memit
from .predict import ShiftPrediction, predicted_shift
from .hparams import EditHyperParams, default_layer, default_layers, hparams_for
from .request import EditRequest, EditRequestError
from .rome import rome
from .stats import KeyStatistics, key_statistics

__all__ = [
    "EditHyperParams",
    "ShiftPrediction",
    "alphaedit",
    "memit",
    "predicted_shift",
    "EditRequest",
    "EditRequestError",
    "KeyStatistics",
    "LowRankEdit",
    "RankOneEdit",
    "default_layer",
    "default_layers",
    "hparams_for",
    "key_statistics",
    "rome",
    "weight_hash",
]
