"""CounterFact metrics for any editor, under single, sequential and batch protocols.

The metrics follow the CounterFact evaluation released with the ROME paper (arXiv 2202.05262):
every prompt is scored by the *length-normalised* negative log-likelihood (mean over
the target's tokens, teacher-forced) of the new and of the true target, and

* ES / EM (efficacy): on the rewrite prompt, share of cases with NLL(new) < NLL(true), and mean
  P(new) − P(true), where P = exp(−NLL);
* PS / PM (paraphrase): the same on other wordings of the relation;
* NS / NM (neighbourhood): on other subjects' prompts, share where their own answer still beats
  the new target, and mean P(answer) − P(new);
* S: harmonic mean of ES, PS and NS;
* GE (fluency): weighted bi-/tri-gram entropy of sampled generations, ``(2/3·H₂ + 4/3·H₃)/2`` in
  bits, as in ROME's code (the paper's tables print it ×100).

Scores are percentages (×100) like the paper's tables. An *editor* is any callable taking a list of
:class:`EditRequest` and returning an object whose ``apply(model)`` is a context manager that
changes the model and restores it on exit.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch

from ..core.digest import digest, tensor_digest
from ..core.errors import AlmostLinearError, EmptyDataError, check_choice
from ..core.lever import as_model
from ..core.tokens import continuation_ids
from .access import unpack
from .counterfact import CounterfactCase
from .request import EditRequest

PROTOCOLS = ("single", "sequential", "batch")

# ROME on GPT-2 Medium (345M), CounterFact single edits, Table 5 of arXiv 2202.05262: the closest
# published model size to a 135M model.
ROME_GPT2_MEDIUM = {"S": 87.4, "ES": 100.0, "EM": 94.9, "PS": 96.4, "PM": 56.9, "NS": 71.8, "NM": 2.8, "GE": 625.0}
ROME_SOURCE = "arXiv 2202.05262"


class Applicable(Protocol):
    def apply(self, model: Any) -> contextlib.AbstractContextManager: ...


Editor = Callable[[list[EditRequest]], Applicable]


# --------------------------------------------------------------------------- scoring


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def target_nll(
    model: Any, tokenizer: Any, prompts: Sequence[str], targets: Sequence[str], *, batch_size: int = 16
) -> torch.Tensor:
    """Mean NLL (nats per token, teacher-forced) of ``" " + targets[i]`` after ``prompts[i]``.

    Pairs whose forward passes coincide (the same prompt with single-token targets) share one
    forward pass. Sequences are right-padded; the model's training mode is restored on return.
    """
    model = as_model(model).module
    if len(prompts) != len(targets):
        raise AlmostLinearError(f"{len(prompts)} prompts but {len(targets)} targets")
    if not prompts:
        return torch.zeros(0, dtype=torch.float64)
    pairs = [continuation_ids(tokenizer, p, t) for p, t in zip(prompts, targets)]
    # A pair needs the model to read context + target[:-1]; identical inputs are run once.
    inputs: dict[tuple[int, ...], int] = {}
    for ctx, tgt in pairs:
        inputs.setdefault(tuple(ctx + tgt[:-1]), len(inputs))
    sequences = sorted(inputs, key=len, reverse=True)  # similar lengths together: little padding
    order = {seq: i for i, seq in enumerate(sequences)}
    device = _device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    logprobs: list[torch.Tensor | None] = [None] * len(sequences)
    training = model.training
    model.eval()
    try:
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start:start + batch_size]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, seq in enumerate(chunk):
                ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device))
            logits = out.logits if hasattr(out, "logits") else out[0]
            for row, seq in enumerate(chunk):
                logprobs[start + row] = torch.log_softmax(logits[row, : len(seq)].double(), dim=-1).cpu()
    finally:
        model.train(training)
    nll = torch.empty(len(pairs), dtype=torch.float64)
    for i, (ctx, tgt) in enumerate(pairs):
        table = logprobs[order[tuple(ctx + tgt[:-1])]]
        steps = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(tgt))
        nll[i] = -table[steps, torch.tensor(tgt)].mean()
    if not torch.isfinite(nll).all():
        raise AlmostLinearError("the model produced non-finite log-probabilities while scoring targets")
    return nll


@dataclass(frozen=True)
class CaseScores:
    """Length-normalised NLLs of one case's prompts (nats per token)."""

    rewrite_new: float
    rewrite_true: float
    paraphrase_new: tuple[float, ...]
    paraphrase_true: tuple[float, ...]
    neighbour_new: tuple[float, ...]
    neighbour_answer: tuple[float, ...]

    @property
    def efficacy(self) -> float:
        return float(self.rewrite_new < self.rewrite_true)

    @property
    def efficacy_magnitude(self) -> float:
        return math.exp(-self.rewrite_new) - math.exp(-self.rewrite_true)

    @property
    def paraphrase(self) -> float:
        return _mean([float(n < t) for n, t in zip(self.paraphrase_new, self.paraphrase_true)])

    @property
    def paraphrase_magnitude(self) -> float:
        return _mean([math.exp(-n) - math.exp(-t) for n, t in zip(self.paraphrase_new, self.paraphrase_true)])

    @property
    def neighbourhood(self) -> float:
        return _mean([float(a < n) for n, a in zip(self.neighbour_new, self.neighbour_answer)])

    @property
    def neighbourhood_magnitude(self) -> float:
        return _mean([math.exp(-a) - math.exp(-n) for n, a in zip(self.neighbour_new, self.neighbour_answer)])


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def score_cases(model: Any, tokenizer: Any, cases: Sequence[CounterfactCase], *, batch_size: int = 16
                ) -> list[CaseScores]:
    """Score every case's rewrite, paraphrase and neighbourhood prompts on the model as it is now."""
    prompts: list[str] = []
    targets: list[str] = []
    for case in cases:
        for text in (case.rewrite_prompt, *case.paraphrase_prompts):
            prompts += [text, text]
            targets += [case.target_new, case.target_true]
        for text, answer in zip(case.neighbourhood_prompts, case.neighbourhood_answers):
            prompts += [text, text]
            targets += [case.target_new, answer]
    nll = target_nll(model, tokenizer, prompts, targets, batch_size=batch_size).tolist()
    scores, i = [], 0
    for case in cases:
        k, m = len(case.paraphrase_prompts), len(case.neighbourhood_prompts)
        rw = nll[i:i + 2]
        pp = nll[i + 2:i + 2 + 2 * k]
        nb = nll[i + 2 + 2 * k:i + 2 + 2 * k + 2 * m]
        i += 2 + 2 * k + 2 * m
        scores.append(CaseScores(rw[0], rw[1], tuple(pp[0::2]), tuple(pp[1::2]), tuple(nb[0::2]), tuple(nb[1::2])))
    return scores


