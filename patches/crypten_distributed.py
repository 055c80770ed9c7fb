"""CrypTen's process group on a store we opened, with our time limits (reversible).

CrypTen's ``DistributedCommunicator`` builds the process group itself from the RENDEZVOUS
environment variable, and every group with torch's default timeout (30 minutes for any
one receive). The roles of ``crypten-mpcache party`` meet first on a TCP store of their
own (``runtime.rendezvous``: ranks claimed, public parameters agreed) and must then form
the process group on that same store, with the per-step timeout the user gave.

``startup(store, step_timeout_s)`` installs ``PATCH`` for a ``with`` block: while the
communicator's constructor runs (only then), CrypTen's ``init_process_group`` gets
``store=`` and ``timeout=`` instead of ``init_method=``, and each ``new_group`` gets
``timeout=``. Outside the block, and outside the constructor, CrypTen is unchanged.

``OPENING_PATCH``: with two parties, ``DistributedCommunicator.all_reduce`` (every opening
of shares) becomes one exchange of messages (``runtime.opening``): one network round
trip per round where gloo's ring takes two. Counted bytes and rounds are unchanged
(CrypTen's own logging wrapper still counts the call). Installed by the launcher in each
party for the lifetime of the party.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import crypten.communicator.distributed_communicator as crypten_distributed
import torch.distributed as torch_distributed
from crypten.communicator.communicator import _logging

from crypten_mpcache.patches import Patch, replace_method
from crypten_mpcache.runtime import opening


class _Settings:
    store: Any = None
    timeout: datetime.timedelta | None = None


SETTINGS = _Settings()


class _TimedDistributed:
    """``torch.distributed`` as CrypTen's constructor sees it: same names, but the process
    group forms on ``SETTINGS.store`` and every group has ``SETTINGS.timeout``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch_distributed, name)

    def init_process_group(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("init_method", None)
        return torch_distributed.init_process_group(
            *args, store=SETTINGS.store, timeout=SETTINGS.timeout, **kwargs)

    def new_group(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", SETTINGS.timeout)
        return torch_distributed.new_group(*args, **kwargs)


def _wrap_constructor() -> Callable[[], None]:
    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            if SETTINGS.store is None:
                original(self, *args, **kwargs)
                return
            crypten_distributed.dist = _TimedDistributed()
            try:
                original(self, *args, **kwargs)
            finally:
                crypten_distributed.dist = torch_distributed
        return __init__

    return replace_method(crypten_distributed.DistributedCommunicator, "__init__", make)


PATCH = Patch("distributed_startup",
              "DistributedCommunicator.__init__ forms the process group on a given store "
              "with a given timeout for every group",
              _wrap_constructor)


@contextmanager
def startup(store: Any, step_timeout_s: float) -> Iterator[None]:
    """Inside the block, CrypTen's process group forms on ``store`` and waits at most
    ``step_timeout_s`` for any one communication."""
    SETTINGS.store = store
    SETTINGS.timeout = datetime.timedelta(seconds=step_timeout_s)
    PATCH.install()
    try:
        yield
    finally:
        PATCH.uninstall()
        SETTINGS.store = None
        SETTINGS.timeout = None


def _exchange_all_reduce() -> Callable[[], None]:
    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        ring = original.__wrapped__  # CrypTen's body, without its logging wrapper

        def all_reduce(self: Any, input: Any, op: Any = torch_distributed.ReduceOp.SUM,
                       batched: bool = False) -> Any:
            if not opening.exchanges(self.get_world_size(), op):
                return ring(self, input, op=op, batched=batched)
            tensors = [x.data for x in input] if batched else [input.data]
            opened = opening.exchange_open(tensors, op, peer=1 - self.get_rank(),
                                           group=self.main_group)
            return opened if batched else opened[0]

        return _logging(all_reduce)  # counted exactly as CrypTen counts its all_reduce

    return replace_method(crypten_distributed.DistributedCommunicator, "all_reduce", make)


OPENING_PATCH = Patch("opening_exchange",
                      "DistributedCommunicator.all_reduce opens two parties' shares by one "
                      "exchange of messages (one round trip) instead of gloo's ring",
                      _exchange_all_reduce)
