"""``crypten-mpcache party``: the roles as separate processes over localhost TCP.

Each role is a subprocess of the CLI on a free port. What is checked: the roles give the
tokens (and the communication transcript) of ``generate``; a public parameter that
differs ends every role with one line naming it; a role killed before or during decode
(the dealer while it deals) or frozen ends the others within 30 s with one line naming it
and no answer; a stranger's garbage on the rendezvous
port, a client started twice, a wrong party count, an unreachable rendezvous and a
non-loopback rendezvous without ``--link-is-protected`` are clear errors, never hangs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from torch.distributed import TCPStore

from crypten_mpcache.cli import main
from crypten_mpcache.testing import assert_same_transcript, save_tiny_llama, tiny_llama_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
IDS = "3,1,4,1,5,9,2,6"
NAMES = {"owner": "party 0 (model owner)", "client": "party 1 (client)",
         "helper": "party 2 (helper)", "dealer": "dealer (TTP)"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Role:
    name: str
    process: subprocess.Popen
    out: Path
    err: Path

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text().replace("\r", "\n")

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if ": error: " in line]


def _start(tmp: Path, role: str, rendezvous: str, *args: str, tag: str = "") -> Role:
    out, err = tmp / f"{role}{tag}.out", tmp / f"{role}{tag}.err"
    command = [sys.executable, "-m", "crypten_mpcache", "party", "--role", role,
               "--rendezvous", rendezvous, *args]
    with out.open("w") as o, err.open("w") as e:
        process = subprocess.Popen(command, stdout=o, stderr=e, env=ENV, cwd=tmp)
    return Role(role, process, out, err)


def _session(tmp: Path, model: str, client_args: list[str], *, owner_args=(), parties=2,
             common=("--timeout", "60")) -> dict[str, Role]:
    rendezvous = f"tcp://127.0.0.1:{_free_port()}"
    shape = ["--parties", str(parties), *common]
    roles = {"owner": _start(tmp, "owner", rendezvous, "--model", model, *shape, *owner_args),
             "dealer": _start(tmp, "dealer", rendezvous, *shape)}
    if parties == 3:
        roles["helper"] = _start(tmp, "helper", rendezvous, *shape)
    roles["client"] = _start(tmp, "client", rendezvous, "--model", model, *shape,
                             *client_args)
    return roles


def _finish(roles: dict[str, Role], timeout: float = 150) -> dict[str, int]:
    codes = {name: role.wait(timeout) for name, role in roles.items()}
    return codes


@pytest.fixture(scope="module")
def tiny40(tmp_path_factory) -> str:
    """A vocabulary-40 Llama with wide logit gaps (fixed-point noise flips no argmax)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny40"), seed=1, lm_head_gain=4.0,
                           max_positions=64)


def test_roles_give_the_tokens_and_transcript_of_generate(tmp_path):
    """Text prompt, real tokenizer: the client's answer and every phase's bytes and rounds
    are those of ``generate``; the client's folder has no weights at all. On the way, a
    stranger writes garbage to the rendezvous port, and the client is started twice: one
    of the two is refused with one line, the session is unaffected."""
    model = tiny_llama_checkpoint(tmp_path / "model", seed=3, context=64)
    client_folder = tmp_path / "client-model"
    client_folder.mkdir()
    for path in model.iterdir():
        if path.suffix != ".safetensors":
            (client_folder / path.name).write_bytes(path.read_bytes())
    common = ["--prompt", "Hello there", "--max-new-tokens", "2"]
    expected = tmp_path / "generate.json"
    assert main(["generate", "--model", str(model), *common, "--quiet",
                 "--json", str(expected)]) == 0
    rendezvous = f"tcp://127.0.0.1:{_free_port()}"
    owner = _start(tmp_path, "owner", rendezvous, "--model", str(model))
    _send_garbage(rendezvous)
    client_args = ["--model", str(client_folder), *common, "--quiet", "--json", "party.json"]
    roles = {"owner": owner, "dealer": _start(tmp_path, "dealer", rendezvous),
             "client": _start(tmp_path, "client", rendezvous, *client_args),
             "client twice": _start(tmp_path, "client", rendezvous, *client_args, tag="2")}
    codes = _finish(roles)
    assert sorted(codes.values()) == [0, 0, 0, 2], {n: r.stderr for n, r in roles.items()}
    refused = next(r for n, r in roles.items() if codes[n] == 2)
    client = next(r for n, r in roles.items() if n.startswith("client") and codes[n] == 0)
    assert refused.error_lines() == [
        f"crypten-mpcache party: error: party 1 (client) has already joined the rendezvous "
        f"{rendezvous} (is this role started twice?)"]
    got, want = json.loads((tmp_path / "party.json").read_text()), json.loads(expected.read_text())
    assert got["generated_ids"] == want["generated_ids"]
    assert got["text"] == want["text"] and repr(got["text"]) in client.stdout
    assert got.keys() == want.keys() and got["cost"].keys() == want["cost"].keys()
    assert_same_transcript(got["cost"], want["cost"])
    assert str(want["generated_ids"]) not in owner.stdout
    assert all(not r.stderr.strip() for r in roles.values() if r is not refused)


