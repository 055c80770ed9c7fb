"""The ``bench`` decode step across real links: each role of a bench row in its namespace.

For each cache, one bench row (default: Llama-2-7B shape, 1 layer, 2048 tokens, the default
budget, TTP dealer, dealing ahead, the default comparison) runs as three processes, party 0
in the owner's namespace, party 1 in the client's and the TTP dealer in the dealer's
(``netns_bench_role.py``: ``runtime.launcher.run_as_party`` with ``bench.party.run_row``,
meeting at ``tcp://<owner>:PORT``). Setup and static eviction (gigabytes) run on the
unshaped link; every party then waits at a barrier before its first decode phase, the
harness shapes the link (``Topology.shape``, calibrated as ``netns_links`` does), measures
it (ping, TCP round trip, TCP bulk) and releases the parties into the decode steps.

The row runs first on the unshaped link (the compute reference), then once per profile.
The parties' results are merged by ``bench.runner.summarize`` as ``bench`` merges them;
the measured seconds per decode step are set beside the cost model ``runtime.network``:
compute (the same step on the unshaped link) + rounds x RTT + per-party bytes x 8 / rate.

    sudo .venv/bin/python benchmarks/netns_bench.py             # LAN, WAN x full, mpcache
    sudo .venv/bin/python benchmarks/netns_bench.py --quick     # smoke: tiny shape, LAN
    sudo .venv/bin/python benchmarks/netns_bench.py --report results/netns/bench.json
    sudo .venv/bin/python benchmarks/netns_bench.py --cleanup   # after a crash
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from netns_bench_role import arrived_file, go_file
from netns_links import _calibration
from netns_model import (
    UNSHAPED,
    LinkMeasure,
    link_table,
    mean_row,
    model_table,
    parse_profile,
    relative_error,
)
from netns_session import PROGRESS_EVERY_S, _tail, measure_link, stop_all
from netns_topology import HERE, ROLE_LINK, Topology, check_host, cleanup, role_address

from crypten_mpcache.bench.party import RowTask
from crypten_mpcache.bench.runner import BenchConfig, memory_estimate_gb, summarize
from crypten_mpcache.runtime.cost import combine
from crypten_mpcache.runtime.network import NetworkProfile

ROOT = HERE.parent
ROLE = str(HERE / "netns_bench_role.py")
RANK_ROLE = {0: "owner", 1: "client", 2: "dealer"}  # party 0 owns the model; the TTP
FIRST_PORT = 29700


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = BenchConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profiles", default=None,
                   help="comma list: LAN, WAN or RATE/RTT such as 1gbit/10ms (default LAN,WAN)")
    p.add_argument("--caches", default="full,mpcache", help="comma list (default full,mpcache)")
    p.add_argument("--shape", default=None, help=f"default {defaults.shape}")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--context", type=int, default=None, help="tokens in the cache (default "
                   "2048)")
    p.add_argument("--budget", type=float, default=defaults.budget)
    p.add_argument("--steps", type=int, default=None, help="decode steps per row (default 2)")
    p.add_argument("--comparison", default=defaults.comparison)
    p.add_argument("--dealing", default=defaults.dealing)
    p.add_argument("--mtu", type=int, default=9000, help="veth and TUN MTU (default 9000)")
    p.add_argument("--no-calibrate", action="store_true",
                   help="hold RTT/2 per packet without taking off the path's own round trip")
    p.add_argument("--run-timeout", type=float, default=3600.0,
                   help="seconds before one row's roles are stopped (default 3600)")
    p.add_argument("--out", default=None, help="results JSON (default results/netns/"
                   "bench.json, or results/netns/bench-quick.json with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke run: short probes; by "
                   "default the tiny shape, 128 tokens, 1 decode step, LAN only")
    p.add_argument("--report", default=None, metavar="JSON",
                   help="no run: compare and print the runs saved in JSON (rewritten)")
    p.add_argument("--cleanup", action="store_true",
                   help="remove namespaces and processes a crashed run left, then exit")
    args = p.parse_args(argv)
    quick = {"profiles": "LAN", "shape": "tiny", "context": 128, "steps": 1}
    full = {"profiles": "LAN,WAN", "shape": defaults.shape, "context": 2048, "steps": 2}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.profile_list = [parse_profile(name) for name in args.profiles.split(",")]
        args.config = BenchConfig(shape=args.shape, layers=args.layers,
                                  contexts=(args.context,),
                                  caches=tuple(c.strip() for c in args.caches.split(",")
                                               if c.strip()),
                                  budget=args.budget, dealer="ttp",
                                  comparison=args.comparison, dealing=args.dealing,
                                  steps=args.steps, timeout_s=args.run_timeout)
    except ValueError as error:
        p.error(str(error))
    if any(profile is None for profile in args.profile_list):
        p.error(f"{UNSHAPED} is always run first (the compute reference); list shaped ones")
    args.out = Path(args.out or ROOT / "results" / "netns" /
                    ("bench-quick.json" if args.quick else "bench.json"))
    return args


# -- the pure part: per-step figures of a row and the model (unit-tested without root) --

def decode_steps(outputs: list[dict[str, Any]], steps: int) -> list[dict[str, Any]]:
    """Per decode step, as ``bench`` merges the parties: rounds and seconds the max over
    parties, bytes per party the larger party's (what one party sends)."""
    reports = [o["cost"] for o in outputs]
    merged = {p["phase"]: p for p in combine(reports)["phases"]}
    rows = []
    for step in range(steps):
        name = f"decode/{step}"
        if name not in merged:
            raise ValueError(f"no phase {name} in the parties' reports")
        own = [next(p for p in r["phases"] if p["phase"] == name) for r in reports]
        cpu = [c["cpu_s"] for o in outputs for c in o.get("cpu", []) if c["phase"] == name]
        rows.append({"step": step, "rounds": float(merged[name]["rounds"]),
                     "bytes_per_party": float(max(p["bytes"] for p in own)),
                     "seconds": float(merged[name]["seconds"]),
                     "dealer_rounds": float(merged[name]["dealer_rounds"]),
                     "dealer_seconds": float(merged[name]["dealer_seconds"]),
                     "cpu_s": max(cpu) if cpu else None})
    return rows


