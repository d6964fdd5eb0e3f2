"""The value an edit should write: an offset ``δ`` optimised at the subject's last token.

ROME (arXiv 2202.05262, ``compute_v``) adds ``δ`` to the MLP output of the edited layer; MEMIT
(arXiv 2210.07229, ``compute_z``) adds it to the residual stream after the last edited layer. Either
way ``δ`` minimises the target's NLL over the templated prompts, plus a KL term that keeps the
model's reading of the subject (``"{} is a"``) and a norm penalty, with ``‖δ‖`` clamped to a
multiple of the activation it is added to. Only ``δ`` has a gradient; the weights do not change.

Many requests are optimised together: one ``δ`` per request, their prompts batched. The total
loss is the sum of the per-request losses and Adam acts elementwise, so this is the same as
optimising each alone, with fewer, larger forward passes.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.collect import model_device
from ..core.hooks import intervene, record
from ..core.locate import Structure
from ..core.sites import Site
from .hparams import EditHyperParams
from .request import EditRequest
from .subject import encode
from .tokens import pad_id, pad_right, target_ids


@dataclass(frozen=True)
class ValueResult:
    """``delta`` (float64) and how the optimisation went."""

    delta: torch.Tensor
    init_norm: float
    steps: int
    nll_before: float
    nll_after: float
    kl: float
    target_prob: float


@contextlib.contextmanager
def _frozen(model: nn.Module):
    """Weights without gradients and eval mode for the duration; both restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    training = model.training
    for p, _ in flags:
        p.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(training)


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


@dataclass
class _Row:
    ids: list[int]
    request: int
    subject_index: int
    targets: list[tuple[int, int]]  # (position, token) scored for the NLL; empty for the KL row
    is_kl: bool
    is_first: bool  # the request's bare-template row: its activation norm scales the clamp


def _rows(tokenizer, requests: Sequence[EditRequest], templates: Sequence[str], kl_prompt: str) -> list[_Row]:
    rows = []
    for q, request in enumerate(requests):
        target = target_ids(tokenizer, request.target)
        for j, t in enumerate(templates):
            p = encode(tokenizer, t, request.prompt, request.subject)
            scored = [(len(p.ids) - 1 + i, tok) for i, tok in enumerate(target)]
            rows.append(_Row(p.ids + target[:-1], q, p.subject_index, scored, False, j == 0))
        kl = encode(tokenizer, "{}", kl_prompt, request.subject)
        rows.append(_Row(kl.ids, q, kl.subject_index, [], True, False))
    return rows