@pytest.mark.slow
def test_three_parties_with_a_helper_give_the_tokens_of_generate(tmp_path, tiny40):
    """The helper gets the owner's config.json over the rendezvous and holds nothing."""
    from crypten_mpcache.private import PrivateGenerationConfig, generate_ids

    ids = [int(t) for t in IDS.split(",")]
    want = generate_ids(ids, PrivateGenerationConfig(max_new_tokens=3, model_path=tiny40,
                                                     parties=3, progress=False))
    roles = _session(tmp_path, tiny40, ["--prompt-ids", IDS, "--max-new-tokens", "3",
                                        "--quiet", "--json", "party.json"], parties=3)
    assert _finish(roles) == {"owner": 0, "dealer": 0, "helper": 0, "client": 0}
    got = json.loads((tmp_path / "party.json").read_text())
    assert got["generated_ids"] == want.generated_ids
    assert_same_transcript(got["cost"], want.cost)
    assert set(got["reveals"]) == {"party0", "party1", "party2"}


def _send_garbage(rendezvous: str) -> None:
    host, port = rendezvous.removeprefix("tcp://").split(":")
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.1\r\n\r\n" + bytes(range(256)) * 8)
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _wait_for(predicate, timeout: float = 90, what: str = "",
              roles: dict[str, Role] | None = None) -> None:
    """Poll ``predicate``; fail with the roles' last words when one exits or time is up."""
    deadline = time.monotonic() + timeout
    while not predicate():
        ended = [n for n, r in (roles or {}).items() if r.process.poll() is not None]
        if ended or time.monotonic() > deadline:
            tails = {n: r.stderr[-600:] for n, r in (roles or {}).items()}
            raise AssertionError(f"{'ended: ' + ', '.join(ended) if ended else 'timed out'} "
                                 f"waiting for {what}: {tails}")
        time.sleep(0.2)


def _wait_for_decoding(roles: dict[str, Role]) -> None:
    """Until the client's bar shows a finished decode step of 5 with more to come (the bar
    may skip a count when steps are fast: any of 1-4 will do)."""
    _wait_for(lambda: re.search(r"\| [1-4]/5", roles["client"].stderr) is not None,
              what="the first decode step", roles=roles)


def _assert_ended_naming(roles: dict[str, Role], survivors: list[str], lost: str,
                         limit_s: float = 30) -> None:
    """Every survivor exits non-zero within ``limit_s`` with one error line that names
    the lost role; the client prints no answer."""
    start = time.monotonic()
    for name in survivors:
        code = roles[name].wait(timeout=max(1.0, limit_s - (time.monotonic() - start)))
        lines = roles[name].error_lines()
        assert code != 0 and len(lines) == 1 and NAMES[lost] in lines[0], \
            (name, code, roles[name].stderr[-2000:])
    assert time.monotonic() - start < limit_s
    assert all(r.process.poll() is not None for r in roles.values())
    if "client" in survivors:
        assert "generated" not in roles["client"].stdout


def _agreed(rendezvous: str, ranks: int) -> bool:
    """Every role has posted its public parameters (the test reads the store)."""
    host, port = rendezvous.removeprefix("tcp://").split(":")
    try:
        store = TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=2))
        return bool(store.check([f"mpcache/params/{r}" for r in range(ranks)]))
    except RuntimeError:
        return False


