"""Run a planned merge: stream each tensor from every input, merge it, write it, forget it."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.errors import AlmostLinearError
from .dispatch import merge_into
from .plan import DTYPES, MergePlan, plan_merge
from .recipe import Recipe, layer_position, parse_recipe, tensor_options
from .registry import lookup
from .signals import MergeSignals
from .writer import DEFAULT_SHARD_BYTES, AtomicShardedWriter, OutputTensor

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "chat_template.jinja", "added_tokens.json")
CONFIG_FILES = ("config.json", "generation_config.json")
REPORT_NAME = "almostlinear_merge.json"
# Entries per slice when a merge streams slices: with two inputs, the output and the signals'
# buffer the working set stays a few MiB (512K entries took 12 % less CPU than 1M here).
SLICE = 1 << 19


@dataclass(frozen=True)
class MergeResult:
    out: Path
    plan: MergePlan
    signals: dict
    seconds: float


def _extra_files(plan: MergePlan, report: dict) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    config_source = plan.inputs[0].folder
    for name in CONFIG_FILES:
        path = config_source / name
        if path.is_file():
            files[name] = path.read_bytes()
    if "config.json" in files:
        config = json.loads(files["config.json"])
        floats = {str(t.out_dtype).replace("torch.", "") for t in plan.tensors if t.action != "copy"}
        if len(floats) == 1:
            config["torch_dtype"] = next(iter(floats))
            if "dtype" in config:
                config["dtype"] = next(iter(floats))
        files["config.json"] = json.dumps(config, indent=2).encode()
    tokenizer = plan.recipe.tokenizer_source
    if tokenizer is not None:
        folder = tokenizer if tokenizer.is_dir() else tokenizer.parent
        for name in TOKENIZER_FILES:
            path = folder / name
            if path.is_file():
                files[name] = path.read_bytes()
    files[REPORT_NAME] = json.dumps(report, indent=2, default=str).encode()
    return files


def _merged_slices(plan: MergePlan, recipe: Recipe, item, read_dtype, signals: MergeSignals,
                   space: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    """The merge of tensor ``item`` slice by slice, for methods that work entry by entry: each slice of
    every input is read, merged into a reused buffer and yielded (then written) before the next."""
    name = item.name
    weights, options = tensor_options(recipe, name, layer_position(name, plan.n_layers))
    numel = math.prod(item.shape)
    with_base = plan.base is not None
    tensor_signals = signals.begin(numel, [not with_base and i == 0 for i in range(len(plan.models))])
    out_size = item.out_dtype.itemsize
    for start in range(0, numel, SLICE):
        count = min(SLICE, numel - start)
        reads = [source.read_part(name, start, count, buffer=buf) for source, buf in zip(plan.inputs, space)]
        if read_dtype is not None:
            reads = [t.to(read_dtype) for t in reads]
        base, tensors = (reads[0], reads[1:]) if with_base else (None, reads)
        result = space[-1][:count * out_size].view(item.out_dtype)
        merge_into(recipe.method, name, tensors, weights, base, options, result)
        tensor_signals.add(base if with_base else tensors[0], tensors)
        yield result
    tensor_signals.end()


def check_output_apart(out: str | os.PathLike, inputs) -> None:
    """Refuse an output folder that is an input's folder or holds one (links resolved): replacing it
    would delete the weights being read."""
    target = Path(out).resolve()
    for source in inputs:
        source = Path(source).resolve()
        folder = source if source.is_dir() else source.parent
        if target == folder or target in folder.parents:
            raise AlmostLinearError(f"the output folder {out} overlaps the input {source}: choose a folder apart "
                                    "from every model being merged")


def merge_files(recipe: Recipe | str | os.PathLike | Mapping, out: str | os.PathLike, *,
                shard_bytes: int = DEFAULT_SHARD_BYTES, overwrite: bool = False, progress: bool = False,
                check_overflow: bool = True, plan: MergePlan | None = None) -> MergeResult:
    """Plan, then merge tensor by tensor into ``out`` (written atomically, sharded, with checksums).

    Memory holds one tensor per input plus the merged tensor at a time; for methods that work entry
    by entry (linear, task arithmetic) one slice of each instead. If anything fails (a
    non-finite result, Ctrl-C) the temporary folder is removed and ``out`` is not created.
    """
    start = time.perf_counter()
    if not isinstance(recipe, Recipe):
        recipe = parse_recipe(recipe)
    plan = plan or plan_merge(recipe, check_overflow=check_overflow)
    check_output_apart(out, [checkpoint.path for checkpoint in plan.inputs])
    read_dtype = DTYPES[recipe.dtype] if recipe.dtype else None
    signals = MergeSignals(len(plan.models))
    writer = AtomicShardedWriter(out, plan.layout, shard_bytes=shard_bytes, overwrite=overwrite,
                                 metadata={"merge_method": recipe.method})
    order = [t.name for t in writer.order]
    planned = {t.name: t for t in plan.tensors}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), desc=f"{recipe.method} merge", unit="tensor", file=sys.stderr)
    record = lookup(recipe.method)
    whole = [t for t in writer.order if not (record.elementwise and planned[t.name].action != "copy")]
    # Entry-by-entry methods stream each tensor in slices: memory holds one slice per input. Other
    # methods get one byte buffer per input and one for the result, sized for the largest tensor and
    # reused: the same peak memory as fresh tensors, without faulting in new pages each time.
    largest = max([0] + [t.nbytes for t in whole])
    for source in plan.inputs:
        largest = max([largest] + [source.info(t.name).nbytes for t in whole if t.name in source])
    workspace = [torch.empty(largest, dtype=torch.uint8) for _ in range(len(plan.inputs) + 1)]
    slice_space = [torch.empty(SLICE * 8, dtype=torch.uint8) for _ in range(len(plan.inputs) + 1)]
    with writer:
        for name in order:
            item = planned[name]
            if item.action != "copy" and record.elementwise:
                writer.write_parts(name, _merged_slices(plan, recipe, item, read_dtype, signals, slice_space))
                if bar is not None:
                    bar.update(1)
                continue
            reads = [source.read(name, buffer=buf) for source, buf in zip(plan.inputs, workspace)]
            base, tensors = (reads[0], reads[1:]) if plan.base is not None else (None, reads)
            if item.action == "copy":
                ref = base if base is not None else tensors[0]
                for m, t in zip(plan.models, tensors):
                    if not torch.equal(t, ref):
                        raise AlmostLinearError(f"integer tensor {name!r} differs in {m.label}; it cannot be merged")
                writer.write(name, ref)
                continue
            if read_dtype is not None:
                base = base.to(read_dtype) if base is not None else None
                tensors = [t.to(read_dtype) for t in tensors]
            position = layer_position(name, plan.n_layers)
            weights, options = tensor_options(recipe, name, position)
            result = workspace[-1][:OutputTensor(name, item.shape, item.out_dtype).nbytes]
            result = result.view(item.out_dtype).view(item.shape)
            merge_into(recipe.method, name, tensors, weights, base, options, result)
            signals.update(base if base is not None else tensors[0], tensors)
            writer.write(name, result)
            del base, tensors, result
            if bar is not None:
                bar.update(1)
        report = {"recipe": recipe.source_text, "method": recipe.method,
                  "base_model": str(recipe.base) if recipe.base else None,
                  "models": [str(m.path) for m in recipe.models], "signals": signals.as_dict(),
                  "signals_reference": "base model" if plan.base is not None else "first model",
                  "parameters": plan.parameters}
        writer.extra_files.update(_extra_files(plan, report))
    if bar is not None:
        bar.close()
    return MergeResult(Path(out), plan, report["signals"], time.perf_counter() - start)
