"""Real links, measured: the roles of a private generation in three network namespaces.

Each role (owner = party 0, client = party 1, dealer) runs ``crypten-mpcache party`` in its
own namespace, joined to a router namespace by a veth pair; each link is rate-limited by
htb and delayed by a userspace TUN delayer (no netem in this kernel), see
``netns_topology``. For the unshaped link (the compute reference) and for each profile
(README's LAN 3 Gbps / 0.8 ms, WAN 200 Mbps / 40 ms) it measures the link (ping, TCP
round trip, TCP bulk), runs the generation per cache, checks the client's tokens against
the owner's plaintext greedy run, and sets the measured seconds per decode step beside
the cost model (``runtime.network``: compute + rounds x RTT + per-party bytes / rate).

    sudo .venv/bin/python benchmarks/netns_links.py                  # LAN and WAN
    sudo .venv/bin/python benchmarks/netns_links.py --quick          # smoke run (~2 min)
    sudo .venv/bin/python benchmarks/netns_links.py --cleanup        # after a crash
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from netns_model import (
    UNSHAPED,
    LinkMeasure,
    compare_steps,
    link_table,
    mean_row,
    model_table,
    parse_profile,
)
from netns_session import SessionSpec, measure_link, run_session, tcp_rtt
from netns_topology import Topology, check_host, cleanup

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PROMPT = "What is 2+2?"
QUICK_PROMPT_IDS = [3, 1, 4, 1, 5, 9, 2, 6]  # the party CLI tests' prompt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profiles", default="LAN,WAN",
                   help="comma list: LAN, WAN or RATE/RTT such as 1gbit/10ms (default LAN,WAN)")
    p.add_argument("--caches", default="full,mpcache", help="comma list (default full,mpcache)")
    p.add_argument("--max-new-tokens", type=int, default=3)
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--prompt-ids", default=None, metavar="ID,ID,...",
                   help="the prompt as token ids (instead of --prompt)")
    p.add_argument("--party-arg", action="append", default=[], metavar="ARG",
                   help="passed to every role's party command (repeat: --party-arg=--dealing "
                   "--party-arg=on-demand)")
    p.add_argument("--model", default=None, help="checkpoint folder (default: embedded SmolLM2)")
    p.add_argument("--mtu", type=int, default=9000, help="veth and TUN MTU (default 9000: "
                   "jumbo frames, what a 3 Gbps LAN uses, and fewer packets for the delayer)")
    p.add_argument("--no-calibrate", action="store_true",
                   help="hold RTT/2 per packet without taking off the path's own round trip")
    p.add_argument("--run-timeout", type=float, default=3600.0,
                   help="seconds before one generation is stopped (default 3600)")
    p.add_argument("--out", default=None, help="results JSON (default "
                   "results/netns/links.json, or results/netns/quick.json with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke run: a tiny random Llama, LAN "
                   "only, full cache, 2 new tokens, short probes")
    p.add_argument("--report", default=None, metavar="JSON",
                   help="no run: compare and print the runs saved in JSON (rewritten)")
    p.add_argument("--cleanup", action="store_true",
                   help="remove namespaces and processes a crashed run left, then exit")
    args = p.parse_args(argv)
    if args.quick:
        args.profiles, args.caches, args.max_new_tokens = "LAN", "full", 2
    args.profile_list = [parse_profile(name) for name in args.profiles.split(",")]
    if any(profile is None for profile in args.profile_list):
        p.error(f"{UNSHAPED} is always run first (the compute reference); list shaped ones")
    if args.quick and args.prompt_ids is None:
        args.prompt_ids = ",".join(map(str, QUICK_PROMPT_IDS))
    args.id_list = ([int(t) for t in args.prompt_ids.split(",")] if args.prompt_ids
                    else None)
    args.cache_list = [c.strip() for c in args.caches.split(",") if c.strip()]
    args.out = Path(args.out or ROOT / "results" / "netns" /
                    ("quick.json" if args.quick else "links.json"))
    return args


def plaintext_ids(model: str | None, prompt_ids: list[int], cache: str, steps: int,
                  generated: list[int]) -> list[int]:
    """The owner's plaintext greedy tokens (with the same cache policy applied)."""
    from crypten_mpcache.private import (
        PrivateGenerationConfig,
        plaintext_method_reference,
        plaintext_reference,
    )

    config = PrivateGenerationConfig(max_new_tokens=steps, model_path=model, cache=cache)
    folder = config.model_folder()
    method = config.method_config()
    if method is None:
        return plaintext_reference(folder, prompt_ids, generated, steps)[0]
    return plaintext_method_reference(folder, prompt_ids, generated, steps, method)[0]


