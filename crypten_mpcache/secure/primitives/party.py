"""The party a dealer-assisted protocol runs in: rank, dealer, ring words, openings.

What every such protocol needs from its party: its rank, the configured dealer, uniform
ring words, the opening of shares (one round), and the TTP pattern of dealing material.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import crypten
import crypten.communicator as comm
import torch
from crypten.mpc.provider.ttp_provider import TTPClient, TTPServer

T = TypeVar("T")


def party_rank() -> int:
    return comm.get().get_rank()


def provider_name() -> str:
    """CrypTen's configured dealer: ``TTP`` or ``TFP`` (or another provider)."""
    return crypten.mpc.get_default_provider().NAME


def uniform_words(size: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """Uniform int64 words (the dealer replays the same call on a shared generator)."""
    return torch.randint(-(2 ** 63), 2 ** 63 - 1, size, generator=generator,
                         dtype=torch.long)


def open_sum(share: torch.Tensor) -> torch.Tensor:
    """Open additive shares (one round)."""
    return comm.get().all_reduce(share)


def open_xor(share: torch.Tensor) -> torch.Tensor:
    """Open XOR shares (one round)."""
    return comm.get().all_reduce(share, op=torch.distributed.ReduceOp.BXOR)


def by_dealer(what: str, ttp: Callable[[], T], tfp: Callable[[], T]) -> T:
    """Run the TTP or the TFP way of dealing ``what`` (others are refused by name)."""
    provider = provider_name()
    if provider == "TTP":
        return ttp()
    if provider == "TFP":
        return tfp()
    raise ValueError(f"{what} supports the TTP and TFP dealers, not {provider!r}")


def deal_via_ttp(request: str, args: tuple,
                 draw_free: Callable[[torch.Generator], torch.Tensor],
                 draw_dependent: Callable[[torch.Generator], torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The TTP pattern of every dealt material here: each party draws the independent
    ("free") values from the generator it shares with the TTP; party 0 receives its share
    of the values that depend on them (``request``, a patched TTPServer method that
    replays the draws), every other party draws its share."""
    if not hasattr(TTPServer, request):
        raise RuntimeError(f"the TTP cannot serve {request!r}: run the parties with "
                           "crypten_mpcache.launch or run_as_party (they install the dealer "
                           "requests)")
    client = TTPClient.get()
    generator = client.get_generator()
    free = draw_free(generator)
    if party_rank() == 0:
        return free, client.ttp_request(request, None, *args)
    return free, draw_dependent(generator)
