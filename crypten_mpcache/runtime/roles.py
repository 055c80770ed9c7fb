"""One role of a deployment in this process: meet, agree, run the party (or deal), end.

The roles and their ranks: ``owner`` 0 (holds the weights; hosts the rendezvous),
``client`` 1 (holds the prompt; learns the tokens), ``helper`` 2 (3 parties only; holds
nothing), ``dealer`` = parties (``--dealer ttp`` only; holds nothing, deals correlated
randomness). A ``RoleSession`` walks one role through a session:

1. ``open``: refuse a non-loopback rendezvous without ``link_is_protected``; host or reach
   the store (``timeout_s``); check the session's shape (parties, dealer) against the
   owner's (a mismatch ends the session); claim the rank (a role started twice is
   refused); start the ``Liveness`` watch;
2. ``agree``: exchange the public parameters and compare them (``runtime.agreement``),
   before any secret exists;
3. ``run``: the party function under CrypTen (``launcher.run_as_party``: the same
   session setup as ``launch``) on the same store, every communication bounded by
   ``step_timeout_s`` (``patches.crypten_distributed``), or the dealer's serve loop;
4. ``finish``: record the end; the owner keeps the store up until the others are done.

From ``open`` on, every failure ends the process through ``Liveness.fail``: one line,
the same in every role, and a non-zero exit status (2: a mismatch the user can fix;
1: a lost role or a failed step).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from crypten_mpcache.patches.crypten_distributed import startup
from crypten_mpcache.runtime.agreement import AgreementError, agree
from crypten_mpcache.runtime.launcher import DEALERS, LaunchConfig, party_name, run_as_party
from crypten_mpcache.runtime.liveness import LOST, Liveness
from crypten_mpcache.runtime.rendezvous import (
    Address,
    Meeting,
    RendezvousError,
    check_link,
    is_loopback,
    open_store,
    parse_address,
)

ROLES = ("owner", "client", "helper", "dealer")
MISMATCH = 2


def role_rank(role: str, parties: int, dealer: str) -> int:
    """The rank of ``role`` in a session of ``parties`` parties with ``dealer``."""
    if role not in ROLES:
        raise ValueError(f"--role must be one of {', '.join(ROLES)}, got {role!r}")
    if role == "helper" and parties != 3:
        raise ValueError("the helper is party 2: it needs --parties 3 (in every role)")
    if role == "dealer" and dealer != "ttp":
        raise ValueError("--dealer tfp has no dealer role (party 0 deals): start the "
                         "dealer only with --dealer ttp")
    return {"owner": 0, "client": 1, "helper": 2, "dealer": parties}[role]


@dataclass(frozen=True)
class RoleOptions:
    """How one role joins a session (validated on construction)."""

    role: str
    rendezvous: str
    parties: int = 2
    dealer: str = "ttp"
    comparison: str = "hybrid"
    dcf_max_elements: int = LaunchConfig.dcf_max_elements   # hybrid: calls up to this take keys
    dealing: str = "ahead"          # the TTP's material, as in LaunchConfig
    timeout_s: float = 120.0        # to reach the rendezvous and for every role to join
    step_timeout_s: float = 600.0   # the longest wait for any one communication
    liveness_s: float = 10.0        # silence after which a peer is declared lost
    link_is_protected: bool = False
    threads: int = 1

    def __post_init__(self) -> None:
        self.launch_config()  # parties, dealer, comparison, threads
        parse_address(self.rendezvous)
        role_rank(self.role, self.parties, self.dealer)
        for name in ("timeout_s", "step_timeout_s", "liveness_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def rank(self) -> int:
        return role_rank(self.role, self.parties, self.dealer)

    def names(self) -> dict[int, str]:
        """rank -> "party 0 (model owner)", ..., "dealer (TTP)" for this session."""
        last = self.parties + (1 if self.dealer == "ttp" else 0)
        return {rank: party_name(rank, self.parties) for rank in range(last)}

    def launch_config(self) -> LaunchConfig:
        if self.dealer not in DEALERS:
            raise ValueError(f"dealer must be one of {DEALERS}, got {self.dealer!r}")
        return LaunchConfig(parties=self.parties, dealer=self.dealer,  # type: ignore[arg-type]
                            comparison=self.comparison, dealing=self.dealing,
                            dcf_max_elements=self.dcf_max_elements,
                            timeout_s=self.step_timeout_s,
                            threads_per_party=self.threads)


class RoleSession:
    """One role through one session (see the module docstring)."""

    def __init__(self, options: RoleOptions, announce: Callable[[str], None]) -> None:
        self.options, self.announce = options, announce
        self.address = parse_address(options.rendezvous)
        self.rank, self.names = options.rank, options.names()
        self.liveness: Liveness | None = None
        self.meeting: Meeting | None = None

    def open(self) -> None:
        """Meet the others. Raises (ValueError, RendezvousError) until the rank is ours;
        from then on a failure ends the process."""
        check_link(self.address, self.options.link_is_protected)
        store = open_store(self.address, owner=self.rank == 0,
                           timeout_s=self.options.timeout_s)
        self.meeting = Meeting(store, self.address, self.rank, self.names)
        shape = {"parties": self.options.parties, "dealer": self.options.dealer}
        try:
            self.meeting.check_shape(shape, self.options.timeout_s)
            self.meeting.claim(self.options.role)
            self.liveness = Liveness(self.address, self.rank, self.names,
                                     liveness_s=self.options.liveness_s,
                                     announce=self.announce)
        except RendezvousError:
            raise
        except RuntimeError as error:  # the store went away under us
            raise RendezvousError(f"lost the rendezvous {self.address.url} while joining: "
                                  f"{str(error).strip().splitlines()[0]}") from None
        self.liveness.start()

    def fail(self, line: str, code: int) -> NoReturn:
        assert self.liveness is not None, "open() first"
        self.liveness.fail(line, code)

    def agree(self, fields: dict[str, Any], payload: dict[str, Any] | None = None
              ) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
        """(the agreed public parameters, every role's declaration)."""
        assert self.meeting is not None and self.liveness is not None, "open() first"
        try:
            declared = self.meeting.exchange({"fields": fields, "payload": payload or {}},
                                             self.options.timeout_s)
            return agree(declared, self.names), declared
        except AgreementError as error:
            self.fail(str(error), MISMATCH)
        except RendezvousError as error:
            self.fail(str(error), error.code)
        except RuntimeError as error:  # the store is gone: the watch names its host
            self.liveness.verdict(error, "while the roles agree")

    def run(self, func: Callable[..., Any] | None, *args: Any) -> Any:
        """``func(*args)`` as this party under CrypTen (the dealer: serve); any failure
        ends the process with the session's verdict."""
        assert self.liveness is not None and self.meeting is not None, "open() first"
        _keep_gloo_on_loopback(self.address)
        try:
            with startup(self.meeting.store, self.options.step_timeout_s):
                result = run_as_party(func or _nothing, *args, rank=self.rank,
                                      rendezvous=self.address.url,
                                      config=self.options.launch_config())
        except BaseException as error:  # noqa: B036 - a party's failure ends every role
            self.liveness.verdict(error, "during the private computation")
        if self.options.role == "dealer":
            self._dealt()
        return result

    def _wait(self, keys: list[str], ranks: list[int], what: str) -> None:
        """Wait (step timeout) for keys on the store; any failure ends the process."""
        assert self.meeting is not None and self.liveness is not None
        try:
            self.meeting.wait_for(keys, self.options.step_timeout_s, ranks, what)
        except RendezvousError as error:
            self.fail(str(error), error.code)
        except RuntimeError as error:  # the store is gone: the watch names its host
            self.liveness.verdict(error, "while waiting for the others")

    def _dealt(self) -> None:
        """CrypTen's dealer loop also returns when its link to party 0 breaks: it dealt
        to the end only if the owner ends well."""
        assert self.meeting is not None
        self._wait(["exit/0"], [0], "to end the session")
        if self.meeting.ended(0) != "ok":
            self.fail(f"{self.names[0]} ended the session with an error", LOST)

    def post(self, key: str, value: Any) -> None:
        assert self.meeting is not None and self.liveness is not None
        try:
            self.meeting.write(f"{key}/{self.rank}", json.dumps(value))
        except RuntimeError as error:
            self.liveness.verdict(error, f"sending its {key}")

    def collect(self, key: str, ranks: list[int]) -> dict[int, Any]:
        """Every listed rank's posted ``key`` (waits up to the step timeout)."""
        assert self.meeting is not None
        keys = [f"{key}/{r}" for r in ranks]
        self._wait(keys, ranks, f"to send its {key}")
        return {r: json.loads(self.meeting.read(k)) for r, k in zip(ranks, keys, strict=True)}

    def finish(self) -> None:
        """This role's work went well: say so; the owner keeps the store up until the
        others have ended (at most the step timeout)."""
        assert self.liveness is not None
        self.liveness.finish()
        if self.rank == 0:
            self.liveness.linger(self.options.step_timeout_s)
        self.liveness.stop()


def _nothing() -> None:
    return None


def _keep_gloo_on_loopback(address: Address) -> None:
    """With a loopback rendezvous, gloo's links listen on the loopback interface too
    (else gloo binds the address of this host's name). GLOO_SOCKET_IFNAME, when set,
    wins: on separate hosts, set it to the VPN's interface (docs/deployment.md)."""
    if "GLOO_SOCKET_IFNAME" in os.environ or not is_loopback(address.host):
        return
    names = [name for _, name in socket.if_nameindex() if name.startswith("lo")]
    if names:
        os.environ["GLOO_SOCKET_IFNAME"] = names[0]