def run_table(results: dict[str, Any]) -> list[str]:
    """Markdown: every run's decode steps, wall seconds beside the busier party's CPU
    seconds (the roles' own record; what a step costs a core), and the host's load."""
    lines = ["| profile | cache | wall s per step | CPU s per step (busier party) | "
             "load at release / after |", "|---|---|---|---|---|"]
    for cache, runs in results["runs"].items():
        for name, run in runs.items():
            if not run.get("steps"):
                continue
            walls = ", ".join(f"{s['seconds']:.2f}" for s in run["steps"])
            cpus = ", ".join(f"{s['cpu_s']:.2f}" if s.get("cpu_s") is not None else "-"
                             for s in run["steps"])
            load = run.get("load") or {}
            lines.append(f"| {name} | {cache} | {walls} | {cpus} | "
                         f"{load.get('at_release', float('nan')):.1f} / "
                         f"{load.get('after', float('nan')):.1f} |")
    return lines


def compare_row(profile: str, cache: str, target: NetworkProfile, link: LinkMeasure,
                measured: list[dict[str, Any]], reference: list[dict[str, Any]]
                ) -> dict[str, Any]:
    """Measured seconds per decode step beside the model at the target and at the measured
    link (compute = the same step of the unshaped run), and what a counted round cost in
    measured round trips; the mean over steps with the per-step rows under ``per_step``.
    ``same_transcript`` is False when the shaped run's rounds or bytes differ from the
    reference's (the model then prices the shaped run's own figures)."""
    if len(measured) != len(reference):
        raise ValueError(f"{profile} {cache}: {len(measured)} decode steps measured, "
                         f"{len(reference)} in the unshaped reference")
    at_link = link.as_profile(target.name)
    per_step = []
    for step, ref in zip(measured, reference, strict=True):
        compute, rounds, party_bytes = ref["seconds"], step["rounds"], step["bytes_per_party"]
        seconds = step["seconds"]
        network_s = seconds - compute - party_bytes * 8.0 / at_link.bandwidth_bps
        model_target = target.latency(compute, rounds, party_bytes)
        model_link = at_link.latency(compute, rounds, party_bytes)
        per_step.append({
            "step": step["step"], "rounds": rounds, "bytes_per_party": party_bytes,
            "compute_s": compute, "measured_s": seconds,
            "model_target_s": model_target, "error_target": relative_error(model_target, seconds),
            "model_link_s": model_link, "error_link": relative_error(model_link, seconds),
            "rtts_per_round": network_s / (rounds * at_link.rtt_s) if rounds else 0.0,
            "same_transcript": (step["rounds"], step["bytes_per_party"])
            == (ref["rounds"], ref["bytes_per_party"])})
    row = mean_row(profile, cache, per_step)
    row["same_transcript"] = all(s["same_transcript"] for s in per_step)
    row["per_step"] = per_step
    return row


