"""A userspace propagation delay: hold every packet that crosses a TUN device for a fixed time.

Why: this kernel has tc's rate limiters (htb, tbf) but not netem, so a link's delay is
made here. The switch namespace routes every packet between the roles into the TUN
device (policy routing on the incoming veth); this process reads it, keeps it for
``--hold-ms`` and writes it back into the same device, from where the kernel routes it on
to its destination. FIFO, no loss, no reordering; the kernel's path and this loop's own
time add to the hold, which is why the harness measures the round trip it gets.

Run inside the switch namespace as root: ``python netns_delayer.py --tun nldelay
--hold-ms 20``. It prints ``ready`` once the device exists and a JSON line of counters
when it ends (SIGTERM or SIGINT).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
import signal
import struct
import sys
import time
from collections import deque

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
READ_SIZE = 65536
BATCH = 512  # packets read per wake-up before releasing the due ones


def open_tun(name: str) -> int:
    """A non-blocking fd of a new TUN device ``name`` (raw IP packets, no header)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def forward(fd: int, hold_s: float, should_stop: list[bool]) -> dict[str, float]:
    """Read packets, release each ``hold_s`` after it arrived; return counters."""
    queue: deque[tuple[float, bytes]] = deque()
    packets = bytes_ = late_total = late_max = 0.0
    max_queue = 0
    clock = time.monotonic
    while not should_stop[0]:
        timeout = 0.2 if not queue else max(0.0, queue[0][0] - clock())
        try:
            readable, _, _ = select.select([fd], [], [], timeout)
        except InterruptedError:
            continue
        if readable:
            now = clock()
            for _ in range(BATCH):
                try:
                    packet = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    break
                queue.append((now + hold_s, packet))
            max_queue = max(max_queue, len(queue))
        now = clock()
        while queue and queue[0][0] <= now:
            due, packet = queue.popleft()
            try:
                os.write(fd, packet)
            except OSError:  # the device went down (teardown): the packet is lost
                continue
            packets += 1
            bytes_ += len(packet)
            late = now - due
            late_total += late
            late_max = max(late_max, late)
    return {"packets": packets, "bytes": bytes_, "max_queue": max_queue,
            "mean_late_us": 1e6 * late_total / packets if packets else 0.0,
            "max_late_us": 1e6 * late_max}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tun", required=True, help="the TUN device to create")
    parser.add_argument("--hold-ms", type=float, required=True,
                        help="one-way hold per packet, milliseconds")
    args = parser.parse_args(argv)
    if args.hold_ms < 0:
        parser.error("--hold-ms must be >= 0")
    try:
        fd = open_tun(args.tun)
    except OSError as error:
        print(f"netns_delayer: cannot create TUN device {args.tun!r}: {error.strerror} "
              "(needs root and /dev/net/tun)", file=sys.stderr)
        return 1
    should_stop = [False]

    def stop(_signum: int, _frame: object) -> None:
        should_stop[0] = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)
    start = time.process_time()
    counters = forward(fd, args.hold_ms / 1e3, should_stop)
    counters["cpu_s"] = time.process_time() - start
    os.close(fd)
    print(json.dumps(counters), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
