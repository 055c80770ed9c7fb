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

Material per element: every party draws r_i, a root seed and an offset share o_i from the
generator it shares with the TTP (``draw_free``); the dealer replays the draws, runs
``dcf.gen`` with the parties' roots and deals party 0 the correction words (shared by
both keys) and its offset share; party 1 receives the same correction words from the
dealer (``runtime.offline.relay``). A third party holds only r_2 and o_2. Per element and
party online: one opened word; dealt: 63 x 24.25 + 8 bytes of correction words to each
of parties 0 and 1. docs/fss.md has the security argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import crypten.communicator as comm
import numpy as np
import torch
from crypten.mpc.primitives import ArithmeticSharedTensor

from crypten_mpcache.runtime.cost import dealer_request
from crypten_mpcache.runtime.offline import relay
from crypten_mpcache.secure.primitives import dcf
from crypten_mpcache.secure.primitives.comparison import bit_tensor
from crypten_mpcache.secure.primitives.party import (
    by_dealer,
    deal_via_ttp,
    open_sum,
    party_rank,
    uniform_words,
)

BITS = 63
LOW = (1 << BITS) - 1


@dataclass(frozen=True)
class Layout:
    """Word counts of one comparison of n elements: every party's free draw (r, root seed,
    offset share: 4n words) and the correction words (cw: s 2n, v n per level, the 2 n
    control bits per level packed, the final n)."""

    n: int

    @property
    def free_words(self) -> int:
        return 4 * self.n

    @property
    def t_words(self) -> int:
        return (2 * BITS * self.n + 63) // 64

    @property
    def cw_words(self) -> int:
        return 3 * BITS * self.n + self.t_words + self.n

    @property
    def party0_words(self) -> int:
        return self.cw_words + self.n


def draw_free(layout: Layout, generator: torch.Generator | None) -> torch.Tensor:
    return uniform_words((layout.free_words,), generator)


def _split_free(layout: Layout, free: torch.Tensor) -> tuple[torch.Tensor, ...]:
    n = layout.n
    return free[:n], free[n:3 * n], free[3 * n:]          # r_i, root seed (n, 2), o_i


def pack_cw(key: dcf.DCFKey) -> torch.Tensor:
    """A key's correction words (identical in both keys) as int64 words."""
    t = np.packbits(np.concatenate([key.t_cw_left.reshape(-1), key.t_cw_right.reshape(-1)]))
    t = np.pad(t, (0, (-len(t)) % 8))
    parts = [key.s_cw.reshape(-1).view(np.int64), key.v_cw.reshape(-1).view(np.int64),
             t.view(np.int64), key.final.view(np.int64)]
    return torch.from_numpy(np.concatenate(parts))


def unpack_key(layout: Layout, party: int, seed: torch.Tensor, cw: torch.Tensor) -> dcf.DCFKey:
    n, words = layout.n, cw.numpy()
    s_end, v_end = 2 * BITS * n, 3 * BITS * n
    t_end = v_end + layout.t_words
    bits = np.unpackbits(words[v_end:t_end].view(np.uint8))[: 2 * BITS * n]
    return dcf.DCFKey(
        party=party, bits=BITS,
        seed=seed.contiguous().numpy().view(np.uint8).reshape(n, dcf.SEED_BYTES),
        s_cw=words[:s_end].view(np.uint8).reshape(BITS, n, dcf.SEED_BYTES),
        v_cw=words[s_end:v_end].view(np.uint64).reshape(BITS, n),
        t_cw_left=bits[: BITS * n].reshape(BITS, n), t_cw_right=bits[BITS * n:].reshape(BITS, n),
        final=words[t_end:t_end + n].view(np.uint64))


def keys_for(r: torch.Tensor, roots: tuple[torch.Tensor, torch.Tensor]
             ) -> tuple[dcf.DCFKey, torch.Tensor]:
    """The dealer's work for r (n,): party 0's key (its correction words serve both) and
    b = msb(r), whose shares the parties hold as offsets."""
    r_np = r.numpy().view(np.uint64)
    b = (r_np >> np.uint64(BITS)).astype(np.uint64)
    beta = np.uint64(1) - np.uint64(2) * b                          # 1 - 2b mod 2^64
    seeds = tuple(s.contiguous().numpy().view(np.uint8) for s in roots)
    key0, _ = dcf.gen(r_np & np.uint64(LOW), beta, BITS, roots=seeds)
    return key0, torch.from_numpy(b.view(np.int64))


