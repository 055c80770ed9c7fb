"""What privacy costs: bytes, rounds and seconds per phase and per operator kind.

CrypTen counts each party's own traffic (when ``cfg.communicator.verbose`` is on) in
``comm.get().comm_bytes`` / ``comm_rounds``. A ``CostMeter`` snapshots those counters at
phase and operator boundaries inside one party; ``combine`` merges the per-party reports
(bytes: sum over parties; rounds: max over parties; seconds: max over parties).

Dealer traffic is counted apart as well. With the TTP dealer, party 0 fetches each
triple or comparison mask from the dealer at the moment it needs it (three logged
messages per request in CrypTen). That material depends only on public shapes, so a
deployment deals it ahead of the step (the offline phase). ``dealer_request`` (hooked
around every TTP request by ``crypten_mpcache.patches.crypten_dealer``) tallies the
traffic inside every dealer request on the communicator (``dealer_bytes``, ``dealer_rounds``,
``dealer_seconds``). Every cost then carries those fields, and "online" = total - dealer
is what a step costs when the material was dealt ahead. TFP has no dealer traffic.

Operator scopes nest; each scope is charged exclusively (a ``softmax`` inside
``attention`` is charged to ``softmax`` only). Traffic outside any operator scope is
charged to ``other``.

    meter = CostMeter()
    with meter.phase("prefill"):
        with operator_scope("linear"):
            y = x @ w
    report = meter.report()          # per party; send it home and ``combine`` the reports
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import crypten.communicator as comm

OPERATOR_KINDS = (
    "linear", "attention_scores", "attention_values", "softmax", "norm", "activation",
    "embedding", "argmax", "dealer", "premask", "similarity", "topk", "gather", "pick",
    "static_eviction", "reveal", "other",
)


@dataclass
class Counter:
    bytes: float = 0.0
    rounds: int = 0
    seconds: float = 0.0
    dealer_bytes: float = 0.0
    dealer_rounds: int = 0
    dealer_seconds: float = 0.0

    def add(self, other: Counter) -> None:
        for name in FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def minus(self, other: Counter) -> Counter:
        return Counter(*(getattr(self, name) - getattr(other, name) for name in FIELDS))

    def as_dict(self) -> dict[str, float]:
        return {"bytes": int(self.bytes), "rounds": int(self.rounds),
                "seconds": float(self.seconds), "dealer_bytes": int(self.dealer_bytes),
                "dealer_rounds": int(self.dealer_rounds),
                "dealer_seconds": float(self.dealer_seconds)}


FIELDS = ("bytes", "rounds", "seconds", "dealer_bytes", "dealer_rounds", "dealer_seconds")


def _read_comm() -> Counter:
    if not comm.is_initialized():
        return Counter(seconds=time.perf_counter())
    c = comm.get()
    return Counter(float(getattr(c, "comm_bytes", 0)), int(getattr(c, "comm_rounds", 0)),
                   time.perf_counter(), float(getattr(c, "dealer_bytes", 0)),
                   int(getattr(c, "dealer_rounds", 0)),
                   float(getattr(c, "dealer_seconds", 0.0)))


@contextmanager
def dealer_request() -> Iterator[None]:
    """Charge the traffic and time inside the block to the dealer counters of this
    party's communicator (``dealer_bytes``, ``dealer_rounds``, ``dealer_seconds``); a
    no-op outside a CrypTen session."""
    if not comm.is_initialized():
        yield
        return
    channel = comm.get()
    bytes0, rounds0, start = channel.comm_bytes, channel.comm_rounds, time.perf_counter()
    try:
        yield
    finally:
        channel.dealer_bytes = getattr(channel, "dealer_bytes", 0) + \
            channel.comm_bytes - bytes0
        channel.dealer_rounds = getattr(channel, "dealer_rounds", 0) + \
            channel.comm_rounds - rounds0
        channel.dealer_seconds = getattr(channel, "dealer_seconds", 0.0) + \
            time.perf_counter() - start


def _delta(start: Counter, end: Counter) -> Counter:
    return end.minus(start)


@dataclass
class _Frame:
    kind: str
    start: Counter
    children: Counter = field(default_factory=Counter)


class CostMeter:
    """Records one party's costs; only one meter is active per process at a time."""

    _active: CostMeter | None = None

    def __init__(self) -> None:
        self.phases: list[tuple[str, Counter]] = []
        self.operators: dict[str, Counter] = {}
        self._stack: list[_Frame] = []
        self._phase_ops: dict[str, dict[str, Counter]] = {}
        self._current_phase: str | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """A phase (``prefill``, ``decode/0``, ...) that collects everything inside it."""
        if self._current_phase is not None:
            raise RuntimeError(f"phase {name!r} opened inside phase {self._current_phase!r}")
        previous, CostMeter._active = CostMeter._active, self
        self._current_phase = name
        self._phase_ops[name] = {}
        root = _Frame("other", _read_comm())
        self._stack = [root]
        try:
            yield
        finally:
            end = _read_comm()
            total = _delta(root.start, end)
            self._charge("other", total.minus(root.children))
            self.phases.append((name, total))
            self._stack = []
            self._current_phase = None
            CostMeter._active = previous

    def _charge(self, kind: str, cost: Counter) -> None:
        self.operators.setdefault(kind, Counter()).add(cost)
        if self._current_phase is not None:
            self._phase_ops[self._current_phase].setdefault(kind, Counter()).add(cost)

    @contextmanager
    def operator(self, kind: str) -> Iterator[None]:
        if kind not in OPERATOR_KINDS:
            raise ValueError(f"unknown operator kind {kind!r}; known: {OPERATOR_KINDS}")
        if not self._stack:  # outside a phase: not recorded
            yield
            return
        frame = _Frame(kind, _read_comm())
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            total = _delta(frame.start, _read_comm())
            self._charge(kind, total.minus(frame.children))
            self._stack[-1].children.add(total)

    @contextmanager
    def shared(self, parts: Sequence[tuple[str | None, int, bool]]) -> Iterator[None]:
        """One opening that serves several operators (``parts``: (kind, elements, leads)
        in opening order; kind None: the enclosing scope's): its bytes go to each kind in
        proportion to its elements, its round to the first part that leads (else the
        first part). The enclosing scope keeps the seconds and what no kind takes."""
        if not self._stack or not any(kind for kind, _, _ in parts):
            yield
            return
        start = _read_comm()
        yield
        delta = _delta(start, _read_comm())
        total = sum(n for _, n, _ in parts) or 1
        leader = next((i for i, (_, _, leads) in enumerate(parts) if leads), 0)
        frame = self._stack[-1]
        for index, (kind, n, _) in enumerate(parts):
            if kind is None:
                continue
            moved = Counter(bytes=delta.bytes * n / total,
                            rounds=delta.rounds if index == leader else 0)
            self._charge(kind, moved)
            frame.children.add(moved)

    def report(self) -> dict[str, Any]:
        """This party's costs as plain data (picklable, JSON-ready)."""
        return {
            "phases": [{"phase": name, **c.as_dict()} for name, c in self.phases],
            "operators": {k: c.as_dict() for k, c in sorted(self.operators.items())},
            "phase_operators": {
                p: {k: c.as_dict() for k, c in sorted(ops.items())}
                for p, ops in self._phase_ops.items()},
        }


