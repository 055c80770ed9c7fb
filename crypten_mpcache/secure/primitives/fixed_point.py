"""Fixed-point helpers on CrypTen secrets: exact, local rescalings of the shares.

CrypTen encodes reals with 16 fractional bits; a comparison bit or a count is cheaper
and exact at scale 1. These helpers move between the two and multiply by public integers
without the truncation a fixed-point product would need.
"""

from __future__ import annotations

from typing import Any

import torch
from crypten.encoder import FixedPointEncoder


def fixed_scale() -> int:
    """The fixed-point scale of CrypTen's default encoder (2**16)."""
    return int(FixedPointEncoder().scale)


def to_fixed(bits: Any) -> Any:
    """Re-encode a scale-1 secret (comparison bits, counts) at the fixed-point scale.

    Local and exact: every party multiplies its share by the scale.
    """
    if bits.encoder.scale != 1:
        return bits
    out = bits.clone()
    out.share = out.share * fixed_scale()
    out.encoder = FixedPointEncoder()
    return out


def mul_public_int(x: Any, ints: torch.Tensor) -> Any:
    """x * ints for a PUBLIC integer tensor, exact (no truncation): zeros stay zeros."""
    out = x.clone()
    share, ints = torch.broadcast_tensors(out.share, ints.to(torch.long))
    out.share = share * ints
    return out
