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
from collections.abc import Sequence
from typing import Any

import crypten
import crypten.communicator as comm
import torch
from crypten.mpc.provider.ttp_provider import TTPServer

DEAL_PHASE = "deal_phase"

# One request of a dealt-ahead phase on the wire: (name, device, args, kwargs, size).
WireRequest = tuple[str, Any, tuple, dict, tuple[int, ...]]


class DealtSizeError(ValueError):
    """The dealer's material for a request does not have the size party 0 expects (a
    ValueError: the serve loop stops only quietly on RuntimeErrors, a closed link)."""


def deal_phase(server: Any, requests: Sequence[WireRequest]) -> torch.Tensor:
    """Party 0's material for ``requests``, in order, flattened into one int64 tensor."""
    total = sum(_numel(size) for *_, size in requests)
    flat = torch.empty(total, dtype=torch.long)
    offset = 0
    for index, (name, device, args, kwargs, size) in enumerate(requests):
        server.device = device
        result = getattr(server, name)(*args, **kwargs)
        if tuple(result.shape) != tuple(size):
            raise DealtSizeError(f"request #{index} {name}: dealt {tuple(result.shape)}, "
                                 f"party 0 expects {tuple(size)}")
        n = _numel(size)
        flat[offset:offset + n] = result.reshape(-1)
        offset += n
    return flat


def _numel(size: Sequence[int]) -> int:
    n = 1
    for dim in size:
        n *= int(dim)
    return n


def serve() -> None:
    """Serve party 0 until it says ``terminate`` (or a party's link closes)."""
    crypten.init()
    server = TTPServer.__new__(TTPServer)  # CrypTen's __init__ is its own serve loop
    channel = comm.get()
    server.ttp_group, server.comm_group = channel.ttp_group, channel.ttp_comm_group
    server.device = "cpu"
    server._setup_generators()
    ttp_rank = channel.get_ttp_rank()
    try:
        while True:
            message = channel.recv_obj(0, server.ttp_group)
            if message == "terminate":
                return
            if message["function"] == DEAL_PHASE:
                flat = deal_phase(server, message["args"][0])
                channel.broadcast(flat, ttp_rank, server.comm_group)
                continue
            server.device = message["device"]
            result = getattr(server, message["function"])(*message["args"],
                                                          **message["kwargs"])
            channel.send_obj(result.size(), 0, server.ttp_group)
            channel.broadcast(result, ttp_rank, server.comm_group)
    except RuntimeError as error:  # a party's link closed: CrypTen's server stops likewise
        logging.info("dealer stops: %s", error)
