"""The namespace link harness (benchmarks/netns_*): its pure parts without root, and one
slow smoke run of ``netns_links.py --quick`` that is skipped when not root."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import netns_delayer  # noqa: E402
import netns_model as model  # noqa: E402
import netns_probe  # noqa: E402
import netns_topology as topology  # noqa: E402
from netns_session import SessionSpec  # noqa: E402

from crypten_mpcache.runtime.network import LAN, WAN  # noqa: E402


def test_profiles_parse_by_name_rate_and_rtt():
    assert model.parse_profile("lan") is LAN and model.parse_profile("WAN") is WAN
    assert model.parse_profile("unshaped") is None
    custom = model.parse_profile("1gbit/10ms")
    assert (custom.bandwidth_bps, custom.rtt_s) == (1e9, 0.01)
    assert model.parse_rate("200mbit") == 200e6 and model.parse_rate("3gbit") == 3e9
    assert model.parse_duration("0.8ms") == pytest.approx(0.8e-3)
    assert model.parse_duration("250us") == pytest.approx(250e-6)
    for bad in ("DSL", "fast/10ms", "1gbit/soon"):
        with pytest.raises(ValueError):
            model.parse_profile(bad)


def test_the_hold_is_half_the_round_trip_less_the_path():
    assert model.one_way_hold_s(0.04) == pytest.approx(0.02)
    assert model.one_way_hold_s(0.8e-3, base_rtt_s=0.2e-3) == pytest.approx(0.3e-3)
    assert model.one_way_hold_s(0.1e-3, base_rtt_s=0.5e-3) == 0.0
    with pytest.raises(ValueError):
        model.one_way_hold_s(-1.0)


def test_shaper_burst_and_rate_spelling():
    assert model.shaper_burst_bytes(3e9, 9000) == 375_000  # 1 ms at 3 Gbps
    assert model.shaper_burst_bytes(200e6, 9000) == 25_000
    assert model.shaper_burst_bytes(1e6, 9000) == 18_000  # at least two packets
    assert model.tc_rate(3e9) == "3000000kbit" and model.tc_rate(200e6) == "200000kbit"


def test_each_role_has_one_shaped_class_per_peer():
    commands = topology.shaper_commands("client", WAN, 9000)
    classes = [c for c in commands if "class" in c]
    filters = [c for c in commands if "filter" in c]
    assert len(classes) == 2 and len(filters) == 2
    assert all(c[c.index("rate") + 1] == "200000kbit" == c[c.index("ceil") + 1] for c in classes)
    peers = {f[f.index("dst") + 1] for f in filters}
    assert peers == {topology.role_address(r) + "/32" for r in ("owner", "dealer")}
    assert all(c[:3] == ["tc", "-n", "mpcnl-client"] for c in commands)


def test_the_star_has_a_veth_per_role_and_routes_each_into_the_delayer():
    build = topology.build_commands(9000)
    veths = [c for c in build if "veth" in c]
    assert [c[c.index("netns", 4) + 1] for c in veths] == [topology.SWITCH] * 3
    assert {c[-3] for c in veths} == {topology.namespace(r) for r in topology.ROLES}
    rules = [c for c in topology.delay_route_commands(9000) if "rule" in c]
    assert {c[c.index("iif") + 1] for c in rules} == {f"to-{r}" for r in topology.ROLES}


def _step(step: int, rounds: int, bytes_: int, seconds: float) -> dict:
    return {"step": step, "rounds": rounds, "bytes": bytes_, "seconds": seconds}


def test_the_model_prices_a_step_from_the_reference_compute():
    link = model.LinkMeasure(icmp_rtt_s=0.05, tcp_rtt_s=0.05, bulk_bps=100e6)
    measured = [_step(1, 100, 50_000_000, 10.0)]
    reference = [_step(1, 100, 50_000_000, 2.0)]
    (row,) = model.compare_steps(measured, reference, WAN, link, parties=2)
    # 2 s compute + 100 x 40 ms + 25 MB x 8 / 200 Mbps = 7 s, against 10 s measured
    assert row["model_target_s"] == pytest.approx(2.0 + 4.0 + 1.0)
    assert row["error_target"] == pytest.approx(-0.3)
    assert row["model_link_s"] == pytest.approx(2.0 + 5.0 + 2.0)
    assert row["bytes_per_party"] == 25_000_000
    assert row["rtts_per_round"] == pytest.approx((10.0 - 2.0 - 2.0) / (100 * 0.05))
    with pytest.raises(ValueError, match="not the same run"):
        model.compare_steps([_step(1, 101, 50_000_000, 10.0)], reference, WAN, link, 2)


def test_tables_show_the_mean_step_and_the_link():
    link = model.LinkMeasure(0.04, 0.041, 190e6)
    steps = model.compare_steps([_step(1, 10, 2**21, 3.0), _step(2, 10, 2**21, 5.0)],
                                [_step(1, 10, 2**21, 1.0), _step(2, 10, 2**21, 1.0)],
                                WAN, link, 2)
    row = model.mean_row("WAN", "full", steps)
    assert row["measured_s"] == 4.0 and row["steps"] == 2
    line = model.model_table([row])[-1]
    assert "| WAN | full | 2 | 10 | 1.0 | 1.00 | 4.00 |" in line
    assert line.endswith(f"| {row['rtts_per_round']:.2f} |")
    links = model.link_table({"WAN": {"target": {"rtt_s": 0.04, "bandwidth_bps": 200e6},
                                      "icmp_rtt_s": 0.0405, "tcp_rtt_s": 0.041,
                                      "bulk_bps": 190e6}})
    assert links[-1] == "| WAN | 40.00 ms | 40.50 ms | 41.00 ms | 200 Mbps | 190 Mbps |"


def test_the_delayer_holds_each_packet_and_keeps_the_order():
    """A SEQPACKET socket pair stands in for the TUN device (no root needed)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    stop, counters = [False], {}
    worker = threading.Thread(target=lambda: counters.update(
        netns_delayer.forward(ours.fileno(), 0.05, stop)))
    worker.start()
    try:
        sent = time.monotonic()
        for i in range(5):
            theirs.send(bytes([i]) * 100)
        got = [theirs.recv(200) for _ in range(5)]
        held = time.monotonic() - sent
    finally:
        stop[0] = True
        worker.join()
        ours.close()
        theirs.close()
    assert [g[0] for g in got] == list(range(5))
    assert 0.05 <= held < 0.5
    assert counters["packets"] == 5 and counters["bytes"] == 500


