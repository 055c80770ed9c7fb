"""The dealer side of the dealt one-hot: a shifted unit vector, as words or as DPF keys.

The one-hot protocol (``secure.primitives.onehot``) needs every party's additive share of
a uniform ring element R and of the unit vector u = e_(R mod W). Two ways to deal u, the
cheaper one chosen by its dealt words, a public function of (n, W):

- **words**: party 0 receives its share of u, W ring words per element (every other
  party draws its share from the generator it shares with the TTP);
- **keys** (DPF, ``secure.primitives.dpf``, for W >= 32, TTP): parties 0 and 1 each receive
  the same correction words, log2(W) x (16 bytes + 2 bits) + 8 bytes per element, party
  1's relayed by the dealer (``runtime.offline.relay``), and expand their keys over the
  whole domain; a third party's share of u is 0. At W = 128 (the SiLU table) that is
  ~2 x 122 bytes per element where words take 1,024; at W = 8,192 (a direct 1/x table)
  ~2 x 219 where words take 64 KiB.

With the TTP every party draws its share of R (and, for keys, a root seed) from its
generator; the TTP replays the draws. The TFP (tests and cost measurement) deals words:
its zero sharing costs no traffic. The material depends only on (n, W).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from crypten.mpc.primitives import ArithmeticSharedTensor

from crypten_mpcache.runtime import trace
from crypten_mpcache.runtime.offline import relay
from crypten_mpcache.secure.primitives import dpf
from crypten_mpcache.secure.primitives.party import (
    by_dealer,
    deal_via_ttp,
    party_rank,
    uniform_words,
)
from crypten_mpcache.secure.primitives.prg import control_words, key_fields


@dataclass(frozen=True)
class Layout:
    """n elements of width W. Words: free = the n shares of R; dependent = the n x W
    shares of u. Keys: free = the n shares of R and a root seed (2 words) per element;
    party 0's answer = the correction words (``cw_words``), relayed to party 1."""

    n: int
    width: int

    def __post_init__(self) -> None:
        if self.width < 1 or self.width & (self.width - 1):
            raise ValueError(f"width must be a power of two, got {self.width}")

    @property
    def bits(self) -> int:
        return self.width.bit_length() - 1

    @property
    def t_words(self) -> int:
        return control_words(self.bits, self.n)

    @property
    def cw_words(self) -> int:
        """The DPF keys' correction words: seeds 2 n a level, packed control bits, output."""
        return 2 * self.bits * self.n + self.t_words + self.n

    @property
    def uses_keys(self) -> bool:
        """Whether DPF keys (cw_words to each of parties 0 and 1) deal fewer words than
        party 0's n x W words of u (from W = 32)."""
        return 1 <= self.bits <= dpf.MAX_BITS and 2 * self.cw_words < self.n * self.width

    @property
    def free_words(self) -> int:
        return 3 * self.n if self.uses_keys else self.n

    @property
    def party0_words(self) -> int:
        """Party 0's answer: the keys' correction words, or its n x W words of u."""
        return self.cw_words if self.uses_keys else self.n * self.width

    def dealt_words(self) -> int:
        """Dealer words of one one-hot to all parties (party 1's relayed words included)."""
        return 2 * self.cw_words if self.uses_keys else self.n * self.width


def party0_words_per_element(width: int) -> float:
    """Party 0's dealt words per element of a one-hot of width W (a cost model's unit)."""
    layout = Layout(64, width)
    return layout.party0_words / layout.n


def draw_free(layout: Layout, generator: torch.Generator | None) -> torch.Tensor:
    return uniform_words((layout.free_words,), generator)


def draw_dependent(layout: Layout, generator: torch.Generator | None) -> torch.Tensor:
    """A party's share of u (words), or nothing (keys: only parties 0 and 1 get theirs)."""
    if layout.uses_keys:
        return torch.empty(0, dtype=torch.long)
    return uniform_words((layout.n, layout.width), generator)


def unit_vectors(r: torch.Tensor, width: int) -> torch.Tensor:
    """(n, W) plaintext rows e_(r mod W) (the dealer's job)."""
    out = torch.zeros(r.numel(), width, dtype=torch.long)
    out[torch.arange(r.numel()), r & (width - 1)] = 1
    return out


