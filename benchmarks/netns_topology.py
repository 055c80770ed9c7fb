"""Namespaces, veth pairs, shapers and the delayer of the link harness (root only).

Layout (a star: one router namespace, each role on its own point-to-point veth pair):

    mpcnl-owner  link0 10.231.0.2 ──veth── to-owner  10.231.0.1 ┐
    mpcnl-client link0 10.231.1.2 ──veth── to-client 10.231.1.1 ├ mpcnl-switch (routes,
    mpcnl-dealer link0 10.231.2.2 ──veth── to-dealer 10.231.2.1 ┘  TUN nldelay, delayer)

Every role's egress has one htb class per peer (``rate`` = the profile's bandwidth, matched
on the peer's address), so each pair of roles has its own link of that rate in each
direction, as separate hosts would. When shaped, the switch sends every packet that
arrives from a role into the TUN device (policy routing on the incoming veth); the
delayer holds it for RTT / 2 and writes it back, and the kernel routes it on. Unshaped,
the switch forwards in the kernel (the compute reference). Why a star and not a mesh:
one delayer process sees every packet once per direction, so every pair gets the same
delay from one clock.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from netns_model import one_way_hold_s, shaper_burst_bytes, tc_rate

from crypten_mpcache.runtime.network import NetworkProfile

PREFIX = "mpcnl-"
SWITCH = PREFIX + "switch"
ROLES = ("owner", "client", "dealer")
ROLE_LINK = "link0"
TUN = "nldelay"
DELAY_TABLE = "100"
HERE = Path(__file__).resolve().parent


def namespace(role: str) -> str:
    return PREFIX + role


def role_address(role: str) -> str:
    return f"10.231.{ROLES.index(role)}.2"


def _switch_address(role: str) -> str:
    return f"10.231.{ROLES.index(role)}.1"


def _in(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def build_commands(mtu: int) -> list[list[str]]:
    """The commands that create the namespaces and the unshaped star."""
    commands = [["ip", "netns", "add", SWITCH]]
    for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0"):
        commands.append(_in(SWITCH, "sysctl", "-qw", key))
    commands.append(["ip", "-n", SWITCH, "link", "set", "lo", "up"])
    for role in ROLES:
        ns, side = namespace(role), f"to-{role}"
        commands += [
            ["ip", "netns", "add", ns],
            ["ip", "link", "add", side, "netns", SWITCH, "mtu", str(mtu), "type", "veth",
             "peer", "name", ROLE_LINK, "netns", ns, "mtu", str(mtu)],
            ["ip", "-n", SWITCH, "addr", "add", _switch_address(role) + "/24", "dev", side],
            ["ip", "-n", SWITCH, "link", "set", side, "up"],
            ["ip", "-n", ns, "link", "set", "lo", "up"],
            ["ip", "-n", ns, "addr", "add", role_address(role) + "/24", "dev", ROLE_LINK],
            ["ip", "-n", ns, "link", "set", ROLE_LINK, "up"],
            ["ip", "-n", ns, "route", "add", "default", "via", _switch_address(role)],
        ]
    return commands


def shaper_commands(role: str, profile: NetworkProfile, mtu: int) -> list[list[str]]:
    """htb on ``role``'s egress: one class of the profile's rate per peer role."""
    dev = ["dev", ROLE_LINK]
    ns = namespace(role)
    rate, burst = tc_rate(profile.bandwidth_bps), str(shaper_burst_bytes(profile.bandwidth_bps,
                                                                          mtu))
    commands = [["tc", "-n", ns, "qdisc", "add", *dev, "root", "handle", "1:", "htb"]]
    for index, peer in enumerate(p for p in ROLES if p != role):
        classid = f"1:{10 + index}"
        commands += [
            ["tc", "-n", ns, "class", "add", *dev, "parent", "1:", "classid", classid, "htb",
             "rate", rate, "ceil", rate, "burst", burst, "cburst", burst],
            ["tc", "-n", ns, "filter", "add", *dev, "parent", "1:", "protocol", "ip", "prio",
             "1", "u32", "match", "ip", "dst", role_address(peer) + "/32", "flowid", classid],
        ]
    return commands


def delay_route_commands(mtu: int) -> list[list[str]]:
    """Route what arrives from a role into the delayer's TUN (the TUN must exist)."""
    commands = [["ip", "-n", SWITCH, "link", "set", TUN, "mtu", str(mtu), "up"],
                ["ip", "-n", SWITCH, "route", "add", "default", "dev", TUN, "table", DELAY_TABLE]]
    commands += [["ip", "-n", SWITCH, "rule", "add", "iif", f"to-{role}", "lookup", DELAY_TABLE,
                  "pref", "100"] for role in ROLES]
    return commands


