"""The trusted dealer's process: serves single requests and whole phases dealt ahead.

CrypTen's ``TTPServer`` answers one request at a time: party 0 sends it, the dealer sends
back the size, then the material (three messages, each a round party 0 waits on). That
stays here for ``--dealing on-demand`` and is served the same way. A *dealt-ahead* phase
(``runtime.offline``) arrives as one message that lists every request of the phase, in
order, with the size party 0 expects for each; the dealer answers with all of it in one
flat tensor and no size message (both sides know the total), so a phase costs party 0
two dealer messages, however many requests it holds.

The dealer replays every party's generator in the order of the requests, exactly as it
does on demand, so the material is the same either way. It holds one message's material at
a time: party 0 splits a large phase into chunks (``OfflineConfig.chunk_bytes``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import crypten
import crypten.communicator as comm
import torch
import torch.distributed as dist
from crypten.mpc.provider.ttp_provider import TTPServer

DEAL_PHASE = "deal_phase"

# One request of a dealt-ahead phase on the wire: (name, device, args, kwargs, size).
WireRequest = tuple[str, Any, tuple, dict, tuple[int, ...]]


class DealtSizeError(ValueError):
    """The dealer's material for a request does not have the size party 0 expects (a
    ValueError: the serve loop stops only quietly on RuntimeErrors, a closed link)."""


def deal_phase(server: Any, requests: Sequence[WireRequest]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Party 0's material for ``requests``, in order, flattened into one int64 tensor, and
    party 1's relayed parts (see ``relayed``) likewise. Both are allocated up front (their
    sizes are known from the requests), so the dealer holds them and one request's
    answer at a time."""
    total = sum(math.prod(size) for *_, size in requests)
    flat = torch.empty(total, dtype=torch.long)
    relay = torch.empty(sum(relay_words(server, name, args) for name, _, args, *_ in requests),
                        dtype=torch.long)
    offset = relay_offset = 0
    for index, (name, device, args, kwargs, size) in enumerate(requests):
        server.device = device
        result = getattr(server, name)(*args, **kwargs)
        if tuple(result.shape) != tuple(size):
            raise DealtSizeError(f"request #{index} {name}: dealt {tuple(result.shape)}, "
                                 f"party 0 expects {tuple(size)}")
        n = math.prod(size)
        flat[offset:offset + n] = result.reshape(-1)
        offset += n
        part = relayed(server, name, args, result)
        relay[relay_offset:relay_offset + part.numel()] = part
        relay_offset += part.numel()
        del result, part
    return flat, relay


def relay_words(server: Any, name: str, args: tuple) -> int:
    """How many leading words of party 0's answer to request ``name`` party 1 receives:
    ``relay_words(*args)`` for a request method that declares it (the correction words of
    DCF keys are the same in both parties' keys), else none."""
    words = getattr(getattr(type(server), name, None), "relay_words", None)
    return 0 if words is None else int(words(*args))


def relayed(server: Any, name: str, args: tuple, result: torch.Tensor) -> torch.Tensor:
    """What party 1 receives of a request's material: its ``relay_words`` leading words."""
    return result.reshape(-1)[: relay_words(server, name, args)]


def relay_group() -> Any:
    """The process group of party 1 and the dealer (every process creates it, in order)."""
    channel = comm.get()
    return dist.new_group([1, channel.get_ttp_rank()])


def send_relay(channel: Any, group: Any, words: torch.Tensor) -> None:
    """Party 1's relayed material: its size, then the words (nothing when empty)."""
    if words.numel():
        ttp = channel.get_ttp_rank()
        channel.broadcast(torch.tensor([words.numel()], dtype=torch.long), ttp, group)
        channel.broadcast(words.contiguous(), ttp, group)


def serve() -> None:
    """Serve party 0 until it says ``terminate`` (or a party's link closes)."""
    crypten.init()
    server = TTPServer.__new__(TTPServer)  # CrypTen's __init__ is its own serve loop
    channel = comm.get()
    server.ttp_group, server.comm_group = channel.ttp_group, channel.ttp_comm_group
    server.device = "cpu"
    server._setup_generators()
    ttp_rank = channel.get_ttp_rank()
    to_party1 = relay_group()
    try:
        while True:
            message = channel.recv_obj(0, server.ttp_group)
            if message == "terminate":
                return
            if message["function"] == DEAL_PHASE:
                flat, relay = deal_phase(server, message["args"][0])
                channel.broadcast(flat, ttp_rank, server.comm_group)
                send_relay(channel, to_party1, relay)
                del flat, relay  # one chunk at a time: not beside the next one
                continue
            server.device = message["device"]
            result = getattr(server, message["function"])(*message["args"],
                                                          **message["kwargs"])
            channel.send_obj(result.size(), 0, server.ttp_group)
            channel.broadcast(result, ttp_rank, server.comm_group)
            send_relay(channel, to_party1,
                       relayed(server, message["function"], message["args"], result))
    except RuntimeError as error:  # a party's link closed: CrypTen's server stops likewise
        logging.info("dealer stops: %s", error)
