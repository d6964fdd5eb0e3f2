"""Cost matrices of weight matching, recomputed only where a permutation they depend on has moved.

The cost of permutation ``P`` is a sum of one term per tensor axis ``P`` moves: the inner products
of A's units with B's units, with B permuted by every *other* permutation on that tensor. A term
therefore depends only on those other permutations. On a transformer the residual-stream
permutation touches every tensor, but the terms of one block depend only on that block's
permutations, and most of them stand still late in coordinate descent.

Two exact savings follow:

* a permutation none of whose neighbours changed since it was last solved would get the same cost
  matrix, hence the same assignment: its step is skipped;
* terms are grouped by the permutations they depend on (connected groups: a block's attention, a
  block's MLP, the tensors that depend on nothing else such as embeddings and norms); where a
  permutation has several groups, each group's partial sum is kept and recomputed only when one of
  its permutations changed.

A permutation with one group sums its terms in the spec's order, exactly as a direct recomputation
does, so its cost matrix is bit-for-bit the same. With several groups the partial sums are added
group by group, which differs from term-by-term summation only by float64 rounding.
"""

from __future__ import annotations

import torch

from .spec import AxisPerm, PermutationSpec, permute_tensor


class MatchingCosts:
    """Weight-matching cost matrices for ``spec`` between state dicts ``a`` and ``b`` (float64)."""

    def __init__(self, spec: PermutationSpec, a: dict, b: dict, perms: dict[str, torch.Tensor]) -> None:
        self.spec, self.a, self.b, self.perms = spec, a, b, perms
        self.version = {name: 0 for name in spec.sizes}
        self.groups = {name: _groups(spec, name) for name in spec.sizes}
        self.neighbours = {name: sorted({p for deps, _ in groups for p in deps})
                           for name, groups in self.groups.items()}
        self._partials: dict[tuple[str, int], tuple[tuple[int, ...], torch.Tensor]] = {}
        self._solved_at: dict[str, tuple[int, ...]] = {}
        self.terms_computed = 0

    def _versions(self, names) -> tuple[int, ...]:
        return tuple(self.version[n] for n in names)

    def unchanged_since_solved(self, name: str) -> bool:
        """True when ``name`` was solved before and nothing its cost depends on has moved since."""
        return self._solved_at.get(name) == self._versions(self.neighbours[name])

    def cost(self, name: str) -> torch.Tensor:
        """``cost[i, j]``: inner product of A's unit ``i`` with B's unit ``j`` over every tensor ``name`` touches."""
        n = self.spec.sizes[name]
        groups = self.groups[name]
        if len(groups) == 1:
            return self._sum_terms(n, groups[0][1])
        cost = torch.zeros(n, n, dtype=torch.float64)
        for index, (deps, terms) in enumerate(groups):
            stamp = self._versions(deps)
            kept = self._partials.get((name, index))
            if kept is None or kept[0] != stamp:
                kept = (stamp, self._sum_terms(n, terms))
                self._partials[(name, index)] = kept
            cost += kept[1]
        return cost

    def solved(self, name: str, new: torch.Tensor) -> None:
        """Record the assignment found for ``name`` (moving its version when it changed)."""
        if not torch.equal(new, self.perms[name]):
            self.version[name] += 1
        self.perms[name] = new
        self._solved_at[name] = self._versions(self.neighbours[name])

    def _sum_terms(self, n: int, terms: list[tuple[str, AxisPerm]]) -> torch.Tensor:
        cost = torch.zeros(n, n, dtype=torch.float64)
        same: dict[tuple, torch.Tensor] = {}  # tied tensors (embedding and head) give the same term
        for key, ap in terms:
            wa, wb = self.a[key], self.b[key]
            tag = (wa.data_ptr(), wb.data_ptr(), tuple(wa.shape), wa.stride(), wb.stride(), self.spec.axes[key], ap)
            term = same.get(tag)
            if term is None:
                # permuting before widening moves half the bytes and gives the same float64 values
                permuted = permute_tensor(wb, self.spec.axes[key], self.perms, skip=ap).double()
                term = ap.units(wa.double()) @ ap.units(permuted).T
                same[tag] = term
                self.terms_computed += 1
            cost += term
        return cost


def _groups(spec: PermutationSpec, name: str) -> list[tuple[tuple[str, ...], list[tuple[str, AxisPerm]]]]:
    """The terms of ``name``'s cost, grouped into sets that share permutations, in the spec's order."""
    terms = spec.touching(name)
    deps = [tuple(sorted({o.perm for o in spec.axes[key] if o is not ap})) for key, ap in terms]
    parent = list(range(len(terms)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_with: dict[str, int] = {}
    for i, ds in enumerate(deps):
        for p in ds or ("",):  # terms that depend on nothing else form one group of their own
            if p in first_with:
                parent[root(i)] = root(first_with[p])
            else:
                first_with[p] = i
    order: dict[int, int] = {}
    grouped: list[tuple[set, list]] = []
    for i, term in enumerate(terms):
        r = root(i)
        if r not in order:
            order[r] = len(grouped)
            grouped.append((set(), []))
        grouped[order[r]][0].update(deps[i])
        grouped[order[r]][1].append(term)
    return [(tuple(sorted(ds)), ts) for ds, ts in grouped]