def run_commands(commands: list[list[str]]) -> None:
    """Run each command; the first failure raises with the command and its stderr."""
    for argv in commands:
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")


def existing_namespaces() -> list[str]:
    """The harness's namespaces that exist now (a crashed run may have left some)."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listing.splitlines()
            if line.split() and line.split()[0].startswith(PREFIX)]


def running_in_namespaces() -> dict[str, list[str]]:
    """The pids that run in the harness's namespaces now, per namespace."""
    pids = {ns: subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                               text=True).stdout.split() for ns in existing_namespaces()}
    return {ns: found for ns, found in pids.items() if found}


def cleanup() -> list[str]:
    """Kill what runs in the harness's namespaces (only this harness starts processes
    there) and delete them; return the namespaces deleted."""
    names = existing_namespaces()
    for ns in names:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                              text=True).stdout.split()
        for pid in pids:
            subprocess.run(["kill", "-KILL", pid], capture_output=True)
    for ns in names:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    return names


def check_host() -> None:
    """Raise a one-line reason when this host cannot run the harness."""
    import os

    if os.geteuid() != 0:
        raise PermissionError("needs root: it creates network namespaces, veth pairs, tc "
                              "shapers and a TUN device")
    if shutil.which("ip") is None or shutil.which("tc") is None:
        raise FileNotFoundError("needs iproute2's `ip` and `tc` on PATH")
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode:
        raise OSError("`ip netns` does not work here (no network namespace support)")
    if not Path("/dev/net/tun").exists():
        raise FileNotFoundError("needs /dev/net/tun for the delayer")


class Topology:
    """The namespaces for one harness run; ``shape`` / ``unshape`` switch the link."""

    def __init__(self, mtu: int) -> None:
        self.mtu = mtu
        self.delayer: subprocess.Popen[str] | None = None
        self.shaped: NetworkProfile | None = None

    def __enter__(self) -> Topology:
        busy = running_in_namespaces()
        if busy:
            raise RuntimeError(
                f"another harness run is in progress ({', '.join(busy)} run pids "
                f"{', '.join(p for pids in busy.values() for p in pids)}); if it crashed, "
                "remove it with --cleanup")
        left = cleanup()
        if left:
            print(f"removed namespaces left by an earlier run: {', '.join(left)}", flush=True)
        try:
            run_commands(build_commands(self.mtu))
        except BaseException:
            cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.unshape()
        finally:
            cleanup()

    def command(self, role: str, argv: list[str]) -> list[str]:
        """``argv`` run inside ``role``'s namespace."""
        return _in(namespace(role), *argv)

    def shape(self, profile: NetworkProfile, base_rtt_s: float = 0.0) -> float:
        """Rate-limit every link to the profile and delay every packet by (RTT - the
        path's own round trip ``base_rtt_s``) / 2; return the hold in seconds."""
        self.unshape()
        for role in ROLES:
            run_commands(shaper_commands(role, profile, self.mtu))
        hold_s = one_way_hold_s(profile.rtt_s, base_rtt_s)
        hold_ms = hold_s * 1e3
        self.delayer = subprocess.Popen(
            _in(SWITCH, sys.executable, str(HERE / "netns_delayer.py"), "--tun", TUN,
                "--hold-ms", f"{hold_ms:.6f}"), stdout=subprocess.PIPE, text=True)
        assert self.delayer.stdout is not None
        if self.delayer.stdout.readline().strip() != "ready":
            self.delayer.wait(timeout=10)
            raise RuntimeError("the delayer did not start (see its error above)")
        run_commands(delay_route_commands(self.mtu))
        self.shaped = profile
        return hold_s

    def unshape(self) -> dict[str, float] | None:
        """Back to the kernel's forwarding; return the delayer's counters if one ran."""
        counters = None
        if self.delayer is not None:
            for role in ROLES:
                subprocess.run(["ip", "-n", SWITCH, "rule", "del", "iif", f"to-{role}",
                                "lookup", DELAY_TABLE], capture_output=True)
            self.delayer.terminate()
            try:
                out, _ = self.delayer.communicate(timeout=10)
                counters = _last_json(out)
            except subprocess.TimeoutExpired:
                self.delayer.kill()
                self.delayer.wait()
            self.delayer = None
        if self.shaped is not None:
            for role in ROLES:
                subprocess.run(["tc", "-n", namespace(role), "qdisc", "del", "dev", ROLE_LINK,
                                "root"], capture_output=True)
            self.shaped = None
        time.sleep(0.2)
        return counters


def _last_json(text: str) -> dict[str, float] | None:
    import json

    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None
