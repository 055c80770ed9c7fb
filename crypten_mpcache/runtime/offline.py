"""Dealing ahead: the trusted dealer's offline phase, so no online round waits on it.

On demand, party 0 fetches each triple, comparison mask or one-hot from the TTP at the
moment it needs it: three messages per request, thousands per decode step. Everything
the dealer sends depends only on public shapes, so ``deal_ahead(phase, run)`` learns the
phase's requests first (a dry run in a fork: ``runtime.trace``), sends the list to the
dealer in one message and receives all the material in one (``runtime.dealer``), then runs
the phase against a ``MaterialStore``: each request is served locally, checked against
what was dealt for it (kind, arguments, size, order) and handed out once. Other parties
never talk to the dealer (they draw their shares from the generators they share with it)
and are unchanged.

Costs: the dry run and the two dealer messages are charged to the dealer (offline)
counters of the phase (``runtime.cost.dealer_request``), so ``online = total - dealer``
is what the parties spend between them. A phase whose material exceeds
``OfflineConfig.chunk_bytes`` is dealt in chunks (the dealer and party 0 hold one at a
time); a later chunk is fetched when the store runs dry (two more dealer messages). The
store is built for any per-request material, keys of a comparison protocol included.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import crypten
import crypten.communicator as comm
import torch

from crypten_mpcache.runtime import dealer, trace
from crypten_mpcache.runtime.cost import dealer_request, operator_scope
from crypten_mpcache.runtime.dealer import DEAL_PHASE
from crypten_mpcache.runtime.trace import DealtRequest

T = TypeVar("T")
DEALINGS: tuple[str, ...] = ("ahead", "on-demand")
_SESSION_ATTRIBUTE = "_crypten_mpcache_offline"
SizeOf = Callable[[str, tuple, dict], Sequence[int]]


@dataclass(frozen=True)
class OfflineConfig:
    """How the TTP's material reaches party 0: ``ahead`` (a phase at a time, before the
    phase runs) or ``on-demand`` (CrypTen's way: each request when it is needed).

    ``chunk_bytes``: the most material party 0 and the dealer hold at once when a phase is
    dealt ahead. ``dcf_batch``: the most elements of one dealt request of DCF keys
    (``secure.primitives.dcf_comparison``, ~3 KiB of keys per element in all, with the
    TTP or TFP): a comparison of n elements opens its masked input once and is dealt and
    evaluated in ceil(n / dcf_batch) requests, so its keys never need more memory than
    one batch's (the default, 16,384 elements, is 24 MiB of party 0's material), however
    large n is. One batch's material must fit in a chunk
    (``dcf_comparison.checked_batch``, run by ``LaunchConfig`` and by every comparison)."""

    dealing: str = "ahead"
    chunk_bytes: int = 256 << 20
    trace_timeout_s: float = 1800.0
    dcf_batch: int = 1 << 14

    def __post_init__(self) -> None:
        if self.dealing not in DEALINGS:
            raise ValueError(f"dealing must be one of {DEALINGS}, got {self.dealing!r}")
        if self.chunk_bytes < 1 << 20:
            raise ValueError(f"chunk_bytes must be at least 1 MiB, got {self.chunk_bytes}")
        if not self.trace_timeout_s > 0:
            raise ValueError(f"trace_timeout_s must be positive, got {self.trace_timeout_s}")
        if isinstance(self.dcf_batch, bool) or not isinstance(self.dcf_batch, int) \
                or self.dcf_batch < 1:
            raise ValueError(f"dcf_batch must be a positive int, got {self.dcf_batch!r}")


class DealtMaterialError(RuntimeError):
    """The phase asked for material other than what was dealt for it, or more, or less."""


class MaterialStore:
    """Party 0's material for one phase: served in the dealt order, each piece once."""

    def __init__(self, phase: str, requests: Sequence[DealtRequest], chunk_bytes: int,
                 fetch: Callable[[Sequence[DealtRequest]], torch.Tensor]) -> None:
        self.phase, self.total = phase, len(requests)
        self._chunks = _chunks(requests, chunk_bytes)
        self._fetch = fetch
        self._fetched = 0
        self._ready: deque[tuple[int, DealtRequest, torch.Tensor]] = deque()
        self._taken = 0

    @property
    def chunks(self) -> int:
        return len(self._chunks)

    def fetch_next(self) -> None:
        """Receive the next chunk from the dealer (two dealer messages)."""
        chunk = self._chunks[self._fetched]
        first = sum(len(c) for c in self._chunks[: self._fetched])
        flat, offset = self._fetch(chunk), 0
        for index, request in enumerate(chunk, start=first):
            self._ready.append((index, request,
                                flat[offset:offset + request.numel].view(request.size)))
            offset += request.numel
        self._fetched += 1

    def take(self, asked: DealtRequest) -> torch.Tensor:
        """The material dealt for the next request, which must be ``asked``."""
        if not self._ready:
            if self._fetched == len(self._chunks):
                raise DealtMaterialError(
                    f"phase {self.phase!r}: request #{self._taken} {asked.describe()} was not "
                    f"dealt (the phase was dealt {self.total} requests)")
            with operator_scope("dealer"), dealer_request():
                self.fetch_next()
        index, dealt, material = self._ready[0]
        if not (dealt.same_request(asked) and dealt.size == asked.size):
            raise DealtMaterialError(
                f"phase {self.phase!r}: request #{index} is {asked.describe()}, but the dealer "
                f"dealt {dealt.describe()} for it (the phase did not run as its dry run did)")
        self._ready.popleft()
        if index != self._taken:  # each piece once, in order: material is never reused
            raise DealtMaterialError(f"phase {self.phase!r}: request #{index} served twice")
        self._taken += 1
        return material

    def finish(self) -> None:
        """The phase is over: every dealt piece must have been used."""
        if self._taken != self.total:
            raise DealtMaterialError(
                f"phase {self.phase!r} used {self._taken} of the {self.total} requests dealt "
                "for it (the phase did not run as its dry run did)")


