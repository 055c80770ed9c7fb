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
one round; the dealer's material (``onehot_dealer``) is W words per element to party 0,
or, from W = 32, DPF keys of log2(W) x ~16 bytes per element to each of parties 0 and
1, who expand them over the whole domain. The material depends only on (n, W): the
transcript is the same for every value.
"""

from __future__ import annotations

from typing import Any

import torch
from crypten.mpc import MPCTensor

from crypten_mpcache.secure.primitives.onehot_dealer import Layout, deal
from crypten_mpcache.secure.primitives.openings import Pending, open_alone


def width_for(count: int) -> int:
    """The smallest power of two >= count (the W that holds values 0..count-1)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    return 1 << (count - 1).bit_length()


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
