"""Kernel TLS: can this machine use it, and what do TLS's two I/O paths cost here?

    .venv/bin/python -m bench.ktls                  # probe, then 256 MiB per path
    .venv/bin/python -m bench.ktls --mib 1024 --runs 5

Probe: whether the kernel has the TLS upper-layer protocol (/proc/net/tls_stat,
net.ipv4.tcp_available_ulp, setsockopt(TCP_ULP, "tls") on a loopback socket,
CONFIG_TLS in /proc/config.gz), whether the `openssl` command was built with kTLS
(`s_server -ktls`), and which OpenSSL the ssl module and pyOpenSSL use.

Measure: one TLS 1.3 connection on 127.0.0.1 (AES-256-GCM), the sender in a
child process, ``--mib`` MiB one way, through Python's ssl module on each path:

- socket: OpenSSL reads and writes the socket itself (a socket BIO), the only
  path kTLS can take over;
- socket+ktls: the same with SSL_OP_ENABLE_KTLS; the kernel's TLS counters say
  whether kTLS was really used (without it OpenSSL silently stays in user space);
- memory-bio: OpenSSL between two memory BIOs, the program moving bytes to and
  from the socket, as Twisted's TLS layer does (the gateway's path).

Printed per path: MB/s (10^6 bytes/s) and CPU seconds per GB of the receiver and
the sender (median of --runs). See docs/decisions/kernel-tls.md.
"""

from __future__ import annotations

import argparse
import gzip
import multiprocessing
import os
import socket
import ssl
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

TCP_ULP = 31  # linux/tcp.h
OP_ENABLE_KTLS = 1 << 3  # SSL_OP_ENABLE_KTLS (OpenSSL 3.0 and later)
CHUNK = 256 * 1024
MB = 1_000_000


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def kernel_config(option: str) -> str:
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            for line in f:
                if line.startswith((f"{option}=", f"# {option} ")):
                    return line.strip()
    except OSError:
        return "no /proc/config.gz"
    return f"{option} absent"


