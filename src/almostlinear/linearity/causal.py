"""The causal inner product of Park, Choe and Veitch (arXiv 2311.03658).

The unembedding vectors ``gamma(y)`` (rows of the output head) are whitened by their own
covariance: ``g(y) = Cov(gamma)^(-1/2) (gamma(y) - E[gamma])``. The paper shows that under the
inner product this induces, ``<x, y>_C = x^T Cov(gamma)^-1 y``, causally separable concepts (such as
male->female and English->French) have near-orthogonal directions, while under the Euclidean inner
product they need not. A concept's direction is the normalised mean difference ``g(b) - g(a)`` over
its counterfactual word pairs ``(a, b)``, kept only when both words are single tokens.

The word lists below were written for this library: short, common English words, each paired
with its counterfactual; the tokenizer decides which pairs survive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..core.errors import EmptyDataError, ShapeError

CONCEPT_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "male→female": (
        ("king", "queen"), ("man", "woman"), ("boy", "girl"), ("father", "mother"), ("son", "daughter"),
        ("brother", "sister"), ("husband", "wife"), ("uncle", "aunt"), ("prince", "princess"),
        ("actor", "actress"), ("nephew", "niece"), ("he", "she"), ("him", "her"), ("lord", "lady"),
        ("male", "female"), ("gentleman", "lady"), ("grandfather", "grandmother"), ("monk", "nun"),
    ),
    "singular→plural": (
        ("cat", "cats"), ("dog", "dogs"), ("car", "cars"), ("house", "houses"), ("book", "books"),
        ("tree", "trees"), ("bird", "birds"), ("day", "days"), ("game", "games"), ("friend", "friends"),
        ("road", "roads"), ("river", "rivers"), ("town", "towns"), ("child", "children"), ("hand", "hands"),
        ("door", "doors"), ("idea", "ideas"), ("table", "tables"), ("song", "songs"), ("ship", "ships"),
    ),
    "lower→upper": (
        ("the", "The"), ("this", "This"), ("what", "What"), ("when", "When"), ("there", "There"),
        ("after", "After"), ("many", "Many"), ("some", "Some"), ("first", "First"), ("new", "New"),
        ("one", "One"), ("just", "Just"), ("if", "If"), ("we", "We"), ("they", "They"), ("all", "All"),
    ),
    "English→French": (
        ("dog", "chien"), ("cat", "chat"), ("house", "maison"), ("water", "eau"), ("book", "livre"),
        ("king", "roi"), ("woman", "femme"), ("man", "homme"), ("day", "jour"), ("night", "nuit"),
        ("city", "ville"), ("world", "monde"), ("life", "vie"), ("time", "temps"), ("sea", "mer"),
        ("black", "noir"), ("white", "blanc"), ("good", "bon"), ("bread", "pain"), ("friend", "ami"),
    ),
    "country→capital": (
        ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"),
        ("Russia", "Moscow"), ("China", "Beijing"), ("Egypt", "Cairo"), ("Greece", "Athens"),
        ("Canada", "Ottawa"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Cuba", "Havana"),
        ("Ireland", "Dublin"), ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Portugal", "Lisbon"),
        ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Thailand", "Bangkok"),
    ),
    "adjective→comparative": (
        ("big", "bigger"), ("small", "smaller"), ("fast", "faster"), ("old", "older"), ("young", "younger"),
        ("tall", "taller"), ("high", "higher"), ("low", "lower"), ("long", "longer"), ("strong", "stronger"),
        ("great", "greater"), ("hard", "harder"), ("cheap", "cheaper"), ("warm", "warmer"), ("deep", "deeper"),
    ),
}


@dataclass(frozen=True)
class CausalWhitening:
    """``g = (gamma - mean) @ inv_sqrt`` with ``inv_sqrt = Cov(gamma)^(-1/2)`` (symmetric), float64."""

    mean: torch.Tensor  # [d]
    inv_sqrt: torch.Tensor  # [d, d]
    eigenvalues: torch.Tensor  # [d] of Cov(gamma), ascending
    covariance: torch.Tensor  # [d, d] Cov(gamma)

    def __call__(self, gamma: torch.Tensor) -> torch.Tensor:
        return (gamma.double() - self.mean) @ self.inv_sqrt

    def inner(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The causal inner product of unembedding-space differences ``a`` and ``b`` (``[.., d]``)."""
        return ((a.double() @ self.inv_sqrt) * (b.double() @ self.inv_sqrt)).sum(-1)


