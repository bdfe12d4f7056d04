"""A plain-HTTP request sent to the HTTPS port gets an HTTP answer, not a silent close.

Someone who types ``http://studio.example.org:8443/`` reaches the HTTPS port with a
request in clear text; OpenSSL sees no handshake and the connection used to close
without a byte, which a browser shows as "connection reset" or "empty response".

The first byte a TLS client sends opens a handshake record (type 0x16); a plain HTTP
request opens with the letters of its method. :class:`FirstRead` stands in for the TLS
layer as the TCP transport's protocol until the first read (wire/tls_guard.py installs
it on the listeners given a :class:`PlainAnswers`: the HTTPS proxy only, never the tunnel
or the peer port). A first read that opens a handshake record is handed to the TLS
layer, which from then on reads from TCP itself: one comparison per connection, and
nothing at all on the TLS path after it. A first read that opens with an upper-case
ASCII letter is taken as plain HTTP (:class:`_PlainRequest`): its request head is read
(at most :data:`HEAD_MOST` bytes, within the handshake's deadline, which still runs),
answered with one short HTTP/1.1 response and ``Connection: close``, and our side of the
connection closed; what the client still sends is read and dropped (:data:`DISCARD_MOST`)
until it closes its side, so that the kernel does not reset the connection over unread
bytes before the client has read the answer. OpenSSL never sees a byte of it. The
connection keeps its place under the handshake cap until it ends, at the handshake's
deadline at the latest. Anything else goes to TLS as before (and fails there).

What the answer is (a redirect to https:// or a 400) is decided by the object given
(studios_gateway/http/plain_answer.py's ``PlainHTTP``): this module only reads.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["DISCARD_MOST", "HANDSHAKE", "HEAD_MOST", "FirstRead", "PlainAnswers"]

#: The TLS record type that opens every TLS connection (a ClientHello's handshake record).
HANDSHAKE = 0x16
#: The most of a plain request's head read before it is answered (400 when it is longer).
HEAD_MOST = 8 * 1024
#: The most read and dropped after the answer while the client reads it (a body, say):
#: closing with unread bytes makes the kernel reset the connection, which can destroy the
#: answer before the client reads it. Past this the connection is reset.
DISCARD_MOST = 64 * 1024


class PlainAnswers(Protocol):
    """What answers a plain request (studios_gateway.http.plain_answer.PlainHTTP)."""

    def answer(self, head: bytes, cut: bool = False) -> bytes | None:
        """The response to a request whose first bytes are ``head``; None while more is
        needed to decide. ``cut``: no more will be read."""


class FirstRead:
    """The TCP transport's protocol until its first read (see the module)."""

    __slots__ = ("_plain", "_tls", "_transport")

    def __init__(self, tls: Any, transport: Any, plain: PlainAnswers):
        self._tls, self._transport, self._plain = tls, transport, plain

    def dataReceived(self, data: bytes) -> None:
        tls, transport = self._tls, self._transport
        if data[0] == HANDSHAKE:  # TLS: the TLS layer reads from TCP from now on
            transport.protocol = tls
            tls.dataReceived(data)
            return
        if 0x41 <= data[0] <= 0x5A:  # an upper-case letter: an HTTP method
            transport.protocol = _PlainRequest(tls, transport, self._plain)
            transport.protocol.dataReceived(data)
            return
        transport.protocol = tls  # neither: TLS fails on it as on any other bytes
        tls.dataReceived(data)

    def connectionLost(self, reason: Any = None) -> None:
        self._tls.connectionLost(reason)


class _PlainRequest:
    """Reads a plain request's head, answers it once, then drops what follows until the
    client closes (or :data:`DISCARD_MOST`, or the handshake's deadline)."""

    __slots__ = ("_head", "_plain", "_read", "_tls", "_transport")

    def __init__(self, tls: Any, transport: Any, plain: PlainAnswers):
        self._tls, self._transport, self._plain = tls, transport, plain
        self._head: bytes | None = b""  # None once answered
        self._read = 0  # bytes read after the answer

    def dataReceived(self, data: bytes) -> None:
        if self._head is None:
            self._read += len(data)
            if self._read > DISCARD_MOST:
                self._transport.abortConnection()
            return
        head = self._head + data
        cut = len(head) >= HEAD_MOST
        answer = self._plain.answer(head[:HEAD_MOST], cut)
        if answer is None:
            self._head = head
            return
        self._head = None
        self._tls.plain_http_answered(answer[9:12].decode("ascii"))
        self._transport.write(answer)
        # Our side closes after the answer; the client's reads go on until it closes.
        half_close = getattr(self._transport, "loseWriteConnection", None)
        (half_close or self._transport.loseConnection)()

    def connectionLost(self, reason: Any = None) -> None:
        self._tls.connectionLost(reason)
