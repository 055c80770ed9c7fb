"""Independent products of secrets in ONE round: one Beaver opening for all of them.

CrypTen runs every product as it is called, so two products that do not depend on each
other still cost two rounds when they are two calls. ``multiply_together`` broadcasts each
pair's Beaver opening (each factor at its own shape) into one opened tensor: one round;
each product then gets CrypTen's own scaling (a truncation by the fixed-point scale
where both factors carry it, none where one is a scale-1 bit or count: the
``truncating`` products share one division). The opened words are those of the
separate products, less each factor's repeats (``products_pending``). Used where a
function's products are independent (the RMSNorm's, the SiLU's); ``products_pending``
leaves the opening to ``openings.open_together``, beside a one-hot's or a comparison's.
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
    """``multiply_together`` with its Beaver openings left to ``openings.open_together``:
    products that can share a round with a one-hot's or a comparison's first opening.

    Each factor is opened once and at its own shape: x * s for a per-row s opens x - a
    and s - b (c = a * b broadcast by the dealer: the RMSNorm's x * scale costs 1 word
    per element, not 2); a factor shared by several pairs (the same object: ``up`` in
    the SiLU's mid * up and high_x * up) is opened once against the stacked other
    factors (correlated triples a_i * b from one dealer request); a pair whose factors
    are the same object is a square (the dealer's (r, r^2))."""
    if not pairs or not all(isinstance(v, MPCTensor) for pair in pairs for v in pair):
        raise TypeError("multiply_together takes a non-empty list of pairs of MPCTensors")
    shapes = [torch.broadcast_shapes(a.shape, b.shape) for a, b in pairs]
    groups = _groups(pairs)
    parts = [_square(pairs[members[0]][0]) if shared is None
             else _shared_product(shared, [_other(pairs[i], shared) for i in members])
             for shared, members in groups]

    def finish(opened: torch.Tensor) -> list[Any]:
        raw: list[torch.Tensor | None] = [None] * len(pairs)
        offset = 0
        for part, (_, members) in zip(parts, groups, strict=True):
            n = part.masked.numel()
            for i, z in zip(members, part.finish(opened[offset: offset + n]), strict=True):
                raw[i] = z.expand(shapes[i]).reshape(-1)
            offset += n
        return _scaled(pairs, raw, shapes)

    return Pending(torch.cat([part.masked for part in parts]), finish)


def _other(pair: tuple[Any, Any], shared: Any) -> Any:
    return pair[1] if pair[0] is shared else pair[0]


def _groups(pairs: Sequence[tuple[Any, Any]]) -> list[tuple[Any, list[int]]]:
    """(shared factor, pair indices) per Beaver opening: squares alone (shared None);
    other pairs grouped by the factor they share (the more used one of each pair) when
    their other factors have one shape."""
    uses: dict[int, int] = {}
    for a, b in pairs:
        for v in {id(a): a, id(b): b}.values():
            uses[id(v)] = uses.get(id(v), 0) + 1
    groups: dict[tuple, tuple[Any, list[int]]] = {}
    for i, (a, b) in enumerate(pairs):
        if a is b:
            groups[("square", i)] = (None, [i])
            continue
        shared = a if uses[id(a)] > uses[id(b)] else b
        key = (id(shared), tuple(_other((a, b), shared).shape))
        groups.setdefault(key, (shared, []))[1].append(i)
    return list(groups.values())


def _square(x: Any) -> Pending[list[torch.Tensor]]:
    """x^2 from the dealer's (r, r^2): opens x - r only."""
    r, r2 = crypten.mpc.get_default_provider().square(x.size(), device=x.share.device)

    def finish(epsilon: torch.Tensor) -> list[torch.Tensor]:
        epsilon = epsilon.reshape(x.shape)
        z = r2.share + 2 * epsilon * r.share
        return [z + epsilon * epsilon if party_rank() == 0 else z]

    return Pending((x.share - r.share).reshape(-1), finish)


def _shared_product(y: Any, others: list[Any]) -> Pending[list[torch.Tensor]]:
    """x_i * y for every x_i of one shape: the x_i stacked (k, ...) against y (1, ...),
    one triple; opens k |x| + |y| words."""
    rank = max(len(torch.broadcast_shapes(o.shape, y.shape)) for o in others)
    x_shape = (len(others), *_padded(others[0].shape, rank))
    y_shape = (1, *_padded(y.shape, rank))
    a, b, c = crypten.mpc.get_default_provider().generate_additive_triple(
        torch.Size(x_shape), torch.Size(y_shape), "mul", device=y.share.device)
    x = torch.stack([o.share.reshape(x_shape[1:]) for o in others])
    n = x.numel()

    def finish(opened: torch.Tensor) -> list[torch.Tensor]:
        epsilon, delta = opened[:n].reshape(x_shape), opened[n:].reshape(y_shape)
        z = c.share + epsilon * b.share + a.share * delta
        if party_rank() == 0:
            z = z + epsilon * delta
        return list(z.unbind(0))

    return Pending(torch.cat([(x - a.share).reshape(-1),
                              (y.share.reshape(y_shape) - b.share).reshape(-1)]), finish)


def _padded(shape: torch.Size, rank: int) -> tuple[int, ...]:
    return (1,) * (rank - len(shape)) + tuple(shape)


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
