"""A link that drops every packet mid-step: the fault case of issue 15 part 3 that needs
namespaces. The three roles run over the unshaped star (tiny random Llama); once the
client is in decode, one role's veth is set down (``ip link set link0 down`` in its
namespace: every packet to and from it is lost, the process lives on). Prints, per role,
its exit status, the seconds from the drop to its exit, and its last line.

    sudo .venv/bin/python benchmarks/netns_fault.py --role client --step-timeout 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from netns_session import SessionSpec, _tail, stop_all
from netns_topology import ROLE_LINK, ROLES, Topology, check_host, namespace, role_address


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--role", default="client", choices=ROLES, help="whose link drops")
    p.add_argument("--step-timeout", type=float, default=5.0)
    p.add_argument("--liveness", type=float, default=10.0)
    p.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the exits")
    args = p.parse_args(argv)
    try:
        check_host()
    except OSError as error:
        print(f"netns_fault: {error}", file=sys.stderr)
        return 2
    from crypten_mpcache.testing import save_tiny_llama

    with tempfile.TemporaryDirectory(prefix="netns-fault-") as tmp, Topology(9000) as topo:
        work = Path(tmp)
        model = save_tiny_llama(work / "tiny", seed=1, lm_head_gain=4.0, max_positions=64)
        spec = SessionSpec(cache="full", max_new_tokens=12, model=model,
                           prompt_ids=[3, 1, 4, 1, 5, 9, 2, 6], step_timeout_s=args.step_timeout,
                           extra=["--liveness", str(args.liveness)])
        rendezvous = f"tcp://{role_address('owner')}:29700"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": ROLE_LINK}
        logs = {role: work / f"{role}.log" for role in ROLES}
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for role in ("owner", "dealer", "client"):
                with open(logs[role], "wb") as log:
                    procs[role] = subprocess.Popen(
                        topo.command(role, spec.role_args(role, rendezvous, work / "c.json")),
                        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + 300
            while "private decode" not in logs["client"].read_text(errors="replace"):
                if time.monotonic() > deadline or any(p.poll() is not None for p in
                                                      procs.values()):
                    print("netns_fault: the session did not reach decode", file=sys.stderr)
                    return 1
                time.sleep(0.2)
            time.sleep(1.0)
            subprocess.run(["ip", "-n", namespace(args.role), "link", "set", ROLE_LINK, "down"],
                           check=True)
            dropped, ended = time.monotonic(), {}
            while len(ended) < len(procs) and time.monotonic() - dropped < args.wait:
                for role, proc in procs.items():
                    if role not in ended and proc.poll() is not None:
                        ended[role] = time.monotonic() - dropped
                time.sleep(0.1)
        finally:
            stop_all(procs.values())
        report = {role: {"exit": procs[role].returncode,
                         "seconds_after_drop": ended.get(role),
                         "last_line": _tail(logs[role])} for role in ROLES}
    print(json.dumps({"dropped": args.role, "step_timeout_s": args.step_timeout,
                      "liveness_s": args.liveness, "roles": report}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