def prompt_ids_of(args: argparse.Namespace) -> list[int]:
    if args.id_list is not None:
        return args.id_list
    from crypten_mpcache.private import PrivateGenerationConfig, tokenize_prompt

    folder = PrivateGenerationConfig(model_path=args.model).model_folder()
    return tokenize_prompt(args.prompt, folder, True)[0]


def quick_model(workdir: Path) -> str:
    """A tiny random Llama with wide logit gaps (fixed-point noise flips no argmax)."""
    from crypten_mpcache.testing import save_tiny_llama

    return save_tiny_llama(workdir / "tiny", seed=1, lm_head_gain=4.0, max_positions=64)


def run_profiles(args: argparse.Namespace, workdir: Path, results: dict[str, Any]) -> None:
    """Every (link, cache) generation; ``results`` is filled (and saved) as runs end."""
    port = 29600
    with Topology(args.mtu) as topo:
        for profile in [None, *args.profile_list]:
            name = profile.name if profile else UNSHAPED
            link: dict[str, Any] = {"target": None}
            if profile is not None:
                base = 0.0 if args.no_calibrate else _calibration(topo, profile)
                hold = topo.shape(profile, base)
                link.update(target={"bandwidth_bps": profile.bandwidth_bps,
                                    "rtt_s": profile.rtt_s}, path_rtt_s=base, hold_s=hold)
            measure, detail = measure_link(topo, args.quick)
            link.update(icmp_rtt_s=measure.icmp_rtt_s, tcp_rtt_s=measure.tcp_rtt_s,
                        bulk_bps=measure.bulk_bps, probes=detail)
            results["links"][name] = link
            print(f"{name}: ping {measure.icmp_rtt_s * 1e3:.3f} ms, TCP round trip "
                  f"{measure.tcp_rtt_s * 1e3:.3f} ms, TCP bulk {measure.bulk_bps / 1e6:.0f} "
                  "Mbps", flush=True)
            for cache in args.cache_list:
                port += 1
                spec = SessionSpec(cache=cache, max_new_tokens=args.max_new_tokens,
                                   model=args.model, prompt=args.prompt,
                                   prompt_ids=args.id_list, extra=args.party_arg)
                print(f"{name} {cache}: running owner, dealer and client ...", flush=True)
                run = run_session(topo, spec, f"{name}-{cache}", workdir, port, args.run_timeout)
                _print_run(run)
                results["runs"].setdefault(name, {})[cache] = run
                _save(args.out, results)
            if profile is not None:
                link["delayer"] = topo.unshape()
                _save(args.out, results)


def _calibration(topo: Topology, profile: Any) -> float:
    """What the path adds to the delayer's holds (kernel, the delayer's wake-ups): the TCP
    round trip at a hold of RTT / 2, less 2 x that hold. The hold is then shortened by it
    (``one_way_hold_s``), so the measured round trip lands near the target."""
    hold = topo.shape(profile)
    try:
        return max(0.0, tcp_rtt(topo) - 2 * hold)
    finally:
        topo.unshape()