@dataclass(frozen=True)
class CounterfactScores:
    """Averages over cases, in percent (×100) as in the ROME paper's tables; GE in bits."""

    es: float
    em: float
    ps: float
    pm: float
    ns: float
    nm: float
    s: float
    n_cases: int
    ge: float | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean; 0 when any value is 0 (as a score that fails one test should)."""
    if not values:
        raise EmptyDataError("harmonic mean of nothing")
    if any(v < 0 for v in values):
        raise AlmostLinearError(f"harmonic mean needs non-negative values, got {list(values)}")
    if any(v == 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def summarize(scores: Sequence[CaseScores], ge: float | None = None) -> CounterfactScores:
    """Mean of the per-case metrics over cases, ×100, and their harmonic mean S."""
    if not scores:
        raise EmptyDataError("no case scores to summarise")

    def avg(name: str) -> float:
        values = [getattr(s, name) for s in scores]
        values = [v for v in values if not math.isnan(v)]
        return 100.0 * _mean(values)

    es, ps, ns = avg("efficacy"), avg("paraphrase"), avg("neighbourhood")
    return CounterfactScores(es=es, em=avg("efficacy_magnitude"), ps=ps, pm=avg("paraphrase_magnitude"),
                             ns=ns, nm=avg("neighbourhood_magnitude"), s=harmonic_mean([es, ps, ns]),
                             n_cases=len(scores), ge=ge)


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks from 1, ties sharing their average rank."""
    order = torch.argsort(values, stable=True)
    ranks = torch.empty_like(values, dtype=torch.float64)
    ranks[order] = torch.arange(1, len(values) + 1, dtype=torch.float64)
    for value in values.unique():
        tied = values == value
        if int(tied.sum()) > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def rank_correlation(x: Sequence[float] | torch.Tensor, y: Sequence[float] | torch.Tensor) -> float:
    """Spearman's rank correlation (Pearson on average ranks); NaN when either side is constant."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    if x.shape != y.shape or x.dim() != 1:
        raise AlmostLinearError(f"rank correlation needs two equal-length vectors, got {tuple(x.shape)}, {tuple(y.shape)}")
    if len(x) < 2:
        return float("nan")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = float(rx.norm() * ry.norm())
    return float(rx @ ry) / denominator if denominator > 0 else float("nan")


# --------------------------------------------------------------------------- fluency

_WORD = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(text: str, n: int) -> float:
    """Shannon entropy (bits) of the frequency distribution of word n-grams in ``text``."""
    words = _WORD.findall(text.lower())
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    if total == 0:
        return 0.0
    return -sum(c / total * math.log2(c / total) for c in grams.values())


def generation_entropy(text: str) -> float:
    """ROME's fluency measure of one text: ``mean(2/3·H₂, 4/3·H₃)`` in bits."""
    return (2 / 3 * ngram_entropy(text, 2) + 4 / 3 * ngram_entropy(text, 3)) / 2