def optimise_deltas(model: nn.Module, tokenizer, requests: Sequence[EditRequest], site: Site,
                    templates: Sequence[str], hp: EditHyperParams, *, structure: Structure,
                    lr: float | None = None, clamp_norm_factor: float | None = None, chunk_rows: int = 48,
                    progress: bool = False) -> list[ValueResult]:
    """Optimise, for every request, the offset at ``site`` that makes the model say its target."""
    lr = hp.v_lr if lr is None else lr
    clamp = hp.clamp_norm_factor if clamp_norm_factor is None else clamp_norm_factor
    device = model_device(model)
    n = len(requests)
    rows = _rows(tokenizer, requests, templates, hp.kl_prompt)
    n_rewrite = torch.zeros(n, dtype=torch.float64)
    for r in rows:
        if not r.is_kl:
            n_rewrite[r.request] += 1
    # Chunks hold whole requests, so one request's rows share a forward pass.
    chunks: list[list[_Row]] = []
    for r in rows:
        if not chunks or (len(chunks[-1]) >= chunk_rows and r.request != chunks[-1][-1].request):
            chunks.append([])
        chunks[-1].append(r)
    logits_to_keep = _accepts_logits_to_keep(model)
    prepared = [_prepare(chunk, tokenizer, device, logits_to_keep) for chunk in chunks]

    width = structure.d_mlp if site.name == "mlp_key" else structure.d_model
    delta = torch.zeros(n, width, dtype=torch.float32, device=device, requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=lr)
    init_norm = torch.ones(n, dtype=torch.float64)
    log_p0: dict[int, torch.Tensor] = {}
    nll0 = torch.zeros(n, dtype=torch.float64)
    done = torch.zeros(n, dtype=torch.bool)
    steps = torch.zeros(n, dtype=torch.long)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=hp.v_steps, desc=f"values for {n} request(s)", leave=False)
    with _frozen(model):
        for step in range(1, hp.v_steps + 1):
            optimiser.zero_grad()
            nll = torch.zeros(n, dtype=torch.float64)
            kl = torch.zeros(n, dtype=torch.float64)
            first_prob = torch.zeros(n, dtype=torch.float64)
            for chunk, prep in zip(chunks, prepared):
                c_nll, c_kl, c_prob = _chunk_loss(model, site, structure, chunk, prep, delta, log_p0,
                                                  init_norm, n_rewrite, first=(step == 1))
                # at step 1 δ = 0, where the KL is at its minimum (zero, with zero gradient)
                loss = c_nll.sum() if step == 1 else c_nll.sum() + hp.kl_factor * c_kl.sum()
                loss.backward()
                nll += c_nll.detach().cpu()
                kl += c_kl.detach().cpu()
                first_prob += c_prob
            if step == 1:
                nll0 = nll.clone()
            steps[~done] = step
            decay = hp.v_weight_decay * delta.double().norm(dim=-1) / init_norm.to(device).clamp_min(1e-12) ** 2
            if bar is not None:
                bar.update(1)
                bar.set_postfix(nll=f"{float(nll.mean()):.3f}", kl=f"{float(kl.mean()):.3f}")
            # ROME stops on the whole loss; its norm term alone can exceed the threshold on some
            # models, so the stop here asks only that each target be reached.
            done |= nll < hp.early_stop_loss
            if bool(done.all()) or step == hp.v_steps:
                break
            decay.sum().backward()
            frozen = delta.detach()[done.to(device)].clone()
            optimiser.step()
            with torch.no_grad():
                delta[done.to(device)] = frozen  # finished requests keep their offset
                limit = (clamp * init_norm).to(device=device, dtype=delta.dtype)
                norms = delta.norm(dim=-1)
                over = norms > limit
                delta[over] *= (limit[over] / norms[over])[:, None]
    if bar is not None:
        bar.close()
    return [
        ValueResult(delta=delta[q].detach().double().cpu(), init_norm=float(init_norm[q]), steps=int(steps[q]),
                    nll_before=float(nll0[q]), nll_after=float(nll[q]), kl=float(kl[q]),
                    target_prob=float(first_prob[q]))
        for q in range(n)
    ]


def optimise_delta(model: nn.Module, tokenizer, request: EditRequest, site: Site, templates: Sequence[str],
                   hp: EditHyperParams, *, structure: Structure, lr: float | None = None,
                   clamp_norm_factor: float | None = None, progress: bool = False) -> ValueResult:
    """:func:`optimise_deltas` for one request."""
    return optimise_deltas(model, tokenizer, [request], site, templates, hp, structure=structure, lr=lr,
                           clamp_norm_factor=clamp_norm_factor, progress=progress)[0]


