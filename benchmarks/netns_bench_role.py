"""One role of one ``bench`` row, run in its own namespace by ``netns_bench.py``.

Party 0 (the owner), party 1 (the client) or the TTP dealer (rank = parties) joins the
others at ``--rendezvous`` through ``runtime.launcher.run_as_party`` and runs
``bench.party.run_row`` (the dealer serves). Why a barrier before the first decode phase:
setup and static eviction move gigabytes and run on the unshaped link; the harness shapes
the link while every party waits, then releases them all at once, so only the decode
steps cross the shaped link. The barrier is outside the measured phase: the phase's
counters start after the release.

    python netns_bench_role.py --rank 0 --rendezvous tcp://10.231.0.2:29700 \
        --task '{...RowTask...}' --launch '{...LaunchConfig...}' --barrier DIR --out r0.json

Prints ``phase NAME`` as each phase starts (the harness shows it as progress) and writes
run_row's result as JSON (parties only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DECODE = "decode/"
POLL_S = 0.002  # the release skew between parties is at most this


def arrived_file(barrier: Path, rank: int) -> Path:
    return barrier / f"arrived.{rank}"


def go_file(barrier: Path) -> Path:
    return barrier / "go"


def wait_at_barrier(barrier: Path, rank: int, timeout_s: float) -> dict[str, float]:
    """Say this party arrived, wait for the harness's go; return when and how long."""
    arrived = time.time()
    arrived_file(barrier, rank).write_text(f"{arrived}\n")
    go = go_file(barrier)
    deadline = time.monotonic() + timeout_s
    while not go.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no go from the harness within {timeout_s:.0f} s at the "
                               "barrier before the first decode phase")
        time.sleep(POLL_S)
    released = time.time()
    return {"arrived": arrived, "released": released, "waited_s": released - arrived}


def cpu_seconds() -> float:
    """This process's CPU time, its waited-for children's included (the dealing's dry run
    runs in a fork)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def hold_before_decode(barrier: Path, rank: int, timeout_s: float
                       ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Wrap ``CostMeter.phase`` in this process: print each phase's name, record its CPU
    and wall seconds, and before the first ``decode/...`` phase is entered wait at the
    barrier. Returns the dict that the barrier's times are written into and the list of
    per-phase CPU records (wall seconds above CPU seconds: waiting for the peer, the link
    or, on a loaded host, for a core)."""
    from crypten_mpcache.runtime.cost import CostMeter

    original = CostMeter.phase
    held: dict[str, float] = {}
    cpu: list[dict[str, Any]] = []

    @contextmanager
    def phase(self: Any, name: str) -> Iterator[None]:
        if name.startswith(DECODE) and not held:
            print("at the barrier", flush=True)
            held.update(wait_at_barrier(barrier, rank, timeout_s))
        print(f"phase {name}", flush=True)
        with original(self, name):
            cpu0, wall0 = cpu_seconds(), time.perf_counter()
            try:
                yield
            finally:
                cpu.append({"phase": name, "cpu_s": cpu_seconds() - cpu0,
                            "wall_s": time.perf_counter() - wall0})

    CostMeter.phase = phase  # type: ignore[method-assign]
    return held, cpu


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--rendezvous", required=True)
    p.add_argument("--task", required=True, help="RowTask fields as JSON")
    p.add_argument("--launch", required=True, help="LaunchConfig fields as JSON")
    p.add_argument("--barrier", required=True, type=Path, help="the barrier's folder")
    p.add_argument("--barrier-timeout", type=float, default=3600.0)
    p.add_argument("--out", type=Path, default=None, help="run_row's result (parties)")
    args = p.parse_args(argv)

    from crypten_mpcache.bench.party import RowTask, run_row
    from crypten_mpcache.runtime.launcher import LaunchConfig, run_as_party

    task = RowTask(**json.loads(args.task))
    config = LaunchConfig(**json.loads(args.launch))
    held, cpu = hold_before_decode(args.barrier, args.rank, args.barrier_timeout)
    print(f"rank {args.rank}: joining {args.rendezvous}", flush=True)
    result = run_as_party(run_row, task, rank=args.rank, rendezvous=args.rendezvous,
                          config=config)
    if result is not None and args.out is not None:
        result["barrier"], result["cpu"] = held, cpu
        args.out.write_text(json.dumps(result, default=_plain) + "\n")
    print(f"rank {args.rank}: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
