"""The one-round comparison [x < 0] from dealt DCF keys (function secret sharing).

Online, ONE opening: the parties open c = x + r for a dealt random ring element r, and
each of parties 0 and 1 evaluates its DCF key (``secure.primitives.dcf``) on the public
c locally. Why it is [x < 0]: write c = a 2^63 + c', r = b 2^63 + r' (top bit and the 63
bits below). x = c - r, so msb(x) = a xor b xor [c' < r'] (the borrow out of the low
bits). The dealer knows b and r', and deals keys of f(y) = beta [y < r'] on 63-bit y with
beta = 1 - 2b, plus additive shares of b, so the parties hold shares of

    z = b + beta [c' < r'] = b xor [c' < r'],

and msb(x) = a xor z is z where a = 0 and 1 - z where a = 1: local, since a is public.
Exact over the whole ring (no range assumption), like CrypTen's comparison.

Bounded batches: a comparison of n elements opens c = x + r for all n at once (ONE round),
then takes its keys and evaluates them ``OfflineConfig.dcf_batch`` elements at a time, so
neither the dealer, nor party 0's dry run or material store, nor the evaluation ever holds
more than one batch's keys (~1.5 KiB per element and key), however large n is.

Material (``dcf_dealer``): the mask r drawn by every party from the generator it shares
with the TTP, then per batch the correction words of both keys (dealt to party 0, relayed
to party 1) and offset shares. Per element and party online: one opened word; dealt:
63 x 24.25 + 8 bytes of correction words to each of parties 0 and 1. docs/fss.md has
the security argument.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from crypten_mpcache.runtime import trace
from crypten_mpcache.runtime.offline import current_config
from crypten_mpcache.secure.primitives import dcf
from crypten_mpcache.secure.primitives.comparison import bit_and_product, bit_tensor
from crypten_mpcache.secure.primitives.dcf_dealer import (
    BITS,
    Dealing,
    batches,
    checked_batch,
    low_bits,
)
from crypten_mpcache.secure.primitives.openings import Pending, open_alone
from crypten_mpcache.secure.primitives.party import party_rank


def _masked_shares(share: torch.Tensor, width: int, bits: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c, w, r_i) for this party's flat share of x: c = x + r opened (the one round), w
    (width, n) its shares of w = b xor [c' < r'] (and of w r), r_i its share of the mask."""
    pending = _prepared(share, width, bits)
    return open_alone(pending)


def _prepared(share: torch.Tensor, width: int, bits: int
              ) -> Pending[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """x + r to open, and what follows the opening: the keys, dealt and evaluated a batch
    at a time.

    The first batch's keys are dealt here, with the mask: the TTP replays every party's
    mask draw when it deals that batch, so no other dealing (of a protocol opened beside
    this one, ``openings.open_together``) may come between the draw and the request."""
    n = share.numel()
    dealing = Dealing(n, width, bits)
    mask = dealing.mask_share()
    spans = batches(n, checked_batch(current_config()))
    dealt = [dealing.keys(*spans[0])] if spans else []

    def finish(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = c.cpu()
        low = c.numpy().view(np.uint64) & np.uint64(low_bits(bits))
        dry_run = trace.active_recorder() is not None    # its opened values mean nothing
        w = torch.empty(width, n, dtype=torch.long)
        for start, count in spans:
            material = dealt.pop() if dealt else dealing.keys(start, count)
            part = material.offset.reshape(width, count).clone()
            if material.key is not None and not dry_run:
                value = dcf.evaluate(material.key, low[start:start + count]).view(np.int64)
                part += torch.from_numpy(value.reshape(count, width).T.copy())
            w[:, start:start + count] = part
            del material, part   # its key may view a dealt chunk: not beside the next one
        return c, w, mask

    return Pending(share + mask.to(share.device), finish)


def _top(c: torch.Tensor, bits: int) -> torch.Tensor:
    """a = bit ``bits`` of c (the sign bit of x + r reduced to bits + 1 bits)."""
    return ((c >> bits) & 1).bool()


def _sign_from(c: torch.Tensor, w: torch.Tensor, bits: int) -> torch.Tensor:
    """Shares of [x < 0] = a xor w: w where a = 0, 1 - w where it is 1."""
    first = 1 if party_rank() == 0 else 0
    return torch.where(_top(c, bits), first - w, w)


def less_than_zero_shares(share: torch.Tensor, bits: int = BITS) -> torch.Tensor:
    """This party's arithmetic share (scale 1) of [x < 0] for its share of x (any shape):
    one opening for all elements. ``bits`` < 63: x must lie in [-2^bits, 2^bits) (raw
    units), where the sign of x is bit ``bits`` of x mod 2^(bits + 1); the keys shrink
    in proportion."""
    c, w, _ = _masked_shares(share.reshape(-1), 1, bits)
    return _sign_from(c, w[0], bits).to(share.device).reshape(share.shape)


def negative_part_shares(share: torch.Tensor, bits: int = BITS
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Shares of (z, z x) with z = [x < 0], from the SAME one opening: z x = z c - z r,
    where z c is local (c public) and z r comes from the key's second payload word (w r)
    and the mask share: z r = w r, or r - w r where msb(c) = 1. min(x, 0) = z x is the
    compare-and-select of a tournament level in one round (``select_smaller``)."""
    return open_alone(_negative_part_prepared(share, bits))


def _negative_part_prepared(share: torch.Tensor, bits: int
                            ) -> Pending[tuple[torch.Tensor, torch.Tensor]]:
    """``negative_part_shares`` with its one opening left to ``openings.open_together``."""
    pending = _prepared(share.reshape(-1), 2, bits)

    def finish(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, w, mask = pending.finish(c)
        z = _sign_from(c, w[0], bits)
        z_r = torch.where(_top(c, bits), mask.cpu() - w[1], w[1])
        product = z * c - z_r
        return (z.to(share.device).reshape(share.shape),
                product.to(share.device).reshape(share.shape))

    return Pending(pending.masked, finish)


def less_than_zero(x: Any, bits: int = BITS) -> Any:
    """[x < 0] as an MPCTensor with encoder scale 1, like CrypTen's ``_ltz``."""
    return bit_tensor(less_than_zero_shares(x._tensor.share, bits))


def less_than_zero_pending(x: Any, bits: int = BITS) -> Pending[Any]:
    """``less_than_zero`` with its one opening left to ``openings.open_together``."""
    share = x._tensor.share
    pending = _prepared(share.reshape(-1), 1, bits)

    def finish(c: torch.Tensor) -> Any:
        c, w, _ = pending.finish(c)
        return bit_tensor(_sign_from(c, w[0], bits).to(share.device).reshape(share.shape))

    return Pending(pending.masked, finish)


def negative_part(x: Any, bits: int = BITS) -> tuple[Any, Any]:
    """([x < 0] with encoder scale 1, min(x, 0) with x's encoder): one round."""
    return open_alone(negative_part_pending(x, bits))


def negative_part_pending(x: Any, bits: int = BITS) -> Pending[tuple[Any, Any]]:
    """``negative_part`` with its one opening left to ``openings.open_together``."""
    return bit_and_product(x, _negative_part_prepared(x._tensor.share, bits))
