"""Where the roles of a deployment meet: a TCP store hosted by the model owner's process.

``crypten-mpcache party`` starts one process per role, possibly on different hosts, all
with the same ``tcp://HOST:PORT``. The owner (rank 0) hosts a ``torch.distributed``
TCPStore there; every other role connects to it. On that store, before any secret exists:

* the session's shape (parties, dealer) is the owner's; a role with another shape ends
  the session (``abort``) with one line naming the field and both values;
* each role claims its rank (``claim/<rank>``: a second client, say, is refused);
* each role posts its public parameters (``params/<rank>``, JSON) and reads everyone's
  (``runtime.agreement`` compares them);
* later: heartbeats (``beat/<rank>``, ``runtime.liveness``), the first fatal message
  (``abort``: every role ends with that line), how each role ended (``exit/<rank>``) and
  the parties' cost reports for the client (``report/<rank>``).

Then CrypTen's process group forms on the same store (``patches.crypten_distributed``).
The store and gloo's links are NOT encrypted or authenticated: anyone who reaches the
port can read and write the keys. Off loopback, run the roles over a VPN or tunnel
(``check_link``, docs/deployment.md).
"""

from __future__ import annotations

import datetime
import errno
import ipaddress
import json
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from torch.distributed import TCPStore

PREFIX = "mpcache/"
POLL_S = 0.2


class RendezvousError(RuntimeError):
    """The roles could not meet (unreachable, timed out, rank taken); ``code`` is the exit
    status (2: the user can fix the command line; 1: the others are missing)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """``tcp://HOST:PORT`` -> Address (ValueError naming the problem otherwise)."""
    parsed = urlparse(text)
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme != "tcp" or not parsed.hostname or port is None or port == 0 \
            or parsed.path not in ("", "/") or parsed.query:
        raise ValueError(f"--rendezvous must be tcp://HOST:PORT (the model owner's host and "
                         f"a free port), got {text!r}")
    return Address(parsed.hostname, port)


