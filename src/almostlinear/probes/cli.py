"""``almostlinear probe``: truth probes on every layer of a model, as a table, and the best probe saved.

The work is in :mod:`.table`; this module only parses, and imports nothing heavy until a command runs.
"""

from __future__ import annotations

def probe_args_command(args) -> int:
    from ..clitools import set_threads
    from .table import probe_command

    set_threads(args.threads)
    probe_command(args.model, dataset=args.dataset, layers=args.layers, out=args.out,
                  statements=args.statements, candidates=args.candidates, seed=args.seed)
    return 0


def register(sub) -> None:
    from .. import clitools
    from ..core.defaults import DEFAULT_MODEL

    probe = sub.add_parser("probe", help="truth probes on every layer: held-out accuracy, selectivity; save the best")
    probe.add_argument("--model", default=DEFAULT_MODEL)
    probe.add_argument("--dataset", choices=("cities", "capitals"), default="cities",
                       help="facts the statements are built from (see probes.table.DATASETS)")
    probe.add_argument("--layers", default=None, type=clitools.int_list, help="comma-separated layers (default: all)")
    probe.add_argument("--out", default=None, type=clitools.output_file,
                       help="save the best layer's logistic probe (.safetensors)")
    probe.add_argument("--statements", type=clitools.positive_int, default=400)
    probe.add_argument("--candidates", type=clitools.positive_int, default=1000)
    probe.add_argument("--seed", type=int, default=0)
    clitools.add_threads(probe)
    probe.set_defaults(func=probe_args_command)
