"""What one counted round costs on a shaped link: gloo's collectives timed between two
namespaces, in link round trips. Why: the cost model prices every round CrypTen counts at
one RTT; this measures what gloo's all_reduce, broadcast and a send/recv exchange take.

    sudo .venv/bin/python benchmarks/netns_gloo_rounds.py --profile WAN
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from netns_model import parse_profile
from netns_topology import ROLE_LINK, Topology, check_host, role_address

REPEATS = 10


def _party(rank: int, port: int, elements: int) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://{role_address('owner')}:{port}",
                            rank=rank, world_size=2)
    x = torch.zeros(elements, dtype=torch.long)
    timings = {}

    def timed(name: str, op) -> None:  # noqa: ANN001
        op()  # warm
        dist.barrier()
        start = time.perf_counter()
        for _ in range(REPEATS):
            op()
        timings[name] = (time.perf_counter() - start) / REPEATS

    timed("all_reduce", lambda: dist.all_reduce(x))
    timed("broadcast", lambda: dist.broadcast(x, 0))
    timed("batched all_reduce x2 (async)", lambda: [w.wait() for w in [
        dist.all_reduce(x.clone(), async_op=True) for _ in range(2)]])

    def exchange() -> None:  # both send, both receive (one message each way)
        y = torch.empty_like(x)
        reqs = [dist.isend(x, 1 - rank), dist.irecv(y, 1 - rank)]
        for r in reqs:
            r.wait()

    timed("isend+irecv exchange", exchange)
    if rank == 0:
        print(json.dumps(timings), flush=True)
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="WAN")
    p.add_argument("--elements", type=int, default=1)
    p.add_argument("--party", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=29800, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.party is not None:
        _party(args.party, args.port, args.elements)
        return 0
    try:
        check_host()
    except OSError as error:
        print(f"netns_gloo_rounds: {error}", file=sys.stderr)
        return 2
    profile = parse_profile(args.profile)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": ROLE_LINK}
    with Topology(9000) as topo:
        if profile is not None:
            topo.shape(profile)
        argv0 = [sys.executable, __file__, "--elements", str(args.elements), "--port",
                 str(args.port), "--party"]
        procs = [subprocess.Popen(topo.command(role, [*argv0, str(rank)]), env=env,
                                  stdout=subprocess.PIPE, text=True)
                 for rank, role in enumerate(("owner", "client"))]
        try:
            out = procs[0].communicate(timeout=300)[0]
            procs[1].wait(timeout=30)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    timings = json.loads(out.strip().splitlines()[-1])
    rtt = profile.rtt_s if profile else float("nan")
    for name, seconds in timings.items():
        print(f"{name:<32} {seconds * 1e3:8.2f} ms  = {seconds / rtt:5.2f} x target RTT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
