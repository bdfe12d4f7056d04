"""Carrying a tunnel through networks that only let HTTP(S) out.

A :class:`Carrier` sits between a connection and the protocol that would have had it
(the tunnel's TLS, then bind and yamux, unchanged): it speaks a handshake first, then
becomes that protocol's transport, encoding what it writes and decoding what arrives.

* :class:`ProxyConnect`: ``CONNECT host:port`` through an HTTP forward proxy, then the
  bytes pass as they are.
* :class:`WebSocketClient`: an HTTP/1.1 upgrade to a WebSocket at the gateway's
  ``/_connect/tunnel``; the tunnel's bytes travel as binary messages.
* :class:`WebSocketServer`: the gateway's end, once its HTTP proxy has answered the
  upgrade (:func:`accept_head`).

:class:`CarrierEndpoint` puts a carrier in front of another endpoint, so the client
composes: TCP (or the proxy) -> TLS for wss -> WebSocket -> the tunnel's own TLS.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from wsproto import ConnectionType, WSConnection
from wsproto import events as ws
from wsproto.connection import Connection, ConnectionState
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, generate_accept_token
from zope.interface import implementer

from studios_gateway.shown import shown
from studios_gateway.wire.closing import close_within

__all__ = ["TUNNEL_PATH", "Carrier", "CarrierEndpoint", "CarrierRefused", "ProxyConnect",
           "PROXY_VARIABLES", "ProxySetting", "WebSocketClient", "WebSocketServer",
           "accept_head", "proxy_setting", "proxy_setting_for",
           "websocket_refusal"]

TUNNEL_PATH = "/_connect/tunnel"
MAX_HEAD = 16 * 1024
#: The most of a proxy's own words (its status line, schemes, TLS error) a log line shows
MOST_SHOWN = 200


class CarrierRefused(ConnectionError):
    """The proxy or the gateway did not take the handshake (the reason says how)."""


class CarrierStalled(CarrierRefused):
    """Connected, and then no answer to the handshake in time: as the first large packet
    of a path that drops them without a word would leave it (studio.segments)."""


@implementer(ITransport, IConsumer, IPushProducer)
class Carrier(Protocol):
    """The inner protocol's transport once the handshake is done."""

    transport: Any  # the connection it rides on (TCP, TLS, or another carrier)
    #: The reactor's clock, when its maker gave it one: then a close it makes is reset
    #: if the peer has not taken the last bytes within wire.closing's grace.
    clock: Any = None

    def __init__(self, inner: Any):
        self.inner = inner
        self.ready: Deferred[Any] = Deferred()  # the inner protocol, once it is connected
        self.up = False
        self.sent = 0  # bytes written to the connection (handshake, frames, all)
        self.ended = ""  # why the carrier ended the connection itself, if it did

    def send(self, data: bytes) -> None:
        """Write `data` to the connection (counted)."""
        self.sent += len(data)
        self.transport.write(data)

    def peer(self) -> str:
        """The other end's address, for a log line."""
        peer = self.transport.getPeer() if self.transport is not None else None
        return str(getattr(peer, "host", None) or "an unknown peer")

    # The connection's side ------------------------------------------------------------

    def connectionMade(self) -> None:
        self.handshake()

    def dataReceived(self, data: bytes) -> None:
        if self.up:
            self.decode(data)
        else:
            self.handshake_data(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.up:
            self.up = False
            self.inner.connectionLost(reason)
        elif not self.ready.called:
            self.ready.errback(reason or Failure(CarrierRefused("closed in the handshake")))

    def started(self, rest: bytes = b"") -> None:
        """The handshake is done: connect the inner protocol, then pass `rest` on."""
        self.up = True
        self.inner.makeConnection(self)
        if not self.ready.called:
            self.ready.callback(self.inner)
        if rest and self.up:
            self.decode(rest)

    def refuse(self, why: str) -> None:
        if not self.ready.called:
            self.ready.errback(CarrierRefused(why))
        self.transport.abortConnection()

    # Overridden by each carrier ---------------------------------------------------------

    def handshake(self) -> None:
        """Send what opens the carrier (nothing by default)."""

    def handshake_data(self, data: bytes) -> None:
        raise NotImplementedError

    def decode(self, data: bytes) -> None:
        self.inner.dataReceived(data)

    def encode(self, data: bytes) -> bytes:
        return data

    def goodbye(self) -> bytes:
        return b""

    # The inner protocol's transport ---------------------------------------------------

    def write(self, data: bytes) -> None:
        if data:
            self.send(self.encode(data))

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        bye = self.goodbye()
        if bye:
            self.send(bye)
        self._close()

    def _close(self) -> None:
        """Close the connection under: within wire.closing's grace, given a clock."""
        if self.clock is not None:
            close_within(self.transport, self.clock, "WebSocket tunnel")
        else:
            self.transport.loseConnection()

    def abortConnection(self) -> None:
        self.transport.abortConnection()

    def getPeer(self) -> Any:
        return self.transport.getPeer()

    def getHost(self) -> Any:
        return self.transport.getHost()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()


class ProxyConnect(Carrier):
    """Through an HTTP forward proxy: ``CONNECT host:port``, then transparent. With
    `authorization` (:attr:`ProxySetting.authorization`), the CONNECT carries it as
    ``Proxy-Authorization``; a proxy that asks for credentials (407) is refused in
    words that say what to put in HTTPS_PROXY. `over_tls`: it rides on TLS to the proxy
    (an https:// proxy), whose failure is then said as the proxy's, not the gateway's."""

    def __init__(self, inner: Any, host: str, port: int, authorization: bytes | None = None,
                 over_tls: bool = False):
        super().__init__(inner)
        self.target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.authorization = authorization
        self.over_tls = over_tls
        self._buf = b""

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.over_tls and not self.up and not self.ready.called and reason is not None:
            why = _proxy_tls_failure(reason)
            if why is not None:
                reason = Failure(CarrierRefused(why))
        super().connectionLost(reason)

    def handshake(self) -> None:
        t = self.target.encode("ascii")
        auth = (b"Proxy-Authorization: %s\r\n" % self.authorization
                if self.authorization else b"")
        self.send(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (t, t, auth))

    def handshake_data(self, data: bytes) -> None:
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end == -1:
            if len(self._buf) > MAX_HEAD:
                self.refuse("the proxy's answer to CONNECT is too long")
            return
        head = self._buf[:end].decode("latin-1").split("\r\n")
        status = head[0]
        rest, self._buf = self._buf[end + 4:], b""
        parts = status.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or parts[1] != "200":
            said = shown(status, MOST_SHOWN, words=True)
            why = f"the proxy refused CONNECT {self.target}: {said}"
            if parts[1:2] == ["407"]:
                why += "; " + self._wants_credentials(head[1:])
            self.refuse(why)
            return
        self.started(rest)

    def _wants_credentials(self, fields: list[str]) -> str:
        """What a 407 asks of the person who set HTTPS_PROXY, from its
        ``Proxy-Authenticate`` schemes."""
        schemes = [v.strip().split(" ", 1)[0] for n, _, v in (f.partition(":") for f in fields)
                   if n.strip().lower() == "proxy-authenticate" and v.strip()]
        if schemes and not any(s.lower() == "basic" for s in schemes):
            asked = shown(", ".join(schemes), MOST_SHOWN, words=True)
            return (f"it asks for {asked} authentication; studios-connect sends only Basic "
                    "(a user and password in HTTPS_PROXY)")
        if self.authorization:
            return "it did not take the user and password given in HTTPS_PROXY"
        return ("it asks for a user and password: give them in HTTPS_PROXY as "
                "http://USER:PASSWORD@host:port (percent-encode @ : / in them)")


def _proxy_tls_failure(reason: Failure) -> str | None:
    """Why the TLS connection to an https:// proxy failed, in words, when it did."""
    from OpenSSL import SSL
    from service_identity import VerificationError

    if reason.check(VerificationError):
        return ("the proxy's TLS certificate is not for its host name in HTTPS_PROXY: "
                + shown(reason.getErrorMessage(), MOST_SHOWN, words=True))
    if reason.check(SSL.Error):
        return ("the TLS handshake with the proxy failed (an https:// proxy must answer "
                "in TLS with a certificate this system trusts): "
                + shown(reason.getErrorMessage(), MOST_SHOWN, words=True))
    return None


# wsproto's refusals name an opcode by its Python repr ("<Opcode.TEXT: 1>"): its name.
_OPCODE_REPR = re.compile(r"<Opcode\.(\w+): \d+>")
# The longest close reason a close frame holds (125 bytes of payload, 2 for the code).
_CLOSE_REASON_MOST = 123


def _frame_problem(code: int, message: str) -> str:
    """What wsproto's refusal of a frame (its close `code` and `message`) says in words."""
    if code == CloseReason.INVALID_FRAME_PAYLOAD_DATA:
        return "a text message that is not UTF-8"
    return _OPCODE_REPR.sub(lambda m: m.group(1), message)


class _WebSocket(Carrier):
    """A tunnel in binary WebSocket messages. A frame wsproto refuses (or a text message:
    a tunnel is binary only) ends the connection with a close frame (1002 protocol error,
    1003 for text, 1007 for text that is not UTF-8) and one log line naming the peer and
    the reason; a close frame from the peer is answered with one, then the connection
    closes. (wsproto passes a binary frame's payload on as it comes: no frame is held
    whole, so none is too big to take.)"""

    ws: Any
    _log = Logger()

    def decode(self, data: bytes) -> None:
        if self.ended:
            return  # closing: what comes after our close frame is not read
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, ws.BytesMessage):
                if event.data:
                    self.inner.dataReceived(bytes(event.data))
            elif isinstance(event, ws.Ping):
                self.send(self.ws.send(event.response()))
            elif isinstance(event, ws.CloseConnection):
                if self.ws.state is ConnectionState.REMOTE_CLOSING:  # the peer's close
                    self.send(self.ws.send(event.response()))
                    self._close()
                else:  # (wsproto's way of saying a frame was malformed)
                    self.fail(event.code, "malformed WebSocket frame: "
                              + _frame_problem(event.code, event.reason or ""))
                return
            elif isinstance(event, ws.TextMessage):
                self.fail(CloseReason.UNSUPPORTED_DATA,
                          "a text message (a tunnel is carried in binary messages only)")
                return
            if not self.up:
                return

    def fail(self, code: int, why: str) -> None:
        """End the connection for a protocol error: a close frame with `code` and `why`,
        one log line, then the connection closes."""
        self.ended = why
        self._log.info("WebSocket tunnel from {peer} closed with {code}: {why}",
                       peer=self.peer(), code=int(code), why=why)
        reason = why.encode("utf-8")[:_CLOSE_REASON_MOST].decode("utf-8", "ignore")
        with contextlib.suppress(LocalProtocolError):  # a close frame went out already
            self.send(self.ws.send(ws.CloseConnection(code=code, reason=reason)))
        self._close()

    def write(self, data: bytes) -> None:
        # After a close frame, either way, no message may follow: what the inner protocol
        # still writes (its TLS close alert as the connection goes) is dropped.
        if self.ws.state is ConnectionState.OPEN:
            super().write(data)

    def encode(self, data: bytes) -> bytes:
        return self.ws.send(ws.BytesMessage(data=data))

    def goodbye(self) -> bytes:
        try:
            return self.ws.send(ws.CloseConnection(code=1000))
        except Exception:  # already closing
            return b""