def ttp_party0_share(generators: list[torch.Generator], n: int) -> torch.Tensor:
    """The TTP's side: replay every party's draws; party 0's correction words and offset."""
    layout = Layout(n)
    draws = [_split_free(layout, draw_free(layout, g)) for g in generators]
    r = sum(d[0] for d in draws)
    key0, b = keys_for(r, (draws[0][1], draws[1][1]))
    offset0 = b - sum((d[2] for d in draws[1:]), torch.zeros_like(b))
    return torch.cat([pack_cw(key0), offset0])


@dataclass
class Material:
    r: torch.Tensor                  # (n,) this party's share of r
    offset: torch.Tensor             # (n,) this party's share of b
    key: dcf.DCFKey | None           # parties 0 and 1


def deal(n: int) -> Material:
    layout = Layout(n)
    return by_dealer("the DCF comparison", ttp=lambda: _deal_ttp(layout),
                     tfp=lambda: _deal_tfp(layout))


def _deal_ttp(layout: Layout) -> Material:
    rank = party_rank()
    free, dealt = deal_via_ttp("dcf_material", (layout.n,), lambda g: draw_free(layout, g),
                               lambda g: torch.empty(0, dtype=torch.long))
    r, seed, offset = _split_free(layout, free)
    if rank == 0:
        return Material(r, dealt[layout.cw_words:], unpack_key(layout, 0, seed,
                                                                 dealt[:layout.cw_words]))
    if rank == 1:
        return Material(r, offset, unpack_key(layout, 1, seed, relay(layout.cw_words)))
    return Material(r, offset, None)


def _deal_tfp(layout: Layout) -> Material:
    """Party 0 deals (it learns every mask): tests and cost measurement only. The shares
    of r and b go by CrypTen's zero sharing; party 1's key (root seed and correction
    words) is sent to it, charged to the dealer counters."""
    n, rank = layout.n, party_rank()
    r = b = key_words = seeds = None
    if rank == 0:
        r = uniform_words((n,), None)
        seeds = (uniform_words((2 * n,), None), uniform_words((2 * n,), None))
        key0, b = keys_for(r, seeds)
        key_words = torch.cat([seeds[1], pack_cw(key0)])
    r_share = ArithmeticSharedTensor(r, size=(n,), precision=0, src=0).share
    b_share = ArithmeticSharedTensor(b, size=(n,), precision=0, src=0).share
    key = None
    if rank in (0, 1):
        with dealer_request():
            if rank == 0:
                comm.get().send(key_words, 1)
            else:
                key_words = comm.get().recv(torch.empty(2 * n + layout.cw_words,
                                                        dtype=torch.long), 0)
        seed = seeds[0] if rank == 0 else key_words[: 2 * n]
        key = unpack_key(layout, rank, seed, key_words[2 * n:])
    return Material(r_share, b_share, key)


def less_than_zero_shares(share: torch.Tensor) -> torch.Tensor:
    """This party's arithmetic share (scale 1) of [x < 0] for its share of x (any shape)."""
    flat = share.reshape(-1)
    n = flat.numel()
    material = deal(n)
    c = open_sum(flat + material.r.to(flat.device))                    # the one round
    a = c < 0
    z = material.offset.clone()
    if material.key is not None:
        low = (c.cpu().numpy().view(np.uint64) & np.uint64(LOW))
        z += torch.from_numpy(dcf.evaluate(material.key, low).view(np.int64))
    first = 1 if party_rank() == 0 else 0
    bit = torch.where(a.cpu(), first - z, z).to(flat.device)
    return bit.reshape(share.shape)


def less_than_zero(x: Any) -> Any:
    """[x < 0] as an MPCTensor with encoder scale 1, like CrypTen's ``_ltz``."""
    return bit_tensor(less_than_zero_shares(x._tensor.share))
