"""bench.browser_heads' reading of strace text and its replay through HeadReader."""

from __future__ import annotations

from bench.browser_heads import connections, replay


def _hex(data: bytes) -> str:
    return "".join(f"\\x{b:02x}" for b in data)


def _read(fd: int, data: bytes) -> str:
    return f'77 recvfrom({fd}, "{_hex(data)}", 65536, 0, NULL, NULL) = {len(data)}'


def _accept(fd: int) -> str:
    return (f'1514  accept4(10, {{sa_family=AF_INET, sin_port=htons(4000), '
            f'sin_addr=inet_addr("{_hex(b"127.0.0.1")}")}}, [16], SOCK_CLOEXEC) = {fd}')


FIELDS = b"\r\nHost: a.localhost\r\nAccept: */*\r\n\r\n"


def test_reads_follow_the_connection_last_accepted_on_their_descriptor() -> None:
    lines = [
        _accept(15), _read(15, b"GET /a HTTP/1.1" + FIELDS[:10]), _read(15, FIELDS[10:]),
        "77 recvfrom(15, 0x7f00, 65536, 0, NULL, NULL) = -1 EAGAIN (Resource temporarily)",
        _read(16, b"not accepted here"),  # e.g. the tunnel's socket
        "77 close(15)", _accept(15), _read(15, b"\x16\x03\x01 tls"),
    ]
    assert connections(lines) == [b"GET /a HTTP/1.1" + FIELDS, b"\x16\x03\x01 tls"]


def test_replay_counts_heads_read_from_the_memo_and_skips_bodies_and_upgrades() -> None:
    body = b"POST /b HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 3\r\n\r\nxyz"
    first = (b"GET /a HTTP/1.1" + FIELDS + b"GET /b HTTP/1.1" + FIELDS + body
             + b"GET /c HTTP/1.1" + FIELDS)
    upgrade = (b"GET /ws HTTP/1.1\r\nHost: a.localhost\r\nConnection: Upgrade\r\n"
               b"Upgrade: websocket\r\n\r\n\x81\x85 frames")
    counts = replay([first, b"\x16\x03\x01 tls", upgrade])
    assert counts == {("GET", "first"): 2, ("GET", "memo"): 1, ("POST", "read"): 1,
                      ("GET", "read"): 1}