class WebSocketClient(_WebSocket):
    def __init__(self, inner: Any, host: str, path: str = TUNNEL_PATH):
        super().__init__(inner)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.host = host
        self.path = path

    def handshake(self) -> None:
        self.send(self.ws.send(ws.Request(host=self.host, target=self.path)))

    def handshake_data(self, data: bytes) -> None:
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, ws.AcceptConnection):
                self.up = True
                self.inner.makeConnection(self)
                if not self.ready.called:
                    self.ready.callback(self.inner)
                self.decode(b"")  # whatever came with the 101
                return
            if isinstance(event, ws.RejectConnection):
                self.refuse(f"the gateway refused the WebSocket tunnel ({event.status_code})")
                return


class WebSocketServer(_WebSocket):
    """The gateway's end: the 101 was sent by the HTTP proxy (:func:`accept_head`)."""

    def __init__(self, inner: Any):
        super().__init__(inner)
        self.ws = Connection(ConnectionType.SERVER)

    def connectionMade(self) -> None:
        self.started()


def websocket_refusal(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why these request headers do not ask for a WebSocket properly (RFC 6455 4.2.1), or
    None: ``Upgrade: websocket``, ``Sec-WebSocket-Version: 13`` and a
    ``Sec-WebSocket-Key`` that is the base64 of 16 bytes (24 characters), each once."""
    fields: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        fields.setdefault(name.lower(), []).append(value.strip())
    upgrade = fields.get(b"upgrade", [])
    if [v.lower() for v in upgrade] != [b"websocket"]:
        return "the Upgrade header is not websocket"
    if fields.get(b"sec-websocket-version") != [b"13"]:
        return "the Sec-WebSocket-Version header is not 13"
    keys = fields.get(b"sec-websocket-key", [])
    if len(keys) != 1:
        return ("no Sec-WebSocket-Key header" if not keys
                else "more than one Sec-WebSocket-Key header")
    key = keys[0]
    try:
        nonce = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        nonce = b""
    if len(key) != 24 or len(nonce) != 16:
        return "the Sec-WebSocket-Key header is not the base64 of 16 bytes"
    return None


def accept_head(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The 101 that accepts a WebSocket upgrade with these request headers, or None when
    they do not ask for one properly (:func:`websocket_refusal` says why)."""
    if websocket_refusal(headers) is not None:
        return None
    key = next(v for k, v in headers if k.lower() == b"sec-websocket-key")
    accept = generate_accept_token(key.strip())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")


class CarrierEndpoint:
    """An endpoint whose connections speak `make_carrier`'s handshake first; connect()
    fires with the inner protocol once the handshake is done (or fails with why not)."""

    def __init__(self, inner: Any, make_carrier: Callable[[Any], Carrier], clock: Any,
                 timeout: float = 15.0):
        self.inner = inner
        self.make_carrier = make_carrier
        self.clock = clock
        self.timeout = timeout

    def connect(self, factory: Any) -> Deferred[Any]:
        carriers: list[Carrier] = []

        def build(addr: Any) -> Carrier:
            carrier = self.make_carrier(factory.buildProtocol(addr))
            carrier.clock = self.clock
            carriers.append(carrier)
            return carrier

        outer = Factory.forProtocol(Protocol)
        outer.buildProtocol = build  # type: ignore[method-assign]
        outer.noisy = False
        d = self.inner.connect(outer)

        def handshake(_: Any) -> Deferred[Any]:
            ready = carriers[-1].ready
            ready.addTimeout(self.timeout, self.clock,
                             onTimeoutCancel=lambda *_: self._timed_out(carriers[-1]))
            return ready

        return d.addCallback(handshake)

    def _timed_out(self, carrier: Carrier) -> None:
        if carrier.transport is not None:
            carrier.transport.abortConnection()
        raise CarrierStalled(f"no answer to the handshake within {self.timeout:g}s")


#: The variables that may name the tunnel's HTTP proxy: the first that is not blank is
#: the one read, the others are not looked at.
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy")


@dataclass(frozen=True)
class ProxySetting:
    """The variable that names the tunnel's HTTP proxy, as :func:`proxy_setting_for` reads it."""

    name: str  # HTTPS_PROXY or https_proxy
    text: str = field(repr=False)  # its value, without surrounding blanks (a password?)
    #: (host, port; 80 when not given, 443 for https://), or None: not an HTTP proxy the
    #: tunnel can use (no host, a port that is not 1 to 65535, a scheme other than http
    #: or https)
    address: tuple[str, int] | None
    #: the ``Proxy-Authorization`` value (Basic) for the user and password in the URL
    #: (percent-encoded there, as in any URL), or None without a user
    authorization: bytes | None = field(repr=False)
    #: the URL says https://: the tunnel speaks TLS to the proxy (its certificate checked
    #: against the system's CAs for the host name), and its CONNECT goes inside
    tls: bool = False


def proxy_setting(environ: Mapping[str, str]) -> ProxySetting | None:
    """The HTTP proxy that the environment names for the tunnel (None: none), parsed once
    for the start's check (settings) and once for each dial of the tunnel
    (:func:`proxy_setting_for`: the proxy's address, TLS to it and credentials)."""
    for name in PROXY_VARIABLES:
        text = (environ.get(name) or "").strip()
        if text:
            parts = urlsplit(text if "://" in text else "http://" + text)
            return ProxySetting(name, text, _proxy_address(parts), _basic(parts),
                                tls=parts.scheme == "https")
    return None


def _proxy_address(parts: SplitResult) -> tuple[str, int] | None:
    try:
        port = parts.port
    except ValueError:  # a port that is not a number from 0 to 65535
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        return None
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _basic(parts: SplitResult) -> bytes | None:
    if parts.username is None:
        return None
    pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return b"Basic " + base64.b64encode(pair.encode("utf-8"))


def proxy_setting_for(host: str, environ: Mapping[str, str]) -> ProxySetting | None:
    """The proxy setting (:func:`proxy_setting`) that the tunnel to `host` goes through,
    None when there is none or NO_PROXY excludes `host` (a host, a domain suffix, or *).
    Its address is None for a proxy the tunnel cannot use: the client's settings refuse
    that at the start."""
    setting = proxy_setting(environ)
    if setting is None:
        return None
    no_proxy = environ.get("NO_PROXY") or environ.get("no_proxy") or ""
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        entry = entry.split(":")[0] if entry.count(":") == 1 else entry
        if entry == "*" or (entry and (host.lower() == entry.lstrip(".")
                                       or host.lower().endswith("." + entry.lstrip(".")))):
            return None
    return setting