def test_the_probes_measure_a_loopback_link():
    port = _free_port()
    threading.Thread(target=netns_probe.serve, args=(port,), daemon=True).start()
    _wait_for(port)
    rtts = netns_probe.tcp_rtts("127.0.0.1", port, 5)
    assert len(rtts) == 5 and all(0 < r < 1 for r in rtts)
    assert netns_probe.bulk_bps("127.0.0.1", port, 0.2) > 1e6


def test_each_role_gets_only_its_own_options():
    spec = SessionSpec(cache="mpcache", max_new_tokens=3, model="/m", prompt="hi",
                       prompt_ids=[1, 2], extra=["--dealing", "ahead"])
    owner = spec.role_args("owner", "tcp://10.231.0.2:1", Path("c.json"))
    client = spec.role_args("client", "tcp://10.231.0.2:1", Path("c.json"))
    dealer = spec.role_args("dealer", "tcp://10.231.0.2:1", Path("c.json"))
    assert "--model" in owner and "--prompt-ids" not in owner and "--cache" not in owner
    assert client[client.index("--prompt-ids") + 1] == "1,2" and "--prompt" not in client
    assert client[client.index("--cache") + 1] == "mpcache" and "--json" in client
    assert "--model" not in dealer
    assert all("--link-is-protected" in a and a[a.index("--dealing") + 1] == "ahead"
               for a in (owner, client, dealer))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port: int) -> None:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.05)


def _namespaces_usable() -> str | None:
    """Why the harness cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, tc, a TUN device)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "needs iproute2's ip and tc"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode:
        return "`ip netns` is not available"
    if not Path("/dev/net/tun").exists():
        return "no /dev/net/tun"
    return None


@pytest.mark.slow
def test_the_quick_harness_gives_the_plaintext_tokens_over_a_shaped_link(tmp_path):
    reason = _namespaces_usable()
    if reason:
        pytest.skip(reason)
    if topology.existing_namespaces():
        pytest.skip("the harness's namespaces exist: another run is in progress")
    out = tmp_path / "quick.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "netns_links.py"), "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    lan = result["links"]["LAN"]
    assert 0.4e-3 < lan["tcp_rtt_s"] < 3e-3  # the delayer's hold is there
    assert result["links"]["unshaped"]["tcp_rtt_s"] < 0.4e-3
    assert all(result["tokens"]["full"]["match"].values())
    (row,) = result["model"]
    assert row["profile"] == "LAN" and row["measured_s"] > 0
    assert topology.existing_namespaces() == []