def _print_run(run: dict[str, Any]) -> None:
    client = run["client"]
    if client is None:
        print(f"  failed: exit {run['exit']}; last lines {run['last_line']}", flush=True)
        return
    steps = ", ".join(f"{s['seconds']:.2f}" for s in client["cost"]["decode"])
    print(f"  tokens {client['generated_ids']}; decode step seconds {steps}; "
          f"wall {run['wall_s']:.0f} s; exit {run['exit']}", flush=True)


def _save(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=float) + "\n")


def compare(args: argparse.Namespace, results: dict[str, Any]) -> bool:
    """Tokens vs the owner's plaintext run, and measured vs model per (profile, cache);
    return whether every run produced the plaintext tokens."""
    ids, all_match = prompt_ids_of(args), True
    reference_runs = results["runs"].get(UNSHAPED, {})
    results["tokens"], results["model"] = {}, []
    for cache in args.cache_list:
        runs = {name: r[cache] for name, r in results["runs"].items() if cache in r}
        produced = {name: (r["client"] or {}).get("generated_ids") for name, r in runs.items()}
        first = next((t for t in produced.values() if t), [])
        plain = plaintext_ids(args.model, ids, cache, args.max_new_tokens, first)
        match = {name: tokens == plain for name, tokens in produced.items()}
        all_match &= all(match.values())
        results["tokens"][cache] = {"plaintext": plain, "runs": produced, "match": match}
        reference = (reference_runs.get(cache) or {}).get("client")
        for profile in args.profile_list:
            run = runs.get(profile.name)
            if not run or not run["client"] or not reference:
                continue
            link = results["links"][profile.name]
            measure = LinkMeasure(link["icmp_rtt_s"], link["tcp_rtt_s"], link["bulk_bps"])
            steps = compare_steps(run["client"]["cost"]["decode"], reference["cost"]["decode"],
                                  profile, measure, run["client"]["parties"])
            results["model"].append({**mean_row(profile.name, cache, steps), "per_step": steps})
    return all_match


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        return report(args, json.loads(Path(args.report).read_text()), Path(args.report))
    try:
        check_host()
    except OSError as error:
        print(f"netns_links: {error}", file=sys.stderr)
        return 2
    if args.cleanup:
        removed = cleanup()
        print(f"removed: {', '.join(removed) or 'nothing'}")
        return 0
    results: dict[str, Any] = {"command": " ".join(sys.argv), "started": time.ctime(),
                               "mtu": args.mtu, "max_new_tokens": args.max_new_tokens,
                               "prompt": args.prompt_ids or args.prompt,
                               "party_args": args.party_arg,
                               "links": {}, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="netns-links-") as tmp:
        workdir = Path(tmp)
        if args.quick:
            args.model = quick_model(workdir)
        try:
            run_profiles(args, workdir, results)
        except KeyboardInterrupt:
            print("netns_links: interrupted; namespaces and processes removed", file=sys.stderr)
            return 130
        except RuntimeError as error:
            print(f"netns_links: {error}", file=sys.stderr)
            return 1
        if args.quick:
            results["model_path"] = "tiny random Llama (testing.save_tiny_llama seed 1)"
        return report(args, results, args.out)


def report(args: argparse.Namespace, results: dict[str, Any], out: Path) -> int:
    """Compare, save and print; 0 when every run gave the plaintext tokens."""
    all_match = compare(args, results)
    _save(out, results)
    print("\n" + "\n".join(link_table(results["links"])))
    print("\nPer decode step (mean over steps), measured vs model:\n")
    print("\n".join(model_table(results["model"])))
    for cache, tokens in results["tokens"].items():
        print(f"\n{cache}: plaintext {tokens['plaintext']}; "
              + "; ".join(f"{n} {'==' if m else '!='}" for n, m in tokens["match"].items()))
    print(f"\nwrote {out}")
    return 0 if all_match else 1


if __name__ == "__main__":
    sys.exit(main())
