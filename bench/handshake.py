"""CPU per tunnel TLS handshake, by key exchange group (issue 12's TLS item).

    python -m bench.handshake [--count 300] [--rounds 3]

The gateway's tunnel certificate (a self-signed P-256 one, as the gateway makes
it) and TLS settings (wire/tls.tunnel_server_options) against the connect client's
pinned TLS (wire/tls.PinnedClientTLS), in one process over memory BIOs: no
sockets, no reactor, so what is measured is OpenSSL's work plus pyOpenSSL's calls
(process CPU time around each side's do_handshake, and the client's read of what
the server sent after it: session tickets, if any). For each group list the
groups are set on both contexts; "default" is the OpenSSL build's own list (with
OpenSSL 3.5 and later, the hybrid X25519MLKEM768 first). The last row is the
default groups with session tickets (wire/tls.server_options, as the HTTPS
listener). Rounds alternate the rows so drift on a shared machine hits them all
alike; the median is printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import ffi, lib

from studios_gateway.wire import tls

GROUPS = ["default", "X25519MLKEM768", "X25519"]
#: (row, groups, server options): the tunnel's listener, then with session tickets.
ROWS = [(groups, groups, tls.tunnel_server_options) for groups in GROUPS] + [
    ("default, tickets", "default", tls.server_options)]


def _set_groups(ctx: SSL.Context, groups: str) -> None:
    if groups != "default" and lib.SSL_CTX_set1_curves_list(ctx._context, groups.encode()) != 1:
        raise SystemExit(f"this OpenSSL does not know the groups {groups!r}")


def measure(cert: Path, key: Path, groups: str, count: int,
            options: Callable[[Path, Path], Any]) -> tuple[str, float, float]:
    """(group negotiated, server CPU s, client CPU s) per handshake."""
    server_ctx = options(cert, key).getContext()
    client = tls.PinnedClientTLS(tls.fingerprint_pem(cert.read_bytes()))
    _set_groups(server_ctx, groups)
    _set_groups(client._ctx, groups)
    server_cpu = client_cpu = 0.0
    name = "?"
    for _ in range(count):
        s = SSL.Connection(server_ctx, None)
        s.set_accept_state()
        c = SSL.Connection(client._ctx, None)
        c.set_connect_state()
        done = {c: False, s: False}
        while not all(done.values()):
            for me, peer in ((c, s), (s, c)):
                t0 = time.process_time()
                try:
                    me.do_handshake()
                    done[me] = True
                except SSL.WantReadError:
                    pass
                spent = time.process_time() - t0
                if me is s:
                    server_cpu += spent
                else:
                    client_cpu += spent
                try:
                    peer.bio_write(me.bio_read(1 << 16))
                except SSL.WantReadError:
                    pass
        t0 = time.process_time()
        try:  # the records the server sent after its handshake (tickets), if any
            c.recv(1)
        except SSL.WantReadError:
            pass
        client_cpu += time.process_time() - t0
        name = ffi.string(lib.SSL_get0_group_name(s._ssl)).decode()
    return name, server_cpu / count, client_cpu / count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.handshake",
                                description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=300, help="handshakes per measurement")
    p.add_argument("--rounds", type=int, default=3, help="measurements per group list")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="handshake-") as tmp:
        cert, key = tls.ensure_self_signed(Path(tmp), ["127.0.0.1"])
        got: dict[str, list[tuple[str, float, float]]] = {row[0]: [] for row in ROWS}
        for _ in range(a.rounds):
            for row, groups, options in ROWS:
                got[row].append(measure(cert, key, groups, a.count, options))
    print(f"{'groups set':<16} {'negotiated':<16} {'gateway us':>10} {'client us':>10}")
    for groups, runs in got.items():
        print(f"{groups:<16} {runs[0][0]:<16} "
              f"{statistics.median(r[1] for r in runs) * 1e6:>10.0f} "
              f"{statistics.median(r[2] for r in runs) * 1e6:>10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
