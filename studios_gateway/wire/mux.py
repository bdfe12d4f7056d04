"""The yamux stream multiplexer: many byte streams over one tunnel connection.

A :class:`Multiplexer` is a Protocol for any transport (TCP, TLS). Either side
opens streams without a round trip (the SYN rides on the first frame) and
each :class:`~studios_gateway.wire.stream.Stream` (wire/stream.py) is a Twisted
transport for the protocol attached to it.

Flow control is yamux's per-stream window, mapped onto Twisted producers:

* sending: a stream's writes wait in its own buffer; a :class:`FrameScheduler`
  (wire/schedule.py) decides whose frame goes out next while the transport
  takes more (small writes first, then one frame per stream in turn) and the
  send window allows. A stream's registered producer is paused once its
  buffer holds ``stream_buffer`` bytes (the window shut, or others' turns),
  and resumed below half. The tunnel transport pausing the multiplexer only
  stops the scheduler.
* receiving: a stream hands data to its protocol and tells the peer about
  the room made once half the window has been consumed. While the stream is
  paused (``pauseProducing``, typically by the consumer it is spliced into),
  it holds what arrives and sends no WindowUpdate, so the far writer stops
  after at most one window.

Bounds (see docs/decisions/tunnel-framing.md): a stream's receive buffer
holds at most ``window_size`` bytes (the peer may not send more: doing so is
a protocol error); its send buffer at most ``max_send_buffer`` (a writer
that ignores backpressure that far gets its stream reset); the frame
decoder holds at most one frame; streams are capped at ``max_streams``.

Window accounting (wire/stream.py's ``SendWindow``, ``ReceiveWindow``) and the
keepalive decisions (:class:`Keepalive`) are plain objects, testable without
a reactor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from twisted.internet import error
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from studios_gateway.wire import frames
from studios_gateway.wire.closing import close_within
from studios_gateway.wire.frames import (
    ACK,
    DATA,
    FIN,
    GO_AWAY,
    GO_AWAY_ERRORS,
    GO_AWAY_INTERNAL_ERROR,
    GO_AWAY_NORMAL,
    GO_AWAY_PROTOCOL_ERROR,
    HEADER_SIZE,
    INITIAL_WINDOW,
    MAX_U32,
    PING,
    RST,
    SYN,
    WINDOW_UPDATE,
    FrameDecoder,
    ProtocolError,
)
from studios_gateway.wire.schedule import FrameScheduler
from studios_gateway.wire.stream import Stream, StreamReset
from studios_gateway.wire.turns import turns_of

_pack_header = frames.HEADER_STRUCT.pack

DEFAULT_WINDOW = 6 * 1024 * 1024
#: With ``gather``, frames of one turn are held only while they add up to less than this
#: (a bulk frame, and what is held with it, goes out at once).
GATHER_LIMIT = 64 * 1024
DEFAULT_MAX_FRAME_DATA = 64 * 1024  # see docs/decisions/tunnel-framing.md
DEFAULT_MAX_SEND_BUFFER = 64 * 1024 * 1024
DEFAULT_CLOSE_TIMEOUT = 60.0
# Outgoing bytes a stream may have waiting in the multiplexer before its producer is
# paused (one read from a tool socket; see docs/decisions/tunnel-scheduling.md).
DEFAULT_STREAM_BUFFER = 256 * 1024
#: How many answers to the peer's own frames (a Ping's answer, the RST of a stream we
#: refuse) may be written while the tunnel's transport has paused us, its write buffer
#: full because the peer does not read: beyond it the peer is flooding us with frames
#: whose answers it never reads, and the tunnel ends (a protocol error) before they fill
#: our memory. Each answer is 12-24 bytes; a working peer sends a Ping per interval.
MAX_UNREAD_ANSWERS = 4096
#: At most this many frames of the peer's are handled in one reactor turn: a read of small
#: frames (a flood of Pings, of empty window updates, of one-byte Data) is handled over
#: several turns, the tunnel's reading paused meanwhile, so one tunnel's read does not hold
#: every other connection of the process for hundreds of milliseconds (a 512 KiB read of
#: Pings took ~250 ms). A bulk read is a few frames.
MAX_FRAMES_PER_TURN = 1024
#: Whether the per-stream debug lines ("opened stream", "stream closed") are made at all.
#: Each costs ~40 Python calls in Twisted's logger even when a level filter drops it; a
#: process whose only log observer drops debug events sets this False
#: (studios-connect's start_logging).
stream_debug = True


#: The window delta of an RST frame, which yamux leaves 0, says on the peer link why the
#: holding node reset a stream it had spliced onto a studio's tunnel (peers.streams): 0,
#: the session's tunnel was lost there; RESET_RELAYED, the studio reset its end (its tool
#: refused the connection, before sending a byte), passed on as it came. A tunnel stream's
#: RST from studios-connect carries 0.
RESET_RELAYED = 1


class TunnelLost(error.ConnectionLost):
    """The tunnel under the stream ended."""


#: A connection that ended without a clean close (reset, or its process gone), in words.
LOST_UNCLEANLY = "the connection ended without a clean close (reset, or the other end gone)"


def lost_uncleanly(reason: Failure) -> bool:
    """The connection ended without a clean close and said nothing of why: a
    ConnectionLost without a text of its own (Twisted's doc string, "Connection to the
    other side was lost in a non-clean fashion.", stands in), or with only "Connection
    lost" (a TLS connection's loss); :data:`LOST_UNCLEANLY` in :func:`words`."""
    value = reason.value
    if not isinstance(value, error.ConnectionLost):
        return False
    return all(str(a).rstrip(".").lower() == "connection lost" for a in value.args if a)


def words(reason: Failure) -> str:
    """A failure's own words: for Twisted's connection errors given a text, that text,
    not their class's doc string around it ("Connection to the other side was lost in a
    non-clean fashion: <text>.", "User timeout caused connection failure: <text>.")."""
    if lost_uncleanly(reason):
        return LOST_UNCLEANLY
    value = reason.value
    if isinstance(value, (error.ConnectError, error.ConnectionClosed)):
        # ConnectError keeps its first argument as ``osError``, the second in ``args``.
        given = [str(a) for a in (getattr(value, "osError", None), *value.args) if a]
        if given:
            return ": ".join(given)
    return reason.getErrorMessage()


def broke(reason: Failure | None) -> str:
    """Why a stream (or a connection) ended, for a user or a log line, when it broke (its
    tunnel lost, reset); "" when it was closed cleanly."""
    if reason is None or reason.check(error.ConnectionDone):
        return ""
    return words(reason)


def tunnel_lost(reason: Failure | None, transport: Any) -> bool:
    """A stream (on `transport`) ended because its studio's tunnel was lost: TunnelLost,
    or a reset of a stream through another node, whose holder resets it when the tunnel
    is lost there (the transport's RESET_IS_LOST: peers.streams.PeerStream)."""
    if reason is None:
        return False
    return bool(reason.check(TunnelLost) or reason.check(StreamReset)
                and getattr(transport, "RESET_IS_LOST", False)
                and getattr(reason.value, "code", 0) != RESET_RELAYED)


def going_away(transport: Any) -> bool:
    """The tunnel under a stream (`transport`) is going away on purpose: a GoAway either
    way (this node or the studio draining, the studio stopping or moving), or it was
    closed cleanly (the studio stopped, closing it; this node replaced it). False for
    a transport that is no tunnel stream."""
    mux = getattr(transport, "mux", None)
    if mux is None:
        return False
    ended = mux.close_reason
    return bool(mux.local_go_away or mux.remote_go_away is not None
                or (ended is not None and ended.check(error.ConnectionDone) is not None))


class TunnelSilent(error.TimeoutError):
    """Nothing (data, Ping, Ping answer) came from the peer for the keepalive's timeout:
    the path went silent, and this end closed the tunnel (``Multiplexer.close_reason``)."""


class TunnelUnavailable(Exception):
    """No stream can be opened: the tunnel is closed or the peer is going away."""


# Plain decision objects ---------------------------------------------------------


class Keepalive:
    """Liveness bookkeeping: one Ping outstanding at a time; a peer silent for
    ``timeout`` (no frame of any kind, Ping answers included) is dead.

    The server end (the gateway) pings every ``ping_interval`` (< ``timeout``). The
    client end (a studio) pings too, but only when no Ping of the server's arrived
    within the last ``ping_interval`` (:meth:`should_ping`: an older gateway, one
    with a longer interval, a lost Ping): so an idle tunnel carries one Ping and its
    answer per interval instead of two of each. Only one end skips: if both did, two
    ends whose timers fire within a one-way trip of each other would each see the
    other's Ping and both skip every other round, leaving the path silent for two
    intervals, as long as the default timeout. Either way a live path carries
    something within the timeout both ways; a path that went silent (a sleeping
    laptop, an expired NAT entry) is declared dead at most ``timeout`` after the last
    frame heard, whichever end notices first.
    """

    __slots__ = ("timeout", "outstanding", "sent_at", "rtt", "_next", "last_heard",
                 "peer_pinged")

    def __init__(self, timeout: float, now: float = 0.0):
        self.timeout = timeout
        self.outstanding: int | None = None
        self.sent_at = 0.0
        self.rtt: float | None = None
        self._next = 0
        self.last_heard = now
        self.peer_pinged = -math.inf  # when the peer's last Ping arrived

    def next_ping(self, now: float) -> int | None:
        """The opaque value of a Ping to send now, or None when one is still outstanding."""
        if self.outstanding is not None:
            return None
        self._next = (self._next + 1) & MAX_U32
        self.outstanding, self.sent_at = self._next, now
        return self._next

    def should_ping(self, now: float, interval: float) -> bool:
        """Whether the client end's Ping is wanted now: not while the server pings."""
        return now - self.peer_pinged >= interval

    def acked(self, opaque: int, now: float) -> bool:
        if opaque != self.outstanding:
            return False
        self.outstanding = None
        self.rtt = now - self.sent_at
        self.last_heard = now
        return True

    def heard(self, now: float) -> None:
        """A frame (any bytes) arrived from the peer."""
        self.last_heard = now

    def dead_at(self) -> float:
        """When the peer is dead if nothing more is heard (an unanswered Ping counts too)."""
        silent = self.last_heard + self.timeout
        if self.outstanding is not None:
            return min(silent, self.sent_at + self.timeout)
        return silent

    def expired(self, now: float) -> bool:
        return now >= self.dead_at()


# The multiplexer -----------------------------------------------------------------


@implementer(IPushProducer)
class Multiplexer(Protocol):
    """yamux over one connection; the client opens odd stream ids, the server even ones."""

    # Set by makeConnection before any other event: the tunnel connection (TCP, TLS,
    # or a WebSocket carrier): a consumer that is also the producer the mux pauses.
    transport: Any

    _log = Logger()
    # The state of a closing tunnel, as class defaults: an instance gets its own value
    # only when it closes. CPython 3.11 keeps a class's instance attribute names in one
    # table shared by its instances, of at most 29 names, and every instance made
    # shrinks the room left for new names by one: a name first set after a few
    # instances exist gives each instance that sets it a dict of its own (~1 KiB per
    # tunnel). So every name a working tunnel sets is set in __init__ (all 29), and only
    # a closing tunnel gets a dict. tests/unit/test_tunnel_mux.py checks both.
    local_go_away = False
    remote_go_away: int | None = None
    closed = False
    close_reason: Failure | None = None
    #: Who is at the other end, in the words a silent path is reported with (a class
    #: attribute, for the reason above: see facing()).
    peer_name = "the peer"

    def __init__(self, *, is_client: bool, clock: IReactorTime,
                 window_size: int = DEFAULT_WINDOW, max_streams: int = 1024,
                 ping_interval: float = 10.0, ping_timeout: float = 20.0,
                 max_frame_data: int = DEFAULT_MAX_FRAME_DATA,
                 max_send_buffer: int = DEFAULT_MAX_SEND_BUFFER,
                 close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
                 stream_buffer: int = DEFAULT_STREAM_BUFFER,
                 on_stream: Callable[[Stream], IProtocol | None] | None = None,
                 on_go_away: Callable[[int], None] | None = None,
                 on_close: Callable[[Failure], None] | None = None,
                 gather: bool = False):
        if not INITIAL_WINDOW <= window_size <= MAX_U32:
            raise ValueError(f"window_size must be between {INITIAL_WINDOW} and {MAX_U32}")
        if not 0 < max_frame_data <= window_size:
            raise ValueError("max_frame_data must be positive and at most window_size")
        if ping_interval > 0 and ping_timeout <= ping_interval:
            raise ValueError("ping_timeout must be longer than ping_interval")
        self.is_client = is_client
        self.clock = clock
        self.gather = gather
        self._turns = turns_of(clock) if gather else None
        self.window_size = window_size
        self.max_streams = max_streams
        self.ping_interval = ping_interval
        self.max_frame_data = max_frame_data
        self.max_send_buffer = max_send_buffer
        self.close_timeout = close_timeout
        self.stream_buffer = stream_buffer
        # Made at the first frame to send; dropped again while the tunnel is idle (an
        # empty scheduler's two deques and set cost ~1.7 KiB per idle tunnel).
        self.scheduler: FrameScheduler[Stream] | None = None
        self.on_stream = on_stream
        self.on_go_away = on_go_away
        self.on_close = on_close
        self.streams: dict[int, Stream] = {}
        self.keepalive = Keepalive(ping_timeout, clock.seconds())
        self._decoder = FrameDecoder(window_size)
        self._next_id = 1 if is_client else 2
        # One timer per tunnel for both keepalive duties: the next Ping, and the moment
        # the peer would be dead if nothing more is heard (whichever comes first).
        self._timer: IDelayedCall | None = None
        self._next_ping = 0.0
        # Frames waiting to go out together (open_stream's SYN, with ``gather`` a turn's
        # later frames; see _write), and the one end-of-turn call that sends them if
        # nothing else does.
        self._held = b""
        self._turn_call: IDelayedCall | None = None
        # With ``gather``: the turn (its number from wire/turns.py, or 0 without a
        # counter) in which a frame last went out at once; later small frames of that
        # turn are held.
        self._sent_turn = -1
        self._pumping = False
        # 0 while the transport takes our writes; once it paused us, 1 plus the answers to
        # the peer's frames written since (an int, not a flag and a counter: this class
        # has no room for another name, see above; MAX_UNREAD_ANSWERS).
        self._transport_paused = 0
        self._idle_waiters: list[Callable[[], None]] | None = None
        # What makeConnection sets (Protocol's class defaults until then).
        self.transport = None
        self.connected = 0

    # Protocol -------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        if self.ping_interval > 0:
            now = self.clock.seconds()
            self.keepalive.heard(now)
            self._next_ping = now + self.ping_interval
            self._arm(now)

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        if self._timer is not None:  # keepalive.heard(now), one call less per read
            self.keepalive.last_heard = self.clock.seconds()
        decoder = self._decoder
        if decoder.rest is not None:  # earlier frames wait: these bytes go behind them
            decoder.rest += data
            return
        sid = decoder.lone_data(data)
        if sid:  # the common read: one Data frame, what _frame would do with it
            stream = self.streams.get(sid)
            if stream is not None:
                try:
                    stream._data_received(data[HEADER_SIZE:])
                except ProtocolError as e:
                    self._protocol_error(e.reason)
            return
        self._handle(data)
        if decoder.rest is not None and not self.closed:
            self.transport.pauseProducing()  # no more reads until the rest is handled
            self.clock.callLater(0, self._handle_rest)

    def _handle(self, data: bytes) -> None:
        """Decode and handle up to MAX_FRAMES_PER_TURN frames of ``data``; the decoder
        keeps the bytes after them (``rest``)."""
        try:
            for frame in self._decoder.feed(data, MAX_FRAMES_PER_TURN):
                self._frame(frame)
                if self.closed:
                    return
        except ProtocolError as e:
            self._protocol_error(e.reason)

    def _handle_rest(self) -> None:
        """The next part of a read of many frames (a turn each); once all is handled, the
        tunnel is read again from the next turn."""
        decoder = self._decoder
        data = decoder.rest
        if data is None or self.closed:
            return
        decoder.rest = None
        self._handle(data)
        if self.closed:
            return
        if decoder.rest is not None:
            self.clock.callLater(0, self._handle_rest)
        else:
            # Read again from the next turn on: this one's poll comes after this part, and
            # a read in it would handle a second part in the same turn.
            self.clock.callLater(0, self._read_again)

    def _read_again(self) -> None:
        if not self.closed and self._decoder.rest is None:
            self.transport.resumeProducing()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._terminate(reason if reason is not None else Failure(error.ConnectionDone()))

    # IPushProducer (towards the tunnel transport) ----------------------------------------

    # The transport pausing us stops the scheduler, not the streams' producers: each
    # stream keeps filling its own bounded buffer, and what goes out next when the
    # transport takes more is the scheduler's choice.

    def pauseProducing(self) -> None:
        if not self._transport_paused:
            self._transport_paused = 1

    def resumeProducing(self) -> None:
        if self._transport_paused:
            self._transport_paused = 0
            self._pump()

    def _answered(self) -> None:
        """An answer to one of the peer's own frames went out (a Ping's answer, the RST of
        a refused stream): while the peer leaves our writes unread, at most
        MAX_UNREAD_ANSWERS of them."""
        if self._transport_paused:
            self._transport_paused += 1
            if self._transport_paused > MAX_UNREAD_ANSWERS + 1:  # 1: paused, no answer
                raise ProtocolError(f"{self.peer_name} sent more than {MAX_UNREAD_ANSWERS} "
                                    "Pings or stream openings to answer while it read "
                                    "nothing of this end's writes")

    def stopProducing(self) -> None:
        pass  # the transport is closing; connectionLost follows

    # Public API ------------------------------------------------------------------------

    def open_stream(self, first: bytes = b"") -> Stream:
        """A new stream, usable at once (no round trip). Attach a protocol with ``attach``.

        With ``first`` (at most one frame's bytes, sent as the stream's first data) the
        SYN and ``first`` are held until the tunnel next sends anything (typically the
        request the opener writes next, in the same turn) or the end of this reactor
        turn: a stream opened to carry a request goes out in one write with it.
        """
        if len(first) > self.max_frame_data:
            raise ValueError(f"first is {len(first)} bytes; at most {self.max_frame_data}")
        if self.closed or self.transport is None:
            raise TunnelUnavailable("the tunnel is closed" if self.closed else
                                    "the tunnel is not connected yet")
        if self.remote_go_away is not None:
            raise TunnelUnavailable("the peer is going away and accepts no new streams")
        sid = self._next_id
        if sid > MAX_U32:
            raise TunnelUnavailable("stream ids exhausted on this tunnel")
        self._next_id += 2
        stream = Stream(self, sid, self.window_size)
        self.streams[sid] = stream
        syn = frames.encode_header(WINDOW_UPDATE, SYN, sid, stream._recv_window.advertise())
        if first:
            stream._send_window.take(len(first))  # within the initial window
            self._hold(syn + _pack_header(0, DATA, 0, sid, len(first)) + first)
        else:
            self._write(syn)
        if stream_debug:
            self._log.debug("opened stream {sid}", sid=sid)
        return stream

    def go_away(self, code: int = GO_AWAY_NORMAL) -> None:
        """Tell the peer we accept no new streams (its SYNs get RST); ours may finish."""
        if self.closed or self.local_go_away:
            return
        self.local_go_away = True
        self._send_control(GO_AWAY, 0, 0, code)

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once no stream is open (now, if none is). For drain."""
        if not self.streams or self.closed:
            callback()
        elif self._idle_waiters is None:
            self._idle_waiters = [callback]
        else:
            self._idle_waiters.append(callback)

    @property
    def rtt(self) -> float | None:
        """The round-trip time the last Ping measured."""
        return self.keepalive.rtt

    # Frames in ------------------------------------------------------------------------

    def _frame(self, frame: frames.Frame) -> None:
        ftype, flags, sid, length, data = frame
        if not ftype and not flags:  # Data without flags, most frames: to its stream
            stream = self.streams.get(sid)
            if stream is not None and length:
                stream._data_received(data)
        elif ftype == DATA or ftype == WINDOW_UPDATE:
            stream = self.streams.get(sid)
            if flags & SYN:
                if stream is not None:
                    raise ProtocolError(f"SYN for stream {sid}, which is already open")
                stream = self._accept(sid)
            if stream is None:
                return  # a stream we reset or refused: late frames are expected
            if flags & RST:
                stream._reset(length if ftype == WINDOW_UPDATE else 0)
                return
            if ftype == DATA:
                if length:
                    stream._data_received(data)
            elif length:
                stream._window_update(length)
            if flags & FIN and not stream._closed:
                stream._fin()
        elif ftype == PING:
            if flags & SYN:
                self.keepalive.peer_pinged = self.clock.seconds()
                self._send_control(PING, ACK, 0, length)
                self._answered()
            else:
                self.keepalive.acked(length, self.clock.seconds())
        else:
            self._go_away_received(length)

    def _accept(self, sid: int) -> Stream | None:
        if (sid % 2 == 1) == self.is_client:
            raise ProtocolError(f"peer opened stream {sid} with an id of our parity")
        if self.local_go_away or len(self.streams) >= self.max_streams or self.on_stream is None:
            why = ("going away" if self.local_go_away else
                   "stream limit reached" if self.on_stream is not None else "not accepting")
            self._log.debug("refusing stream {sid}: {why}", sid=sid, why=why)
            self._send_control(WINDOW_UPDATE, RST, sid, 0)
            self._answered()
            return None
        stream = Stream(self, sid, self.window_size)
        self.streams[sid] = stream
        # The ACK (and our window beyond the initial one) is held for the tunnel's next
        # send, typically the stream's first answer: one send and one TLS record less
        # per opened stream, and the request reaches its target before it. Nothing waits
        # for an ACK (no version of either end ever did; yamux allows it on any later
        # frame); the peer may send INITIAL_WINDOW meanwhile, and once it has sent
        # ACK_HOLD_LIMIT of it the ACK goes at once (Stream._data_received).
        self._held += frames.encode_header(WINDOW_UPDATE, ACK, sid,
                                           stream._recv_window.advertise())
        stream._ack_held = True
        try:
            protocol = self.on_stream(stream)
        except Exception:
            self._log.failure("on_stream for stream {sid}", sid=sid)
            stream.abortConnection()
            self._answered()
            return None
        if protocol is not None and stream.protocol is None:
            stream.attach(protocol)
        if stream._closed:  # refused by its owner (a gateway takes no studio's streams)
            self._answered()
            return None
        return stream

    def _go_away_received(self, code: int) -> None:
        self.remote_go_away = code
        if code not in GO_AWAY_ERRORS:
            # The owner that handles it says what it does (studios-connect: "gateway ... is
            # draining; reconnecting"): then this line would only repeat it.
            (self._log.info if self.on_go_away is None else self._log.debug)(
                "{peer} is going away: no new streams on this tunnel", peer=self.peer_name)
        else:
            self._log.warn("peer ended the tunnel with GoAway code {code}", code=code)
        if self.on_go_away is not None:
            try:
                self.on_go_away(code)
            except Exception:
                self._log.failure("on_go_away")
        if code in GO_AWAY_ERRORS and not self.closed:
            what = "protocol error" if code == GO_AWAY_PROTOCOL_ERROR else "internal error"
            self._close_transport(Failure(error.ConnectionLost(f"peer reported a {what}")))

    # Frames out -----------------------------------------------------------------------

    def _ready(self, stream: Stream) -> None:
        """``stream`` has data and window: queue it, and send while the transport takes it."""
        scheduler = self.scheduler
        if scheduler is None:
            scheduler = self.scheduler = FrameScheduler()
        scheduler.ready(stream, stream._send_buffered)
        if not self._pumping:
            self._pump()

    def _pump(self) -> None:
        """Send frames, one stream's turn at a time, until the transport is full."""
        scheduler = self.scheduler
        if self._pumping or scheduler is None:
            return
        self._pumping = True
        try:
            while not self._transport_paused and not self.closed:
                stream = scheduler.next()
                if stream is None:
                    break
                if (not stream._closed and stream._send_buffered
                        and stream._send_window.available):
                    stream._send_frame()
        finally:
            self._pumping = False

    def _send_data(self, sid: int, data: bytes | memoryview) -> None:
        if not self.closed:
            self._write(_pack_header(0, DATA, 0, sid, len(data)) + data)

    def _send_control(self, ftype: int, flags: int, sid: int, length: int) -> None:
        if not self.closed and self.transport is not None:
            self._write(frames.encode_header(ftype, flags, sid, length))

    def _write(self, data: bytes) -> None:
        """Every frame goes out here, behind whatever is held (open_stream): at once, or
        with ``gather``, at once if it is the tunnel's first send of this reactor turn
        and no event of the turn's poll is still to come (wire/turns.py's ``more``), and
        otherwise (below GATHER_LIMIT) with the turn's other frames: at the poll's last
        event's frame, or at the turn's end.

        A turn that answers N requests (N client reads in one poll) then makes one send
        on the tunnel instead of N, and encrypts one TLS record (the tunnel's TLS writes
        at once); a lone message (one request at a time, a WebSocket echo) still goes
        out in the call that wrote it, and with the reactor's turn counter sets no timer
        either: the end-of-turn call is made only once a frame is held. Without a
        counter (a fake clock) the first send sets it; without the lean poll (no
        ``more``) a turn's first frame goes out at once."""
        if self._held:
            data, self._held = self._held + data, b""
        if self.gather:
            turns = self._turns
            turn = turns.n if turns is not None else 0
            if len(data) < GATHER_LIMIT and (turn == self._sent_turn
                                             or (turns is not None and turns.more)):
                self._held = data
                if self._turn_call is None:
                    self._turn_call = self.clock.callLater(0, self._turn_ended)
                return
            self.transport.write(data)
            self._went_out(turns, turn)
            return
        self.transport.write(data)

    def _went_out(self, turns: Any, turn: int) -> None:
        """With ``gather``: a write went out at once in reactor turn ``turn``."""
        self._sent_turn = turn
        if turns is None and self._turn_call is None:
            self._turn_call = self.clock.callLater(0, self._turn_ended)

    def _write_frames(self, sid: int, data: bytes) -> None:
        """``data`` (more than one frame's) as stream ``sid``'s Data frames, as _write
        sends their joined bytes: over the lean TLS layer (``write_frames``) the records
        are sealed from ``data`` itself, with no joined copy; a write this size goes out
        at once, so only the turn's bookkeeping is _write's."""
        step = self.max_frame_data
        seal = getattr(self.transport, "write_frames", None)
        if (seal is None or self._held or type(data) is not bytes
                or frames.data_frames_size(len(data), step) < GATHER_LIMIT):
            self._write(frames.data_frames(sid, data, step))
            return
        seal(sid, data, step)
        if self.gather:
            turns = self._turns
            self._went_out(turns, turns.n if turns is not None else 0)

    def _hold(self, data: bytes) -> None:
        """Keep ``data`` for the tunnel's next write, or the end of this reactor turn."""
        self._held += data
        if self._turn_call is None:
            self._turn_call = self.clock.callLater(0, self._turn_ended)

    def _turn_ended(self) -> None:
        """The end of a turn that held frames (or, without a turn counter, sent one):
        what is held goes out in one send; the next frame is a new turn's first."""
        self._turn_call = None
        self._sent_turn = -1
        self._send_held()

    def _send_held(self) -> None:
        """What is held goes out now, in one send."""
        if self._held and not self.closed and self.transport is not None:
            data, self._held = self._held, b""
            self.transport.write(data)

    # Keepalive ------------------------------------------------------------------------

    def _ping(self) -> None:
        opaque = self.keepalive.next_ping(self.clock.seconds())
        if opaque is not None:
            self._send_control(PING, SYN, 0, opaque)

    def _arm(self, now: float) -> None:
        at = min(self._next_ping, self.keepalive.dead_at())
        self._timer = self.clock.callLater(max(0.0, at - now), self._tick)

    def _tick(self) -> None:
        """The keepalive timer: the peer's silence checked, a Ping sent when one is due
        (every ``ping_interval`` from the start; intervals a late reactor missed are
        skipped), idle memory given back; then the timer is set again."""
        self._timer = None
        if self.closed:
            return
        now = self.clock.seconds()
        if self.keepalive.expired(now):
            self._dead()
            return
        if now >= self._next_ping:
            if not self.is_client or self.keepalive.should_ping(now, self.ping_interval):
                self._ping()
            missed = (now - self._next_ping) // self.ping_interval
            self._next_ping += (missed + 1) * self.ping_interval
        if not self.streams and self.scheduler is not None and not self._pumping:
            self.scheduler = None
        self._arm(now)

    def _dead(self) -> None:
        # Not logged here: the tunnel's owner says which tunnel it was when its
        # connection is gone (``ended_by``), from ``close_reason``.
        reason = Failure(TunnelSilent(f"nothing heard from {self.peer_name} for "
                                      f"{self.keepalive.timeout:g}s"))
        transport = self.transport
        self._terminate(reason)
        if transport is not None:
            transport.abortConnection()

    # Ending ---------------------------------------------------------------------------

    def _protocol_error(self, reason: str) -> None:
        self._log.warn("tunnel protocol error: {reason}", reason=reason)
        self._send_control(GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR)
        self._close_transport(Failure(ProtocolError(reason)))

    def internal_error(self, reason: str) -> None:
        """End the tunnel telling the peer it was our fault (GoAway code 2)."""
        self._send_control(GO_AWAY, 0, 0, GO_AWAY_INTERNAL_ERROR)
        self._close_transport(Failure(ProtocolError(reason)))

    def close(self) -> None:
        """End the tunnel from our side: streams are lost, the connection closes."""
        self._close_transport(Failure(error.ConnectionDone("tunnel closed locally")))

    def _close_transport(self, reason: Failure) -> None:
        if self.closed:
            return
        transport = self.transport
        if self._held and transport is not None:
            data, self._held = self._held, b""
            transport.write(data)  # a held SYN (or a turn's frames) goes before the end
        self._terminate(reason)
        if transport is not None:
            # We registered as the transport's producer; a transport with a
            # producer waits for it before closing. A peer that reads nothing would keep
            # the connection for good: it is reset after a grace (wire/closing.py).
            transport.unregisterProducer()
            close_within(transport, self.clock, f"tunnel to {self.peer_name}")

    def ended_by(self, reason: Failure | None) -> Failure | None:
        """Why the tunnel ended, for its owner's log line once the connection is gone
        (``reason``: the connection's): the reason the mux ended it with (a silent
        peer, a protocol error, a local close), else the connection's."""
        return self.close_reason if self.close_reason is not None else reason

    def _terminate(self, reason: Failure) -> None:
        """The tunnel is over: every stream is lost, timers stop, ``on_close`` once."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._held = b""
        if self._turn_call is not None and self._turn_call.active():
            self._turn_call.cancel()
        self._turn_call = None
        # A clean end of the tunnel's connection (the studio, or the node holding it,
        # closed it) is not "lost": its streams say it was closed.
        lost = Failure(TunnelLost("tunnel closed: its connection ended cleanly"
                                  if reason.check(error.ConnectionDone) else
                                  f"tunnel lost: {words(reason)}"))
        for stream in list(self.streams.values()):
            stream._finish(lost)
        self.streams.clear()
        self.scheduler = None
        self._fire_idle()
        if self.on_close is not None:
            try:
                self.on_close(reason)
            except Exception:
                self._log.failure("on_close")

    def _forget(self, stream: Stream) -> None:
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
            if stream_debug:
                self._log.debug("stream {sid} closed", sid=stream.stream_id)
            if not self.streams:
                self._fire_idle()

    def _fire_idle(self) -> None:
        waiters = self._idle_waiters
        if waiters is None:
            return
        self._idle_waiters = None
        for callback in waiters:
            try:
                callback()
            except Exception:
                self._log.failure("when_idle callback")


def facing(peer_name: str) -> type[Multiplexer]:
    """The multiplexer for one kind of tunnel: a silent path is reported as "nothing heard
    from <peer_name>" (the studio, the gateway, the other node)."""
    # (named as its base, so that log lines keep their namespace)
    return type("Multiplexer", (Multiplexer,), {"peer_name": peer_name})
