"""One yamux stream: a Twisted transport for the protocol attached to it.

The :class:`~studios_gateway.wire.mux.Multiplexer` (wire/mux.py) makes the streams of a
tunnel and hands each its frames; a stream keeps its own side of the flow control: its
send buffer and its producer (paused at the multiplexer's ``stream_buffer``), its receive
buffer and the WindowUpdates for the room its reader made, its FIN, RST and close timer.

Window accounting (:class:`SendWindow`, :class:`ReceiveWindow`) is plain objects,
testable without a reactor.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import error
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IProtocol,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from studios_gateway.log_names import KeptNamespace
from studios_gateway.wire import frames
from studios_gateway.wire.frames import (
    DATA,
    FIN,
    INITIAL_WINDOW,
    MAX_U32,
    RST,
    WINDOW_UPDATE,
    ProtocolError,
)
from studios_gateway.wire.schedule import FrameScheduler

__all__ = ["ReceiveWindow", "SendWindow", "Stream", "StreamAddress", "StreamMux", "StreamReset"]

_pack_header = frames.HEADER_STRUCT.pack

#: An accepted stream's ACK waits for the tunnel's next send until the peer has sent this
#: much on the stream (half the yamux initial window it may send before the ACK's
#: WindowUpdate; see Multiplexer._accept).
ACK_HOLD_LIMIT = INITIAL_WINDOW // 2

#: A WindowUpdate is due once the reader has consumed this share of the window (768 KiB of
#: the default 6 MiB). At half (yamux's own choice), a path whose round trip takes longer
#: than the window at the link's rate locked into steps: the writer's burst was the last
#: update (half the window) and the reader held up to the other half as room not yet
#: advertised, so on a modelled path 0.61 of a window crossed per round trip
#: (tests/unit/test_tunnel_window_steps.py; as the SSH proxy's channels did, stop 50).
#: What may wait unread is still the window: only the updates come in smaller steps.
UPDATE_SHARE = 8


class StreamReset(error.ConnectionLost):
    """The peer reset the stream (RST), or refused to open it. ``code``: the RST's window
    delta (0, or wire.mux's RESET_RELAYED from a holding node on the peer link)."""

    def __init__(self, *args: Any, code: int = 0):
        super().__init__(*args)
        self.code = code


# Plain decision objects ---------------------------------------------------------


class SendWindow:
    """How many bytes we may still send on a stream (the peer's receive window)."""

    __slots__ = ("available",)

    def __init__(self, initial: int = INITIAL_WINDOW):
        self.available = initial

    def grant(self, delta: int) -> None:
        """The peer sent a WindowUpdate of ``delta``."""
        if self.available + delta > MAX_U32:
            raise ProtocolError(f"window update of {delta} overflows the send window")
        self.available += delta

    def take(self, wanted: int) -> int:
        """Reserve up to ``wanted`` bytes of window; returns how many were granted."""
        n = wanted if wanted < self.available else self.available
        self.available -= n
        return n


class ReceiveWindow:
    """What the peer may still send us, and when to advertise room the reader made.

    Invariant: ``remaining + owed + unconsumed == size``, where ``unconsumed``
    is what arrived but the reader has not taken yet. A WindowUpdate is due
    once ``owed`` (consumed, not yet advertised) reaches an :data:`UPDATE_SHARE`
    of the window.
    """

    __slots__ = ("size", "remaining", "owed")

    def __init__(self, size: int, initial: int = INITIAL_WINDOW):
        if size < initial:
            raise ValueError(f"window {size} is below the yamux initial window {initial}")
        self.size = size
        self.remaining = initial
        self.owed = size - initial  # advertised by the WindowUpdate sent with SYN/ACK

    def received(self, n: int) -> None:
        if n > self.remaining:
            raise ProtocolError(f"peer sent {n} bytes with only {self.remaining} of window left")
        self.remaining -= n

    def consumed(self, n: int) -> int:
        """The reader took ``n`` bytes; returns the WindowUpdate delta to send now, or 0."""
        self.owed += n
        if self.owed * UPDATE_SHARE >= self.size:
            return self.advertise()
        return 0

    def advertise(self) -> int:
        """Advertise everything owed; returns the delta (may be 0)."""
        delta, self.owed = self.owed, 0
        self.remaining += delta
        return delta


class StreamMux(Protocol):
    """What a stream uses of its multiplexer (wire/mux.py's Multiplexer, which imports
    this module)."""

    transport: Any
    clock: IReactorTime
    scheduler: FrameScheduler[Stream] | None
    max_frame_data: int
    max_send_buffer: int
    close_timeout: float
    stream_buffer: int
    local_go_away: bool
    remote_go_away: int | None
    closed: bool
    _pumping: bool
    _transport_paused: int
    _held: bytes

    def _write(self, data: bytes) -> None: ...

    def _write_frames(self, sid: int, data: bytes) -> None: ...

    def _send_data(self, sid: int, data: bytes | memoryview) -> None: ...

    def _send_control(self, ftype: int, flags: int, sid: int, length: int) -> None: ...

    def _send_held(self) -> None: ...

    def _ready(self, stream: Stream) -> None: ...

    def _forget(self, stream: Stream) -> None: ...


@implementer(IAddress)
@dataclass(frozen=True)
class StreamAddress:
    """A stream's end: the tunnel's address plus the stream id."""

    tunnel: Any
    stream_id: int

    @property
    def host(self) -> str | None:
        return getattr(self.tunnel, "host", None)

    @property
    def port(self) -> int | None:
        return getattr(self.tunnel, "port", None)


# Streams -------------------------------------------------------------------------


@implementer(ITransport, IConsumer, IPushProducer)
class Stream:
    """One yamux stream: a transport for the protocol attached to it.

    States: the write side is open until ``loseConnection`` /
    ``loseWriteConnection`` (FIN once buffered data is sent); the read side
    until the peer's FIN has been delivered. Both done, or an RST either way,
    or the tunnel's end, closes the stream: ``connectionLost`` once.
    """

    _log = KeptNamespace("studios_gateway.wire.mux")  # its lines' name in wire/mux.py

    def __init__(self, mux: StreamMux, stream_id: int, window_size: int):
        self.mux = mux
        self.stream_id = stream_id
        self.protocol: IProtocol | None = None
        self.connected = True
        self.disconnecting = False
        self._send_window = SendWindow()
        self._recv_window = ReceiveWindow(window_size)
        # Send side.
        self._send_buffer: deque[bytes | memoryview] = deque()
        self._send_buffered = 0
        self._fin_queued = False
        self._full_close = False  # loseConnection (vs loseWriteConnection)
        self._fin_sent = False
        self._producer: Any = None
        self._producer_streaming = False
        self._producer_paused = False
        self._pull_call: IDelayedCall | None = None
        self._close_call: IDelayedCall | None = None
        # Receive side.
        self._recv_buffer: deque[bytes] = deque()
        self._recv_buffered = 0
        self._reading_paused = False
        self._delivering = False
        self._fin_received = False
        self._eof_delivered = False
        self._reader_gone = False  # loseConnection: what arrives now is refused
        self._refused_data = False  # data came (or waited) after the reader went
        self._closed = False
        self._lost_reason: Failure | None = None
        # Accepted: our ACK (with the window beyond the initial one) waits in the mux's
        # held frames for the tunnel's next send (Multiplexer._accept); what the peer
        # sends meanwhile may send it sooner (_data_received).
        self._ack_held = False

    def __repr__(self) -> str:
        return f"<Stream {self.stream_id}{' closed' if self._closed else ''}>"

    # Attaching a protocol --------------------------------------------------------

    def attach(self, protocol: IProtocol) -> None:
        """Make ``protocol`` the stream's protocol (``makeConnection``), deliver what waits."""
        if self.protocol is not None:
            raise RuntimeError(f"{self!r} already has a protocol")
        self.protocol = protocol
        protocol.makeConnection(self)
        if self._closed:
            reason, self._lost_reason = self._lost_reason, None
            protocol.connectionLost(reason if reason is not None
                                    else Failure(error.ConnectionDone()))
            return
        self._deliver()

    # ITransport -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._fin_queued or self._closed or not data:
            return
        if not isinstance(data, bytes):
            data = bytes(data)  # never keep a view of a caller's mutable buffer
        mux = self.mux
        n = len(data)
        scheduler = mux.scheduler
        if (not self._send_buffered and n <= self._send_window.available
                and not mux._pumping and not mux._transport_paused
                and (scheduler is None or not scheduler.queued)):
            # Nothing waits (here, in the scheduler or for the transport) and the window
            # allows the data: what the scheduler would send at once, sent without
            # queueing it.
            if n <= mux.max_frame_data:
                # One frame (a WebSocket message, a request, an answer's read).
                self._send_window.available -= n
                if not mux.closed:  # mux._send_data's frame, one call less per write
                    mux._write(_pack_header(0, DATA, 0, self.stream_id, n) + data)
                return
            if not mux.closed and (self._producer is None or self._producer_streaming):
                # A bulk read of several frames: the frames the scheduler would send one
                # after another, in one tunnel write (one TLS write). (A pull producer is
                # asked for more as the scheduler sends: it takes turns.)
                self._send_window.available -= n
                mux._write_frames(self.stream_id, data)
                return
        self._send_buffer.append(data)
        self._send_buffered += len(data)
        if self._send_buffered > self.mux.max_send_buffer:
            self._log.error("stream {sid}: its writer ignored backpressure ({n} bytes waiting "
                            "for window); resetting it", sid=self.stream_id, n=self._send_buffered)
            self.abortConnection()
            return
        if self._send_window.available:
            self.mux._ready(self)
        self._update_producer()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """FIN after the buffered data; the stream closes when the peer's FIN arrives too.

        The reader is gone (as with a TCP socket, nothing more is read): data
        waiting for it is dropped, data arriving is dropped without a
        WindowUpdate, and once our FIN is out any such data resets the stream
        (RST), so the far writer stops after at most one window instead of
        sending everything into the void. A peer that has nothing more to
        say just answers with its FIN.
        """
        if self._closed:
            return
        self._full_close = True
        self._reader_gone = True
        if self._recv_buffer:
            self._recv_buffer.clear()
            self._recv_buffered = 0
            self._refused_data = True
        self._lose_write()
        self._reset_if_refused()

    def _reset_if_refused(self) -> None:
        """Reader gone, our FIN out, and the peer still sends: tell it to stop (RST)."""
        if self._refused_data and self._fin_sent and not self._closed:
            self._log.debug("stream {sid}: data after the reader went; resetting",
                            sid=self.stream_id)
            self.mux._send_control(WINDOW_UPDATE, RST, self.stream_id, 0)
            self._finish(Failure(error.ConnectionDone("stream closed; the peer's data refused")))

    def loseWriteConnection(self) -> None:
        """Half-close: FIN after the buffered data; reading goes on."""
        self._lose_write()

    def abortConnection(self, code: int = 0) -> None:
        """RST now, dropping buffered data both ways; `code` goes as the RST's window
        delta (wire.mux's RESET_RELAYED; 0 for a plain reset)."""
        if self._closed:
            return
        self.mux._send_control(WINDOW_UPDATE, RST, self.stream_id, code)
        self._finish(Failure(error.ConnectionAborted()))

    def getPeer(self) -> StreamAddress:
        transport = self.mux.transport
        return StreamAddress(transport.getPeer() if transport is not None else None,
                             self.stream_id)

    def getHost(self) -> StreamAddress:
        transport = self.mux.transport
        return StreamAddress(transport.getHost() if transport is not None else None,
                             self.stream_id)

    # IConsumer ----------------------------------------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError(f"{self!r} already has a producer")
        self._producer = producer
        self._producer_streaming = bool(streaming)
        self._producer_paused = False
        if self._closed:
            self._stop_producer()
            return
        self._update_producer()

    def unregisterProducer(self) -> None:
        self._producer = None
        if self._pull_call is not None and self._pull_call.active():
            self._pull_call.cancel()
        self._pull_call = None

    # IPushProducer (towards the reader) ------------------------------------------------

    def pauseProducing(self) -> None:
        """Stop delivering data; the peer's writer stops once the window is used up."""
        self._reading_paused = True

    def resumeProducing(self) -> None:
        self._reading_paused = False
        self._deliver()

    def stopProducing(self) -> None:
        self.loseConnection()

    # Introspection (tests, metrics) ---------------------------------------------------

    @property
    def send_window(self) -> int:
        return self._send_window.available

    @property
    def receive_window(self) -> int:
        """What the peer may still send before it must wait for a WindowUpdate."""
        return self._recv_window.remaining

    @property
    def send_buffered(self) -> int:
        return self._send_buffered

    @property
    def receive_buffered(self) -> int:
        return self._recv_buffered

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def retiring(self) -> bool:
        """The tunnel under the stream takes no new work (GoAway either way, or closed):
        an idle stream kept for reuse should be let go."""
        mux = self.mux
        return mux.closed or mux.local_go_away or mux.remote_go_away is not None

    # Sending --------------------------------------------------------------------------

    def _send_frame(self) -> None:
        """Send one frame of buffered data (the scheduler's turn); FIN once all is out."""
        buf = self._send_buffer
        chunk = buf[0]
        n = self._send_window.take(min(len(chunk), self.mux.max_frame_data))
        if n == len(chunk):
            buf.popleft()
            self.mux._send_data(self.stream_id, chunk)
        else:
            view = memoryview(chunk)
            buf[0] = view[n:]
            self.mux._send_data(self.stream_id, view[:n])
        self._send_buffered -= n
        if self._closed:
            return
        if buf:
            if self._send_window.available:
                self.mux._ready(self)
        elif self._fin_queued and not self._fin_sent:
            self._send_fin()
        self._update_producer()

    def _window_update(self, delta: int) -> None:
        self._send_window.grant(delta)
        if self._send_buffered:
            self.mux._ready(self)

    def _lose_write(self) -> None:
        if self._closed:
            return
        self.disconnecting = True
        if self._fin_queued:
            if self._fin_sent and self._full_close:
                if self._eof_delivered:
                    # Both FINs are through (the protocol closes from its EOF, as a
                    # splice does): over now, as _deliver_eof would end it on return,
                    # not a close timer armed and cancelled in the same call.
                    self._finish(Failure(error.ConnectionDone("stream closed")))
                else:
                    self._start_close_timer()
            elif self._full_close:  # (a half-close's FIN still waits: see below)
                self._start_close_timer()
            return
        self._fin_queued = True
        if not self._send_buffered:
            self._send_fin()
        elif self._full_close:
            # The FIN waits behind data the peer's window does not take yet: a peer that
            # never opens it would keep the stream (and its buffer) as long as the tunnel.
            self._start_close_timer()

    def _send_fin(self) -> None:
        self._fin_sent = True
        if self._close_call is not None and self._close_call.active():
            self._close_call.cancel()  # (the wait for the window): the peer's FIN's starts
        self._close_call = None
        self.mux._send_control(WINDOW_UPDATE, FIN, self.stream_id, 0)
        if self._eof_delivered:
            self._finish(Failure(error.ConnectionDone("stream closed")))
        elif self._full_close:
            self._start_close_timer()
            self._reset_if_refused()
        elif IHalfCloseableProtocol.providedBy(self.protocol):
            self.protocol.writeConnectionLost()

    def _start_close_timer(self) -> None:
        if self._close_call is None and not self._closed:
            # (what was still to send: before the FIN, a peer that takes some of it in each
            # close_timeout is given another)
            self._close_call = self.mux.clock.callLater(self.mux.close_timeout,
                                                        self._close_timed_out,
                                                        self._send_buffered)

    def _close_timed_out(self, unsent: int = 0) -> None:
        self._close_call = None
        if self._closed:
            return
        if not self._fin_sent and self._send_buffered < unsent:
            self._start_close_timer()
            return
        self._log.info("stream {sid}: the peer did not {what} within {t:g}s; resetting",
                       sid=self.stream_id, t=self.mux.close_timeout,
                       what="close it" if self._fin_sent else "take its last bytes")
        self.mux._send_control(WINDOW_UPDATE, RST, self.stream_id, 0)
        self._finish(Failure(error.ConnectionLost("the peer did not finish the stream")))

    def _should_pause_producer(self) -> bool:
        """Pause at ``stream_buffer`` bytes waiting, resume once half of it went out."""
        limit = self.mux.stream_buffer
        if self._producer_paused or not self._producer_streaming:
            return self._send_buffered > limit // 2
        return self._send_buffered >= limit

    def _update_producer(self) -> None:
        producer = self._producer
        if producer is None or self._closed:
            return
        if self._fin_queued:
            return
        blocked = self._should_pause_producer()
        if self._producer_streaming:
            if blocked and not self._producer_paused:
                self._producer_paused = True
                producer.pauseProducing()
            elif not blocked and self._producer_paused:
                self._producer_paused = False
                producer.resumeProducing()
        elif not blocked and self._pull_call is None:
            self._pull_call = self.mux.clock.callLater(0, self._pull)

    def _pull(self) -> None:
        self._pull_call = None
        if self._producer is not None and not self._closed and not self._fin_queued:
            self._producer.resumeProducing()

    def _stop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if self._pull_call is not None and self._pull_call.active():
            self._pull_call.cancel()
        self._pull_call = None
        if producer is not None:
            producer.stopProducing()

    # Receiving ------------------------------------------------------------------------

    def _data_received(self, data: bytes) -> None:
        if self._fin_received:
            raise ProtocolError(f"data on stream {self.stream_id} after its FIN")
        n = len(data)
        window = self._recv_window
        if n > window.remaining:  # ReceiveWindow.received, made here once per read
            raise ProtocolError(f"peer sent {n} bytes with only {window.remaining} of window "
                                "left")
        window.remaining -= n
        if self._ack_held:
            self._ack_wait(window)
        if self._reader_gone:
            self._refused_data = True
            self._reset_if_refused()
            return
        if (not self._recv_buffer and not self._reading_paused and not self._delivering
                and self.protocol is not None):
            self._delivering = True
            try:
                self.protocol.dataReceived(data)
            except Exception:
                self._protocol_failed("dataReceived")
            finally:
                self._delivering = False
            if not self._closed and not self._fin_received:
                # _consumed(n) without its two calls while no WindowUpdate is due
                window.owed += n
                if window.owed * UPDATE_SHARE >= window.size:
                    self.mux._send_control(WINDOW_UPDATE, 0, self.stream_id,
                                           window.advertise())
            if not self._reading_paused and self._recv_buffer:
                self._deliver()
        else:
            self._recv_buffer.append(data)
            self._recv_buffered += n

    def _ack_wait(self, window: ReceiveWindow) -> None:
        """Data came while our ACK may still be held (Multiplexer._accept)."""
        mux = self.mux
        if not mux._held:
            self._ack_held = False  # it went out with a send since
        elif window.size - window.remaining >= ACK_HOLD_LIMIT:
            # The peer has used half of the yamux initial window it may use without our
            # ACK's WindowUpdate: send it now (with whatever else is held), so an upload
            # that is answered only at its end never waits for the window.
            self._ack_held = False
            mux._send_held()

    def _fin(self) -> None:
        if self._fin_received:
            return
        self._fin_received = True
        self._deliver()

    def _consumed(self, n: int) -> None:
        delta = self._recv_window.consumed(n)
        if delta:
            self.mux._send_control(WINDOW_UPDATE, 0, self.stream_id, delta)

    def _deliver(self) -> None:
        """Hand buffered data (then EOF) to the protocol while it is willing to read."""
        if self._delivering or self.protocol is None:
            return
        self._delivering = True
        try:
            buf = self._recv_buffer
            while buf and not self._reading_paused and not self._closed:
                chunk = buf.popleft()
                self._recv_buffered -= len(chunk)
                self.protocol.dataReceived(chunk)
                if not self._closed and not self._fin_received:
                    self._consumed(len(chunk))
            if (self._fin_received and not buf and not self._reading_paused
                    and not self._closed and not self._eof_delivered):
                self._deliver_eof()
        except Exception:
            self._protocol_failed("dataReceived or readConnectionLost")
        finally:
            self._delivering = False

    def _protocol_failed(self, what: str) -> None:
        """A bug in the stream's protocol ends that stream, not the whole tunnel."""
        self._log.failure("stream {sid}: {what} raised; resetting the stream",
                          sid=self.stream_id, what=what)
        self.abortConnection()

    def _deliver_eof(self) -> None:
        self._eof_delivered = True
        if IHalfCloseableProtocol.providedBy(self.protocol):
            self.protocol.readConnectionLost()
            if self._fin_sent and not self._closed:
                self._finish(Failure(error.ConnectionDone("stream closed")))
        elif self._fin_sent:
            self._finish(Failure(error.ConnectionDone("stream closed")))
        else:
            self.loseConnection()  # not half-closeable: EOF ends the stream

    # Closing --------------------------------------------------------------------------

    def _reset(self, code: int = 0) -> None:
        self._finish(Failure(StreamReset("stream reset by the peer", code=code)))

    def _finish(self, reason: Failure) -> None:
        """The stream is over: forget it, stop its producer, tell the protocol."""
        if self._closed:
            return
        self._closed = True
        self.connected = False
        self.disconnecting = True
        self._send_buffer.clear()
        self._send_buffered = 0
        self._recv_buffer.clear()
        self._recv_buffered = 0
        if self._close_call is not None and self._close_call.active():
            self._close_call.cancel()
        self._close_call = None
        self.mux._forget(self)
        self._stop_producer()
        if self.protocol is None:
            self._lost_reason = reason
            return
        try:
            self.protocol.connectionLost(reason)
        except Exception:
            self._log.failure("connectionLost of stream {sid}'s protocol", sid=self.stream_id)
