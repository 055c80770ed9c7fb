"""Independent products of secrets in ONE round: one Beaver opening for all of them.

CrypTen runs every product as it is called, so two products that do not depend on each
other still cost two rounds when they are two calls. ``multiply_together`` broadcasts each
pair, concatenates the flattened operands and multiplies them in one Beaver round; each
product then gets CrypTen's own scaling (a truncation by the fixed-point scale where
both factors carry it, none where one is a scale-1 bit or count: the ``truncating``
products share one division). The opened words are those of the separate products: only
rounds are saved. Used where a function's products are independent (the RMSNorm's, the
SiLU's); ``products_pending`` leaves the opening to ``openings.open_together``, beside a
one-hot's or a comparison's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import crypten
import torch
from crypten.encoder import FixedPointEncoder
from crypten.mpc import MPCTensor
from crypten.mpc.primitives import ArithmeticSharedTensor

from crypten_mpcache.secure.primitives.openings import Pending, open_alone
from crypten_mpcache.secure.primitives.party import party_rank


def _raw(values: list[torch.Tensor]) -> ArithmeticSharedTensor:
    """Shares as a scale-1 tensor (no truncation after its product)."""
    return ArithmeticSharedTensor.from_shares(torch.cat(values), precision=0)


def multiply_together(pairs: Sequence[tuple[Any, Any]]) -> list[Any]:
    """[a * b for (a, b) in pairs] (MPCTensors, broadcast per pair) in one product round."""
    pending = products_pending(pairs)
    return open_alone(pending)


def products_pending(pairs: Sequence[tuple[Any, Any]]) -> Pending[list[Any]]:
    """``multiply_together`` with its Beaver opening (x - a, y - b) left to
    ``openings.open_together``: products that can share a round with a one-hot's or a
    comparison's first opening."""
    if not pairs or not all(isinstance(v, MPCTensor) for pair in pairs for v in pair):
        raise TypeError("multiply_together takes a non-empty list of pairs of MPCTensors")
    shapes = [torch.broadcast_shapes(a.shape, b.shape) for a, b in pairs]
    sizes = [shape.numel() for shape in shapes]
    x = _raw([a.share.expand(s).reshape(-1) for (a, _), s in zip(pairs, shapes, strict=True)])
    y = _raw([b.share.expand(s).reshape(-1) for (_, b), s in zip(pairs, shapes, strict=True)])
    a, b, c = crypten.mpc.get_default_provider().generate_additive_triple(
        x.size(), y.size(), "mul", device=x.device)
    n = x.numel()

    def finish(opened: torch.Tensor) -> list[Any]:
        epsilon, delta = opened[:n], opened[n:]
        z = c.share + epsilon * b.share + a.share * delta
        if party_rank() == 0:
            z = z + epsilon * delta
        return _scaled(pairs, list(z.split(sizes)), shapes)

    return Pending(torch.cat([x.share - a.share, y.share - b.share]), finish)


def _scaled(pairs: Sequence[tuple[Any, Any]], raw: list[torch.Tensor],
            shapes: list[torch.Size]) -> list[Any]:
    """CrypTen's scaling per product: one truncation (shared by all) where both factors
    carry the fixed-point scale, the scaled factor's encoder otherwise."""
    truncating = [a.encoder.scale > 1 and b.encoder.scale > 1 for a, b in pairs]
    if any(truncating):
        chosen = [r for r, t in zip(raw, truncating, strict=True) if t]
        divided = _raw(chosen).div_(int(FixedPointEncoder().scale)).share.split(
            [r.numel() for r in chosen])
        parts = iter(divided)
        raw = [next(parts) if t else r for r, t in zip(raw, truncating, strict=True)]
    out = []
    for (a, b), share, shape in zip(pairs, raw, shapes, strict=True):
        like = a if a.encoder.scale > 1 or b.encoder.scale == 1 else b
        result = like.clone()
        result._tensor = ArithmeticSharedTensor.from_shares(share.reshape(shape), precision=0)
        result._tensor.encoder = like.encoder
        out.append(result)
    return out


__all__ = ["multiply_together", "products_pending"]
