"""Run a function as N CrypTen parties (plus an optional trusted dealer) on one machine.

Why our own launcher: CrypTen's ``run_multiprocess`` joins its children before draining
their result queue (a hang for results larger than a pipe buffer), ships tensors through
fd-sharing (fails once the child has exited), and waits forever when one party dies. Here
results travel as pickled numpy, the queue is drained while the parties run, and a failed
or overdue party stops every process with one error that names it.

The launcher is also where the protocol hooks of ``crypten_mpcache.patches`` (the
comparison route, the dealer requests, the dealer-traffic tally, the settings snapshot)
are installed: in each party and dealer process while it runs, never in the launcher's.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import queue as queue_module
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import crypten
import crypten.communicator as comm
import numpy as np
import torch
from crypten.config import cfg

from crypten_mpcache.patches import crypten_comparison, crypten_dealer, crypten_distributed
from crypten_mpcache.patches import crypten_settings as crypten_settings_patch
from crypten_mpcache.patches.crypten_comparison import COMPARISONS as COMPARISONS  # for the CLIs
from crypten_mpcache.runtime import dealer as dealer_process
from crypten_mpcache.runtime import offline
from crypten_mpcache.secure.primitives import dcf_dealer

Dealer = Literal["ttp", "tfp"]
DEALERS: tuple[str, ...] = ("ttp", "tfp")
_PROVIDER_NAMES = {"ttp": "TTP", "tfp": "TFP"}


class PartyError(RuntimeError):
    """A party (or the dealer) failed or stalled; the message names it."""


@dataclass(frozen=True)
class LaunchConfig:
    """How to run the parties.

    ``dealer``: ``ttp`` runs a separate trusted-dealer process (secure for semi-honest
    parties); ``tfp`` lets party 0 deal the correlated randomness, which hands party 0
    every mask: test and cost measurement only. ``dealing``: with the TTP, ``ahead``
    deals each phase's material before the phase (``runtime.offline``); ``on-demand``
    fetches each piece when it is needed (CrypTen's way). ``dcf_batch``: the most
    elements of one dealt request of DCF keys with ``comparison="dcf"``
    (``runtime.offline.OfflineConfig``). ``dcf_max_elements``: with
    ``comparison="hybrid"``, calls of at most this many elements compare by DCF keys,
    larger ones by the masked comparison (``patches.crypten_comparison``).
    """

    parties: int = 2
    dealer: Dealer = "ttp"
    comparison: str = "hybrid"
    dealing: str = "ahead"
    timeout_s: float = 1800.0
    threads_per_party: int = 1
    count_communication: bool = True
    dcf_batch: int = offline.OfflineConfig.dcf_batch
    dcf_max_elements: int = crypten_comparison.HYBRID.dcf_max_elements

    def __post_init__(self) -> None:
        if self.parties not in (2, 3):
            raise ValueError(f"parties must be 2 or 3, got {self.parties}")
        if self.dealer not in DEALERS:
            raise ValueError(f"dealer must be one of {DEALERS}, got {self.dealer!r}")
        crypten_comparison.validate(self.comparison, self.dcf_max_elements)
        dcf_dealer.checked_batch(  # validates both
            offline.OfflineConfig(dealing=self.dealing, dcf_batch=self.dcf_batch))
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if self.threads_per_party < 1:
            raise ValueError("threads_per_party must be >= 1")


def party_name(rank: int, world_size: int) -> str:
    if rank == world_size:
        return "dealer (TTP)"
    role = {0: "model owner", 1: "client"}.get(rank, "helper")
    return f"party {rank} ({role})"


def configure_crypten(dealer: Dealer, count_communication: bool = True) -> None:
    """Select the dealer and turn on communication counting (CrypTen reads 0 otherwise)."""
    cfg.mpc.provider = _PROVIDER_NAMES[dealer]
    cfg.communicator.verbose = bool(count_communication)


def to_picklable(value: Any) -> Any:
    """Tensors become numpy arrays so that no torch fd-sharing crosses processes."""
    if isinstance(value, torch.Tensor):
        return _TensorBox(value.detach().cpu().numpy())
    if isinstance(value, dict):
        return {k: to_picklable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_picklable(v) for v in value)
    return value


def from_picklable(value: Any) -> Any:
    if isinstance(value, _TensorBox):
        return torch.from_numpy(value.array)
    if isinstance(value, dict):
        return {k: from_picklable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(from_picklable(v) for v in value)
    return value


@dataclass
class _TensorBox:
    array: np.ndarray


def run_as_party(func: Callable[..., Any], *args: Any, rank: int, rendezvous: str,
                 config: LaunchConfig | None = None, **kwargs: Any) -> Any:
    """Run ONE party (or, with ``rank == parties``, the TTP dealer) in this process.

    For parties on separate hosts: start one process per party on its own host, all with
    the same ``rendezvous`` (``tcp://HOST:PORT`` of party 0's host, or ``env://`` with
    MASTER_ADDR/MASTER_PORT set) and the same ``config``. Traffic between hosts is not
    encrypted by torch.distributed: use a VPN or TLS tunnel on untrusted networks.
    """
    config = config or LaunchConfig()
    last_rank = config.parties if config.dealer == "ttp" else config.parties - 1
    if not 0 <= rank <= last_rank:
        raise ValueError(f"rank must be in [0, {last_rank}] for {config.parties} parties "
                         f"and dealer {config.dealer}, got {rank}")
    if not rendezvous.startswith(("tcp://", "env://", "file://")):
        raise ValueError(f"rendezvous must start with tcp://, env:// or file://, got "
                         f"{rendezvous!r}")
    _set_party_environment(rank, config.parties, rendezvous, config)
    configure_crypten(config.dealer, config.count_communication)
    if rank == config.parties:
        _serve_as_dealer()
        return None
    with _party_session(config):
        return func(*args, **kwargs)


@contextmanager
def _dealer_hooks() -> Iterator[None]:
    """Our protocols' requests on CrypTen's TTP and the dealer-traffic tally."""
    crypten_dealer.PATCH.install()
    crypten_dealer.TRAFFIC_PATCH.install()
    try:
        yield
    finally:
        crypten_dealer.TRAFFIC_PATCH.uninstall()
        crypten_dealer.PATCH.uninstall()


def _serve_as_dealer() -> None:
    """The trusted dealer: serves until party 0 says terminate."""
    with _dealer_hooks():
        dealer_process.serve()


@contextmanager
def _party_session(config: LaunchConfig) -> Iterator[None]:
    """crypten.init() with the dealer hooks and the configured comparison protocol; all
    undone on exit."""
    with _dealer_hooks():
        crypten.init()
        crypten_settings_patch.PATCH.install()
        crypten_distributed.OPENING_PATCH.install()
        crypten_comparison.use(config.comparison, config.dcf_max_elements)
        offline.use(offline.OfflineConfig(dealing=config.dealing,
                                          trace_timeout_s=config.timeout_s,
                                          dcf_batch=config.dcf_batch),
                    ttp=config.dealer == "ttp")
        try:
            yield
        finally:
            crypten_comparison.use("crypten")
            crypten_distributed.OPENING_PATCH.uninstall()
            crypten_settings_patch.PATCH.uninstall()
            crypten.uninit()


def _set_party_environment(rank: int, world_size: int, rendezvous: str,
                           config: LaunchConfig) -> None:
    os.environ.update({
        "WORLD_SIZE": str(world_size), "RANK": str(rank), "RENDEZVOUS": rendezvous,
        "DISTRIBUTED_BACKEND": "gloo",
    })
    torch.set_num_threads(config.threads_per_party)


def _child(target: Callable[..., Any], rank: int, world_size: int, rendezvous: str,
           config: LaunchConfig, results: Any, args: tuple, kwargs: dict) -> None:
    _set_party_environment(rank, world_size, rendezvous, config)
    failed_at: float | None = None
    try:
        configure_crypten(config.dealer, config.count_communication)
        if rank == world_size:
            _serve_as_dealer()
            results.put((rank, "ok", None))
            return
        with _party_session(config):
            try:
                value = target(*args, **kwargs)
            except BaseException:
                failed_at = time.time()  # before the session's end closes the peers' links
                raise
        results.put((rank, "ok", to_picklable(value)))
    except BaseException as error:  # report any failure to the parent, then exit non-zero
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        results.put((rank, "error", (failed_at or time.time(), detail,
                                     traceback.format_exc())))
        results.close()
        results.join_thread()  # flush the report before the hard exit
        os._exit(1)


def launch(func: Callable[..., Any], *args: Any, config: LaunchConfig | None = None,
           **kwargs: Any) -> list[Any]:
    """Run ``func(*args, **kwargs)`` in every party; return the results in rank order.

    Raises ``PartyError`` naming the first party that failed, died or timed out; every
    other process is stopped first, so nothing is left hanging.
    """
    config = config or LaunchConfig()
    world_size = config.parties
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    rendezvous = "file://" + tempfile.NamedTemporaryFile(prefix="crypten-rdv-", delete=True).name
    ranks = list(range(world_size)) + ([world_size] if config.dealer == "ttp" else [])
    processes = {
        rank: ctx.Process(target=_child, name=party_name(rank, world_size), daemon=False,
                          args=(func, rank, world_size, rendezvous, config, results,
                                args, kwargs))
        for rank in ranks
    }
    _uninit_parent_crypten()
    for process in processes.values():
        process.start()
    try:
        return _collect(processes, results, world_size, config.timeout_s)
    finally:
        _stop(processes.values())
        _remove_rendezvous(rendezvous)


def _collect(processes: dict[int, multiprocessing.Process], results: Any, world_size: int,
             timeout_s: float) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    outputs: dict[int, Any] = {}
    pending = set(processes)
    while pending:
        try:
            rank, status, payload = results.get(timeout=0.1)
        except queue_module.Empty:
            if any(processes[r].exitcode is not None for r in pending):
                _raise_first_failure(results, world_size, {}, processes, pending)
            if time.monotonic() > deadline:
                names = ", ".join(party_name(r, world_size) for r in sorted(pending))
                raise PartyError(f"timed out after {timeout_s:.0f}s waiting for {names}") from None
            continue
        pending.discard(rank)
        if status == "error":
            _raise_first_failure(results, world_size, {rank: payload}, processes, pending)
        outputs[rank] = from_picklable(payload)
    return [outputs[rank] for rank in range(world_size)]


def _raise_first_failure(results: Any, world_size: int, errors: dict[int, tuple],
                         processes: dict[int, multiprocessing.Process], pending: set[int],
                         grace_s: float = 1.0) -> None:
    """Name the party that failed first: when one party fails, its peers fail soon after
    with connection errors, so collect reports for a moment and blame the earliest."""
    end = time.monotonic() + grace_s
    while time.monotonic() < end:
        try:
            rank, status, payload = results.get(timeout=0.05)
        except queue_module.Empty:
            continue
        if status == "error":
            errors[rank] = payload
    silent = [r for r in sorted(pending - set(errors))
              if processes[r].exitcode not in (None, 0)]
    if silent:  # a party that died without a word is the root cause of its peers' errors
        names = ", ".join(f"{party_name(r, world_size)} (exit code {processes[r].exitcode})"
                          for r in silent)
        raise PartyError(f"{names} died without reporting a result")
    if errors:
        rank = min(errors, key=lambda r: errors[r][0])
        _, detail, trace = errors[rank]
        others = sorted(set(errors) - {rank})
        also = f" (then {', '.join(party_name(r, world_size) for r in others)} stopped)" \
            if others else ""
        raise PartyError(f"{party_name(rank, world_size)} failed: {detail}{also}\n{trace}")
    raise PartyError("a party exited without reporting a result")


def _stop(processes: Any) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)


def _uninit_parent_crypten() -> None:
    """A forked child must initialize its own communicator, not inherit the parent's."""
    if comm.is_initialized():
        crypten.uninit()


def _remove_rendezvous(rendezvous: str) -> None:
    path = rendezvous.removeprefix("file://")
    if os.path.exists(path):
        os.remove(path)


def crypten_compatible_run_multiprocess(world_size: int, maxsize: int | None = None):
    """Drop-in replacement for ``crypten.mpc.run_multiprocess`` built on ``launch``.

    The dealer follows CrypTen's configured provider. Unlike the original it never hangs
    on large results and raises ``PartyError`` instead of returning None on failure.
    """
    del maxsize  # our queue is drained while the parties run: no size limit is needed

    def decorator(func: Callable[..., Any]) -> Callable[..., list[Any]]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> list[Any]:
            dealer: Dealer = "ttp" if crypten.mpc.ttp_required() else "tfp"
            config = LaunchConfig(parties=world_size, dealer=dealer,
                                  count_communication=bool(cfg.communicator.verbose))
            return launch(func, *args, config=config, **kwargs)

        return wrapper

    return decorator
