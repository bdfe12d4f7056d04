"""One stream between nodes = one connection to a studio held by the receiving node.

The dialing node opens a yamux stream on its peer connection and writes one line,
``open <kind> <session id>``; the holding node answers ``ok`` and splices the
stream onto a stream of the session's tunnel, or answers ``no <reason>`` and
closes it. Only then does the dialing node hand the stream to its caller (the
HTTP or SSH proxy), so "not here any more" is an error the caller can show, not
a connection that dies silently. Bytes that follow ``ok`` in the same read are
kept and delivered first. When the session's tunnel is lost under a spliced stream,
the holding node resets the stream rather than closing it, so that the dialing node
can tell a lost studio from a tool that closed its connection; when the studio resets
its end before the tool sent a byte (the tool refused the connection), the holding node
resets the stream with RESET_RELAYED, and the dialing node sees the reset a tunnel
stream of its own would give it (the "not answering" page, as on one node).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IProtocol, IPushProducer, ITransport
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from studios_gateway.wire.bind import BindError, LineBuffer
from studios_gateway.wire.ids import SESSION_ID
from studios_gateway.wire.kinds import STREAM_SSH, STREAM_TOOL
from studios_gateway.wire.mux import RESET_RELAYED, TunnelUnavailable
from studios_gateway.wire.splice import SpliceEnd, join
from studios_gateway.wire.stream import StreamReset

MAX_LINE = 256
KINDS = (STREAM_TOOL, STREAM_SSH)


class PeerRefused(Exception):
    """The other node would not (or could not) open the stream; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def open_line(session_id: str, kind: bytes) -> bytes:
    return b"open " + kind + b" " + session_id.encode() + b"\n"


def parse_open(line: bytes) -> tuple[str, bytes]:
    """(session id, kind) from an ``open`` line; ValueError saying what is wrong."""
    parts = line.strip().split(b" ")
    if len(parts) != 3 or parts[0] != b"open":
        raise ValueError("malformed stream request")
    kind, sid = parts[1], parts[2].decode("ascii", "replace")
    if kind not in KINDS:
        raise ValueError("unknown stream kind")
    if not SESSION_ID.fullmatch(sid):
        raise ValueError("malformed session id")
    return sid, kind


# The holding node ------------------------------------------------------------------


class PeerRequest(SpliceEnd):
    """A stream from another node: read its ``open`` line, then splice it to our tunnel."""

    def __init__(self, table: Any, on_outcome: Any = None):
        super().__init__()
        self.table = table
        self.on_outcome = on_outcome or (lambda outcome: None)
        self._lines: LineBuffer | None = LineBuffer(MAX_LINE)
        self._refused = False

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self._lines is None:
            super().dataReceived(data)
            return
        try:
            got = self._lines.feed(data)
        except BindError:
            self._refuse("stream request too long")
            return
        if got is None:
            return
        line, rest = got
        self._lines = None
        try:
            session_id, kind = parse_open(line)
        except ValueError as e:
            self._refuse(str(e))
            return
        if kind == STREAM_SSH and self.table.draining and self.table.get(session_id) is not None:
            # A tunnel this node keeps while its studio moves (TunnelTable.drain) would
            # carry a new ssh session until the grace ends and then cut it: the other node
            # waits for the studio's new holder instead (peers.remote.SSH_REBIND_WAIT).
            self._refuse("tunnel closing here (its studio is moving to another node)")
            return
        try:
            local = self.table.open_stream(session_id, kind)
        except TunnelUnavailable as e:
            self._refuse(f"tunnel closing here ({e})")
            return
        if local is None:
            self._refuse("not connected to this node")
            return
        self.on_outcome("ok")
        self.transport.write(b"ok\n")
        tunnel_end = _ToolEnd()
        local.attach(tunnel_end)
        join(self, tunnel_end)
        local.unregisterProducer()  # (join's: this stream, which _ResetWhenLost wraps)
        local.registerProducer(_ResetWhenLost(self.transport, local), True)
        if rest:
            super().dataReceived(rest)

    def readConnectionLost(self) -> None:
        if self._lines is not None or self._refused:
            self.transport.loseConnection()
            return
        super().readConnectionLost()

    def _refuse(self, reason: str) -> None:
        self._refused = True
        self._lines = None
        self.on_outcome("refused")
        self.transport.write(b"no " + reason.encode("utf-8", "replace")[:MAX_LINE - 8] + b"\n")
        self.transport.loseConnection()


class _ResetWhenLost:
    """The producer of the studio's tunnel stream on the holding node: the other node's
    stream, paused and resumed as it is. Stopped because the tunnel ended (its
    multiplexer closed: the tunnel was lost or closed), that stream is reset rather
    than closed, so the dialing node tells a lost studio from a tool that closed its
    connection (PeerStream.RESET_IS_LOST). Of the tool's bytes, those not yet sent there
    are dropped: the loss cut them short anyway. Stopped otherwise, it leaves the other
    node's stream to the tunnel stream's protocol (_ToolEnd), which hears why next."""

    def __init__(self, peer: Any, tunnel: Any):
        self.peer = peer
        self.tunnel = tunnel
        self.pauseProducing = peer.pauseProducing
        self.resumeProducing = peer.resumeProducing

    def stopProducing(self) -> None:
        if self.tunnel.mux.closed:
            self.peer.abortConnection()