def _resolved(host: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as error:
        raise ValueError(f"cannot resolve the rendezvous host {host!r}: {error}") from None
    return sorted({info[4][0].split("%")[0] for info in infos})


def is_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback address."""
    return all(ipaddress.ip_address(a).is_loopback for a in _resolved(host))


def check_link(address: Address, link_is_protected: bool) -> None:
    """Refuse a non-loopback rendezvous unless the user says the link is protected: the
    transport (TCPStore and gloo) is neither encrypted nor authenticated."""
    if not link_is_protected and not is_loopback(address.host):
        raise ValueError(
            f"{address.url} is not a loopback address and torch.distributed does not "
            "encrypt or authenticate its traffic: run the roles over a VPN or tunnel and "
            "pass --link-is-protected (see docs/deployment.md)")


def _listen(address: Address) -> int:
    """A socket listening on HOST:PORT only (torch's own would listen on every interface);
    its descriptor, handed over to the store."""
    errors = []
    for family, kind, proto, _, sockaddr in socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM):
        listener = socket.socket(family, kind, proto)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(sockaddr)
            listener.listen(128)
            return listener.detach()
        except OSError as error:
            listener.close()
            errors.append(error)
    if any(e.errno == errno.EADDRINUSE for e in errors):
        raise RendezvousError(f"cannot host the rendezvous on {address.url}: the port is in "
                              "use (another owner, or another program)", code=2)
    raise RendezvousError(f"the model owner hosts the rendezvous, but {address.host} is "
                          f"not an address of this machine ({errors[0].strerror})", code=2)


def open_store(address: Address, owner: bool, timeout_s: float) -> TCPStore:
    """The owner hosts the store at ``address`` (listening there only); the others
    connect to it (retrying for ``timeout_s``)."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if owner:
        fd = _listen(address)
        try:
            return TCPStore(address.host, address.port, is_master=True,
                            wait_for_workers=False, timeout=timeout, master_listen_fd=fd)
        except RuntimeError as error:
            raise RendezvousError(f"cannot host the rendezvous on {address.url}: "
                                  f"{_short(error)}", code=2) from None
    try:
        return TCPStore(address.host, address.port, is_master=False, timeout=timeout)
    except RuntimeError:
        raise RendezvousError(f"could not reach the rendezvous {address.url} within "
                              f"{timeout_s:g}s: is the model owner's role running there, and "
                              "the port open from here?") from None


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


class Meeting:
    """One role's view of the shared store (keys under ``mpcache/``)."""

    def __init__(self, store: TCPStore, address: Address, rank: int,
                 names: dict[int, str]) -> None:
        self.store, self.address, self.rank, self.names = store, address, rank, names

    # -- keys -------------------------------------------------------------------------
    def has(self, key: str) -> bool:
        return bool(self.store.check([PREFIX + key]))

    def read(self, key: str) -> str:
        return self.store.get(PREFIX + key).decode()

    def write(self, key: str, value: str) -> None:
        self.store.set(PREFIX + key, value)

    def first(self, key: str, value: str) -> str:
        """Write ``value`` unless the key exists; the value that stands."""
        return self.store.compare_set(PREFIX + key, "", value).decode()

    # -- joining ------------------------------------------------------------------------
    def claim(self, role: str) -> None:
        """Take this role's rank, or fail if another process holds it."""
        token = json.dumps({"role": role, "nonce": secrets.token_hex(8)})
        if self.first(f"claim/{self.rank}", token) != token:
            raise RendezvousError(f"{self.names[self.rank]} has already joined the "
                                  f"rendezvous {self.address.url} (is this role started "
                                  "twice?)", code=2)

    def check_shape(self, shape: dict[str, Any], timeout_s: float) -> None:
        """The owner's (parties, dealer) must be ours; else the whole session ends."""
        mine = json.dumps(shape, sort_keys=True)
        theirs = json.loads(self.first("shape", mine) if self.rank == 0
                            else self._wait_value("shape", timeout_s))
        for field in sorted(shape):
            if theirs.get(field) != shape[field]:
                line = (f"the roles disagree on {field}: {self.names[0]} has "
                        f"{theirs.get(field)!r}, {self.names[self.rank]} has "
                        f"{shape[field]!r}")
                self.abort(line, code=2)
                raise RendezvousError(line, code=2)

    def exchange(self, params: dict[str, Any], timeout_s: float) -> dict[int, dict[str, Any]]:
        """Post this role's public parameters; wait for every rank's (or an abort)."""
        self.write(f"params/{self.rank}", json.dumps(params, sort_keys=True))
        ranks = sorted(self.names)
        self.wait_for([f"params/{r}" for r in ranks], timeout_s, ranks,
                      "to join the rendezvous")
        return {r: json.loads(self.read(f"params/{r}")) for r in ranks}

    def wait_for(self, keys: list[str], timeout_s: float, ranks: list[int],
                 what: str) -> None:
        """Wait until every key exists; RendezvousError naming the missing ranks' roles on
        timeout, or carrying the abort line when the session was aborted."""
        deadline = time.monotonic() + timeout_s
        while True:
            missing = [r for r, key in zip(ranks, keys, strict=True) if not self.has(key)]
            if not missing:
                return
            aborted = self.aborted()
            if aborted is not None:
                raise RendezvousError(aborted[0], code=aborted[1])
            if time.monotonic() > deadline:
                names = " and ".join(self.names[r] for r in missing)
                raise RendezvousError(f"timed out after {timeout_s:g}s at {self.address.url} "
                                      f"waiting for {names} {what}")
            time.sleep(POLL_S)

    def _wait_value(self, key: str, timeout_s: float) -> str:
        self.wait_for([key], timeout_s, [0], "to open the session")
        return self.read(key)

    # -- ending -------------------------------------------------------------------------
    def abort(self, line: str, code: int) -> tuple[str, int]:
        """Post the session's fatal line unless one stands; the line and code that stand."""
        stood = json.loads(self.first("abort", json.dumps({"line": line, "code": code})))
        return stood["line"], int(stood["code"])

    def aborted(self) -> tuple[str, int] | None:
        if not self.has("abort"):
            return None
        stood = json.loads(self.read("abort"))
        return stood["line"], int(stood["code"])

    def ended(self, rank: int) -> str | None:
        """How ``rank`` ended ("ok" or "error"), None while it runs."""
        return self.read(f"exit/{rank}") if self.has(f"exit/{rank}") else None

    def end(self, status: str) -> None:
        self.write(f"exit/{self.rank}", status)
