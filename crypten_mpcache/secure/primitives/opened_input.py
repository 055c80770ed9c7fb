"""One opening of x for its truncations, their squares and one later product (the RMSNorm's).

The RMSNorm squares x at three shifts (fine, medium, coarse: ``functions.norm``) and later
multiplies x by a per-row scale S. As separate Beaver products that opens x (or a
truncation of it) four times. Here x is opened once, e = x - a for a dealt uniform a,
and the dealer, who knows a, deals what turns e into everything else:

* truncations: with lsh the logical right shift of the unsigned words,
  t_s = (lsh(e, s) - 2^(64-s)) + lsh(a, s) is floor(x / 2^s) or one below it (the carry of
  the low bits), except with probability ~|x| / 2^63: exactly the error of CrypTen's
  2-party local truncation, now for any number of parties and no round. Dealt: [lsh(a, s)].
* squares: t_s^2 = p_s^2 + 2 p_s [a_s] + [a_s^2] with the public p_s = lsh(e, s) - 2^(64-s)
  (p_0 = e, a_0 = a). Dealt: [a_s^2].
* x * y for one later secret y of a shape fixed in advance (S: one word per row): the
  parties open only y - b; x y = e (y - b) + e [b] + [a] (y - b) + [a b]. Dealt: [b], [a b].

Per element: one opened word (against four) and 2 (shifts) + 3 (squares) + 1 dealt
words. Security: e and y - b are one-time pads of x and y under the uniform a and b; the
material depends only on the shapes and shifts (public), like a Beaver triple.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from crypten.encoder import FixedPointEncoder
from crypten.mpc import MPCTensor
from crypten.mpc.primitives import ArithmeticSharedTensor

from crypten_mpcache.secure.primitives.openings import Pending
from crypten_mpcache.secure.primitives.party import (
    by_dealer,
    deal_via_ttp,
    party_rank,
    uniform_words,
)


@dataclass(frozen=True)
class Layout:
    """x of ``shape``, truncated at ``shifts`` (0 first), times one y of ``partner``
    (None: no product)."""

    shape: tuple[int, ...]
    shifts: tuple[int, ...]
    partner: tuple[int, ...] | None

    def __post_init__(self) -> None:
        if not self.shifts or self.shifts[0] != 0 or \
                not all(1 <= s <= 62 for s in self.shifts[1:]):
            raise ValueError(f"shifts must be 0 then values in [1, 62], got {self.shifts}")
        if self.partner is not None:
            torch.broadcast_shapes(self.shape, self.partner)   # validates

    @property
    def n(self) -> int:
        return int(torch.Size(self.shape).numel())

    @property
    def product_shape(self) -> torch.Size:
        if self.partner is None:
            return torch.Size([0])
        return torch.broadcast_shapes(self.shape, self.partner)

    @property
    def partner_words(self) -> int:
        return 0 if self.partner is None else int(torch.Size(self.partner).numel())

    @property
    def free_words(self) -> int:
        return self.n + self.partner_words

    @property
    def dependent_words(self) -> int:
        return (2 * len(self.shifts) - 1) * self.n + int(self.product_shape.numel())


def logical_shift(words: torch.Tensor, s: int) -> torch.Tensor:
    """floor(u / 2^s) of the unsigned 64-bit words u."""
    return words if s == 0 else (words >> s) & ((1 << (64 - s)) - 1)


def _split_free(layout: Layout, free: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return free[: layout.n].view(layout.shape), free[layout.n:]


def dependent_values(layout: Layout, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The dealt words from the masks: [lsh(a, s)] (s > 0), [a_s^2] (every s), [a b]."""
    shifted = [logical_shift(a, s) for s in layout.shifts]
    products = [] if layout.partner is None else [a * b.view(layout.partner)]
    parts = shifted[1:] + [v * v for v in shifted] + products
    return torch.cat([p.reshape(-1) for p in parts])


def draw_free(layout: Layout, generator: torch.Generator | None) -> torch.Tensor:
    return uniform_words((layout.free_words,), generator)


def draw_dependent(layout: Layout, generator: torch.Generator | None) -> torch.Tensor:
    return uniform_words((layout.dependent_words,), generator)


