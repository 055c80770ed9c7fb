"""What privacy costs: bytes, rounds and seconds per phase and per operator kind.

CrypTen counts each party's own traffic (when ``cfg.communicator.verbose`` is on) in
``comm.get().comm_bytes`` / ``comm_rounds``. A ``CostMeter`` snapshots those counters at
phase and operator boundaries inside one party; ``combine`` merges the per-party reports
(bytes: sum over parties; rounds: max over parties; seconds: max over parties).

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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

OPERATOR_KINDS = (
    "linear", "attention_scores", "attention_values", "softmax", "norm", "activation",
    "embedding", "argmax", "dealer", "premask", "similarity", "topk", "gather",
    "static_eviction", "reveal", "other",
)


@dataclass
class Counter:
    bytes: float = 0.0
    rounds: int = 0
    seconds: float = 0.0

    def add(self, other: Counter) -> None:
        self.bytes += other.bytes
        self.rounds += other.rounds
        self.seconds += other.seconds

    def as_dict(self) -> dict[str, float]:
        return {"bytes": int(self.bytes), "rounds": int(self.rounds),
                "seconds": float(self.seconds)}


def _read_comm() -> Counter:
    try:
        import crypten.communicator as comm

        if not comm.is_initialized():
            return Counter(seconds=time.perf_counter())
        c = comm.get()
        return Counter(float(getattr(c, "comm_bytes", 0)), int(getattr(c, "comm_rounds", 0)),
                       time.perf_counter())
    except ImportError:  # pragma: no cover - crypten is always installed by setup
        return Counter(seconds=time.perf_counter())


def _delta(start: Counter, end: Counter) -> Counter:
    return Counter(end.bytes - start.bytes, end.rounds - start.rounds,
                   end.seconds - start.seconds)


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
            own = _delta(Counter(), total)
            own.bytes -= root.children.bytes
            own.rounds -= root.children.rounds
            own.seconds -= root.children.seconds
            self._charge("other", own)
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
            own = Counter(total.bytes - frame.children.bytes,
                          total.rounds - frame.children.rounds,
                          total.seconds - frame.children.seconds)
            self._charge(kind, own)
            self._stack[-1].children.add(total)

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


def _merge(values: list[dict[str, float]]) -> dict[str, float]:
    return {"bytes": int(sum(v["bytes"] for v in values)),
            "rounds": int(max(v["rounds"] for v in values)),
            "seconds": float(max(v["seconds"] for v in values))}


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
    zero = {"bytes": 0, "rounds": 0, "seconds": 0.0}
    operators = {k: _merge([r["operators"].get(k, zero) for r in reports]) for k in kinds}
    phase_operators = {}
    for p in reports[0]["phase_operators"]:
        pk = sorted({k for r in reports for k in r["phase_operators"].get(p, {})})
        phase_operators[p] = {k: _merge([r["phase_operators"].get(p, {}).get(k, zero)
                                         for r in reports]) for k in pk}
    return {"phases": phases, "operators": operators, "phase_operators": phase_operators}
