"""A plain-HTTP request sent to a guarded TLS port (the HTTPS proxy) is answered in HTTP
(wire/plain_http.py); TLS, and the ports without it, are as before."""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from studios_gateway.http.component import https_url_for
from studios_gateway.http.plain_answer import PlainHTTP
from studios_gateway.http.routing import Router
from studios_gateway.wire.plain_http import DISCARD_MOST, HEAD_MOST, FirstRead
from studios_gateway.wire.tls_guard import GuardedTLSFactory, HandshakeLimits
from tests.unit.test_tls_guard import ADDR, AppFactory, handshake, server_options

SERVED = {"studio.example.org", "s1.studio.example.org"}


def https_url(host: str, target: str) -> str | None:
    name = host.partition(":")[0].lower()
    return f"https://{name}:8443{target}" if name in SERVED else None


PLAIN = PlainHTTP(https_url)


class TCP(StringTransport):
    """What the guard uses of a TCP transport: its ``protocol`` (the one its reads go to,
    as twisted.internet.tcp's), a write-side close and an abort."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol: Any = None
        self.write_closed = False
        self.aborted = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()

    def read(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def closed_by_peer(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


def accepted(tmp_path, plain: PlainHTTP | None = PLAIN, timeout: float = 5
             ) -> tuple[Any, TCP, GuardedTLSFactory, AppFactory, list[str], Clock]:
    clock, app, outcomes = Clock(), AppFactory(), []
    factory = GuardedTLSFactory(server_options(tmp_path), app, clock=clock,
                                limits=HandshakeLimits(timeout=timeout, max_pending=10),
                                on_outcome=outcomes.append, plain_http=plain)
    proto = factory.buildProtocol(ADDR)
    tcp = TCP()
    tcp.protocol = proto  # as twisted.internet.tcp.Server is made: before makeConnection
    proto.makeConnection(tcp)
    return proto, tcp, factory, app, outcomes, clock


def client_hello() -> bytes:
    conn = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    conn.set_connect_state()
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        pass
    return conn.bio_read(65536)


# The answers. -------------------------------------------------------------------------

def test_a_get_for_a_served_host_is_redirected_to_the_same_address_over_https() -> None:
    answer = PLAIN.answer(b"GET /_studio/s1/lab?x=1 HTTP/1.1\r\nHost: studio.example.org:"
                          b"8443\r\nUser-Agent: t\r\n\r\n")
    assert answer is not None
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 301 Moved Permanently"
    assert b"Location: https://studio.example.org:8443/_studio/s1/lab?x=1" in lines
    assert b"Connection: close" in lines
    assert f"Content-Length: {len(body)}".encode() in lines
    assert b"https://studio.example.org:8443/_studio/s1/lab?x=1" in body


def test_a_head_gets_the_same_answer_without_its_body() -> None:
    answer = PLAIN.answer(b"HEAD / HTTP/1.1\r\nhost: s1.studio.example.org\r\n\r\n")
    assert answer is not None and answer.startswith(b"HTTP/1.1 301 ")
    assert answer.endswith(b"\r\n\r\n") and b"Content-Length: " in answer


def test_anything_else_is_a_400_in_plain_words() -> None:
    for head in (
        b"GET / HTTP/1.1\r\nHost: elsewhere.example.com\r\n\r\n",  # not a host it serves
        b"POST / HTTP/1.1\r\nHost: studio.example.org\r\nContent-Length: 3\r\n\r\nabc",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nHost: studio.example.org\r\nHost: studio.example.org\r\n\r\n",
        b"GET http://studio.example.org/ HTTP/1.1\r\nHost: studio.example.org\r\n\r\n",
        b"GET /a\x01b HTTP/1.1\r\nHost: studio.example.org\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: studio.example.org\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",  # answered at its first line
        # What the HTTP port refuses too (the same parser): bare LF, a space before the
        # colon, Content-Length and Transfer-Encoding together, a NUL in a value.
        b"GET / HTTP/1.1\nHost: studio.example.org\n\n\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : studio.example.org\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: studio.example.org\r\nContent-Length: 0\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: studio.example.org\r\nX: a\x00b\r\n\r\n",
    ):
        answer = PLAIN.answer(head)
        assert answer is not None, head
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), head
        assert b"Connection: close\r\n" in answer and b"Location" not in answer
        assert answer.endswith(b"Open the same address with https:// instead of http://.\n")


def test_a_head_ended_by_bare_line_feeds_is_a_400_at_once() -> None:
    # The parser refuses it, and no CRLF CRLF ever comes: the answer waited for one, and
    # the client, waiting for the answer, was closed at the handshake's deadline without
    # a word (before the parser was the proxy's, it was redirected at once).
    for head in (b"GET / HTTP/1.1\nHost: studio.example.org\n\n",
                 b"GET / HTTP/1.0\n\n",
                 b"GET / HTTP/1.1\nHost: studio.example.org\n\r\n"):
        answer = PLAIN.answer(head)
        assert answer is not None and answer.startswith(b"HTTP/1.1 400 "), head
    assert PLAIN.answer(b"GET / HTTP/1.1\nHost: studio.example.org\n") is None


def test_the_answer_waits_for_the_head_and_no_longer_than_it_may() -> None:
    assert PLAIN.answer(b"G") is None
    assert PLAIN.answer(b"GET / HTTP/1.1\r\nHost: studio.example.org\r\n") is None
    cut = PLAIN.answer(b"GET / HTTP/1.1\r\nHost: studio.example.org\r\n", cut=True)
    assert cut is not None and cut.startswith(b"HTTP/1.1 400 ")


def test_the_gateway_redirects_its_own_hosts_to_its_public_https_port() -> None:
    from studios_gateway.config_loading import load_config

    config = load_config(environ={"CONNECT_PROXY_URL": "https://connect.example.com:8443"})
    url = https_url_for(config, Router("connect.example.com", "connect.example.com"))
    assert url("CONNECT.example.com:80", "/x") == "https://connect.example.com:8443/x"
    assert url("abc123.connect.example.com", "/") == "https://abc123.connect.example.com:8443/"
    assert url("other.example.com", "/") is None and url("bad host", "/") is None
    path_mode = https_url_for(config, Router("connect.example.com", "connect.example.com",
                                             path_routing=True))
    assert path_mode("abc123.connect.example.com", "/") is None  # refused in path mode


# The guarded port. ----------------------------------------------------------------------

def test_a_plain_request_is_answered_and_closed_without_reaching_tls(tmp_path) -> None:
    proto, tcp, factory, app, outcomes, clock = accepted(tmp_path)
    tcp.read(b"GET /lab HTTP/1.1\r\nHost: studio.example.org:8443\r\nAccept: */*\r\n\r\n")
    answer = tcp.value()
    assert answer.startswith(b"HTTP/1.1 301 Moved Permanently\r\n")
    assert b"Location: https://studio.example.org:8443/lab\r\n" in answer
    assert tcp.write_closed and not tcp.aborted
    tcp.read(b"after the answer: dropped")  # the client may still send; nothing answers
    assert tcp.value() == answer
    tcp.closed_by_peer()
    assert outcomes == ["plain_http"] and factory.pending == 0 and app.built == []
    assert clock.getDelayedCalls() == []


def test_first_bytes_split_one_then_the_rest_are_answered_once(tmp_path) -> None:
    _, tcp, _, _, outcomes, _ = accepted(tmp_path)
    request = b"GET / HTTP/1.1\r\nHost: nowhere.example.net\r\n\r\n"
    tcp.read(request[:1])
    assert tcp.value() == b"" and not tcp.write_closed  # waits for the head
    tcp.read(request[1:20])
    assert tcp.value() == b""
    tcp.read(request[20:])
    assert tcp.value().startswith(b"HTTP/1.1 400 Bad Request\r\n") and tcp.write_closed
    tcp.closed_by_peer()
    assert outcomes == ["plain_http"]


def test_a_tls_client_hello_goes_to_tls_and_tls_reads_from_tcp_after_it(tmp_path) -> None:
    proto, tcp, _, _, outcomes, _ = accepted(tmp_path)
    assert isinstance(tcp.protocol, FirstRead)
    hello = client_hello()
    tcp.read(hello[:1])  # one byte, then the rest
    assert tcp.protocol is proto  # from the first read on: TLS alone, nothing in between
    tcp.read(hello[1:])
    assert tcp.value()[:2] == b"\x16\x03"  # the server's handshake flight: TLS went on
    assert outcomes == []


def test_a_whole_handshake_and_data_through_a_port_that_answers_plain_http(tmp_path
                                                                          ) -> None:
    clock, app, outcomes = Clock(), AppFactory(), []
    factory = GuardedTLSFactory(server_options(tmp_path), app, clock=clock,
                                limits=HandshakeLimits(), on_outcome=outcomes.append,
                                plain_http=PLAIN)

    class Hello(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(b"GET / HTTP/1.1\r\n\r\n")  # HTTP inside TLS: the app's

    server_proto, _ = handshake(factory, clock, Hello)
    assert server_proto.transport.protocol is server_proto
    assert outcomes == ["ok"] and app.built[0].received == b"GET / HTTP/1.1\r\n\r\n"


def test_bytes_neither_tls_nor_http_fail_in_tls_as_before(tmp_path) -> None:
    proto, tcp, _, _, outcomes, _ = accepted(tmp_path)
    tcp.read(b"\x80\x2b\x01\x03\x01junk")
    assert tcp.protocol is proto and not tcp.value().startswith(b"HTTP/")
    proto.connectionLost(Failure(ConnectionDone()))
    assert outcomes == ["failed"]


def test_without_plain_http_a_port_closes_on_plain_http_as_before(tmp_path) -> None:
    # The tunnel and peer ports: no answer in HTTP, and nothing stands in for TLS.
    proto, tcp, _, _, outcomes, _ = accepted(tmp_path, plain=None)
    assert tcp.protocol is proto
    tcp.read(b"GET / HTTP/1.1\r\nHost: studio.example.org\r\n\r\n")
    assert not tcp.value().startswith(b"HTTP/") and tcp.disconnecting
    proto.connectionLost(Failure(ConnectionDone()))
    assert outcomes == ["failed"]


def test_a_head_past_its_bound_is_answered_400_at_once(tmp_path) -> None:
    _, tcp, _, _, _, _ = accepted(tmp_path)
    tcp.read(b"GET /" + b"a" * (HEAD_MOST - 100))
    assert tcp.value() == b""
    tcp.read(b"a" * 200)
    assert tcp.value().startswith(b"HTTP/1.1 400 ") and tcp.write_closed


def test_after_the_answer_what_is_dropped_is_bounded(tmp_path) -> None:
    _, tcp, _, _, _, _ = accepted(tmp_path)
    tcp.read(b"PUT / HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n")
    assert tcp.value().startswith(b"HTTP/1.1 400 ")
    tcp.read(b"x" * DISCARD_MOST)
    assert not tcp.aborted
    tcp.read(b"x")
    assert tcp.aborted


def test_the_handshake_deadline_still_bounds_a_plain_connection(tmp_path) -> None:
    # A slow plain request: reset at the deadline, as a silent TLS client is.
    proto, tcp, factory, _, outcomes, clock = accepted(tmp_path, timeout=5)
    tcp.read(b"GET / HT")
    clock.advance(5)
    assert tcp.aborted
    tcp.closed_by_peer()
    assert outcomes == ["timeout"] and factory.pending == 0
    # Answered, but the client keeps its side open: closed at the same deadline.
    proto, tcp, factory, _, outcomes, clock = accepted(tmp_path, timeout=5)
    tcp.read(b"GET / HTTP/1.1\r\nHost: studio.example.org\r\n\r\n")
    assert factory.pending == 1  # its place is kept until it closes
    clock.advance(5)
    assert tcp.aborted
    tcp.closed_by_peer()
    assert outcomes == ["plain_http"] and factory.pending == 0
