"""``almostlinear probe``: truth probes on every layer of a model, as a table, and the best probe saved.

The library does the work; this module only builds the statements, calls the fitters and prints.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import data
from ..core.digest import data_hash
from ..core.collect import collect
from ..core.errors import EmptyDataError
from ..core.models import LoadedModel, load
from ..core.sites import Site
from .control import selectivity
from .linear import LinearProbe, accuracy, fit_logistic, fit_mass_mean

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
    if dataset == "cities":
        facts, prompt, template = data.city_country_facts()[:candidates], data.CITY_PROMPT, data.CITY_TEMPLATE
    elif dataset == "capitals":
        facts, prompt, template = data.country_capital_facts()[:candidates], CAPITAL_PROMPT, data.CAPITAL_TEMPLATE
    else:
        raise EmptyDataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
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
    say = say or (lambda message: print(f"· {message}", file=sys.stderr, flush=True))
    stream = stream or sys.stdout
    loaded = model_name if isinstance(model_name, LoadedModel) else load(model_name, progress=say)
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


def probe_args_command(args) -> int:
    from ..clitools import set_threads

    set_threads(args.threads)
    layers = [int(v) for v in args.layers.split(",")] if args.layers else None
    probe_command(args.model, dataset=args.dataset, layers=layers, out=args.out,
                  statements=args.statements, candidates=args.candidates, seed=args.seed)
    return 0


def register(sub) -> None:
    from ..core.defaults import DEFAULT_MODEL

    probe = sub.add_parser("probe", help="truth probes on every layer: held-out accuracy, selectivity; save the best")
    probe.add_argument("--model", default=DEFAULT_MODEL)
    probe.add_argument("--dataset", choices=["cities", "capitals"], default="cities")
    probe.add_argument("--layers", default=None, help="comma-separated layers (default: all)")
    probe.add_argument("--out", default=None, help="save the best layer's logistic probe (.safetensors)")
    probe.add_argument("--statements", type=int, default=400)
    probe.add_argument("--candidates", type=int, default=1000)
    probe.add_argument("--seed", type=int, default=0)
    probe.add_argument("--threads", type=int, default=None)
    probe.set_defaults(func=probe_args_command)
