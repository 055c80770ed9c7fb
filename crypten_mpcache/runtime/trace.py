"""Learn a phase's dealer requests before running it: a dry run in a forked copy of party 0.

Which correlated randomness a phase needs (kinds and shapes, in order) depends only on
public values, but it is spread through the model code. Rather than keep a second,
hand-written account of it, party 0 forks (a copy-on-write snapshot of all its state:
model, cache, generators, mask ids) and runs the phase in the child against a
``TraceCommunicator`` that sends nothing: every opening returns this party's own share, a
value of the right shape that nothing downstream branches on (the transcript depends only
on public values: tested). Each dealer request is recorded with the size of its answer
and answered with zeros. The child pipes the list home and exits; the parent's state is
untouched. The child never writes to the terminal and never touches a socket of the
parent (its communicator is replaced before the phase runs).
"""

from __future__ import annotations

import math
import os
import pickle
import select
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from crypten.communicator import DistributedCommunicator


@dataclass(frozen=True)
class DealtRequest:
    """One dealer request of a phase: what party 0 asks for and the size of the answer."""

    name: str
    device: Any
    args: tuple
    kwargs: dict
    size: tuple[int, ...]

    def same_request(self, other: DealtRequest) -> bool:
        return (self.name, self.device, self.args, self.kwargs) == \
            (other.name, other.device, other.args, other.kwargs)

    @property
    def numel(self) -> int:
        return math.prod(self.size)

    def describe(self) -> str:
        args = ", ".join(repr(a) for a in self.args)
        return f"{self.name}({_shorten(args)}) -> {self.size}"

    def wire(self) -> tuple:
        return (self.name, self.device, self.args, self.kwargs, self.size)


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TraceError(RuntimeError):
    """The dry run of a phase failed, hung, or used the network in a way it cannot fake."""


class _Done:
    def wait(self) -> None:
        return None


class TraceCommunicator:
    """CrypTen's communicator API without a network: what a party would receive is
    replaced by what it holds (its own share), with the shape it would have."""

    def __init__(self, real: Any, record: Callable[[DealtRequest], None]) -> None:
        self.__dict__.update(real.__dict__)  # what sessions keep on it (premask mask ids)
        self._rank, self._world_size = real.get_rank(), real.get_world_size()
        self.record = record
        self.comm_bytes = self.comm_rounds = 0
        self.comm_time = 0.0

    def get_rank(self) -> int:
        return self._rank

    def get_world_size(self) -> int:
        return self._world_size

    def get_ttp_rank(self) -> int:
        return self._world_size

    def _log_communication(self, nelement: int) -> None:
        return None

    def send(self, tensor: torch.Tensor, dst: int) -> None:
        return None

    def recv(self, tensor: torch.Tensor, src: int | None = None) -> torch.Tensor:
        return tensor.clone()

    def isend(self, tensor: torch.Tensor, dst: int) -> _Done:
        return _Done()

    def irecv(self, tensor: torch.Tensor, src: int | None = None) -> _Done:
        return _Done()

    def scatter(self, scatter_list: list, src: int, size: Any = None,
                device: Any = None) -> torch.Tensor:
        if src == self._rank:
            return scatter_list[self._rank]
        return torch.zeros(size if size is not None else scatter_list[self._rank].size(),
                           dtype=torch.long, device=device)

    def reduce(self, input: Any, dst: int, op: Any = None, batched: bool = False) -> Any:
        result = self.all_reduce(input, batched=batched)
        return result if dst == self._rank else None

    def all_reduce(self, input: Any, op: Any = None, batched: bool = False) -> Any:
        return [x.clone() for x in input] if batched else input.clone()

    def gather(self, tensor: torch.Tensor, dst: int) -> list:
        return [tensor.clone() for _ in range(self._world_size)] if dst == self._rank \
            else [None]

    def all_gather(self, tensor: torch.Tensor) -> list:
        return [tensor.clone() for _ in range(self._world_size)]

    def broadcast(self, input: Any, src: int, group: Any = None, batched: bool = False) -> Any:
        return input

    def barrier(self) -> None:
        return None

    def broadcast_obj(self, obj: Any, src: int, group: Any = None) -> Any:
        if src != self._rank:
            raise TraceError("a traced phase cannot receive an object from another party")
        return obj

    def send_obj(self, obj: Any, dst: int, group: Any = None) -> None:
        raise TraceError("a traced phase cannot send objects (the dealer is faked)")

    def recv_obj(self, src: int, group: Any = None) -> Any:
        raise TraceError("a traced phase cannot receive objects (the dealer is faked)")


def active_recorder() -> Callable[[DealtRequest], None] | None:
    """The recorder of the dry run this process is (None in a real party)."""
    instance = DistributedCommunicator.instance
    return instance.record if isinstance(instance, TraceCommunicator) else None


def requests_of(run: Callable[[], Any], timeout_s: float) -> list[DealtRequest]:
    """The dealer requests ``run()`` makes, in order, learned from a dry run in a fork."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_end)
        _dry_run(run, write_end)
    os.close(write_end)
    ended = "ended"
    try:
        payload = _read_all(read_end, timeout_s, pid)
    finally:
        os.close(read_end)
        ended = _reap(pid)
    status, value = pickle.loads(payload) if payload else \
        ("error", f"its process {ended} without a word (killed for memory?)")
    if status != "ok":
        raise TraceError(f"the dry run of the phase failed: {value}")
    return value


def _dry_run(run: Callable[[], Any], write_end: int) -> None:
    code = 1
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (the child exits)
        torch.set_num_threads(1)  # a forked OpenMP pool can hang: stay single-threaded
        requests: list[DealtRequest] = []
        DistributedCommunicator.instance = TraceCommunicator(
            DistributedCommunicator.instance, requests.append)
        try:
            run()
            payload = pickle.dumps(("ok", requests))
        except BaseException as error:  # report it home: the parent names the phase
            lines = traceback.format_exception(type(error), error, error.__traceback__)
            payload = pickle.dumps(("error", "".join(lines[-6:]).strip()))
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(payload)
        code = 0
    finally:
        os._exit(code)


def _read_all(fd: int, timeout_s: float, pid: int) -> bytes:
    chunks, deadline = [], time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            _kill(pid)
            raise TraceError(f"the dry run of the phase took longer than {timeout_s:.0f} s")
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> str:
    """Wait for the child; how it ended, in words."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return "ended"
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with status {os.WEXITSTATUS(status)}"
