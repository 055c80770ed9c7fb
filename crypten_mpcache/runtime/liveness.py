"""A role that loses a peer ends within seconds, with one line naming the lost role.

Gloo tells a process that a link broke ("Connection closed by peer") but not whose
process died, and a process blocked on a live peer that itself waits on a dead one learns
nothing until the step timeout. So every role runs a ``Liveness`` thread on its own
connection to the rendezvous store (``runtime.rendezvous``), which every ``BEAT_S``:

* bumps this role's heartbeat counter (``beat/<rank>``);
* ends this process with the session's fatal line when one was posted (``abort``);
* names a peer lost when its counter has not moved for ``liveness_s`` (``SUSPECT_S`` once
  this process saw its links break: a live process beats even while blocked in gloo) and
  it has not said how it ended;
* names the model owner lost when the store (hosted in the owner's process) is gone, or
  has not answered for the liveness limit: on a link that drops every packet a store
  operation blocks for good (TCPStore has no timeout on it), so a second thread watches
  the first one's last answer.

Ending (``fail``) posts the line (the first one posted stands, so every role prints the
same line), records ``exit/<rank>``, prints the line, and ``os._exit``s: no teardown that
could block on a dead peer. Posting is bounded (``POST_S``): a role cut off from the store
prints its own line and exits. The owner first lingers (bounded) so the others can read it.
"""

from __future__ import annotations

import datetime
import os
import re
import threading
import time
from collections.abc import Callable
from typing import NoReturn, TypeVar

from torch.distributed import TCPStore

from crypten_mpcache.runtime.rendezvous import Address, Meeting

BEAT_S = 0.5
SUSPECT_S = 3.0
POST_S = 2.0  # longest a role waits to post its fatal line before it exits anyway
LOST = 1  # exit status of a role whose session failed at run time
T = TypeVar("T")


def bounded(work: Callable[[], T], seconds: float) -> T | None:
    """``work()`` in a daemon thread: its result, or None when it failed or did not
    finish within ``seconds`` (then it is left behind, blocked; the process exits)."""
    box: list[T] = []

    def run() -> None:
        try:
            box.append(work())
        except RuntimeError:
            pass

    thread = threading.Thread(target=run, name="bounded", daemon=True)
    thread.start()
    thread.join(seconds)
    return box[0] if box else None