def _keys(layout: Layout, r: torch.Tensor, roots: tuple[torch.Tensor, torch.Tensor]
          ) -> dpf.DPFKey:
    """Party 0's DPF key for alpha = R mod W (its correction words serve both keys)."""
    alpha = (r & (layout.width - 1)).numpy().view(np.uint64)
    seeds = tuple(s.contiguous().numpy().view(np.uint8) for s in roots)
    return dpf.gen(alpha, layout.bits, roots=seeds)[0]


def pack_cw(key: dpf.DPFKey) -> torch.Tensor:
    """A DPF key's correction words as int64 words (``Layout.cw_words``)."""
    return torch.from_numpy(key.correction_words())


def unpack_key(layout: Layout, party: int, seed: torch.Tensor, cw: torch.Tensor
               ) -> dpf.DPFKey:
    return dpf.DPFKey(party=party, bits=layout.bits, **key_fields(
        seed.contiguous().numpy(), cw.contiguous().numpy(), layout.bits, layout.n, 0,
        (layout.n,)))


def _split_free(layout: Layout, free: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(share of R (n,), root seed (2 n,) words) of a party's keys draw."""
    return free[:layout.n], free[layout.n:]


def ttp_party0_share(generators: list[torch.Generator], n: int, width: int) -> torch.Tensor:
    """The TTP's side: replay every party's draws; party 0's share of u (words) or the
    keys' correction words (its answer, whose every word party 1 also receives)."""
    layout = Layout(n, width)
    draws = [draw_free(layout, g) for g in generators]
    r = sum(_split_free(layout, d)[0] for d in draws)
    if layout.uses_keys:
        roots = (_split_free(layout, draws[0])[1], _split_free(layout, draws[1])[1])
        return pack_cw(_keys(layout, r, roots))
    others = sum((draw_dependent(layout, g) for g in generators[1:]),
                 torch.zeros(n, width, dtype=torch.long))
    return unit_vectors(r, width) - others


def relay_words(n: int, width: int) -> int:
    """What party 1 receives of a one-hot's dealt material: every correction word (keys)."""
    layout = Layout(n, width)
    return layout.cw_words if layout.uses_keys else 0


def _expanded(layout: Layout, key: dpf.DPFKey | None) -> torch.Tensor:
    """This party's (n, W) share of u from its key (a third party's is 0; party 0's dry
    run, whose dealt words are placeholders, skips the expansion)."""
    if key is None or trace.active_recorder() is not None:
        return torch.zeros(layout.n, layout.width, dtype=torch.long)
    return torch.from_numpy(dpf.evaluate_all(key).view(np.int64))


def deal(layout: Layout, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """This party's (share of R (n,), share of u (n, W)) from the configured dealer."""
    r, u = by_dealer("the dealt one-hot", ttp=lambda: _deal_ttp(layout),
                     tfp=lambda: _deal_tfp(layout))
    return r.to(device), u.view(layout.n, layout.width).to(device)


def _deal_ttp(layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    free, dealt = deal_via_ttp("onehot_material", (layout.n, layout.width),
                               lambda g: draw_free(layout, g),
                               lambda g: draw_dependent(layout, g))
    if not layout.uses_keys:
        return free, dealt
    r, seed = _split_free(layout, free)
    rank = party_rank()
    if rank > 1:
        return r, _expanded(layout, None)
    cw = dealt if rank == 0 else relay(layout.cw_words)
    return r, _expanded(layout, unpack_key(layout, rank, seed, cw))


def _deal_tfp(layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """Party 0 draws R and shares R and u as words by CrypTen's zero sharing (no traffic,
    so keys would only add some); party 0 then knows the masks: tests and cost measurement
    only."""
    n = layout.n
    r = u = None
    if party_rank() == 0:
        r = draw_free(Layout(n, 1), None)
        u = unit_vectors(r, layout.width)
    r_share = ArithmeticSharedTensor(r, size=(n,), precision=0, src=0).share
    u_share = ArithmeticSharedTensor(u, size=(n, layout.width), precision=0, src=0).share
    return r_share, u_share
