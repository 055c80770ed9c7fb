"""The masked comparison's tree: fan-in-4 merges, each in ONE round from dealt mask products.

The comparison of the public c with the XOR-shared bits of r merges (lt, eq) pairs from
the lowest bit position up: for children 0..f-1 (0 lowest) of a node,

    lt = lt_{f-1} xor  XOR_{j < f-1} lt_j AND eq_{j+1} AND ... AND eq_{f-1}
    eq = eq_0 AND ... AND eq_{f-1}

(the AND terms are disjoint events, so XOR is OR). A binary merge is two ANDs, one Beaver
round; this merge is ANY fan-in in one round: the dealer deals a random bit rho_v per
variable v and XOR shares of the products rho_S = AND_{v in S} rho_v for every subset S
(|S| >= 2) of every term's variables. The parties open u_v = v xor rho_v (uniform: reveals
nothing) and then every term is local:

    AND_{v in T} (u_v xor rho_v) = XOR_{S subset of T} (AND_{v in T minus S} u_v) rho_S,

public ANDs times shares, the empty S (rho = 1) added by party 0 alone. The root needs
only lt (eq_0 and the eq term drop out). Dealt product bits per node: fan-in 4, 22 (15 at
the root); fan-in 8, 494 (367 at the root), where binary merges take 2 per merge.

The shapes (``fan_ins``): 64 leaves (unbounded x) merge 4, 4, 4: the comparison costs 5
rounds (open c, 3 levels, the daBit) instead of 8, ~58 dealt bytes per element. 32
leaves (x within 2^32 raw units, every bounded caller) merge 4 then 8 at the root: 4
rounds, ~68 dealt bytes. Fewer leaves: one level of 2 or 4 below a root of 8. Plain torch
on bit-sliced words, no shares.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import combinations

import torch

ROOT_FAN_IN = 8          # at most 32 leaves: one level below a root of 8
FAN_IN = 4               # 64 leaves: three levels of 4


def fan_ins(leaves: int) -> tuple[int, ...]:
    """Fan-in per level, bottom first, for a power-of-two number of leaves."""
    if leaves < 1 or leaves & (leaves - 1):
        raise ValueError(f"leaves must be a power of two, got {leaves}")
    if leaves > 4 * ROOT_FAN_IN:
        depth = leaves.bit_length() - 1
        return (2,) * (depth % 2) + (FAN_IN,) * (depth // 2)
    if leaves <= ROOT_FAN_IN:
        return (leaves,) if leaves > 1 else ()
    return (leaves // ROOT_FAN_IN, ROOT_FAN_IN)


def nodes_per_level(leaves: int) -> tuple[int, ...]:
    """Nodes (merges) of each level, bottom first."""
    out, width = [], leaves
    for f in fan_ins(leaves):
        width //= f
        out.append(width)
    return tuple(out)


@lru_cache(maxsize=16)
def variables(f: int, root: bool = False) -> tuple[tuple[str, int], ...]:
    """The opened variables of a fan-in-f node: every child's lt and eq but the top lt
    (which enters linearly) and, at the root, eq_0 (only eq needs it)."""
    return tuple([("lt", j) for j in range(f - 1)]
                 + [("eq", j) for j in range(1 if root else 0, f)])


@lru_cache(maxsize=16)
def terms(f: int, root: bool = False) -> tuple[tuple[int, ...], ...]:
    """Variable indices of each AND term: lt_j AND eq_{j+1..f-1} for j < f-1 (lt's), then
    eq_0..eq_{f-1} (eq, last; not at the root)."""
    index = {v: i for i, v in enumerate(variables(f, root))}
    lts = [tuple(sorted([index["lt", j]] + [index["eq", i] for i in range(j + 1, f)]))
           for j in range(f - 1)]
    return tuple(lts) if root else (*lts, tuple(index["eq", i] for i in range(f)))


@lru_cache(maxsize=16)
def monomials(f: int, root: bool = False) -> tuple[tuple[int, ...], ...]:
    """Every subset (|S| >= 2) of every term's variables, once: the dealt products."""
    found: dict[tuple[int, ...], None] = {}
    for term in terms(f, root):
        for size in range(2, len(term) + 1):
            for subset in combinations(term, size):
                found.setdefault(subset, None)
    return tuple(found)


def products(f: int, root: bool, rho: torch.Tensor) -> torch.Tensor:
    """The dealer's plaintext rho_S (monomials, nodes, W) for rho (variables, nodes, W)."""
    out = []
    for subset in monomials(f, root):
        value = rho[subset[0]]
        for v in subset[1:]:
            value = value & rho[v]
        out.append(value)
    return torch.stack(out)


def _public_products(term: tuple[int, ...], opened: torch.Tensor) -> dict:
    """AND_{v in T minus S} u_v for every subset S of the term (a dict by S), built up one
    variable at a time: 2^|T| ANDs."""
    table = {(): torch.full_like(opened[0], -1)}          # S = T: the empty product
    for v in reversed(term):
        grown = {}
        for subset, value in table.items():
            grown[(v, *subset)] = value                   # v in S: not in the product
            grown[subset] = value & opened[v]
        table = grown
    return table


def _term(term: tuple[int, ...], opened: torch.Tensor, rho: torch.Tensor,
          rho_products: torch.Tensor, slot: dict, first: bool) -> torch.Tensor:
    """This party's XOR share of AND_{v in T} v from the opened u_v and its mask shares."""
    total = torch.zeros_like(opened[0])
    for subset, public in _public_products(term, opened).items():
        if not subset:
            if first:
                total = total ^ public
        elif len(subset) == 1:
            total = total ^ (public & rho[subset[0]])
        else:
            total = total ^ (public & rho_products[slot[subset]])
    return total


def evaluate(f: int, root: bool, lt: torch.Tensor, opened: torch.Tensor, rho: torch.Tensor,
             rho_products: torch.Tensor, first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """This party's XOR shares of the nodes' (lt, eq), each (nodes, W), from the opened
    u (variables, nodes, W), its shares of rho and of the monomials, and its shares of the
    top children's lt (nodes, W). At the root eq is not computed (returned as lt)."""
    slot = {s: i for i, s in enumerate(monomials(f, root))}
    outs = [_term(t, opened, rho, rho_products, slot, first) for t in terms(f, root)]
    lt_out = lt
    for term_value in outs[: f - 1]:
        lt_out = lt_out ^ term_value
    return lt_out, (lt_out if root else outs[-1])


def node_variables(f: int, root: bool, lt: torch.Tensor, eq: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(variables, nodes, W) shares of a level's opened variables and (nodes, W) shares of
    the top children's lt, from the level's (positions, W) lt and eq (lowest first)."""
    nodes = lt.shape[0] // f
    lt_c = lt.reshape(nodes, f, -1)
    eq_c = eq.reshape(nodes, f, -1)
    rows = [lt_c[:, j] if kind == "lt" else eq_c[:, j] for kind, j in variables(f, root)]
    return torch.stack(rows), lt_c[:, f - 1]


__all__ = ["FAN_IN", "ROOT_FAN_IN", "evaluate", "fan_ins", "monomials", "node_variables",
           "nodes_per_level", "products", "terms", "variables"]