class _ToolEnd(SpliceEnd):
    """The tunnel stream's end of the splice on the holding node. Reset by the studio
    before the tool sent a byte (studios-connect's word that the tool refused the
    connection), it resets the other node's stream with RESET_RELAYED, so that node
    answers as for a reset of its own tunnel's stream; otherwise a splice end."""

    def __init__(self) -> None:
        super().__init__()
        self.answered = False
        # Only the first read is looked at: then the splice's own (no cost per read).
        self.dataReceived = self._first_read  # type: ignore[method-assign]

    def _first_read(self, data: bytes) -> None:
        self.answered = True
        del self.dataReceived
        self.dataReceived(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        peer = self.peer
        if (not self.answered and peer is not None and not peer._lost and reason is not None
                and reason.check(StreamReset) and not self.transport.mux.closed):
            peer.transport.abortConnection(RESET_RELAYED)
        super().connectionLost(reason)


# The dialing node ------------------------------------------------------------------


class _Opening(Protocol):
    """Writes the ``open`` line and waits for the answer; then forwards to the caller's
    protocol (the stream stays paused until the caller attaches one)."""

    # Set by makeConnection before any other event: a tunnel stream or a peer-link
    # stream (consumer and producer).
    transport: Any

    def __init__(self, session_id: str, kind: bytes, answered: Deferred[Any]):
        self.session_id = session_id
        self.kind = kind
        self.answered = answered
        self._lines: LineBuffer | None = LineBuffer(MAX_LINE)
        self.held: list[bytes] = []
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        self.transport.write(open_line(self.session_id, self.kind))

    def dataReceived(self, data: bytes) -> None:
        if self._lines is None:
            self.held.append(data)
            return
        try:
            got = self._lines.feed(data)
        except BindError:
            self._fail("the peer's answer is too long")
            return
        if got is None:
            return
        line, rest = got
        self._lines = None
        if line.strip() == b"ok":
            if rest:
                self.held.append(rest)
            self.transport.pauseProducing()
            self.answered.callback(PeerStream(self.transport, self))
            return
        word, _, why = line.partition(b" ")
        reason = why.decode("utf-8", "replace") if word == b"no" else "malformed answer"
        self._fail(reason)

    def _fail(self, reason: str) -> None:
        self._lines = None
        if not self.answered.called:
            self.answered.errback(PeerRefused(reason))
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = reason or Failure(ConnectionError("stream closed"))
        if not self.answered.called:
            self._lines = None
            self.answered.errback(PeerRefused(f"the peer closed the stream "
                                              f"({self.lost.getErrorMessage()})"))


@implementer(ITransport, IConsumer, IPushProducer)
class PeerStream:
    """What the dialer hands out for a studio on another node: the yamux stream to the
    holding node, past its ``ok``. It is the transport of the protocol attached to it;
    every method is the stream's, except that pausing is tracked so that the hand-over
    from the opening never resumes a stream its new protocol wants paused."""

    #: A reset of this stream is the holding node's word that the session's tunnel was
    #: lost there (_ResetWhenLost), unless it carries RESET_RELAYED: the studio reset its
    #: stream there (_ToolEnd: its tool refused), as a tunnel stream here would be reset
    #: (wire.mux.tunnel_lost). A tool that closes its connection reaches here as a close.
    RESET_IS_LOST = True

    def __init__(self, stream: Any, opening: _Opening):
        self._stream = stream
        self._opening = opening
        #: The registry's TunnelHolder this stream was opened to (set by the dialer's
        #: remote): the HTTP proxy ends an upgraded connection on it once the studio
        #: moved (studios_gateway.http.relayed).
        self.holder: Any = None
        self._attached = False
        self._paused_by_protocol = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __repr__(self) -> str:
        return f"<PeerStream {self._stream!r}>"

    def pauseProducing(self) -> None:
        self._paused_by_protocol = True
        self._stream.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused_by_protocol = False
        if self._attached:
            self._stream.resumeProducing()

    def attach(self, protocol: IProtocol) -> None:
        """Make `protocol` read from the stream: what came with ``ok`` first, then the rest."""
        if self._attached:
            raise RuntimeError(f"{self!r} already has a protocol")
        stream, opening = self._stream, self._opening
        held, opening.held = opening.held, []
        stream.protocol = protocol  # the stream is still paused: nothing is delivered yet
        protocol.makeConnection(self)
        for chunk in held:
            protocol.dataReceived(chunk)
        self._attached = True
        if opening.lost is not None:  # ended between the answer and now
            protocol.connectionLost(opening.lost)
        elif not self._paused_by_protocol:
            stream.resumeProducing()


def open_remote(mux: Any, session_id: str, kind: bytes, clock: Any,
                timeout: float) -> Deferred[PeerStream]:
    """Open a stream on a peer connection and wait (up to `timeout`) for the holder's answer."""
    answered: Deferred[PeerStream] = Deferred()
    stream = mux.open_stream()  # raises TunnelUnavailable when the link is going away
    stream.attach(_Opening(session_id, kind, answered))

    def timed_out(f: Failure) -> Failure:
        if f.check(defer.TimeoutError, defer.CancelledError):
            stream.abortConnection()
            return Failure(PeerRefused(f"no answer from the peer within {timeout:g}s"))
        return f

    answered.addTimeout(timeout, clock)
    return answered.addErrback(timed_out)


__all__ = ["PeerRefused", "PeerRequest", "PeerStream", "open_line", "open_remote", "parse_open"]