def _chunks(requests: Sequence[DealtRequest], chunk_bytes: int) -> list[list[DealtRequest]]:
    chunks: list[list[DealtRequest]] = []
    size = 0
    for request in requests:
        nbytes = 8 * request.numel
        if not chunks or (size + nbytes > chunk_bytes and chunks[-1]):
            chunks.append([])
            size = 0
        chunks[-1].append(request)
        size += nbytes
    return chunks


@dataclass
class _Session:
    config: OfflineConfig
    store: MaterialStore | None = None
    relay_group: Any = None
    relayed: torch.Tensor | None = None   # party 1: relayed words not used yet


def use(config: OfflineConfig, ttp: bool) -> None:
    """This party's dealing for the rest of its CrypTen session (after ``crypten.init``;
    with ``ttp``, every party joins the relay group of party 1 and the dealer)."""
    group = dealer.relay_group() if ttp else None
    setattr(comm.get(), _SESSION_ATTRIBUTE, _Session(config, relay_group=group))


def current_config() -> OfflineConfig:
    """This party's offline configuration (the defaults outside a launched session)."""
    session = _session()
    return session.config if session is not None else OfflineConfig()


def relay(words: int) -> torch.Tensor:
    """Party 1's part of the current request's material, sent to it by the dealer (the
    correction words of DCF keys): taken from what arrived, else received now (its size,
    then the words; charged to the dealer counters)."""
    session = _session()
    if session is None or session.relay_group is None:
        raise RuntimeError("relayed dealer material needs a party of a TTP session")
    if session.relayed is None or session.relayed.numel() == 0:
        session.relayed = None  # an empty view still holds the spent chunk's words
        channel, ttp = comm.get(), comm.get().get_ttp_rank()
        with operator_scope("dealer"), dealer_request():
            size = channel.broadcast(torch.zeros(1, dtype=torch.long), ttp, session.relay_group)
            session.relayed = channel.broadcast(torch.empty(int(size[0]), dtype=torch.long),
                                                ttp, session.relay_group)
    if session.relayed.numel() < words:
        raise DealtMaterialError(f"party 1 needs {words} relayed words, the dealer sent "
                                 f"{session.relayed.numel()}")
    part, session.relayed = session.relayed[:words], session.relayed[words:]
    return part


def _session() -> _Session | None:
    return comm.get().__dict__.get(_SESSION_ATTRIBUTE) if comm.is_initialized() else None


def serve_request(name: str, device: Any, args: tuple, kwargs: dict, size_of: SizeOf,
                  fetch: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Party 0's answer to one TTP request: recorded (dry run), served from the dealt
    store (dealt ahead) or fetched now and charged to the dealer counters (on demand)."""
    record, session = trace.active_recorder(), _session()
    if record is None and (session is None or session.store is None):
        with dealer_request():
            return fetch()
    device = None if device is None else str(device)
    request = DealtRequest(name, device, tuple(args), dict(kwargs),
                           tuple(int(d) for d in size_of(name, args, kwargs)))
    if record is not None:
        record(request)
        return torch.zeros(request.size, dtype=torch.long, device=device)
    return session.store.take(request)


def deal_ahead(phase: str, run: Callable[[], T]) -> T:
    """Run one phase with its TTP material dealt before it (party 0 with ``ahead``);
    everywhere else, just run it."""
    session = _session()
    if session is None or session.config.dealing != "ahead" or session.store is not None \
            or trace.active_recorder() is not None \
            or crypten.mpc.get_default_provider().NAME != "TTP" \
            or comm.get().get_rank() != 0:
        return run()
    with operator_scope("dealer"), dealer_request():
        requests = trace.requests_of(run, session.config.trace_timeout_s)
        store = MaterialStore(phase, requests, session.config.chunk_bytes, _fetch)
        if store.chunks:
            store.fetch_next()
    session.store = store
    try:
        result = run()
    finally:
        session.store = None
    store.finish()
    return result


def _fetch(requests: Sequence[DealtRequest]) -> torch.Tensor:
    """One chunk from the dealer: the request list out, the flat material back."""
    channel = comm.get()
    ttp = channel.get_ttp_rank()
    message = {"function": DEAL_PHASE, "device": None,
               "args": (tuple(r.wire() for r in requests),), "kwargs": {}}
    channel.send_obj(message, ttp, channel.ttp_group)
    flat = torch.empty(sum(r.numel for r in requests), dtype=torch.long)
    channel.broadcast(flat, ttp, channel.ttp_comm_group)
    return flat