def _first_line(error: BaseException) -> str:
    """The error's first line without a C++ source location (gloo's "[/path/x.cc:12] ")."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", first) or type(error).__name__


class Liveness:
    """Heartbeats and the watch over the other roles of one session (see module doc)."""

    def __init__(self, address: Address, rank: int, names: dict[int, str], *,
                 liveness_s: float, announce: Callable[[str], None]) -> None:
        self.address, self.rank, self.names = address, rank, names
        self.liveness_s, self.announce = liveness_s, announce
        self._timeout = datetime.timedelta(seconds=max(liveness_s, 2 * SUSPECT_S))
        self.meeting = self._connect()
        self._lock = threading.Lock()
        self._done = threading.Event()     # our work is over: beat, but judge nobody
        self._stop = threading.Event()
        self._suspect = threading.Event()
        self._seen: dict[int, tuple[int, float]] = {}
        self._answered = time.monotonic()  # the store's last answer to this watch
        self._thread = threading.Thread(target=self._run, name="liveness", daemon=True)
        self._store_watch = threading.Thread(target=self._watch_store, name="store-watch",
                                             daemon=True)

    def _connect(self) -> Meeting:
        store = TCPStore(self.address.host, self.address.port, is_master=False,
                         timeout=self._timeout)
        return Meeting(store, self.address, self.rank, self.names)

    def start(self) -> None:
        self._answered = time.monotonic()
        self._thread.start()
        self._store_watch.start()

    # -- the watch ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.meeting.store.add(f"mpcache/beat/{self.rank}", 1)
                self._answered = time.monotonic()
                if not self._done.is_set():
                    self._judge()
            except RuntimeError as error:  # the store is gone: its host, the owner, is
                if not self._done.is_set() and not self._stop.is_set():
                    self._store_lost(error)
            self._stop.wait(BEAT_S)

    def _judge(self) -> None:
        aborted = self.meeting.aborted()
        if aborted is not None:
            self.fail(*aborted)
        now = time.monotonic()
        limit = SUSPECT_S if self._suspect.is_set() else self.liveness_s
        for rank in sorted(self.names):
            if rank == self.rank or not self.meeting.has(f"claim/{rank}") \
                    or self.meeting.ended(rank) is not None:
                continue
            count = int(self.meeting.store.add(f"mpcache/beat/{rank}", 0))
            last = self._seen.get(rank)
            if last is None or last[0] != count:
                self._seen[rank] = (count, now)
            elif now - last[1] > limit:
                self.fail(f"lost {self.names[rank]}: no sign of life for "
                          f"{now - last[1]:.0f}s (killed, or its link dropped)", LOST)

    def _watch_store(self) -> None:
        """The store has not answered the watch for ``liveness_s`` (``SUSPECT_S`` once
        this process saw its links break): its host is lost, or this role's own link
        dropped (the watch itself is blocked in a store call)."""
        while not self._stop.wait(BEAT_S):
            silent = time.monotonic() - self._answered
            limit = SUSPECT_S if self._suspect.is_set() else self.liveness_s
            if not self._done.is_set() and silent > limit:
                self._store_lost(TimeoutError(f"no answer for {silent:.0f}s"))

    def _store_lost(self, error: BaseException) -> None:
        if self.rank == 0:
            self.fail(f"the rendezvous store of {self.address.url} failed: "
                      f"{str(error).strip().splitlines()[0]}", LOST)
        self.fail(f"lost {self.names[0]}, which hosts the rendezvous {self.address.url} "
                  "(killed, or its link dropped)", LOST, post=False)

    # -- ending -------------------------------------------------------------------------
    def suspect(self) -> None:
        """This process saw a link break: judge silence after ``SUSPECT_S``."""
        self._suspect.set()

    def verdict(self, error: BaseException, doing: str) -> NoReturn:
        """After an error in this role's own work: give the watch the time to name a lost
        peer (it ends the process); if no peer is lost, the error itself is the verdict."""
        self.suspect()
        deadline = time.monotonic() + SUSPECT_S + 4 * BEAT_S
        while time.monotonic() < deadline and not self._done.is_set():
            time.sleep(BEAT_S / 2)
        first = _first_line(error)
        self.fail(f"{self.names[self.rank]} failed {doing}: {first}", LOST)

    def fail(self, line: str, code: int, post: bool = True) -> NoReturn:
        """End this process with the session's fatal line (see module doc)."""
        if not self._lock.acquire(blocking=False):
            while True:  # the other thread is ending the process
                time.sleep(3600)
        self._done.set()
        if post:
            line, code = bounded(lambda: self._post(line, code), POST_S) or (line, code)
        self.announce(line)
        if self.rank == 0:
            self.linger(self.liveness_s)
        os._exit(code)

    def _post(self, line: str, code: int) -> tuple[str, int]:
        """Post our fatal line (the first posted stands) and our end; the line that stands."""
        stood = self.meeting.abort(line, code)
        self.meeting.end("error")
        return stood

    def finish(self) -> None:
        """Our work is over and went well: record it; keep beating until ``stop``."""
        self._done.set()
        self.meeting.end("ok")

    def linger(self, limit_s: float) -> None:
        """Owner only: keep the store up until every other role that joined has said how
        it ended or gone silent (at most ``limit_s``)."""
        try:
            meeting = self._connect()
            deadline = time.monotonic() + limit_s
            counts: dict[int, tuple[int, float]] = {}
            while time.monotonic() < deadline:
                waiting = []
                for rank in sorted(set(self.names) - {0}):
                    if not meeting.has(f"claim/{rank}") or meeting.ended(rank) is not None:
                        continue
                    count = int(meeting.store.add(f"mpcache/beat/{rank}", 0))
                    last = counts.setdefault(rank, (count, time.monotonic()))
                    if last[0] != count:
                        counts[rank] = (count, time.monotonic())
                    if time.monotonic() - counts[rank][1] < SUSPECT_S:
                        waiting.append(rank)
                if not waiting:
                    return
                time.sleep(BEAT_S / 2)
        except RuntimeError:
            return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * BEAT_S + self._timeout.total_seconds())
        self._store_watch.join(timeout=2 * BEAT_S)
