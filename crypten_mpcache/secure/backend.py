"""The CrypTen backend: the MPCache ``Backend`` protocol on MPCTensors (secret shares).

Why: the algorithm (``crypten_mpcache.algorithm``) is written once against ``Backend``;
this backend runs it under MPC, so the secure selections are by construction the same
computation as the plaintext ones. Every output shape depends on input shapes and public
integers only, so the transcript depends on public values only.

Values are MPCTensors; plain ``torch.Tensor`` operands are public (identity matrices,
zero padding). A fixed operand (``secure.primitives.premask``: a premasked KV cache or cluster
layout) is accepted as the gathered side of ``gather``: ``x.rmatmul(onehot)`` opens only
the one-hot, never the operand again.

Costs: ``topk_onehot`` -> "topk" (inside ``secure.functions.topk``), ``gather`` -> "gather",
``softmax`` -> "softmax"; comparisons of cluster boxes and the cluster scores are charged
by the caller (the policy wraps selection in "similarity" and the static stage in
"static_eviction"). The top-k protocol is the cheapest one for the configured network and
the number of score vectors per call (the cost model of ``secure.functions.topk_cost``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import crypten
import torch

from crypten_mpcache.patches import crypten_comparison
from crypten_mpcache.runtime.cost import operator_scope
from crypten_mpcache.runtime.network import PROFILES, NetworkProfile
from crypten_mpcache.secure.functions import topk, topk_cost
from crypten_mpcache.secure.functions.softmax import masked_softmax
from crypten_mpcache.secure.functions.tournament import tournament_max
from crypten_mpcache.secure.primitives.reveal import debug_reveal_selection
from crypten_mpcache.secure.primitives.select import difference_bound, pair_max, relu

Value = Any  # MPCTensor, public torch.Tensor, or a fixed operand (gather only)


def _dim_last(x: Value, dim: int) -> Value:
    """``x`` with ``dim`` moved last, the other dims in their order (for tournaments)."""
    dim = dim % x.dim()
    return x.permute(*[d for d in range(x.dim()) if d != dim], dim)


@dataclass(frozen=True)
class CryptenBackendConfig:
    """How the backend picks its top-k protocol: the network the parties run on and the
    candidate protocols (``secure.functions.topk.PROTOCOLS`` by default)."""

    network: str = "LAN"
    protocols: tuple[str, ...] = topk.PROTOCOLS
    # |key coordinate|, |cluster bound| and |cluster score| < 2**value_bound_log2: the
    # boxes', maxima's and rank top-k's DCF keys compare that many bits (+ 17), not 63
    value_bound_log2: int = 13

    def __post_init__(self) -> None:
        if not 1 <= self.value_bound_log2 <= 45:
            raise ValueError("value_bound_log2 must be in [1, 45]")
        if self.network not in PROFILES:
            raise ValueError(f"unknown network {self.network!r}; known: {tuple(PROFILES)}")
        if not self.protocols or set(self.protocols) - set(topk.PROTOCOLS):
            raise ValueError(f"protocols must be a non-empty subset of {topk.PROTOCOLS}")

    @property
    def profile(self) -> NetworkProfile:
        return PROFILES[self.network]


TOPK_LOG_CALLS = 1024


@dataclass(frozen=True)
class TopKChoice:
    """One top-k call, all public: ``batch`` score vectors of ``g`` candidates, ``k``
    kept, by ``protocol`` (what ``bench`` shows next to the step's cost)."""

    g: int
    k: int
    batch: int
    protocol: str

    def label(self) -> str:
        return f"{self.g}->{self.k}{f' x{self.batch}' if self.batch > 1 else ''} {self.protocol}"


def is_public(x: Value) -> bool:
    return isinstance(x, torch.Tensor)


def is_operand(x: Value) -> bool:
    """A premasked (or plain) fixed operand of ``secure.primitives.premask``."""
    return hasattr(x, "rmatmul") and not is_public(x) and not _is_cryptensor(x)


def _is_cryptensor(x: Value) -> bool:
    return isinstance(x, crypten.CrypTensor)


def secret(x: Value) -> Any:
    """A public tensor as an MPCTensor (pseudo-random zero shares: no traffic)."""
    if not is_public(x):
        return x
    return crypten.cryptensor(x.double(), src=0)


def current_dealer() -> str:
    """``ttp`` or ``tfp``: the configured CrypTen provider, for the top-k cost model."""
    return crypten.mpc.get_default_provider().NAME.lower()


class CryptenBackend:
    """Backend on MPCTensors; semantics exactly as in ``algorithm.backend``."""

    name = "crypten"

    def __init__(self, config: CryptenBackendConfig | None = None) -> None:
        self.config = config or CryptenBackendConfig()
        # public: the latest top-k calls (bench shows a step's); bounded for long runs
        self.topk_log: deque[TopKChoice] = deque(maxlen=TOPK_LOG_CALLS)

    # -- linear -------------------------------------------------------------------------
    def matmul(self, a: Value, b: Value) -> Value:
        if is_public(a) and is_public(b):
            return torch.matmul(a, b)
        if is_public(a):  # (b^T a^T)^T keeps the secret on the left
            return b.transpose(-1, -2).matmul(a.transpose(-1, -2)).transpose(-1, -2)
        return a.matmul(b)

    def mul(self, a: Value, b: Value) -> Value:
        return a * b if not is_public(a) else b * a

    def add(self, a: Value, b: Value) -> Value:
        return a + b if not is_public(a) else b + a

    def sub(self, a: Value, b: Value) -> Value:
        return a - b if not is_public(a) else -(b - a)

    def scale(self, a: Value, c: float) -> Value:
        return a * float(c)

    def sum(self, x: Value, dim: int, keepdim: bool = False) -> Value:
        return x.sum(dim, keepdim=keepdim)

    def mean(self, x: Value, dim: int, keepdim: bool = False) -> Value:
        return x.mean(dim, keepdim=keepdim)

    def cat(self, xs: Sequence[Value], dim: int) -> Value:
        if all(is_public(x) for x in xs):
            return torch.cat(list(xs), dim=dim)
        return crypten.cat([secret(x) for x in xs], dim=dim)

    # -- comparisons --------------------------------------------------------------------
    def maximum(self, a: Value, b: Value) -> Value:
        if is_public(a) and is_public(b):
            return torch.maximum(a, b)
        return pair_max(secret(a), secret(b), difference_bound(self.config.value_bound_log2))[1]

    def minimum(self, a: Value, b: Value) -> Value:
        if is_public(a) and is_public(b):
            return torch.minimum(a, b)
        return self.sub(self.add(a, b), self.maximum(a, b))

    def box(self, x: Value, dim: int) -> tuple[Value, Value]:
        """``(max, min)`` over ``dim`` with ~1.5 n comparisons instead of 2 (n - 1).

        One comparison per pair (x_2i, x_2i+1) sorts it into a larger and a smaller half
        (one exact scale-1 product; the smaller is a + b - larger, free); then the max of
        the larger halves and the max of the NEGATED smaller halves run as ONE batched
        tournament, so the rounds are those of a single max over n / 2.
        """
        if is_public(x):
            return x.amax(dim=dim), x.amin(dim=dim)
        x = _dim_last(secret(x), dim)
        n = int(x.shape[-1])
        if n == 1:
            return x[..., 0], x[..., 0]
        pairs = n // 2
        first, second = x[..., 0: 2 * pairs: 2], x[..., 1: 2 * pairs: 2]
        gap = first - second
        upper = second + relu(gap, difference_bound(self.config.value_bound_log2))
        lower = first + second - upper
        if n % 2:                           # the odd element joins both halves
            upper = crypten.cat([upper, x[..., -1:]], dim=-1)
            lower = crypten.cat([lower, x[..., -1:]], dim=-1)
        return self.max_min(upper, lower, dim=-1)

    def max_min(self, upper: Value, lower: Value, dim: int) -> tuple[Value, Value]:
        """``(max(upper), min(lower))`` over ``dim`` as ONE batched tournament (the rounds
        of a single max): merging child boxes into a coarser one, or ``box``'s last step."""
        if is_public(upper) and is_public(lower):
            return upper.amax(dim=dim), lower.amin(dim=dim)
        upper, lower = _dim_last(secret(upper), dim), _dim_last(secret(lower), dim)
        size = int(upper.shape[0])
        both = tournament_max(crypten.cat([upper, -lower], dim=0),
                              self.config.value_bound_log2)[..., 0]
        return both[:size], -both[size:]

    def max(self, x: Value, dim: int) -> Value:
        """Log-depth tournament over ``dim`` (moved last; other dims keep their order)."""
        if is_public(x):
            return x.amax(dim=dim)
        return tournament_max(_dim_last(x, dim), self.config.value_bound_log2)[..., 0]

    def min(self, x: Value, dim: int) -> Value:
        if is_public(x):
            return x.amin(dim=dim)
        return -self.max(-x, dim)

    def softmax(self, x: Value, dim: int) -> Value:
        with operator_scope("softmax"):
            return masked_softmax(x, torch.ones(x.shape), dim=dim)

    # -- selection ----------------------------------------------------------------------
    def protocol(self, g: int, k: int, batch: int, ordered: bool = True) -> str:
        """The top-k protocol of least predicted latency for ``batch`` vectors of G."""
        model = topk_cost.TopKConfig(protocols=self.config.protocols, dealer=current_dealer(),
                                comparison=crypten_comparison.priced_as())
        return topk_cost.choose_protocol(g, k, self.config.profile, model, batch=batch,
                                    ordered=ordered)

    def topk_onehot(self, scores: Value, k: int, ordered: bool = True) -> Value:
        g = int(scores.shape[-1])
        if not 0 <= k <= g:
            raise ValueError(f"k={k} out of range for {g} items")
        if k == 0:
            return torch.zeros(*scores.shape[:-1], 0, g, dtype=torch.float64)
        batch = max(1, int(torch.Size(scores.shape[:-1]).numel()))
        protocol = self.protocol(g, k, batch, ordered)
        self.topk_log.append(TopKChoice(g, k, batch, protocol))
        return topk.topk_onehot(secret(scores), k, protocol, ordered,
                                self.config.value_bound_log2)

    def gather(self, onehot: Value, x: Value) -> Value:
        """``onehot @ x``; a fixed operand ``x`` is not opened again (only the one-hot)."""
        with operator_scope("gather"):
            if is_operand(x):
                return x.rmatmul(secret(onehot))
            return self.matmul(onehot, x)

    def reveal(self, x: Value) -> torch.Tensor:
        """TEST/DEBUG ONLY, through the named ``debug_reveal_selection``."""
        if is_public(x):
            return x.detach()
        return debug_reveal_selection(x)