def causal_whitening(unembedding: torch.Tensor, *, rel_floor: float = 1e-10) -> CausalWhitening:
    """Whitening of the unembedding rows ``[vocab, d]`` by their covariance.

    Eigenvalues below ``rel_floor`` times the largest are raised to it, so unused directions of a
    rank-deficient head do not blow up.
    """
    if unembedding.dim() != 2 or unembedding.shape[0] <= unembedding.shape[1]:
        raise ShapeError(f"expected an unembedding [vocab > d, d], got {tuple(unembedding.shape)}")
    gamma = unembedding.detach().double()
    if not torch.isfinite(gamma).all():
        raise EmptyDataError("the unembedding contains NaN or infinite values")
    mean = gamma.mean(0)
    centred = gamma - mean
    cov = centred.T @ centred / (gamma.shape[0] - 1)
    values, vectors = torch.linalg.eigh(cov)
    values = values.clamp_min(rel_floor * values[-1])
    inv_sqrt = (vectors * values.rsqrt()) @ vectors.T
    return CausalWhitening(mean, inv_sqrt, values, cov)


def slug(concept: str) -> str:
    """``"male→female"`` -> ``"male_to_female"``, for metric names."""
    return concept.replace("→", "_to_").replace(" ", "_").lower()


def single_token_pairs(tokenizer, pairs: Sequence[tuple[str, str]]) -> list[tuple[int, int]]:
    """Token ids of the pairs whose words, each with a leading space, are one known token and differ."""
    unknown = getattr(tokenizer, "unk_token_id", None)
    kept = []
    for a, b in pairs:
        ids_a = tokenizer(" " + a, add_special_tokens=False)["input_ids"]
        ids_b = tokenizer(" " + b, add_special_tokens=False)["input_ids"]
        if len(ids_a) == 1 and len(ids_b) == 1 and ids_a[0] != ids_b[0] and unknown not in (ids_a[0], ids_b[0]):
            kept.append((int(ids_a[0]), int(ids_b[0])))
    return kept


def concept_directions(vectors: torch.Tensor, pairs: Mapping[str, Sequence[tuple[int, int]]]
                       ) -> tuple[list[str], torch.Tensor]:
    """Unit mean difference ``vectors[b] - vectors[a]`` per concept; concepts without pairs are dropped."""
    names, directions = [], []
    for name, ids in pairs.items():
        if not ids:
            continue
        index = torch.tensor(ids, dtype=torch.long)
        mean = (vectors[index[:, 1]] - vectors[index[:, 0]]).double().mean(0)
        norm = mean.norm()
        if norm > 0:
            names.append(name)
            directions.append(mean / norm)
    if not directions:
        raise EmptyDataError("no concept has a single-token counterfactual pair under this tokenizer")
    return names, torch.stack(directions)


def off_diagonal_abs_cosine(directions: torch.Tensor) -> torch.Tensor:
    """``|cos|`` between every pair of distinct unit directions ``[C, d]``, as a flat tensor."""
    if directions.shape[0] < 2:
        raise EmptyDataError("need at least two concept directions to compare")
    unit = directions / directions.norm(dim=-1, keepdim=True)
    cos = unit @ unit.T
    rows, cols = torch.triu_indices(len(unit), len(unit), offset=1)
    return cos[rows, cols].abs()
