"""Audit section: ranks of OV and MLP weights, and whether their top singular directions read as tokens.

Coherence uses centred input embeddings (see :mod:`.coherence`): every direction's top tokens share
that direction, so even random directions give lists far more coherent than random token sets. The
telling comparison is therefore against random residual directions read the same way (the control):
``auc`` = P(a weight direction's list is more coherent than a random direction's).
"""

from __future__ import annotations

import collections

import torch

from ..core.section import AuditContext, Need, Section
from ..core.report import Figure, Metric, SectionResult, Series
from ..core.errors import StructureError
from ..core.models import EMBEDDED
from ..core.threads import one_thread
from .coherence import CoherenceScorer, auc_greater
from .heads import head_layout
from .ranks import effective_rank, gram_svd, product_svd, stable_rank
from .spectrum import KINDS, Spectrum, mlp_spectra, ov_spectra
from .tokens import TokenReader, decode_each

# "The Singular Value Decompositions of Transformer Weight Matrices are Highly Interpretable", LessWrong /
# Alignment Forum post, 28 Nov 2022; it has no arXiv id and states its finding qualitatively.
SOURCE = "Millidge & Black 2022 (LessWrong/AF post, no arXiv id)"
REFERENCE = ("top singular directions of OV and MLP weights project to semantically coherent token clusters "
             "(shown with example token lists for GPT models; stated qualitatively, no number)")
LABELS = {"ov": "OV heads", "mlp_in": "MLP in", "mlp_out": "MLP out"}
TOP_K = 10
N_DIRECTIONS = 2
N_RANDOM_DIRECTIONS = 256
CLUSTER_TOKENS = 10


class SpectraSection(Section):
    id = "weight_spectra"
    title = "Weight spectra"

    def applicable(self, ctx: AuditContext) -> str | None:
        try:
            self.layout = head_layout(ctx.loaded.model, ctx.structure)
        except StructureError as error:
            return f"the attention could not be split into heads: {error}"
        return None

    def needs(self, ctx: AuditContext) -> list[Need]:
        return []  # weights only

    def finish(self, ctx: AuditContext) -> SectionResult:
        with one_thread(), torch.no_grad():
            return self._finish(ctx)

    def _finish(self, ctx: AuditContext) -> SectionResult:
        s, model = ctx.structure, ctx.loaded.model
        layout = getattr(self, "layout", None) or head_layout(model, s)
        # float32 Grams for the MLP: singular values good to ~3e-4·σ_max, twice as fast as float64
        spectra = (ov_spectra(model, None, N_DIRECTIONS, layout, s)
                   + mlp_spectra(model, None, N_DIRECTIONS, torch.float32, s))
        reader = TokenReader.from_structure(s)
        scorer = CoherenceScorer(s.embedding.weight, seed=ctx.seed, center=True)
        top = reader.top_ids(torch.cat([sp.residual_directions.float() for sp in spectra]), TOP_K)
        positive, negative = top[0].cpu(), top[1].cpu()
        z = _z_scores(scorer, positive, negative)  # [all directions, 2]: +v, -v
        random = torch.randn(N_RANDOM_DIRECTIONS, s.d_model, generator=torch.Generator().manual_seed(ctx.seed))
        control = _z_scores(scorer, *reader.top_ids(random, TOP_K)).flatten()
        threshold = float(control.quantile(0.95))
        per_matrix = list(torch.split(z, [sp.residual_directions.shape[0] for sp in spectra]))
        result = SectionResult(self.id, self.title)
        curves = _per_layer(spectra, per_matrix, s.n_layers)
        for kind in KINDS:
            _add_kind_metrics(result, kind, curves[kind], spectra, per_matrix, control, threshold)
        auc, p_value = auc_greater(z.flatten(), control)
        lists = torch.cat([positive, negative])
        cluster_share, cluster = _recurring_cluster(lists[z.T.flatten() > threshold])
        result.metrics += [
            Metric("coherence_auc_vs_random_directions", auc, "probability", note=(
                "P(a weight direction's token list is more coherent than a random direction's); 0.5 = no "
                f"difference; one-sided Mann-Whitney p = {p_value:.2g}")),
            Metric("random_direction_coherence_z_mean", float(control.mean()), "z", note=(
                f"control: top-{TOP_K} tokens of ±{N_RANDOM_DIRECTIONS} random Gaussian residual directions")),
            Metric("coherent_lists_in_one_cluster", cluster_share, "fraction", note=(
                "share of the weight lists above the control's 95th percentile that hold at least 3 of the "
                f"{CLUSTER_TOKENS} tokens most frequent among them (one recurring cluster)")),
            Metric("top_k_tokens", TOP_K, "tokens"),
            Metric("random_token_sets", scorer.n_random_sets, "sets"),
        ]
        gaussian = _gaussian_ranks(spectra, ctx.seed)
        for kind, (stable, effective) in gaussian.items():
            result.metrics += [
                Metric(f"{kind}_stable_rank_gaussian", stable, "dims",
                       note=f"{LABELS[kind]}: a Gaussian random matrix of the same shape (product of two for OV)"),
                Metric(f"{kind}_effective_rank_gaussian", effective, "dims",
                       note=f"{LABELS[kind]}: a Gaussian random matrix of the same shape (product of two for OV)")]
        result.figures += _figures(curves, float(control.mean()))
        result.notes += _notes(ctx, spectra, per_matrix, positive, negative, float(control.mean()))
        result.notes.append("Stable / effective rank, trained vs a same-shape Gaussian matrix: " + "; ".join(
            f"{LABELS[k]} {_mean(curves[k]['stable']):.1f} vs {gaussian[k][0]:.1f} / "
            f"{_mean(curves[k]['effective']):.1f} vs {gaussian[k][1]:.1f}" for k in KINDS)
            + ". A lower stable rank than noise means the energy sits in fewer top directions; an effective rank "
              "close to noise means the rest of the spectrum stays nearly flat.")
        result.notes.append(_verdict(ctx, z, control, auc, p_value, cluster_share, cluster))
        return result