@torch.inference_mode()
def sample_texts(model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 100,
                 top_k: int = 5, seed: int = 0) -> list[str]:
    """Top-k samples (ROME uses k = 5, 100 tokens), one per prompt, reproducible by seed.

    The global random state is left untouched. Returns prompt + continuation.
    """
    model = as_model(model).module
    device = _device(model)
    texts = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        for i, prompt in enumerate(prompts):
            torch.manual_seed(seed + i)
            ids = tokenizer(prompt, return_tensors="pt").to(device)
            out = model.generate(**ids, do_sample=True, top_k=top_k, max_new_tokens=max_new_tokens,
                                 pad_token_id=pad)
            texts.append(tokenizer.decode(out[0], skip_special_tokens=True))
    return texts


def fluency(model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 100, seed: int = 0
            ) -> float:
    """Mean :func:`generation_entropy` of one sample per prompt."""
    if not prompts:
        raise EmptyDataError("fluency needs at least one prompt")
    texts = sample_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed)
    return _mean([generation_entropy(t) for t in texts])


# --------------------------------------------------------------------------- protocols


def weights_digest(model: Any) -> str:
    """Digest of every parameter and buffer, bit for bit: equal digests mean an exact restore."""
    model = as_model(model).module
    return digest(*(f"{name}={tensor_digest(tensor)};" for name, tensor in model.state_dict().items()))