def ulp_tls() -> str:
    """What setsockopt(TCP_ULP, "tls") says on a connected loopback socket."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname()) as client:
            accepted, _ = server.accept()
            with accepted:
                try:
                    client.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")
                except OSError as e:
                    return f"refused: {e.strerror} (errno {e.errno})"
                return "accepted"


def openssl_command_ktls() -> str:
    try:
        out = subprocess.run(["openssl", "s_server", "-help"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot run openssl: {e}"
    return "has -ktls" if "-ktls" in out.stdout + out.stderr else "no -ktls option"


def tls_stat() -> dict[str, int]:
    text = _read("/proc/net/tls_stat") or ""
    return {k: int(v) for k, v in (line.split() for line in text.splitlines() if line.strip())}


def probe() -> list[tuple[str, str]]:
    from OpenSSL import SSL

    rows = [
        ("kernel", os.uname().release),
        ("CONFIG_TLS", kernel_config("CONFIG_TLS")),
        ("CONFIG_MODULES", kernel_config("CONFIG_MODULES")),
        ("/proc/net/tls_stat", "present" if _read("/proc/net/tls_stat") is not None
         else "absent"),
        ("net.ipv4.tcp_available_ulp",
         (_read("/proc/sys/net/ipv4/tcp_available_ulp") or "?").strip() or "(none)"),
        ('setsockopt(TCP_ULP, "tls")', ulp_tls()),
        ("openssl command", openssl_command_ktls()),
        ("ssl module's OpenSSL", ssl.OPENSSL_VERSION),
        ("pyOpenSSL's OpenSSL (Twisted's TLS)",
         SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()),
    ]
    return rows


# The measurement ---------------------------------------------------------------------


def _contexts(directory: Path, ktls: bool) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    from studios_gateway.wire import tls

    cert, key = tls.ensure_self_signed(directory, ["127.0.0.1"])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cert)
    for ctx in (server, client):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        if ktls:
            ctx.options |= OP_ENABLE_KTLS
    return server, client


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _send_socket(ctx: ssl.SSLContext, port: int, total: int, out: Any) -> None:
    block = os.urandom(CHUNK)
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            start = _cpu()
            left = total
            while left:
                n = min(left, CHUNK)
                s.sendall(block[:n])
                left -= n
            out.send(_cpu() - start)
            s.recv(1)  # the receiver's "done"


def _send_memory_bio(ctx: ssl.SSLContext, port: int, total: int, out: Any) -> None:
    block = os.urandom(CHUNK)
    with socket.create_connection(("127.0.0.1", port)) as raw:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                incoming.write(raw.recv(CHUNK))
        raw.sendall(outgoing.read())
        start = _cpu()
        left = total
        while left:
            n = min(left, CHUNK)
            view = memoryview(block)[:n]
            for i in range(0, n, 16384):  # one record per write, as Twisted's _write does
                obj.write(view[i:i + 16384])
                raw.sendall(outgoing.read())
            left -= n
        out.send(_cpu() - start)
        while raw.recv(CHUNK):  # until the receiver, done, closes (its tickets and all)
            pass


def _receive_socket(conn: socket.socket, ctx: ssl.SSLContext, total: int) -> None:
    with ctx.wrap_socket(conn, server_side=True) as s:
        buf = bytearray(CHUNK)
        got = 0
        while got < total:
            n = s.recv_into(buf)
            if not n:
                raise RuntimeError("sender went away")
            got += n
        s.sendall(b"k")


def _receive_memory_bio(conn: socket.socket, ctx: ssl.SSLContext, total: int) -> None:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=True)
    got = 0
    handshaken = False
    while got < total:
        data = conn.recv(CHUNK)
        if not data:
            raise RuntimeError("sender went away")
        incoming.write(data)
        if not handshaken:
            try:
                obj.do_handshake()
                handshaken = True
            except ssl.SSLWantReadError:
                pass
            conn.sendall(outgoing.read())
            if not handshaken:
                continue
        while True:
            try:
                got += len(obj.read(32768))  # what Twisted's _flushReceiveBIO asks for
            except ssl.SSLWantReadError:
                break
        pending = outgoing.read()
        if pending:
            conn.sendall(pending)
    conn.shutdown(socket.SHUT_WR)
    conn.close()


def measure(path: str, mib: int, directory: Path) -> dict[str, float]:
    server_ctx, client_ctx = _contexts(directory, ktls=path == "socket+ktls")
    total = mib * 1024 * 1024
    before = tls_stat()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        ours, theirs = multiprocessing.Pipe()
        send = _send_memory_bio if path == "memory-bio" else _send_socket
        sender = multiprocessing.get_context("fork").Process(
            target=send, args=(client_ctx, port, total, theirs))
        sender.start()
        conn, _ = listener.accept()
        t0, cpu0 = time.perf_counter(), _cpu()
        if path == "memory-bio":
            _receive_memory_bio(conn, server_ctx, total)
        else:
            _receive_socket(conn, server_ctx, total)
        seconds, receiver_cpu = time.perf_counter() - t0, _cpu() - cpu0
        sender_cpu = ours.recv()
        sender.join(30)
    after = tls_stat()
    moved = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    gb = total / 1e9
    return {"mb_s": total / MB / seconds, "receiver_s_per_gb": receiver_cpu / gb,
            "sender_s_per_gb": sender_cpu / gb, "ktls_counters_moved": float(bool(moved))}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ktls", description=__doc__.split("\n")[0])
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    print("| probe | result |\n|---|---|")
    for name, value in probe():
        print(f"| {name} | {value} |")
    print(f"\n`uptime`: {_read('/proc/loadavg') or '?'}".rstrip())
    print(f"\n{args.mib} MiB one way, median of {args.runs} (paths alternate run by run)\n")
    print("| path | MB/s | receiver CPU s/GB | sender CPU s/GB | kernel TLS counters moved |")
    print("|---|---|---|---|---|")
    paths = ["socket", "socket+ktls", "memory-bio"]
    results: dict[str, list[dict[str, float]]] = {path: [] for path in paths}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            for path in paths:
                results[path].append(measure(path, args.mib, Path(tmp)))
    for path in paths:
        runs = results[path]

        def med(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        moved = "yes" if any(r["ktls_counters_moved"] for r in runs) else "no"
        print(f"| {path} | {med('mb_s'):.0f} | {med('receiver_s_per_gb'):.2f} | "
              f"{med('sender_s_per_gb'):.2f} | {moved} |")
    print(f"\n`uptime`: {_read('/proc/loadavg') or '?'}".rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
