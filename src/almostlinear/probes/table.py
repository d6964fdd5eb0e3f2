"""The truth-probe table behind ``almostlinear probe``: statements the model knows, probes per layer,
held-out accuracy and selectivity, and the best layer's probe saved.

Kept apart from :mod:`.cli`, which must not import torch while the command line builds its parser.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import clitools, data
from ..core.collect import collect
from ..core.digest import data_hash
from ..core.errors import EmptyDataError, check_choice
from ..core.models import LoadedModel
from ..core.sites import Site
from .artifact import LinearProbe
from .control import selectivity
from .linear import accuracy, fit_logistic, fit_mass_mean

DATASETS = ("cities", "capitals")
CAPITAL_PROMPT = "The capital of {subject} is the city of"
L2 = 1e-2


@dataclass(frozen=True)
class ProbeTable:
    """Per layer: held-out accuracy of logistic and mass-mean probes, and the logistic selectivity."""

    layers: list[int]
    logistic: list[float]
    mass_mean: list[float]
    selectivity: list[float]
    statements: int
    best_layer: int


def _statements(loaded: LoadedModel, dataset: str, n: int, candidates: int, seed: int, say) -> list:
    check_choice(dataset, DATASETS, "dataset")
    if dataset == "cities":
        facts, prompt, template = data.city_country_facts()[:candidates], data.CITY_PROMPT, data.CITY_TEMPLATE
    else:
        facts, prompt, template = data.country_capital_facts()[:candidates], CAPITAL_PROMPT, data.CAPITAL_TEMPLATE
    say(f"checking which of {len(facts)} {dataset} facts the model knows")
    known = data.known_facts(loaded.model, loaded.tokenizer, facts, prompt=prompt, top_k=1)
    usable = min(n, 2 * len(known))
    usable -= usable % 2
    if usable < 20:
        raise EmptyDataError(f"the model knows only {len(known)} of {len(facts)} {dataset} facts: too few to probe")
    say(f"{len(known)} known; building {usable} true/false statements")
    return data.statements_from_facts(known, usable, seed=seed, template=template)


def probe_command(model_name: str | LoadedModel, dataset: str = "cities", layers: Sequence[int] | None = None,
                  out: str | Path | None = None, *, statements: int = 400, candidates: int = 1000, seed: int = 0,
                  say: Callable[[str], None] | None = None, stream=None) -> ProbeTable:
    """Fit truth probes at the last token of generated statements on each layer; print a table.

    Train and test hold different subjects (half each). When ``out`` is given, the logistic probe of
    the layer with the best held-out accuracy is saved there, refitted on all statements, with its
    site, method, data hash and model fingerprint.
    """
    say = say or clitools.say
    stream = stream or sys.stdout
    loaded = clitools.load_model(model_name)
    structure = loaded.structure
    chosen = list(range(structure.n_layers)) if layers is None else [structure.block(i).index for i in layers]
    items = _statements(loaded, dataset, statements, candidates, seed, say)
    sites = [Site("resid_post", i) for i in chosen]
    say(f"reading the residual stream at {len(sites)} layers")
    acts = collect(loaded.model, loaded.tokenizer, [s.text for s in items], sites, positions="last",
                   structure=structure)
    x = torch.stack([acts[s].float() for s in sites])  # [layers, n, d]
    labels = torch.tensor([s.label for s in items])
    subjects = [s.subject for s in items]
    train, test = data.split(list(range(len(items))), 0.5, seed=seed, key=lambda i: subjects[i])
    train, test = torch.tensor(train), torch.tensor(test)
    w, b = fit_logistic(x[:, train], labels[train], l2=L2)
    logistic = accuracy(w, b, x[:, test], labels[test]).tolist()
    w_mm, b_mm = fit_mass_mean(x[:, train], labels[train])
    mass_mean = accuracy(w_mm, b_mm, x[:, test], labels[test]).tolist()
    selective = selectivity(x, labels, subjects, k=5, l2=L2, seed=seed).selectivity.tolist()
    best = max(range(len(chosen)), key=lambda i: logistic[i])
    table = ProbeTable(chosen, logistic, mass_mean, selective, len(items), chosen[best])
    print(f"{'layer':>5}  {'logistic':>8}  {'mass-mean':>9}  {'selectivity':>11}", file=stream)
    for i, layer in enumerate(chosen):
        mark = "  <- best" if i == best else ""
        print(f"{layer:>5}  {logistic[i]:>8.3f}  {mass_mean[i]:>9.3f}  {selective[i]:>+11.3f}{mark}", file=stream)
    print(f"{len(items)} statements ({dataset}), train/test split by subject; selectivity = task − control "
          "accuracy (arXiv 1909.03368), 5-fold over statements", file=stream)
    if out is not None:
        probe = LinearProbe.fit(x[best], labels, method="logistic", l2=L2, site=sites[best],
                                data_hash=data_hash(items), model_fingerprint=loaded.fingerprint)
        path = probe.save(out)
        print(f"saved the logistic probe of layer {chosen[best]} (refitted on all statements) to {path}", file=stream)
    return table
