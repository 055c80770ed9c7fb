"""The bench decode step in namespaces (benchmarks/netns_bench*): its pure parts without
root, and one slow smoke run of ``netns_bench.py --quick`` that is skipped when not root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import netns_bench as bench  # noqa: E402
import netns_bench_role as role  # noqa: E402
import netns_topology as topology  # noqa: E402
from netns_model import LinkMeasure  # noqa: E402

from crypten_mpcache.bench.party import RowTask  # noqa: E402
from crypten_mpcache.runtime.network import WAN  # noqa: E402


def _phase(name: str, rounds: int, bytes_: int, seconds: float) -> dict:
    return {"phase": name, "bytes": bytes_, "rounds": rounds, "seconds": seconds,
            "dealer_bytes": 0, "dealer_rounds": 0, "dealer_seconds": 0.0}


def _party(decode: list[tuple[int, int, float]]) -> dict:
    phases = [_phase("setup", 1, 10, 1.0)]
    phases += [_phase(f"decode/{i}", *d) for i, d in enumerate(decode)]
    return {"cost": {"phases": phases, "operators": {},
                     "phase_operators": {p["phase"]: {} for p in phases}}}


def test_decode_steps_merge_the_parties_as_bench_does():
    outputs = [_party([(10, 300, 2.0), (11, 310, 2.5)]),
               _party([(12, 100, 2.2), (11, 330, 2.4)])]
    steps = bench.decode_steps(outputs, 2)
    assert [s["rounds"] for s in steps] == [12, 11]  # max over parties
    assert [s["bytes_per_party"] for s in steps] == [300, 330]  # the larger party's
    assert [s["seconds"] for s in steps] == [2.2, 2.5]
    with pytest.raises(ValueError, match="decode/2"):
        bench.decode_steps(outputs, 3)


def test_the_model_prices_the_shaped_step_with_the_unshaped_compute():
    reference = [{"step": 0, "rounds": 100.0, "bytes_per_party": 25e6, "seconds": 2.0}]
    measured = [{"step": 0, "rounds": 100.0, "bytes_per_party": 25e6, "seconds": 10.0}]
    link = LinkMeasure(icmp_rtt_s=0.05, tcp_rtt_s=0.05, bulk_bps=100e6)
    row = bench.compare_row("WAN", "full", WAN, link, measured, reference)
    # 2 s compute + 100 x 40 ms + 25 MB x 8 / 200 Mbps = 7 s against 10 s measured
    assert row["model_target_s"] == pytest.approx(7.0)
    assert row["error_target"] == pytest.approx(-0.3)
    assert row["model_link_s"] == pytest.approx(2.0 + 5.0 + 2.0)
    assert row["rtts_per_round"] == pytest.approx((10.0 - 2.0 - 2.0) / (100 * 0.05))
    assert row["same_transcript"] and row["steps"] == 1
    other = [{**measured[0], "rounds": 101.0}]
    assert not bench.compare_row("WAN", "full", WAN, link, other, reference)["same_transcript"]
    with pytest.raises(ValueError, match="2 decode steps"):
        bench.compare_row("WAN", "full", WAN, link, measured * 2, reference)


def test_compare_skips_runs_without_a_reference_or_that_failed():
    steps = [{"step": 0, "rounds": 10.0, "bytes_per_party": 1e6, "seconds": 1.0}]
    link = {"target": {"bandwidth_bps": 200e6, "rtt_s": 0.04}, "icmp_rtt_s": 0.04,
            "tcp_rtt_s": 0.04, "bulk_bps": 190e6}
    shaped = {"steps": [{**steps[0], "seconds": 1.5}], "link": link, "failed": None}
    results = {"runs": {"full": {"unshaped": {"steps": steps}, "WAN": shaped},
                        "mpcache": {"WAN": shaped},
                        "other": {"unshaped": {"steps": steps},
                                  "WAN": {"failed": "client exited 1", "link": link}}}}
    (row,) = bench.compare(results)
    assert (row["profile"], row["cache"], row["measured_s"]) == ("WAN", "full", 1.5)


def test_party_operators_show_what_the_link_added_per_step():
    def cost(softmax_s: float) -> dict:
        ops = {"softmax": {"rounds": 10, "bytes": 4e6, "seconds": softmax_s},
               "linear": {"rounds": 1, "bytes": 0, "seconds": 1.0}}
        return {"phase_operators": {"setup": {"linear": {"rounds": 5, "bytes": 9e9,
                                                          "seconds": 50.0}},
                                    "decode/0": ops, "decode/1": ops}}
    link = LinkMeasure(icmp_rtt_s=0.04, tcp_rtt_s=0.04, bulk_bps=200e6)
    rows = {r["operator"]: r for r in bench.operator_network(cost(0.7), cost(0.2), 2, link)}
    assert set(rows) == {"softmax", "linear"}  # setup is not a decode step
    softmax = rows["softmax"]
    assert softmax["rounds"] == 10 and softmax["added_s"] == pytest.approx(0.5)
    assert softmax["rounds_rtt_s"] == pytest.approx(0.4)
    assert softmax["bytes_rate_s"] == pytest.approx(0.16)
    assert "| softmax | 10 | 3.81 | 0.20 | 0.70 | +0.50 | 0.40 | 0.16 |" in \
        bench.operator_table("WAN full", list(rows.values()))


def test_each_rank_runs_the_role_script_with_the_row():
    args = bench.parse_args(["--quick"])
    (task, *_) = args.config.tasks()
    assert (task.shape, task.context, task.steps) == ("tiny", 128, 1)
    assert [p.name for p in args.profile_list] == ["LAN"]
    party = bench.role_argv(1, task, args.config, "tcp://10.231.0.2:1", Path("b"), Path("o"),
                            60)
    dealer = bench.role_argv(2, task, args.config, "tcp://10.231.0.2:1", Path("b"),
                             Path("o"), 60)
    assert RowTask(**json.loads(party[party.index("--task") + 1])) == task
    launch = json.loads(party[party.index("--launch") + 1])
    assert launch["dealer"] == "ttp" and launch["dealing"] == "ahead"
    assert "--out" in party and "--out" not in dealer
    full = bench.parse_args([])
    assert (full.config.shape, full.config.contexts, full.config.caches) == (
        "llama2-7b", (2048,), ("full", "mpcache"))
    with pytest.raises(SystemExit):
        bench.parse_args(["--profiles", "unshaped"])


def test_the_barrier_holds_a_party_until_the_go(tmp_path):
    released: dict = {}
    worker = threading.Thread(target=lambda: released.update(
        role.wait_at_barrier(tmp_path, 1, timeout_s=10)))
    worker.start()
    for _ in range(500):
        if role.arrived_file(tmp_path, 1).exists():
            break
        time.sleep(0.01)
    time.sleep(0.1)
    assert worker.is_alive() and not released
    role.go_file(tmp_path).write_text("go\n")
    worker.join(timeout=5)
    assert released["waited_s"] >= 0.1
    never = tmp_path / "never"
    never.mkdir()
    with pytest.raises(TimeoutError):
        role.wait_at_barrier(never, 0, timeout_s=0.05)


def _namespaces_usable() -> str | None:
    """Why the harness cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, tc, a TUN device)"
    try:
        topology.check_host()
    except OSError as error:
        return str(error)
    return None


