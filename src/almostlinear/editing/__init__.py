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

# Names resolve on first use (PEP 562), so importing ``almostlinear.editing.cli`` to build the
# command-line parser does not import torch through this package. No module is named like a
# function it exports: importing the module would bind its name here and hide the function.
_PUBLIC = {
    "counterfact": ("CounterfactCase", "Relation", "counterfact_cases"),
    "edit": ("LowRankEdit", "RankOneEdit", "weight_hash"),
    "eval": ("CounterfactScores", "EditEvaluation", "evaluate_edits"),
    "hparams": ("EditHyperParams", "default_layer", "default_layers", "hparams_for"),
    "multi_layer": ("alphaedit", "memit"),
    "predict": ("ShiftPrediction", "predicted_shift"),
    "request": ("EditRequest", "EditRequestError"),
    "rank_one": ("rome",),
    "stats": ("KeyStatistics", "key_statistics"),
}
_MODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))


__all__ = sorted(_MODULE_OF)