@pytest.fixture(scope="module")
def tiny256(tmp_path_factory) -> str:
    """``tiny40`` with room for a 200-token prompt (a prefill that lasts seconds)."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny256"), seed=1, lm_head_gain=4.0,
                           max_positions=256)


def test_the_owner_killed_before_decode_ends_the_others_naming_it(tmp_path, tiny256):
    """Frozen the moment the agreement is seen, killed a second later while the others
    wait on it, with a 200-token prompt: during set-up or prefill. The store poll that
    sees the agreement can be late on a busy machine (CI once saw the client decoding
    already, with a fixed sleep and a 48-token prompt), so the case counts only if the
    client had not started decoding when the owner froze: up to three tries."""
    prompt = ",".join(str(i % 40) for i in range(200))
    for attempt in range(3):
        work = tmp_path / f"try{attempt}"
        work.mkdir()
        roles = _session(work, tiny256, ["--prompt-ids", prompt, "--max-new-tokens", "4"])
        owner = roles["owner"].process
        rendezvous = owner.args[owner.args.index("--rendezvous") + 1]
        _wait_for(lambda r=rendezvous: _agreed(r, 3), what="the agreement")
        owner.send_signal(signal.SIGSTOP)
        if "private decode" not in roles["client"].stderr:
            break
        for role in roles.values():
            role.process.kill()
            role.process.wait()
    else:
        pytest.fail("three times the client was decoding before the owner could be frozen")
    time.sleep(1.0)
    owner.send_signal(signal.SIGKILL)
    roles["owner"].wait()
    _assert_ended_naming(roles, ["client", "dealer"], "owner")
    assert "private decode" not in roles["client"].stderr  # no decode step had started


@pytest.mark.parametrize("victim,parties", [("client", 2), ("dealer", 3)])
def test_a_role_killed_during_decode_ends_the_others_naming_it(tmp_path, tiny40, victim,
                                                                parties):
    roles = _session(tmp_path, tiny40, ["--prompt-ids", IDS, "--max-new-tokens", "6"],
                     parties=parties)
    _wait_for_decoding(roles)
    roles[victim].process.send_signal(signal.SIGKILL)
    roles[victim].wait()
    _assert_ended_naming(roles, [n for n in roles if n != victim], victim)


@pytest.mark.parametrize("owner_args,client_args,field,values", [
    ([], ["--comparison", "crypten"], "comparison", ('"hybrid"', '"crypten"')),  # all roles
    ([], ["--dcf-max-elements", "512"], "dcf_max_elements", ("2048", "512")),
    (["--max-new-tokens", "4"], ["--max-new-tokens", "3"], "max_new_tokens", ("4", "3")),
    ([], ["--model", "OTHER"], "model_config", (r"[0-9a-f]{12}\.\.\.", r"[0-9a-f]{12}\.\.\.")),
])
def test_a_public_parameter_that_differs_ends_every_role_naming_it(
        tmp_path, tiny40, owner_args, client_args, field, values):
    if "OTHER" in client_args:  # the same architecture with another context length
        other = save_tiny_llama(tmp_path / "other", seed=1, max_positions=96)
        client_args = [other if a == "OTHER" else a for a in client_args]
    roles = _session(tmp_path, tiny40, ["--prompt-ids", IDS, "--quiet", *client_args],
                     owner_args=owner_args)
    codes = _finish(roles, timeout=60)
    for name, role in roles.items():
        lines = role.error_lines()
        assert codes[name] == 2 and len(lines) == 1, (name, codes[name], role.stderr[-1500:])
        assert re.search(rf"the roles disagree on {field}: party 0 \(model owner\) has "
                         rf"{values[0]}, party 1 \(client\) has {values[1]}$", lines[0]), lines[0]
    assert "generated" not in roles["client"].stdout


def test_a_role_with_another_party_count_ends_the_session(tmp_path):
    rendezvous = f"tcp://127.0.0.1:{_free_port()}"
    owner = _start(tmp_path, "owner", rendezvous, "--timeout", "60")
    helper = _start(tmp_path, "helper", rendezvous, "--parties", "3", "--timeout", "60")
    for role in (owner, helper):
        code, lines = role.wait(60), role.error_lines()
        assert code == 2 and len(lines) == 1, (role.name, role.stderr[-1500:])
        assert "the roles disagree on parties: party 0 (model owner) has 2, party 2 " \
            "(helper) has 3" in lines[0]


def test_an_unreachable_or_incomplete_rendezvous_says_where_and_exits(tmp_path):
    nobody = f"tcp://127.0.0.1:{_free_port()}"
    lonely = f"tcp://127.0.0.1:{_free_port()}"
    client = _start(tmp_path, "client", nobody, "--timeout", "2", "--prompt-ids", "1")
    owner = _start(tmp_path, "owner", lonely, "--timeout", "8", "--parties", "3")
    _listens_on_loopback_only(int(lonely.rsplit(":", 1)[1]))
    assert client.wait(60) == 1 and owner.wait(60) == 1
    assert client.error_lines() == [
        f"crypten-mpcache party: error: could not reach the rendezvous {nobody} within 2s: "
        "is the model owner's role running there, and the port open from here?"]
    assert owner.error_lines() == [
        f"crypten-mpcache party: error: timed out after 8s at {lonely} waiting for party 1 "
        "(client) and party 2 (helper) and dealer (TTP) to join the rendezvous"]


def _listens_on_loopback_only(port: int) -> None:
    """The owner's rendezvous is reachable on 127.0.0.1, not on this host's other address
    (torch's own TCPStore would listen on every interface)."""
    _wait_for(lambda: _connects("127.0.0.1", port), timeout=60, what="the owner's port")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: picks the outbound address
            other = probe.getsockname()[0]
        except OSError:
            return
    if not other.startswith("127."):
        assert not _connects(other, port), other


def _connects(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("argv,expected", [
    (["--role", "dealer", "--rendezvous", "tcp://192.0.2.7:29500"], "--link-is-protected"),
    (["--role", "owner", "--rendezvous", "tcp://192.0.2.7:29500", "--link-is-protected"],
     "192.0.2.7 is not an address of this machine"),
    (["--role", "helper", "--rendezvous", "tcp://127.0.0.1:29500"], "needs --parties 3"),
    (["--role", "dealer", "--dealer", "tfp", "--rendezvous", "tcp://127.0.0.1:29500"],
     "has no dealer role"),
    (["--role", "owner", "--prompt", "hi", "--rendezvous", "tcp://127.0.0.1:29500"],
     "only the client has a prompt"),
    (["--role", "client", "--rendezvous", "127.0.0.1:29500"], "must be tcp://HOST:PORT"),
    (["--role", "client", "--rendezvous", "tcp://127.0.0.1:1", "--prompt-ids", "7,x"],
     "bad list"),
])
def test_bad_role_options_are_one_line_errors(argv, expected, capsys):
    assert main(["party", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("crypten-mpcache party: error: ") \
        and expected in err[0], err


def test_a_frozen_role_is_found_through_the_step_timeout(tmp_path, tiny40):
    """The dealer stops answering (SIGSTOP: no packets, no heartbeats) and the liveness
    limit is long: the owner's next dealer request times out after --step-timeout, and
    every other role ends naming the dealer."""
    common = ("--timeout", "60", "--step-timeout", "4", "--liveness", "300")
    roles = _session(tmp_path, tiny40, ["--prompt-ids", IDS, "--max-new-tokens", "6"],
                     common=common)
    _wait_for_decoding(roles)
    roles["dealer"].process.send_signal(signal.SIGSTOP)
    try:
        _assert_ended_naming({n: r for n, r in roles.items() if n != "dealer"},
                             ["owner", "client"], "dealer")
    finally:
        roles["dealer"].process.kill()
        roles["dealer"].wait()


def test_a_port_in_use_is_a_one_line_error(tiny40, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code = main(["party", "--role", "owner", "--model", tiny40,
                     "--rendezvous", f"tcp://127.0.0.1:{port}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"crypten-mpcache party: error: cannot host the rendezvous "
                                 f"on tcp://127.0.0.1:{port}: the port is in use (another "
                                 "owner, or another program)"]