@dataclass
class CaseResult:
    case: CounterfactCase
    pre: CaseScores
    post: CaseScores
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class EditEvaluation:
    """What :func:`evaluate_edits` measured."""

    protocol: str
    pre: CounterfactScores
    post: CounterfactScores
    cases: list[CaseResult]
    restored: bool | None
    seconds: float
    batch_size: int = 1
    checkpoints: list[tuple[int, CounterfactScores]] = field(default_factory=list)

    def table(self) -> str:
        """Pre/post scores beside ROME's GPT-2 Medium numbers, as text."""
        rows = [("S", "s"), ("ES", "es"), ("EM", "em"), ("PS", "ps"), ("PM", "pm"), ("NS", "ns"), ("NM", "nm")]
        lines = [f"{'metric':<7}{'unedited':>10}{'edited':>10}{'ROME GPT-2 M':>14}"]
        for label, key in rows:
            lines.append(f"{label:<7}{getattr(self.pre, key):>10.1f}{getattr(self.post, key):>10.1f}"
                         f"{ROME_GPT2_MEDIUM[label]:>14.1f}")
        if self.pre.ge is not None and self.post.ge is not None:
            lines.append(f"{'GE':<7}{100 * self.pre.ge:>10.1f}{100 * self.post.ge:>10.1f}"
                         f"{ROME_GPT2_MEDIUM['GE']:>14.1f}")
        restored = {True: "yes, bit for bit", False: "NO", None: "not checked"}[self.restored]
        lines.append(f"{self.post.n_cases} cases, protocol {self.protocol}"
                     + (f" (batches of {self.batch_size})" if self.protocol != "single" else "")
                     + f", {self.seconds:.0f} s; weights restored afterwards: {restored}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol, "batch_size": self.batch_size, "pre": self.pre.as_dict(),
            "post": self.post.as_dict(), "restored": self.restored, "seconds": self.seconds,
            "checkpoints": [{"edits": n, **s.as_dict()} for n, s in self.checkpoints],
            "cases": [{"case": r.case.as_dict(), "pre": asdict(r.pre), "post": asdict(r.post),
                       "seconds": r.seconds, **r.extra} for r in self.cases],
        }


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def evaluate_edits(
    model: Any,
    tokenizer: Any,
    cases: Sequence[CounterfactCase],
    editor: Editor,
    *,
    protocol: str = "single",
    batch_size: int = 1,
    fluency_cases: int = 0,
    generation_tokens: int = 100,
    check_restore: bool = True,
    eval_every: int | None = None,
    on_edit: Callable[[Sequence[CounterfactCase], Any], dict[str, Any] | None] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> EditEvaluation:
    """Edit, score and restore under one protocol; the unedited scores come from the pristine model.

    * ``single``: one edit per case, scored with only that edit applied, then undone.
    * ``batch``: one edit per ``batch_size`` cases (``editor`` receives the whole batch), scored
      with that edit applied, then undone.
    * ``sequential``: edits of ``batch_size`` cases each are computed and applied one after the
      other without undoing (each editor call sees the model already edited); all cases are scored
      at the end (and every ``eval_every`` edits on the cases edited so far), then everything is undone.

    ``fluency_cases`` > 0 samples the first that many cases' generation prompts before and with the
    edits (GE). ``on_edit(cases, edit)`` runs while an edit is applied and may return extra per-case
    numbers (e.g. predicted versus observed neighbour bleed). With ``check_restore`` the weights are
    hashed before and after, and ``restored`` says whether every bit came back. ``model`` is a
    module or a ``LoadedModel`` (whose tokenizer serves when ``tokenizer`` is None).
    """
    check_choice(protocol, PROTOCOLS, "protocol")
    if batch_size < 1:
        raise AlmostLinearError(f"batch_size must be >= 1, got {batch_size}")
    cases = list(cases)
    if not cases:
        raise EmptyDataError("no cases to evaluate; build some with counterfact_cases()")
    if protocol == "single" and batch_size != 1:
        raise AlmostLinearError("the single protocol edits one case at a time; use protocol='batch'")
    view, tokenizer = unpack(model, tokenizer)
    model = view.module
    began = time.perf_counter()
    before = weights_digest(model) if check_restore else None
    bar = _bar(len(cases), f"{protocol} edits", progress)
    pre = score_cases(model, tokenizer, cases)
    gen_cases = cases[:fluency_cases]
    gen_prompts = [p for c in gen_cases for p in c.generation_prompts]
    ge_pre = fluency(model, tokenizer, gen_prompts, max_new_tokens=generation_tokens, seed=seed) \
        if gen_prompts else None
    post: list[CaseScores | None] = [None] * len(cases)
    seconds = [0.0] * len(cases)
    extras: list[dict[str, Any]] = [{} for _ in cases]
    checkpoints: list[tuple[int, CounterfactScores]] = []
    ge_post = None
    index = {id(c): i for i, c in enumerate(cases)}

    def run_hook(chunk, edit) -> None:
        if on_edit is None:
            return
        found = on_edit(chunk, edit) or {}
        for case in chunk:
            extras[index[id(case)]].update(found.get(case.case_id, {}))

    if protocol in ("single", "batch"):
        ge_parts: list[float] = []
        for chunk in _chunks(cases, batch_size):
            t0 = time.perf_counter()
            edit = editor([c.request for c in chunk])
            with edit.apply(model):
                for case, scored in zip(chunk, score_cases(model, tokenizer, chunk)):
                    post[index[id(case)]] = scored
                run_hook(chunk, edit)
                prompts = [p for c in chunk if c in gen_cases for p in c.generation_prompts]
                if prompts:
                    ge_parts.append(fluency(model, tokenizer, prompts, max_new_tokens=generation_tokens,
                                            seed=seed) * len(prompts))
            for case in chunk:
                seconds[index[id(case)]] = (time.perf_counter() - t0) / len(chunk)
            bar.update(len(chunk))
        ge_post = sum(ge_parts) / len(gen_prompts) if gen_prompts else None
    else:
        with contextlib.ExitStack() as stack:
            done = 0
            for chunk in _chunks(cases, batch_size):
                t0 = time.perf_counter()
                edit = editor([c.request for c in chunk])
                stack.enter_context(edit.apply(model))
                run_hook(chunk, edit)
                for case in chunk:
                    seconds[index[id(case)]] = (time.perf_counter() - t0) / len(chunk)
                done += len(chunk)
                bar.update(len(chunk))
                if eval_every and done % eval_every == 0 and done < len(cases):
                    checkpoints.append((done, summarize(score_cases(model, tokenizer, cases[:done]))))
            for i, scored in enumerate(score_cases(model, tokenizer, cases)):
                post[i] = scored
            if gen_prompts:
                ge_post = fluency(model, tokenizer, gen_prompts, max_new_tokens=generation_tokens, seed=seed)
    bar.close()
    restored = (weights_digest(model) == before) if check_restore else None
    results = [CaseResult(c, p, q, s, e) for c, p, q, s, e in zip(cases, pre, post, seconds, extras)]
    post_summary = summarize([r.post for r in results], ge_post)
    if protocol == "sequential":
        checkpoints.append((len(cases), post_summary))
    return EditEvaluation(protocol, summarize(pre, ge_pre), post_summary, results, restored,
                          time.perf_counter() - began, batch_size, checkpoints)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, description: str, progress: bool):
    if not progress:
        return _NoBar()
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="case", file=sys.stderr)