def ttp_party0_share(generators: list[torch.Generator], shape: tuple[int, ...],
                     shifts: tuple[int, ...], partner: tuple[int, ...] | None
                     ) -> torch.Tensor:
    """The TTP's side: replay every party's draws; party 0's share of the dealt words."""
    layout = Layout(tuple(shape), tuple(shifts), _shape(partner))
    a, b = _split_free(layout, sum(draw_free(layout, g) for g in generators))
    others = sum((draw_dependent(layout, g) for g in generators[1:]),
                 torch.zeros(layout.dependent_words, dtype=torch.long))
    return dependent_values(layout, a, b) - others


def _deal(layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    def ttp() -> tuple[torch.Tensor, torch.Tensor]:
        return deal_via_ttp("opened_input_material",
                            (layout.shape, layout.shifts, layout.partner),
                            lambda g: draw_free(layout, g), lambda g: draw_dependent(layout, g))

    def tfp() -> tuple[torch.Tensor, torch.Tensor]:  # party 0 knows the masks: tests only
        free = dependent = None
        if party_rank() == 0:
            free = draw_free(layout, None)
            dependent = dependent_values(layout, *_split_free(layout, free))
        return (ArithmeticSharedTensor(free, size=(layout.free_words,), precision=0,
                                       src=0).share,
                ArithmeticSharedTensor(dependent, size=(layout.dependent_words,),
                                       precision=0, src=0).share)

    return by_dealer("the opened input", ttp=ttp, tfp=tfp)


@dataclass
class OpenedInput:
    """x after its one opening: e = x - a public, this party's shares of the dealt words."""

    layout: Layout
    e: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    dependent: torch.Tensor

    def _dealt(self, index: int, count: int, shape: Any) -> torch.Tensor:
        return self.dependent[index * self.layout.n:][:count].view(shape)

    def squares(self) -> MPCTensor:
        """(len(shifts), *shape) trunc(x / 2^s)^2 at the fixed-point scale (CrypTen's
        truncation after the product, as after its own squares)."""
        layout, k = self.layout, len(self.layout.shifts)
        out = []
        for i, s in enumerate(layout.shifts):
            p = self.e if s == 0 else logical_shift(self.e, s) - (1 << (64 - s))
            a_s = self.a if s == 0 else self._dealt(i - 1, layout.n, layout.shape)
            z = 2 * p * a_s + self._dealt(k - 1 + i, layout.n, layout.shape)
            out.append(z + p * p if party_rank() == 0 else z)
        raw = ArithmeticSharedTensor.from_shares(torch.stack(out), precision=0)
        raw.div_(int(FixedPointEncoder().scale))
        result = MPCTensor.from_shares(raw.share, precision=0)
        result._tensor.encoder = result.encoder = FixedPointEncoder()
        return result

    def times_pending(self, y: MPCTensor) -> Pending[MPCTensor]:
        """x * y (fixed point, truncated like CrypTen's product) opening only y - b."""
        if self.layout.partner is None or tuple(y.shape) != self.layout.partner:
            raise ValueError(f"the product was dealt for {self.layout.partner}, got "
                             f"{tuple(y.shape)}")
        ab = self.dependent[-int(self.layout.product_shape.numel()):].view(
            self.layout.product_shape)

        def finish(delta: torch.Tensor) -> MPCTensor:
            delta = delta.view(self.layout.partner)
            z = ab + self.e * self.b.view(self.layout.partner) + self.a * delta
            if party_rank() == 0:
                z = z + self.e * delta
            raw = ArithmeticSharedTensor.from_shares(z, precision=0)
            raw.div_(int(FixedPointEncoder().scale))
            result = MPCTensor.from_shares(raw.share, precision=0)
            result._tensor.encoder = result.encoder = FixedPointEncoder()
            return result

        return Pending((y.share - self.b.view(self.layout.partner)).reshape(-1), finish)


def _shape(partner: Any) -> tuple[int, ...] | None:
    return None if partner is None else tuple(int(d) for d in partner)


def open_input_pending(x: MPCTensor, shifts: tuple[int, ...],
                       partner: tuple[int, ...] | None = None) -> Pending[OpenedInput]:
    """x's one opening (e = x - a, |x| words) and the ``OpenedInput`` made of it;
    ``partner``: the shape of the one later y that ``times_pending`` takes."""
    layout = Layout(tuple(x.shape), tuple(shifts), _shape(partner))
    free, dependent = _deal(layout)
    a, b = _split_free(layout, free)
    return Pending((x.share - a).reshape(-1),
                   lambda e: OpenedInput(layout, e.view(layout.shape), a, b, dependent))