def _gaussian_ranks(spectra: list[Spectrum], seed: int) -> dict[str, tuple[float, float]]:
    """Stable and effective rank of a same-shape Gaussian matrix per kind: what "no structure" gives."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for kind in KINDS:
        first = spectra[_rows(spectra, kind)[0]]
        n_out, n_in = first.left.shape[-1], first.right.shape[-1]
        if kind == "ov":  # W_O [d, d_head] @ W_V [d_head, d]
            rank = first.singular_values.numel()
            s = product_svd(torch.randn(n_out, rank, generator=generator, dtype=torch.float64),
                            torch.randn(rank, n_in, generator=generator, dtype=torch.float64))[1]
        else:
            s = gram_svd(torch.randn(n_out, n_in, generator=generator), "in" if n_in <= n_out else "out",
                         torch.float32, n_vectors=1)[0]
        out[kind] = (float(stable_rank(s)), float(effective_rank(s)))
    return out


def _z_scores(scorer: CoherenceScorer, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    scores = scorer.score_many(torch.cat([positive, negative]))
    z = torch.tensor([c.z_score for c in scores], dtype=torch.float64)
    return torch.stack(z.chunk(2), dim=-1)


def _rows(spectra: list[Spectrum], kind: str, layer: int | None = None) -> list[int]:
    return [i for i, sp in enumerate(spectra) if sp.kind == kind and (layer is None or sp.layer == layer)]


def _z_of(per_matrix: list[torch.Tensor], rows: list[int]) -> torch.Tensor:
    return torch.cat([per_matrix[i].flatten() for i in rows]) if rows else torch.zeros(0, dtype=torch.float64)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _per_layer(spectra: list[Spectrum], per_matrix: list[torch.Tensor], n_layers: int) -> dict:
    curves = {kind: {"stable": [], "effective": [], "z": []} for kind in KINDS}
    for kind in KINDS:
        for layer in range(n_layers):
            rows = _rows(spectra, kind, layer)
            curves[kind]["stable"].append(_mean([spectra[i].stable_rank for i in rows]))
            curves[kind]["effective"].append(_mean([spectra[i].effective_rank for i in rows]))
            curves[kind]["z"].append(float(_z_of(per_matrix, rows).mean()) if rows else float("nan"))
    return curves


def _add_kind_metrics(result: SectionResult, kind: str, curve: dict, spectra: list[Spectrum],
                      per_matrix: list[torch.Tensor], control: torch.Tensor, threshold: float) -> None:
    label = LABELS[kind]
    for layer, (stable, effective, z) in enumerate(zip(curve["stable"], curve["effective"], curve["z"])):
        result.metrics += [Metric(f"{kind}_stable_rank", stable, "dims", layer=layer),
                           Metric(f"{kind}_effective_rank", effective, "dims", layer=layer),
                           Metric(f"{kind}_coherence_z", z, "z", layer=layer)]
    rows = _rows(spectra, kind)
    dims = spectra[rows[0]].singular_values.numel()
    zs = _z_of(per_matrix, rows)
    result.metrics += [
        Metric(f"{kind}_stable_rank_mean", _mean(curve["stable"]), "dims",
               note=f"{label}, ‖W‖²_F/‖W‖²₂, mean over matrices and layers; at most {dims}"),
        Metric(f"{kind}_effective_rank_mean", _mean(curve["effective"]), "dims",
               note=f"{label}; exp(entropy of σ/Σσ), Roy & Vetterli 2007; at most {dims}"),
        Metric(f"{kind}_coherence_z_mean", float(zs.mean()), "z", REFERENCE, SOURCE, note=(
            f"{label}: top-{TOP_K} tokens of ±(top {N_DIRECTIONS} singular directions); mean pairwise cosine of "
            "their centred input embeddings as a z-score against random token sets")),
        Metric(f"{kind}_coherence_auc_vs_random_directions", auc_greater(zs, control)[0], "probability",
               note=f"{label}: P(its list is more coherent than a random direction's); 0.5 = no difference"),
        Metric(f"{kind}_coherent_share", float((zs > threshold).double().mean()), "fraction", note=(
            f"{label}: share of its lists above the random directions' 95th percentile (0.05 = no difference)")),
    ]


def _figures(curves: dict, control: float) -> list[Figure]:
    x = list(range(len(curves["ov"]["stable"])))
    coherence = [Series(LABELS[k], x, curves[k]["z"]) for k in KINDS]
    coherence.append(Series("random directions (control)", x, [control] * len(x)))
    return [
        Figure("weight_stable_rank", "Stable rank ‖W‖²_F/‖W‖²₂ per block (mean over heads / matrices)", "block",
               "stable rank", [Series(LABELS[k], x, curves[k]["stable"]) for k in KINDS]),
        Figure("weight_effective_rank", "Effective rank per block (mean over heads / matrices)", "block",
               "effective rank", [Series(LABELS[k], x, curves[k]["effective"]) for k in KINDS]),
        Figure("weight_direction_coherence", "Token coherence of top singular directions (z vs random token sets)",
               "block", "z-score", coherence),
    ]


def _describe(ctx: AuditContext, spectrum: Spectrum, index: int, z: torch.Tensor, positive: torch.Tensor,
              negative: torch.Tensor) -> str:
    tokenizer = ctx.loaded.tokenizer
    parts = []
    for j in range(spectrum.residual_directions.shape[0]):
        row = index + j
        plus = ", ".join(repr(t) for t in decode_each(tokenizer, positive[row][:8]))
        minus = ", ".join(repr(t) for t in decode_each(tokenizer, negative[row][:8]))
        parts.append(f"σ{j + 1}={float(spectrum.singular_values[j]):.3g}: +[{plus}] (z={float(z[row, 0]):.1f}); "
                     f"−[{minus}] (z={float(z[row, 1]):.1f})")
    return f"block {spectrum.layer} {LABELS[spectrum.kind]} {spectrum.name}: " + " | ".join(parts)


def _notes(ctx: AuditContext, spectra: list[Spectrum], per_matrix: list[torch.Tensor], positive: torch.Tensor,
           negative: torch.Tensor, control: float) -> list[str]:
    offsets = torch.tensor([0] + [sp.residual_directions.shape[0] for sp in spectra]).cumsum(0).tolist()
    z = torch.cat(per_matrix)
    notes = [
        "Weights only, no forward pass. OV circuit per query head = W_O[:, head] · W_V[kv group] (GQA-aware), "
        "decomposed through its thin factors; MLP input matrices (gate/up/fc) and down projection through their "
        "d_model × d_model Gram (float32). Residual-side directions (OV and MLP-out: what is written; MLP-in: what "
        "is read) are read as tokens by W_U · (final-norm scale ⊙ v), for +v and −v.",
        f"Coherence = mean pairwise cosine of the top-{TOP_K} tokens' input embeddings (mean embedding removed), "
        f"as a z-score against random token sets of the same size. Any direction's top tokens share that "
        f"direction, so random residual directions score high too (mean z {control:.1f}); coherence beyond that "
        "control is what the weights add.",
    ]
    entry = EMBEDDED.get(ctx.loaded.name)
    if entry is not None and entry.relative_path.endswith(".gguf"):
        notes.append(f"These weights were dequantised from a low-bit GGUF file ({entry.relative_path}): rounding "
                     "noise adds a flat floor to every spectrum, which raises effective ranks; stable ranks, set by "
                     "the largest singular values, are little affected.")
    chosen = {}
    for kind in KINDS:
        rows = _rows(spectra, kind)
        chosen[max(rows, key=lambda i: float(per_matrix[i].mean()))] = "most coherent " + LABELS[kind]
        middle = _rows(spectra, kind, ctx.structure.n_layers // 2)[0]
        chosen.setdefault(middle, "middle block, first " + LABELS[kind])
    for i, why in chosen.items():
        notes.append(f"Top tokens ({why}) — " + _describe(ctx, spectra[i], offsets[i], z, positive, negative))
    return notes


def _recurring_cluster(coherent: torch.Tensor) -> tuple[float, list[int]]:
    """Share of the given token lists holding ≥ 3 of the tokens most frequent among them, and those tokens."""
    if len(coherent) == 0:
        return float("nan"), []
    counts = collections.Counter(coherent.flatten().tolist())
    cluster = [token for token, _ in counts.most_common(CLUSTER_TOKENS)]
    members = torch.isin(coherent, torch.tensor(cluster, device=coherent.device)).sum(-1) >= 3
    return float(members.double().mean()), cluster


def _verdict(ctx: AuditContext, z: torch.Tensor, control: torch.Tensor, auc: float, p_value: float,
             cluster_share: float, cluster: list[int]) -> str:
    text = (f"Weight directions' token lists vs random directions': AUC {auc:.2f} (0.5 = no difference; one-sided "
            f"Mann-Whitney p = {p_value:.2g}); mean z {float(z.mean()):.1f} vs {float(control.mean()):.1f}. ")
    if p_value > 1e-3 or auc < 0.55:
        return text + ("The top singular directions are hardly more token-coherent than random directions here, "
                       "unlike the semantic clusters Millidge & Black show for GPT models.")
    text += "The top singular directions are more token-coherent than random ones, as Millidge & Black report"
    if cluster_share >= 0.25:
        tokens = ", ".join(repr(t) for t in decode_each(ctx.loaded.tokenizer, cluster))
        return text + (f"; but {cluster_share:.0%} of the most coherent lists reuse the same few tokens [{tokens}]: "
                       "much of the excess is one pattern shared by many matrices, not many distinct semantic "
                       "clusters.")
    return text + "."