@contextmanager
def operator_scope(kind: str) -> Iterator[None]:
    """Charge the traffic inside to ``kind`` in the active meter (a no-op without one)."""
    meter = CostMeter._active
    if meter is None:
        yield
        return
    with meter.operator(kind):
        yield


@contextmanager
def shared_opening(parts: Sequence[tuple[str | None, int, bool]]) -> Iterator[None]:
    """``CostMeter.shared`` in the active meter (a no-op without one)."""
    meter = CostMeter._active
    if meter is None:
        yield
        return
    with meter.shared(parts):
        yield


def _merge(values: list[dict[str, float]]) -> dict[str, float]:
    """Bytes summed; rounds and seconds the max over parties. The dealer's share of rounds
    is set so that total - dealer is the max over parties of the ONLINE rounds: the
    slowest party's online part, not the sum of two maxima. The dealer's seconds are the
    longest any party spent on the dealer (party 0's fetches or dry runs): the others wait
    for it meanwhile, so their own counters cannot tell that wait from online work."""
    def dealer(v: dict[str, float], key: str) -> float:
        return v.get("dealer_" + key, 0)

    rounds = max(v["rounds"] for v in values)
    seconds = max(v["seconds"] for v in values)
    return {"bytes": int(sum(v["bytes"] for v in values)), "rounds": int(rounds),
            "seconds": float(seconds),
            "dealer_bytes": int(sum(dealer(v, "bytes") for v in values)),
            "dealer_rounds": int(rounds - max(v["rounds"] - dealer(v, "rounds")
                                              for v in values)),
            "dealer_seconds": float(min(seconds, max(dealer(v, "seconds") for v in values)))}


def online(cost: dict[str, float]) -> dict[str, float]:
    """The part of a (merged or per-party) cost that is not dealer traffic."""
    return {key: cost[key] - cost.get("dealer_" + key, 0)
            for key in ("bytes", "rounds", "seconds")}


def combine(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge per-party reports: bytes summed, rounds and seconds the max over parties."""
    reports = [r for r in reports if r]
    if not reports:
        raise ValueError("no party reports to combine")
    phases = []
    for i, first in enumerate(reports[0]["phases"]):
        merged = _merge([r["phases"][i] for r in reports])
        phases.append({"phase": first["phase"], **merged})
    kinds = sorted({k for r in reports for k in r["operators"]})
    zero = Counter().as_dict()
    operators = {k: _merge([r["operators"].get(k, zero) for r in reports]) for k in kinds}
    phase_operators = {}
    for p in reports[0]["phase_operators"]:
        pk = sorted({k for r in reports for k in r["phase_operators"].get(p, {})})
        phase_operators[p] = {k: _merge([r["phase_operators"].get(p, {}).get(k, zero)
                                         for r in reports]) for k in pk}
    return {"phases": phases, "operators": operators, "phase_operators": phase_operators}
