"""The one-hot of a small secret integer in one opening: the dealer deals a shifted unit.

A rank, a count or a bucket index is a secret integer v in [0, W) for a small public W.
Its one-hot [v == j], j = 0..W-1, costs W comparisons of v with public thresholds (a
comparison round and ~64 bytes per comparison per party, with the masked comparison).
With a *dealt unit vector* it costs one opened ring element and no comparison:

1. The dealer draws a uniform ring element R and deals it additively shared, together
   with the additive shares of the unit vector u = e_(R mod W) of length W (W a power
   of two, so R mod W is uniform on [0, W)).
2. The parties open c = v + R (mod 2^64). R is uniform on the ring, so c reveals nothing.
3. Since v = c - R and W divides 2^64: [v == j] = [(c - j) mod W == R mod W]
   = u[(c - j) mod W], a local gather of the shares of u at public positions.

Requirements: v is a scale-1 integer (raw shares, e.g. a sum of comparison bits) known to
lie in [0, W). The result is exact. Per element: one opened word (8 bytes per party),
one round; the dealer's material is W words per element (with the TTP: party 0
receives its share of u, every other share comes from the generators it shares with
the TTP, as in ``crypten_mpcache.secure.primitives.comparison``). The material depends only on
(n, W): the transcript is the same for every value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from crypten.mpc import MPCTensor
from crypten.mpc.primitives import ArithmeticSharedTensor

from crypten_mpcache.secure.primitives.openings import Pending, open_alone
from crypten_mpcache.secure.primitives.party import (
    by_dealer,
    deal_via_ttp,
    party_rank,
    uniform_words,
)


def width_for(count: int) -> int:
    """The smallest power of two >= count (the W that holds values 0..count-1)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    return 1 << (count - 1).bit_length()


@dataclass(frozen=True)
class Layout:
    """n elements of width W: free = the n shares of R; dependent = the n x W shares of u."""

    n: int
    width: int

    def __post_init__(self) -> None:
        if self.width < 1 or self.width & (self.width - 1):
            raise ValueError(f"width must be a power of two, got {self.width}")


def draw_free(layout: Layout, generator: torch.Generator | None) -> torch.Tensor:
    return uniform_words((layout.n,), generator)


def draw_dependent(layout: Layout, generator: torch.Generator | None) -> torch.Tensor:
    return uniform_words((layout.n, layout.width), generator)


def unit_vectors(r: torch.Tensor, width: int) -> torch.Tensor:
    """(n, W) plaintext rows e_(r mod W) (the dealer's job)."""
    out = torch.zeros(r.numel(), width, dtype=torch.long)
    out[torch.arange(r.numel()), r & (width - 1)] = 1
    return out


def ttp_party0_share(generators: list[torch.Generator], n: int, width: int) -> torch.Tensor:
    """The TTP's side: replay every party's draws, deal party 0's share of u."""
    layout = Layout(n, width)
    r = torch.zeros(n, dtype=torch.long)
    others = torch.zeros(n, width, dtype=torch.long)
    for rank, generator in enumerate(generators):
        r += draw_free(layout, generator)
        if rank > 0:
            others += draw_dependent(layout, generator)
    return unit_vectors(r, width) - others


def deal(layout: Layout, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """This party's (share of R (n,), share of u (n, W)) from the configured dealer."""
    r, u = by_dealer(
        "the dealt one-hot",
        ttp=lambda: deal_via_ttp("onehot_material", (layout.n, layout.width),
                                 lambda g: draw_free(layout, g),
                                 lambda g: draw_dependent(layout, g)),
        tfp=lambda: _deal_tfp(layout))
    return r.to(device), u.view(layout.n, layout.width).to(device)


def _deal_tfp(layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """Party 0 draws R and shares R and u by CrypTen's zero sharing (no traffic); party 0
    then knows the masks: tests and cost measurement only."""
    r = u = None
    if party_rank() == 0:
        r = draw_free(layout, None)
        u = unit_vectors(r, layout.width)
    r_share = ArithmeticSharedTensor(r, size=(layout.n,), precision=0, src=0).share
    u_share = ArithmeticSharedTensor(u, size=(layout.n, layout.width), precision=0,
                                     src=0).share
    return r_share, u_share


def onehot_shares(share: torch.Tensor, width: int, count: int | None = None) -> torch.Tensor:
    """This party's shares (..., count) of [v == j], j < count (default W), for its share
    (...) of a secret integer v in [0, width)."""
    return open_alone(_onehot_pending(share, width, count))             # the one round


def _onehot_pending(share: torch.Tensor, width: int, count: int | None
                    ) -> Pending[torch.Tensor]:
    """v + R to open, and the rotation of the dealt unit vector that follows."""
    count = width if count is None else count
    if not 1 <= count <= width:
        raise ValueError(f"count must be in [1, {width}], got {count}")
    flat = share.reshape(-1)
    r, u = deal(Layout(flat.numel(), width), flat.device)

    def finish(c: torch.Tensor) -> torch.Tensor:
        j = torch.arange(count, device=c.device)
        positions = (c.unsqueeze(-1) - j) & (width - 1)                # (c - j) mod W
        return u.gather(-1, positions).reshape(*share.shape, count)

    return Pending(flat + r, finish)


def onehot(v: Any, width: int, count: int | None = None) -> Any:
    """(..., count) scale-1 MPCTensor [v == j] for a scale-1 MPCTensor v in [0, width)."""
    pending = onehot_pending(v, width, count)
    return open_alone(pending)


def onehot_pending(v: Any, width: int, count: int | None = None) -> Pending[Any]:
    """``onehot`` with its opening left to ``openings.open_together``."""
    if v.encoder.scale != 1:
        raise ValueError("onehot needs a scale-1 integer (e.g. a sum of comparison bits)")
    pending = _onehot_pending(v._tensor.share, width, count)

    def finish(c: torch.Tensor) -> Any:
        result = MPCTensor.from_shares(pending.finish(c), precision=0)
        result.encoder._scale = 1
        return result

    return Pending(pending.masked, finish)
