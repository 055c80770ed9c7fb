"""A role cut off by a link that drops every packet ends by itself (``runtime.liveness``).

No root needed: the role reaches the rendezvous store through a TCP relay in this test,
and "the link drops" means the relay stops moving bytes while keeping both connections
open, as a dead link does (no reset, no close: a store call then blocks for good, and
TCPStore has no timeout on it). What is checked: a role whose main thread is stuck (in
gloo, say) ends within seconds of the drop, naming the owner's store as lost; a role that
ends by itself (``fail``) does not hang trying to post its line on the dead link; before
the drop neither ends.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from torch.distributed import TCPStore

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ROLE = """
import sys, time
from crypten_mpcache.runtime.liveness import Liveness
from crypten_mpcache.runtime.rendezvous import Address
names = {0: "party 0 (model owner)", 1: "party 1 (client)"}
watch = Liveness(Address("127.0.0.1", int(sys.argv[1])), 1, names,
                 liveness_s=float(sys.argv[2]), announce=lambda line: print(line, flush=True))
watch.start()
print("beating", flush=True)
if sys.argv[3] == "fail":  # the role's own work fails once told the link is down
    sys.stdin.readline()
    watch.fail("party 1 (client) failed during the private computation: gloo timed out", 1)
time.sleep(3600)  # the main thread blocked in a collective that never returns
"""


class BlackHoleRelay:
    """Forwards TCP connections to ``target`` until ``drop()``: then every byte in either
    direction is swallowed; the connections stay open."""

    def __init__(self, target: int) -> None:
        self.target, self.dropped = target, threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        while True:
            readable, _, _ = select.select(list(peers), [], [], 0.1)
            for source in readable:
                data = source.recv(65536)
                if not data:
                    return
                if not self.dropped.is_set():
                    peers[source].sendall(data)

    def drop(self) -> None:
        self.dropped.set()


@pytest.fixture
def store():
    master = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                      timeout=timedelta(seconds=30))
    yield master


def _start(tmp_path: Path, port: int, liveness_s: float, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", ROLE, str(port), str(liveness_s), mode],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=ENV, text=True, cwd=tmp_path)


def _beating(store: TCPStore, role: subprocess.Popen) -> None:
    assert role.stdout.readline().strip() == "beating"
    deadline = time.monotonic() + 30
    while int(store.add("mpcache/beat/1", 0)) < 2:
        assert time.monotonic() < deadline and role.poll() is None
        time.sleep(0.1)


def _ended(role: subprocess.Popen, within_s: float) -> tuple[int, str, float]:
    start = time.monotonic()
    try:
        role.wait(timeout=within_s)
    except subprocess.TimeoutExpired:
        role.kill()
        role.wait()
        pytest.fail(f"the cut-off role still ran {within_s:g}s after the link dropped")
    return role.returncode, role.stdout.read(), time.monotonic() - start


def test_a_stuck_role_cut_off_from_the_store_ends_naming_the_owner(tmp_path, store):
    relay = BlackHoleRelay(store.port)
    role = _start(tmp_path, relay.port, liveness_s=3.0, mode="stuck")
    _beating(store, role)
    time.sleep(4.0)  # longer than the liveness limit: a live link keeps it running
    assert role.poll() is None
    relay.drop()
    code, out, seconds = _ended(role, within_s=20)
    assert code == 1, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and "lost party 0 (model owner)" in lines[0], out
    assert "no answer" not in lines[0] and seconds < 3.0 + 2.0, (seconds, out)


def test_failing_on_a_dead_link_does_not_wait_to_post_its_line(tmp_path, store):
    relay = BlackHoleRelay(store.port)
    role = _start(tmp_path, relay.port, liveness_s=60.0, mode="fail")  # the watch waits
    _beating(store, role)
    relay.drop()
    time.sleep(1.0)  # the watch is now blocked in a store call on the dead link
    role.stdin.write("go\n")
    role.stdin.flush()
    code, out, seconds = _ended(role, within_s=20)
    assert code == 1 and "gloo timed out" in out.strip().splitlines()[-1], out
    assert seconds < 2.0 + 2.0, (seconds, out)
