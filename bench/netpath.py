"""An emulated network path between two network namespaces, for trying the tunnel on a
path with delay, loss, a silence or an MTU black hole (needs root; Linux).

Two namespaces, ``<prefix>-gw`` (10.77.0.1) and ``<prefix>-st`` (10.77.0.2), each with a
TUN device; this process carries the IP packets between the two devices, delayed by
``delay_ms`` each way, a fraction ``loss`` dropped at random, every packet longer than
``mtu`` dropped without an ICMP answer (a black hole), or all of them while ``block``.
No qdisc is used (this kind of machine's kernel may lack netem) and nothing outside the
two namespaces is touched; they are deleted when the process ends.

    sudo .venv/bin/python -m bench.netpath run --delay-ms 40 --loss 0.01 &
    sudo ip netns exec sg-path-gw twistd -n studios-gateway  # CONNECT_TUNNEL_URL=10.77.0.1:7070
    sudo ip netns exec sg-path-st studios-connect ...
    sudo .venv/bin/python -m bench.netpath set --block          # the path goes silent
    sudo .venv/bin/python -m bench.netpath set --delay-ms 40 --mtu 1280

Measured with it (docs/operators.md "Tunnel keepalive"): the keepalive, the
retransmission cap and the small segments after a stalled attempt.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
DEVICE = "sgpath0"
ADDRESSES = ("10.77.0.1", "10.77.0.2")


def control_file(prefix: str) -> Path:
    return Path(f"/run/{prefix}.json")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


def make(prefix: str) -> tuple[str, str]:
    """The two namespaces, each with its TUN device up and addressed. When a step fails
    (no /dev/net/tun, a SIGTERM meanwhile) the namespaces made so far are deleted: they
    were left behind; one of the same name that was there already (another run's) is
    not touched."""
    names = (f"{prefix}-gw", f"{prefix}-st")
    made: list[str] = []
    try:
        for ns, (me, peer) in zip(names, (ADDRESSES, ADDRESSES[::-1]), strict=True):
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "tuntap", "add", "dev", DEVICE, "mode", "tun")
            _ip("-n", ns, "addr", "add", me, "peer", peer, "dev", DEVICE)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", DEVICE, "up")
    except BaseException:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL, check=False)
        raise
    return names[0], names[1]


def remove(prefix: str) -> None:
    for ns in (f"{prefix}-gw", f"{prefix}-st"):
        subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL, check=False)
    control_file(prefix).unlink(missing_ok=True)
    Path(f"/run/{prefix}.pid").unlink(missing_ok=True)


def open_tun(ns: str) -> int:
    """The TUN device in namespace ``ns``, opened from this process (which enters it)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    with open(f"/run/netns/{ns}") as f:
        if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", DEVICE.encode(), IFF_TUN | IFF_NO_PI))
    return fd


class Carrier:
    """The path's conditions and the packets under way, per direction."""

    def __init__(self, a: int, b: int, conditions: dict[str, Any]):
        self.peer = {a: b, b: a}
        self.queues: dict[int, deque[tuple[float, bytes]]] = {a: deque(), b: deque()}
        self.conditions = conditions
        self.counts = {"carried": 0, "lost": 0, "too_big": 0, "blocked": 0}

    def arrived(self, fd: int, packet: bytes, now: float) -> None:
        c = self.conditions
        if c["block"]:
            self.counts["blocked"] += 1
        elif c["mtu"] and len(packet) > c["mtu"]:
            self.counts["too_big"] += 1
        elif c["loss"] and random.random() < c["loss"]:  # noqa: S311 - not a secret
            self.counts["lost"] += 1
        else:
            self.queues[self.peer[fd]].append((now + c["delay_ms"] / 1000, packet))

    def due(self, now: float) -> float | None:
        """Write what is due; seconds until the next packet is (None: none waits)."""
        nxt = None
        for fd, queue in self.queues.items():
            while queue and queue[0][0] <= now:
                try:
                    os.write(fd, queue.popleft()[1])
                    self.counts["carried"] += 1
                except OSError:
                    self.counts["lost"] += 1
            if queue:
                wait = queue[0][0] - now
                nxt = wait if nxt is None else min(nxt, wait)
        return nxt


def run(prefix: str, conditions: dict[str, Any]) -> None:
    # (before anything is made: a SIGTERM from here on removes what was made)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    gw, st = make(prefix)
    try:
        control_file(prefix).write_text(json.dumps(conditions))
        a, b = open_tun(gw), open_tun(st)
        path = Carrier(a, b, conditions)

        def reload(*_: Any) -> None:
            conditions.update(json.loads(control_file(prefix).read_text()))
            print(time.strftime("%H:%M:%S"), "path:", conditions, path.counts, flush=True)

        signal.signal(signal.SIGUSR1, reload)
        (Path(f"/run/{prefix}.pid")).write_text(str(os.getpid()))
        print(f"{gw} ({ADDRESSES[0]}) <-> {st} ({ADDRESSES[1]}):", conditions, flush=True)
        wait: float | None = None
        while True:
            try:
                ready, _, _ = select.select([a, b], [], [], wait)
            except InterruptedError:
                ready = []
            now = time.monotonic()
            for fd in ready:
                for _ in range(64):
                    try:
                        packet = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    path.arrived(fd, packet, now)
            wait = path.due(time.monotonic())
    except KeyboardInterrupt:
        pass
    finally:
        remove(prefix)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.netpath", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("run", "set", "remove"))
    parser.add_argument("--prefix", default="sg-path")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one way")
    parser.add_argument("--loss", type=float, default=0.0, help="fraction dropped each way")
    parser.add_argument("--mtu", type=int, default=0, help="drop longer packets silently")
    parser.add_argument("--block", action="store_true", help="drop every packet")
    args = parser.parse_args(argv)
    conditions = {"delay_ms": args.delay_ms, "loss": args.loss, "mtu": args.mtu,
                  "block": args.block}
    if args.command == "run":
        run(args.prefix, conditions)
    elif args.command == "set":
        control_file(args.prefix).write_text(json.dumps(conditions))
        os.kill(int(Path(f"/run/{args.prefix}.pid").read_text()), signal.SIGUSR1)
    else:
        remove(args.prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
