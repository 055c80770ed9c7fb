"""``eval --workers N``: one evaluation split over N processes sharing one run folder.

Each worker is the same command with ``--shard I/N`` (``runner.plan`` interleaves the
units), so a run uses every core, or keeps a GPU busy with N Python streams; the parent
draws one progress bar from the prediction files and stops every worker when it is
interrupted or terminated (a ``timeout`` around the command leaves no orphans). The
results are then read back from the folder, exactly as a resumed single-process run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from types import FrameType

from tqdm import tqdm

from crypten_mpcache.eval.runner import read_predictions


def worker_argv(options: Sequence[str], index: int, count: int) -> list[str]:
    """The eval ``options`` of shard ``index`` of ``count`` (no progress bar of its own)."""
    return [*options, "--shard", f"{index}/{count}", "--no-progress"]


def finished(folder: Path, keys: Collection[str]) -> int:
    """How many of this command's units (``keys``) the folder holds. A resumed folder may
    hold other commands' units too: they do not count."""
    if not folder.is_dir():
        return 0
    done = read_predictions(folder)
    return sum(1 for key in keys if key in done)


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def run_workers(options: Sequence[str], count: int, folder: Path, keys: Collection[str],
                show_progress: bool = True, threads_per_worker: int = 1) -> int:
    """Run ``count`` shard workers of the eval ``options`` (whose units are ``keys``); 0
    when all succeed."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_worker),
           "MKL_NUM_THREADS": str(threads_per_worker)}
    code = ("import sys; from crypten_mpcache.cli import main; "
            "raise SystemExit(main(['eval', *sys.argv[1:]]))")
    procs: list[subprocess.Popen[bytes]] = []
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    keys = set(keys)
    total = len(keys)
    start = finished(folder, keys)
    try:
        for index in range(count):
            procs.append(subprocess.Popen(
                [sys.executable, "-c", code, *worker_argv(options, index, count)], env=env))
        with tqdm(total=total, initial=min(start, total), desc=f"eval x{count}", unit="run",
                  disable=not show_progress) as bar:
            while any(p.poll() is None for p in procs):
                time.sleep(2.0)
                bar.update(max(0, finished(folder, keys) - bar.n))
        return max(p.returncode for p in procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        signal.signal(signal.SIGTERM, previous)