def _prepare(chunk: list[_Row], tokenizer, device, logits_to_keep: bool) -> dict:
    ids, mask = pad_right([r.ids for r in chunk], pad_id(tokenizer))
    b = len(chunk)
    chosen = torch.zeros(ids.shape, dtype=torch.bool)
    chosen[torch.arange(b), torch.tensor([r.subject_index for r in chunk])] = True
    t_rows, t_pos, t_tok = [], [], []
    for i, r in enumerate(chunk):
        for pos, tok in r.targets:
            t_rows.append(i)
            t_pos.append(pos)
            t_tok.append(tok)
    kl_rows = [i for i, r in enumerate(chunk) if r.is_kl]
    kl_pos = [chunk[i].subject_index for i in kl_rows]
    needed = sorted(set(t_pos) | set(kl_pos))
    column = {p: i for i, p in enumerate(needed)} if logits_to_keep else {p: p for p in needed}
    return {
        "ids": ids.to(device), "mask": mask.to(device), "chosen": chosen.to(device),
        "owner": torch.tensor([r.request for r in chunk], device=device),
        "extra": {"logits_to_keep": torch.tensor(needed, device=device)} if logits_to_keep else {},
        "t_rows": torch.tensor(t_rows, device=device), "t_cols": torch.tensor([column[p] for p in t_pos], device=device),
        "t_tok": torch.tensor(t_tok, device=device),
        "t_owner": torch.tensor([chunk[i].request for i in t_rows], device=device),
        "t_first": torch.tensor([chunk[i].is_first for i in t_rows], device=device),
        "kl_rows": torch.tensor(kl_rows, device=device), "kl_cols": torch.tensor([column[p] for p in kl_pos], device=device),
        "kl_owner": [chunk[i].request for i in kl_rows],
        "first_rows": [(i, r.request, r.subject_index) for i, r in enumerate(chunk) if r.is_first],
        "row_targets": torch.tensor([len(r.targets) for r in chunk], dtype=torch.float64),
    }


def _chunk_loss(model, site, structure, chunk, prep, delta, log_p0, init_norm, n_rewrite, *, first: bool):
    """Per-request NLL (mean over rows of the per-row mean) and KL contributions of one chunk."""
    device = delta.device
    n = delta.shape[0]
    chosen, owner = prep["chosen"], prep["owner"]

    def add_delta(hidden, where):
        return hidden + where[..., None].to(hidden.dtype) * delta[owner][:, None, :].to(hidden.dtype)

    def positions(_index, _mask):
        return chosen

    with contextlib.ExitStack() as stack:
        probe = stack.enter_context(record(model, [site], keep_full=True, structure=structure)) if first else None
        stack.enter_context(intervene(model, {site: add_delta}, positions=positions, structure=structure))
        logits = model(input_ids=prep["ids"], attention_mask=prep["mask"], use_cache=False, **prep["extra"]).logits
    if first:
        (full,) = probe.full(site)
        for i, q, index in prep["first_rows"]:
            init_norm[q] = float(full[i, index].double().norm())
    logp = torch.log_softmax(logits[prep["t_rows"], prep["t_cols"]].double(), -1)
    token_nll = -logp.gather(-1, prep["t_tok"][:, None]).squeeze(-1)
    # each rewrite row contributes its mean token NLL / the request's number of rewrite rows
    weights = 1.0 / (prep["row_targets"].to(device)[prep["t_rows"]] * n_rewrite.to(device)[prep["t_owner"]])
    nll = torch.zeros(n, dtype=torch.float64, device=device).index_add(0, prep["t_owner"], token_nll * weights)
    prob = torch.zeros(n, dtype=torch.float64)
    first_nll = torch.zeros(n, dtype=torch.float64, device=device).index_add(
        0, prep["t_owner"], token_nll.detach() * prep["t_first"].double())
    for q in set(prep["t_owner"][prep["t_first"]].tolist()):
        prob[q] = float(torch.exp(-first_nll[q]))
    kl = torch.zeros(n, dtype=torch.float64, device=device)
    if len(prep["kl_owner"]):
        kl_logp = torch.log_softmax(logits[prep["kl_rows"], prep["kl_cols"]].double(), -1)
        for j, q in enumerate(prep["kl_owner"]):
            if first:
                log_p0[q] = kl_logp[j].detach()
            else:
                p0 = log_p0[q]
                kl = kl.index_add(0, torch.tensor([q], device=device),
                                  (p0.exp() * (p0 - kl_logp[j])).sum()[None])
    return nll, kl, prob
