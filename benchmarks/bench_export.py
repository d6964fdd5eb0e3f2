"""Levers that travel, on SmolLM2-135M: each export loaded by the engine it is for, against the hooked lever.

1. A ROME edit exported as a PEFT LoRA adapter and loaded with ``PeftModel.from_pretrained``:
   next-token logits against ``edit.apply`` (relative error).
2. A sentiment steering vector baked as a bias (``mlp_bias`` declared in the config), saved with
   ``save_pretrained`` and loaded by transformers alone: logits against the hooked vector.
3. The same vector as a llama.cpp control vector (GGUF), read by llama.cpp's own GGUF parser and
   applied by llama-cpp-python to the embedded Q4_1 GGUF: next-token log-odds of positive vs negative
   words on 8 neutral prompts at strengths −0.3 / 0 / +0.3 (median residual norms), against the
   hooked float model. The Q4_1 weights differ from the float ones, so the figure is the per-prompt
   correlation of the shifts, not equality.
4. The layer convention, checked against llama.cpp itself: a vector at the last block's output
   (``resid_post.29`` = ``direction.29``) moves llama.cpp's logits like the hooked vector at block
   29, and less like one at block 28.

    python benchmarks/bench_export.py [--threads 2] [--prompts 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "export"))


def _relative(a, b) -> float:
    return float((a - b).norm() / b.norm())


def rome_to_peft(lm, tmp: Path) -> dict:
    import torch

    from almostlinear.data import FALLBACK_TEXTS
    from almostlinear.editing import EditRequest, hparams_for, key_statistics, rome
    from almostlinear.export import export_peft
    from peft import PeftModel

    model, tok = lm.model, lm.tokenizer
    start = time.perf_counter()
    stats = key_statistics(model, tok, 6, texts=list(FALLBACK_TEXTS), n_tokens=2_000, cache=False)
    hp = hparams_for(model, v_steps=12, n_prefixes=0, ridge=1e-2)
    edit = rome(model, tok, EditRequest("{} is located in the city of", "The Eiffel Tower", "Rome"), layer=6,
                stats=stats, hparams=hp)
    fitted = time.perf_counter() - start
    ids = tok(["The Eiffel Tower is located in the city of", "The capital of France is", "I like to eat"],
              return_tensors="pt", padding=True)
    with torch.no_grad(), edit.apply(model):
        expected = model(**ids).logits[:, -1].double()
    start = time.perf_counter()
    export_peft(edit, lm, tmp / "rome-adapter")
    exported = time.perf_counter() - start
    peft_model = PeftModel.from_pretrained(model, str(tmp / "rome-adapter")).eval()
    with torch.no_grad():
        got = peft_model(**ids).logits[:, -1].double()
    peft_model.unload()  # give the base model back without the LoRA layers
    target = tok(" Rome", add_special_tokens=False)["input_ids"][0]
    return {"relative_error": _relative(got, expected), "p_rome_exported": float(got[0].softmax(-1)[target]),
            "fit_s": fitted, "export_s": exported}


def steering_to_hf(lm, vector, tmp: Path, strength: float) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from almostlinear.export import export_hf

    ids = lm.tokenizer(["I went to the store and", "The meeting this afternoon was"], return_tensors="pt",
                       padding=True)
    real = ids["attention_mask"].bool()  # a bias also acts on padding, which no real token attends to
    with torch.no_grad(), vector.apply(lm, strength=strength):
        expected = lm.model(**ids).logits.double()[real]
    start = time.perf_counter()
    export_hf(vector, lm, tmp / "steered", strengths=[strength])
    exported = time.perf_counter() - start
    loaded = AutoModelForCausalLM.from_pretrained(tmp / "steered").eval()
    with torch.no_grad():
        got = loaded(**ids).logits.double()[real]
    return {"relative_error": _relative(got, expected), "export_s": exported}


def steering_to_llama_cpp(lm, vector, tmp: Path, prompts, strengths, threads: int) -> dict:
    import llama_cpp
    import numpy as np
    import torch
    from llama_cpp_loader import llama_cpp_buffer, load_with_llama_cpp, open_llama, served_log_odds

    from almostlinear.core.embedded import EMBEDDED
    from almostlinear.data.sentiment import NEGATIVE_WORDS, POSITIVE_WORDS
    from almostlinear.export import ControlVector, export_gguf
    from almostlinear.steering import TokenPreference

    preference = TokenPreference(POSITIVE_WORDS, NEGATIVE_WORDS)
    pos, neg = preference.token_ids(lm.tokenizer)
    hooked = {}
    for s in strengths:
        with vector.apply(lm, strength=s):
            hooked[s] = preference(lm.model, lm.tokenizer, prompts).numpy()
    path = export_gguf(vector, tmp / "sentiment.gguf", model=lm)  # strength 1: one median residual norm
    layers = load_with_llama_cpp(path)
    llm = open_llama(str(EMBEDDED["smollm2-135m"].source()), threads)
    n_layers = llama_cpp.llama_model_n_layer(llm.model)

    # the file as llama.cpp's own parser reads it; its buffer layout is llama.cpp's (checked here)
    cvec = ControlVector({il: torch.from_numpy(v) for il, v in layers.items()})
    assert np.array_equal(cvec.buffer(n_layers), llama_cpp_buffer(layers, n_layers))
    served = served_log_odds(llm, cvec, lm.tokenizer, prompts, strengths, pos, neg)
    low, high = min(strengths), max(strengths)
    shift_hooked, shift_served = hooked[high] - hooked[low], served[high] - served[low]
    return {"means_hooked": {str(s): float(v.mean()) for s, v in hooked.items()},
            "means_llama_cpp": {str(s): float(v.mean()) for s, v in served.items()},
            "same_direction_every_prompt": bool((np.sign(shift_hooked) == np.sign(shift_served)).all()
                                                and (shift_served > 0).all()),
            "shift_correlation": float(np.corrcoef(shift_hooked, shift_served)[0, 1]),
            "hooked": {str(s): v.tolist() for s, v in hooked.items()},
            "llama_cpp": {str(s): v.tolist() for s, v in served.items()}, "llm": llm}


def layer_convention(lm, llm, tmp: Path, prompt: str) -> dict:
    """Correlation of llama.cpp's logit change (vector in direction.29) with the hooked change at 29 and at 28."""
    import numpy as np
    import torch
    from llama_cpp_loader import llama_logits

    from almostlinear.export import apply_control_vector, clear_control_vector, export_gguf
    from almostlinear.steering import SteeringVector

    n_layers = lm.structure.n_layers
    direction = torch.randn(lm.structure.d_model, generator=torch.Generator().manual_seed(0))
    ids = lm.tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        base = lm.model(torch.tensor([ids])).logits[0, -1].double().numpy()
    shifts = {}
    for layer in (n_layers - 1, n_layers - 2):
        vector = SteeringVector.from_direction(direction, site="resid_post", layer=layer, method="random",
                                               norms={"residual_median": 1.0})
        with torch.no_grad(), vector.apply(lm, strength=20.0, units="raw"):
            shifts[layer] = lm.model(torch.tensor([ids])).logits[0, -1].double().numpy() - base
    top = SteeringVector.from_direction(direction, site="resid_post", layer=n_layers - 1, method="random")
    path = export_gguf(top, tmp / "last.gguf", strengths=[20.0], units="raw")
    unsteered = llama_logits(llm, ids)
    apply_control_vector(llm, path)
    served = llama_logits(llm, ids) - unsteered
    clear_control_vector(llm)
    return {f"corr_with_hooked_resid_post_{layer}": float(np.corrcoef(served, shift)[0, 1])
            for layer, shift in shifts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=8)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import almostlinear
    from almostlinear.data.sentiment import NEUTRAL_PROMPTS, SENTIMENT_PAIRS
    from almostlinear.steering import fit_steering

    lm = almostlinear.load()
    results = {"load_average_start": os.getloadavg()}
    vector = fit_steering(lm, pairs=SENTIMENT_PAIRS, layer=9)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        results["llama_cpp"] = steering_to_llama_cpp(lm, vector, tmp, list(NEUTRAL_PROMPTS[:args.prompts]),
                                                     (-0.3, 0.0, 0.3), args.threads)
        llm = results["llama_cpp"].pop("llm")
        results["layer_convention"] = layer_convention(lm, llm, tmp, NEUTRAL_PROMPTS[0])
        results["hf"] = steering_to_hf(lm, vector, tmp, 0.3)
        results["peft_rome"] = rome_to_peft(lm, tmp)
    results["load_average_end"] = os.getloadavg()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