def compare(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (profile, cache) with a finished run and a finished unshaped reference."""
    rows = []
    for cache, runs in results["runs"].items():
        reference = runs.get(UNSHAPED) or {}
        if not reference.get("steps"):
            continue
        for name, run in runs.items():
            if name == UNSHAPED or not run.get("steps"):
                continue
            link = run["link"]
            target = NetworkProfile(name, bandwidth_bps=link["target"]["bandwidth_bps"],
                                    rtt_s=link["target"]["rtt_s"])
            measure = LinkMeasure(link["icmp_rtt_s"], link["tcp_rtt_s"], link["bulk_bps"])
            row = compare_row(name, cache, target, measure, run["steps"], reference["steps"])
            if "party_costs" in run and "party_costs" in reference:
                row["operators"] = operator_network(run["party_costs"][0],
                                                    reference["party_costs"][0],
                                                    len(run["steps"]), measure)
            rows.append(row)
    return rows


def party_operators(cost: dict[str, Any], steps: int) -> dict[str, dict[str, float]]:
    """One party's cost per operator kind per decode step (its own report, not merged:
    a merged operator's seconds are the max over parties, and one party's seconds of an
    operator include waiting for the other, e.g. party 1's first norm waits while party 0
    fetches the dealer's material)."""
    out: dict[str, dict[str, float]] = {}
    for phase, kinds in cost["phase_operators"].items():
        if phase.startswith("decode/"):
            for kind, c in kinds.items():
                slot = out.setdefault(kind, {"rounds": 0.0, "bytes": 0.0, "seconds": 0.0})
                for key in slot:
                    slot[key] += c[key] / steps
    return dict(sorted(out.items()))


def operator_network(shaped: dict[str, Any], reference: dict[str, Any], steps: int,
                     link: LinkMeasure) -> list[dict[str, Any]]:
    """Party 0's operators per decode step (``shaped`` and ``reference``: its cost reports
    in the two runs): the seconds the shaped link added over the unshaped run, beside its
    rounds x the measured RTT and its own bytes at the measured rate: where the network
    time goes, and which operators' rounds cost more or less than a round trip."""
    ours, base = party_operators(shaped, steps), party_operators(reference, steps)
    return [{"operator": kind, "rounds": cost["rounds"], "bytes": cost["bytes"],
             "reference_s": base[kind]["seconds"], "shaped_s": cost["seconds"],
             "added_s": cost["seconds"] - base[kind]["seconds"],
             "rounds_rtt_s": cost["rounds"] * link.tcp_rtt_s,
             "bytes_rate_s": cost["bytes"] * 8.0 / link.bulk_bps}
            for kind, cost in ours.items() if kind in base]


def operator_table(name: str, rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: ``operator_network``'s rows of one (profile, cache)."""
    lines = [f"{name}: party 0 per operator, per decode step", "",
             "| operator | rounds | MiB | unshaped s | shaped s | added s | rounds x RTT s | "
             "bytes / rate s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['operator']} | {r['rounds']:.0f} | {r['bytes'] / 2**20:.2f} | "
                     f"{r['reference_s']:.2f} | {r['shaped_s']:.2f} | {r['added_s']:+.2f} | "
                     f"{r['rounds_rtt_s']:.2f} | {r['bytes_rate_s']:.2f} |")
    return lines


# -- the run --

def role_argv(rank: int, task: RowTask, config: BenchConfig, rendezvous: str, barrier: Path,
              out: Path, timeout_s: float) -> list[str]:
    """The role script's command line for ``rank`` (the dealer writes no result)."""
    argv = [sys.executable, ROLE, "--rank", str(rank), "--rendezvous", rendezvous,
            "--task", json.dumps(asdict(task)),
            "--launch", json.dumps(asdict(config.launch_config())),
            "--barrier", str(barrier), "--barrier-timeout", f"{timeout_s:.0f}"]
    if rank < config.parties:
        argv += ["--out", str(out)]
    return argv


class RoleFailed(RuntimeError):
    """A role exited with an error, or the row ran past its timeout."""


class Row:
    """One bench row's roles in their namespaces; ``with`` stops every process."""

    def __init__(self, topo: Topology, config: BenchConfig, task: RowTask, label: str,
                 workdir: Path, port: int, timeout_s: float) -> None:
        self.topo, self.config, self.task, self.label = topo, config, task, label
        self.timeout_s = timeout_s
        self.dir = workdir / label
        self.dir.mkdir(parents=True, exist_ok=True)
        self.barrier = self.dir / "barrier"
        self.barrier.mkdir(exist_ok=True)
        self.rendezvous = f"tcp://{role_address('owner')}:{port}"
        self.ranks = list(range(config.parties + 1))  # the TTP dealer is rank == parties
        self.logs = {rank: self.dir / f"{RANK_ROLE[rank]}.log" for rank in self.ranks}
        self.outs = {rank: self.dir / f"rank{rank}.json" for rank in self.ranks}
        self.processes: dict[int, Any] = {}
        self.start = 0.0

    def __enter__(self) -> Row:
        import subprocess

        env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": ROLE_LINK}
        self.start = time.monotonic()
        for rank in self.ranks:  # party 0 first: it hosts the rendezvous
            argv = role_argv(rank, self.task, self.config, self.rendezvous, self.barrier,
                             self.outs[rank], self.timeout_s)
            with open(self.logs[rank], "wb") as log:
                self.processes[rank] = subprocess.Popen(
                    self.topo.command(RANK_ROLE[rank], argv), env=env, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def __exit__(self, *exc: object) -> None:
        stop_all(self.processes.values())

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def last_lines(self) -> dict[str, str]:
        return {RANK_ROLE[rank]: _tail(path) for rank, path in self.logs.items()}

    def exits(self) -> dict[str, int | None]:
        return {RANK_ROLE[rank]: p.poll() for rank, p in self.processes.items()}

    def _check(self, what: str) -> None:
        failed = {rank: p.returncode for rank, p in self.processes.items()
                  if p.poll() not in (None, 0)}
        if failed:
            rank = min(failed)
            raise RoleFailed(f"{RANK_ROLE[rank]} (rank {rank}) exited {failed[rank]} "
                             f"{what}: {_tail(self.logs[rank]) or 'no output'}")
        if self.elapsed() > self.timeout_s:
            raise RoleFailed(f"over {self.timeout_s:.0f} s {what}")

    def _progress(self, next_report: float, what: str) -> float:
        if self.elapsed() < next_report:
            return next_report
        lines = "; ".join(f"{role}: {line}" for role, line in self.last_lines().items())
        print(f"  [{self.label}] {self.elapsed():5.0f} s {what}  {lines}", flush=True)
        return self.elapsed() + PROGRESS_EVERY_S

    def wait_at_barrier(self) -> float:
        """Until both parties wait before their first decode phase; the seconds it took."""
        next_report = PROGRESS_EVERY_S
        parties = [rank for rank in self.ranks if rank < self.config.parties]
        while not all(arrived_file(self.barrier, rank).exists() for rank in parties):
            self._check("before the decode barrier")
            if all(self.processes[rank].poll() == 0 for rank in parties):
                raise RoleFailed("the parties ended without reaching the decode barrier")
            next_report = self._progress(next_report, "setup/static")
            time.sleep(0.2)
        return self.elapsed()

    def release_and_wait(self) -> float:
        """Let the parties into the decode steps; wait for every role to end; the seconds
        from the release to the last exit."""
        go_file(self.barrier).write_text(f"{time.time()}\n")
        released = time.monotonic()
        next_report = self.elapsed() + PROGRESS_EVERY_S
        while any(p.poll() is None for p in self.processes.values()):
            self._check("in the decode steps")
            next_report = self._progress(next_report, "decode")
            time.sleep(0.2)
        self._check("in the decode steps")
        return time.monotonic() - released

    def outputs(self) -> list[dict[str, Any]]:
        return [json.loads(self.outs[rank].read_text())
                for rank in self.ranks if rank < self.config.parties]


def run_row(topo: Topology, args: argparse.Namespace, task: RowTask,
            profile: NetworkProfile | None, workdir: Path, port: int) -> dict[str, Any]:
    """One row: setup and static unshaped, the barrier, the link shaped (when ``profile``)
    and measured, the decode steps; the merged row and its per-step figures. A failure is
    recorded (``failed``) and the link is unshaped again before this returns."""
    name = profile.name if profile else UNSHAPED
    label = f"{name}-{task.cache}"
    run: dict[str, Any] = {"label": label, "cache": task.cache, "profile": name,
                           "failed": None}
    link: dict[str, Any] = {"target": None}
    row = Row(topo, args.config, task, label, workdir, port, args.run_timeout)
    try:
        with row:
            print(f"{label}: setup and static eviction on the unshaped link ...", flush=True)
            run["barrier_after_s"] = row.wait_at_barrier()
            if profile is not None:
                base = 0.0 if args.no_calibrate else _calibration(topo, profile)
                hold = topo.shape(profile, base)
                link.update(target={"bandwidth_bps": profile.bandwidth_bps,
                                    "rtt_s": profile.rtt_s}, path_rtt_s=base, hold_s=hold)
            measure, detail = measure_link(topo, args.quick)
            link.update(icmp_rtt_s=measure.icmp_rtt_s, tcp_rtt_s=measure.tcp_rtt_s,
                        bulk_bps=measure.bulk_bps, probes=detail)
            print(f"{label}: at the barrier after {run['barrier_after_s']:.0f} s; link: ping "
                  f"{measure.icmp_rtt_s * 1e3:.3f} ms, TCP round trip "
                  f"{measure.tcp_rtt_s * 1e3:.3f} ms, TCP bulk {measure.bulk_bps / 1e6:.0f} "
                  f"Mbps; {task.steps} decode step(s) ...", flush=True)
            load_before = os.getloadavg()[0]
            run["decode_wall_s"] = row.release_and_wait()
            run["wall_s"] = row.elapsed()
            # the host's 1-minute load around the decode steps (other work adds noise)
            run["load"] = {"at_release": load_before, "after": os.getloadavg()[0]}
            if profile is not None:
                link["delayer"] = topo.unshape()
            outputs = row.outputs()
            run["row"] = summarize(task, args.config, outputs, run["wall_s"])
            run["steps"] = decode_steps(outputs, task.steps)
            run["barrier"] = [o.get("barrier") for o in outputs]
            run["party_costs"] = [o["cost"] for o in outputs]
    except RoleFailed as error:
        run["failed"] = str(error)
    finally:
        if profile is not None and topo.shaped is not None:
            link["delayer"] = topo.unshape()
    run["exit"], run["last_line"] = row.exits(), row.last_lines()
    run["link"] = link
    _print_run(run)
    return run


def _print_run(run: dict[str, Any]) -> None:
    if run["failed"]:
        print(f"  {run['label']} failed: {run['failed']}", flush=True)
        return
    steps = ", ".join(f"{s['seconds']:.2f}" for s in run["steps"])
    row = run["row"]
    print(f"  decode step seconds {steps}; {row['rounds']:.0f} rounds, "
          f"{row['bytes_per_party'] / 2**20:.1f} MiB/party per step; wall "
          f"{run['wall_s']:.0f} s", flush=True)


def run_all(args: argparse.Namespace, workdir: Path, results: dict[str, Any]) -> None:
    port = FIRST_PORT
    with Topology(args.mtu) as topo:
        for task in args.config.tasks():
            for profile in [None, *args.profile_list]:
                port += 1
                run = run_row(topo, args, task, profile, workdir, port)
                results["runs"].setdefault(task.cache, {})[run["profile"]] = run
                _save(args.out, results)


def check_memory(config: BenchConfig) -> None:
    """Refuse a row estimated above what this host has available now."""
    available = _available_gb()
    need = memory_estimate_gb(config, config.contexts[0])
    if available is not None and need > 0.9 * available:
        raise MemoryError(f"one row is estimated at {need:.1f} GB (3 processes), this host "
                          f"has {available:.1f} GB available: use a shorter --context")


def _available_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return None


def _save(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=float) + "\n")


def report(results: dict[str, Any], out: Path) -> int:
    """Compare, save and print; 0 when every run finished."""
    results["model"] = compare(results)
    _save(out, results)
    links = {f"{r['profile']} ({cache})": r["link"]
             for cache, runs in results["runs"].items() for r in runs.values()
             if r["link"].get("tcp_rtt_s") is not None}
    config = results["config"]
    print(f"\n{config['shape']}, {config['layers']} layer(s), {config['contexts'][0]} tokens, "
          f"budget {config['budget']}, dealer {config['dealer']}, dealing {config['dealing']}, "
          f"comparison {config['comparison']}, {config['steps']} decode step(s)\n")
    print("\n".join(link_table(links)))
    print("\nThe runs' decode steps:\n")
    print("\n".join(run_table(results)))
    print("\nPer decode step (mean over steps), measured vs model:\n")
    print("\n".join(model_table(results["model"])))
    for row in results["model"]:
        if row.get("operators") and (row["profile"] == "WAN" or len(results["model"]) == 1):
            print("\n" + "\n".join(operator_table(f"{row['profile']} {row['cache']}",
                                                  row["operators"])))
    failed = [r for runs in results["runs"].values() for r in runs.values() if r["failed"]]
    for run in failed:
        print(f"\n{run['label']} failed: {run['failed']}")
    changed = [f"{r['profile']} {r['cache']}" for r in results["model"]
               if not r["same_transcript"]]
    if changed:
        print(f"\nrounds or bytes differ from the unshaped run: {', '.join(changed)}")
    print(f"\nwrote {out}")
    return 1 if failed else 0


def _interrupt_on_signals() -> None:
    """SIGTERM, and SIGINT even when started in the background (where the shell ignores
    it), end the run as Ctrl-C does: the roles stopped, the namespaces removed."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        return report(json.loads(Path(args.report).read_text()), Path(args.report))
    try:
        check_host()
    except OSError as error:
        print(f"netns_bench: {error}", file=sys.stderr)
        return 2
    if args.cleanup:
        print(f"removed: {', '.join(cleanup()) or 'nothing'}")
        return 0
    try:
        check_memory(args.config)
    except MemoryError as error:
        print(f"netns_bench: {error}", file=sys.stderr)
        return 2
    config = asdict(args.config)
    config["contexts"], config["caches"] = list(args.config.contexts), list(args.config.caches)
    results: dict[str, Any] = {"command": " ".join(sys.argv), "started": time.ctime(),
                               "mtu": args.mtu, "config": config,
                               "ranks": {role: rank for rank, role in RANK_ROLE.items()},
                               "runs": {}}
    _interrupt_on_signals()
    with tempfile.TemporaryDirectory(prefix="netns-bench-") as tmp:
        try:
            run_all(args, Path(tmp), results)
        except KeyboardInterrupt:
            print("netns_bench: interrupted; namespaces and processes removed",
                  file=sys.stderr)
            return 130
        except RuntimeError as error:
            print(f"netns_bench: {error}", file=sys.stderr)
            return 1
    return report(results, args.out)


if __name__ == "__main__":
    sys.exit(main())
