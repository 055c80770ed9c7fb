"""One private generation with each role in its own namespace, and the link probes.

Why processes and not ``launch``: these are the ``crypten-mpcache party`` commands a user
runs on three hosts, one per namespace, meeting at the owner's address over the veths.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netns_model import LinkMeasure
from netns_topology import HERE, ROLE_LINK, ROLES, Topology, role_address

PARTY = str(Path(sys.executable).with_name("crypten-mpcache"))
PROBE = str(HERE / "netns_probe.py")
PROBE_PORT = 5201
PROGRESS_EVERY_S = 30.0


@dataclass
class SessionSpec:
    """What the client asks and the owner serves (the same for every profile)."""

    cache: str
    max_new_tokens: int
    model: str | None = None  # None: the embedded SmolLM2
    prompt: str | None = None
    prompt_ids: list[int] | None = None
    step_timeout_s: float = 600.0
    extra: list[str] = field(default_factory=list)

    def role_args(self, role: str, rendezvous: str, json_path: Path) -> list[str]:
        argv = [PARTY, "party", "--role", role, "--rendezvous", rendezvous,
                "--link-is-protected", "--step-timeout", str(self.step_timeout_s), *self.extra]
        if role in ("owner", "client") and self.model:
            argv += ["--model", self.model]
        if role == "client":
            argv += ["--max-new-tokens", str(self.max_new_tokens), "--cache", self.cache,
                     "--json", str(json_path)]
            if self.prompt_ids is not None:
                argv += ["--prompt-ids", ",".join(map(str, self.prompt_ids))]
            elif self.prompt is not None:
                argv += ["--prompt", self.prompt]
        return argv


def _probe(topo: Topology, role: str, args: list[str]) -> dict[str, Any]:
    done = subprocess.run(topo.command(role, [sys.executable, PROBE, *args]),
                          capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise RuntimeError(f"link probe {args[0]} from {role} failed: "
                           f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(done.stdout)


@contextmanager
def _probe_server(topo: Topology) -> Iterator[None]:
    """The probe's echo/sink server in the owner's namespace, for the ``with`` block."""
    server = subprocess.Popen(topo.command("owner", [sys.executable, PROBE, "serve", "--port",
                                                     str(PROBE_PORT)]),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        server.stdout.readline()  # it is listening
        yield
    finally:
        server.kill()
        server.wait()


def stop_all(processes: Iterable[subprocess.Popen]) -> None:
    """Kill every still-running role's process group (its children too) and reap it."""
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def measure_link(topo: Topology, quick: bool) -> tuple[LinkMeasure, dict[str, Any]]:
    """Client -> owner: ICMP and TCP round trips (median), and TCP bulk rate; also the
    client -> dealer round trip (another pair, the same delayer)."""
    owner = role_address("owner")
    with _probe_server(topo):
        count = "10" if quick else "40"
        icmp = _probe(topo, "client", ["icmp", owner, "--count", count])
        tcp = _probe(topo, "client", ["rtt", owner, "--port", str(PROBE_PORT), "--count", count])
        bulk = _probe(topo, "client", ["bulk", owner, "--port", str(PROBE_PORT), "--seconds",
                                       "1" if quick else "4"])
        dealer = _probe(topo, "client", ["icmp", role_address("dealer"), "--count", count])
    measure = LinkMeasure(icmp_rtt_s=icmp["median_s"], tcp_rtt_s=tcp["median_s"],
                          bulk_bps=bulk["bulk_bps"])
    detail = {"icmp": icmp, "tcp": tcp, "bulk_bps": bulk["bulk_bps"], "icmp_client_dealer": dealer}
    return measure, detail


def tcp_rtt(topo: Topology) -> float:
    """The median TCP round trip client -> owner (for the delay calibration)."""
    with _probe_server(topo):
        tcp = _probe(topo, "client", ["rtt", role_address("owner"), "--port", str(PROBE_PORT),
                                      "--count", "40"])
    return float(tcp["median_s"])


def _tail(path: Path) -> str:
    """The last line of a log (tqdm's carriage returns count as line ends)."""
    try:
        text = path.read_bytes()[-4000:].decode(errors="replace")
    except OSError:
        return ""
    parts = [p.strip() for p in text.replace("\r", "\n").splitlines() if p.strip()]
    return parts[-1][:120] if parts else ""


def run_session(topo: Topology, spec: SessionSpec, label: str, workdir: Path, port: int,
                timeout_s: float) -> dict[str, Any]:
    """Start owner, dealer and client in their namespaces; wait for all three; return the
    exit codes, the harness's wall time, the client's JSON (None if it failed) and the
    last line each role printed. Every process is ended before this returns."""
    workdir.mkdir(parents=True, exist_ok=True)
    rendezvous = f"tcp://{role_address('owner')}:{port}"
    json_path = workdir / f"{label}.client.json"
    json_path.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": ROLE_LINK}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    logs = {role: workdir / f"{label}.{role}.log" for role in ROLES}
    start = time.monotonic()
    try:
        for role in ("owner", "dealer", "client"):  # the owner hosts the rendezvous
            with open(logs[role], "wb") as log:
                processes[role] = subprocess.Popen(
                    topo.command(role, spec.role_args(role, rendezvous, json_path)), env=env,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        next_report = start + PROGRESS_EVERY_S
        while any(p.poll() is None for p in processes.values()):
            now = time.monotonic()
            if now - start > timeout_s:
                print(f"  [{label}] over {timeout_s:.0f} s: stopping the roles", flush=True)
                break
            if now >= next_report:
                print(f"  [{label}] {now - start:5.0f} s  client: {_tail(logs['client'])}",
                      flush=True)
                next_report = now + PROGRESS_EVERY_S
            time.sleep(0.5)
    finally:
        stop_all(processes.values())
    wall = time.monotonic() - start
    client = json.loads(json_path.read_text()) if json_path.is_file() else None
    return {"label": label, "cache": spec.cache, "wall_s": wall,
            "exit": {role: p.returncode for role, p in processes.items()},
            "last_line": {role: _tail(path) for role, path in logs.items()},
            "client": client}


def decode_summary(client: dict[str, Any]) -> dict[str, Any]:
    """The per-step numbers the comparison uses, from the client's JSON."""
    steps = client["cost"]["decode"]
    return {"generated_ids": client["generated_ids"], "prompt_tokens": client["prompt_tokens"],
            "steps": steps, "mean_step_s": statistics.fmean(s["seconds"] for s in steps)
            if steps else None}
