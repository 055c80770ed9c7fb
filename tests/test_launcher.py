"""The launcher returns results reliably and fails fast, naming the party."""

from __future__ import annotations

import os
import time

import pytest
import torch

from crypten_mpcache.runtime.launcher import LaunchConfig, PartyError, launch


def _square_sum(n: int) -> dict:
    import crypten
    import crypten.communicator as comm

    x = crypten.cryptensor(torch.arange(float(n)))
    return {"rank": comm.get().get_rank(), "value": (x * x).sum().get_plain_text(),
            "provider": crypten.mpc.get_default_provider().NAME}


@pytest.mark.parametrize("parties,dealer", [(2, "ttp"), (2, "tfp"), (3, "ttp"), (3, "tfp")])
def test_every_party_returns_in_rank_order(parties, dealer):
    results = launch(_square_sum, 4, config=LaunchConfig(parties=parties, dealer=dealer))
    assert [r["rank"] for r in results] == list(range(parties))
    assert all(float(r["value"]) == pytest.approx(14.0, abs=1e-2) for r in results)
    assert {r["provider"] for r in results} == {dealer.upper()}


def _large_result() -> torch.Tensor:
    return torch.arange(1 << 21, dtype=torch.float32)  # 8 MiB


def test_large_results_do_not_hang():
    results = launch(_large_result, config=LaunchConfig(dealer="tfp", timeout_s=60))
    assert all(r.shape == (1 << 21,) and float(r[-1]) == (1 << 21) - 1 for r in results)


def _client_raises() -> None:
    import crypten
    import crypten.communicator as comm

    if comm.get().get_rank() == 1:
        raise ValueError("client refused")
    crypten.cryptensor(torch.ones(2)).get_plain_text()


def _client_dies() -> None:
    import crypten
    import crypten.communicator as comm

    if comm.get().get_rank() == 1:
        os._exit(7)
    crypten.cryptensor(torch.ones(2)).get_plain_text()


def _client_stalls() -> None:
    import crypten
    import crypten.communicator as comm

    if comm.get().get_rank() == 1:
        time.sleep(60)
    crypten.cryptensor(torch.ones(2)).get_plain_text()


def test_a_failing_party_is_named_within_seconds():
    start = time.monotonic()
    with pytest.raises(PartyError, match=r"party 1 \(client\) failed: ValueError: client refused"):
        launch(_client_raises)
    assert time.monotonic() - start < 15


def test_a_dead_party_is_named_within_seconds():
    start = time.monotonic()
    with pytest.raises(PartyError, match=r"party 1 \(client\) \(exit code 7\) died"):
        launch(_client_dies)
    assert time.monotonic() - start < 15


def test_a_stalled_run_times_out_and_names_the_waiting_parties():
    start = time.monotonic()
    with pytest.raises(PartyError, match="timed out after 3s"):
        launch(_client_stalls, config=LaunchConfig(timeout_s=3))
    assert time.monotonic() - start < 15


@pytest.mark.parametrize("kwargs,message", [
    ({"parties": 4}, "parties must be 2 or 3"),
    ({"dealer": "bank"}, "dealer must be one of"),
    ({"timeout_s": 0}, "timeout_s must be positive"),
])
def test_invalid_launch_config_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LaunchConfig(**kwargs)


def _inside_run_multiprocess() -> list:
    import crypten

    crypten.cfg.mpc.provider = "TTP"

    @crypten.mpc.run_multiprocess(world_size=2)
    def party():
        x = crypten.cryptensor(torch.tensor([1.0, 2.0]), src=1)
        return (x * x).get_plain_text()

    return party()


def test_crypten_run_multiprocess_decorator_is_served_by_the_launcher():
    results = _inside_run_multiprocess()
    assert len(results) == 2
    assert torch.allclose(results[0], torch.tensor([1.0, 4.0]), atol=1e-3)


_SEPARATE_PROCESS = """
import sys, torch
import crypten_mpcache
from crypten_mpcache.runtime.launcher import LaunchConfig, run_as_party

def work():
    import crypten
    x = crypten.cryptensor(torch.tensor([3.0]), src=1)
    return float((x * x).get_plain_text())

out = run_as_party(work, rank=int(sys.argv[1]), rendezvous=sys.argv[2],
                   config=LaunchConfig(parties=2, dealer="ttp"))
print("RESULT", out)
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_parties_as_separate_processes_over_tcp(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "party.py"
    script.write_text(_SEPARATE_PROCESS)
    rendezvous = f"tcp://127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), rendezvous],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in range(3)]  # two parties and the TTP dealer
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    assert "RESULT 9.0" in outs[0][0] and "RESULT 9.0" in outs[1][0]
    assert "RESULT None" in outs[2][0]  # the dealer returns nothing


def test_run_as_party_rejects_bad_rank_and_rendezvous():
    from crypten_mpcache.runtime.launcher import run_as_party

    with pytest.raises(ValueError, match="rank must be in"):
        run_as_party(print, rank=5, rendezvous="tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="rendezvous must start"):
        run_as_party(print, rank=0, rendezvous="127.0.0.1:1")