@pytest.mark.slow
def test_the_quick_harness_runs_a_bench_row_over_a_shaped_link(tmp_path):
    reason = _namespaces_usable()
    if reason:
        pytest.skip(reason)
    if topology.existing_namespaces():
        pytest.skip("the harness's namespaces exist: another run is in progress")
    out = tmp_path / "bench-quick.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "netns_bench.py"), "--quick",
                           "--caches", "full", "--out", str(out)], capture_output=True,
                          text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    runs = result["runs"]["full"]
    assert set(runs) == {"unshaped", "LAN"} and not any(r["failed"] for r in runs.values())
    lan = runs["LAN"]
    assert 0.4e-3 < lan["link"]["tcp_rtt_s"] < 3e-3  # the delayer held the decode step
    assert lan["link"]["delayer"]["packets"] > 0
    assert runs["unshaped"]["link"]["tcp_rtt_s"] < 0.4e-3
    for run in runs.values():
        assert run["row"]["rounds"] > 0 and run["row"]["bytes_per_party"] > 0
        assert run["row"]["attended_max"] > 0 and len(run["steps"]) == 1
        assert all(b["waited_s"] >= 0 for b in run["barrier"])
    (row,) = result["model"]
    assert row["profile"] == "LAN" and row["same_transcript"]
    assert row["measured_s"] > 0 and row["model_target_s"] > row["compute_s"] > 0
    assert {op["operator"] for op in row["operators"]} >= {"linear", "softmax"}
    assert topology.existing_namespaces() == []
