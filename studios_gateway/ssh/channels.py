"""Flow-controlled SSH channels and the connection service that carries them.

Conch's stock classes grant window as soon as data arrives and buffer writes
without bound when the peer's window is shut. Here:

* :class:`FlowConnection` never adjusts a window by itself: a channel calls
  :meth:`FlowChannel.consumed` when whoever it hands data to has taken it, and
  the window is re-opened in steps of an eighth of it (:data:`ADJUST_SHARE`).
* :class:`FlowChannel` keeps an ordered outgoing queue (data, extended data,
  requests, EOF, close). Data leaves only while the peer's window allows; what
  waits is bounded by the window of whoever feeds the channel, because that
  feeder is only given credit (:meth:`sent`) for bytes that actually left.
  Requests, EOF and close wait behind queued data, so ``exit-status`` never
  overtakes output.
* Channel opens may be answered later (a Deferred): the relay confirms the
  user's channel only once the studio confirmed its own.
* Channel requests see their want-reply flag, and replies go out in order.

Conch's own log lines (one per window adjust, per channel open and close) go
through :data:`conch_log`, which passes warnings and worse only.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Any

from twisted.conch import error
from twisted.conch.ssh import common, connection
from twisted.conch.ssh.channel import SSHChannel
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["WINDOW", "MAX_PACKET", "FlowChannel", "FlowConnection", "conch_log"]

#: Channel window we grant. Large enough for a 1 Gbit/s * 15 ms path without stalls.
WINDOW = 2 * 1024 * 1024
#: Largest data packet we accept (OpenSSH sends at most this much per packet).
MAX_PACKET = 32 * 1024
#: Consumed bytes are re-granted once they reach this share of the window (an eighth:
#: 256 KiB of the 2 MiB). At half, a path longer than the window's round trip locked
#: into a lock-step: the sender's burst was the last grant (half a window), and the
#: receiver held the other half as credit not yet due, so only half the window was
#: ever in flight (scp at ~10 MB/s on an 80 ms path, docs/ssh.md). What may wait
#: unread is still the window: only the credit comes back in smaller steps.
ADJUST_SHARE = 8

#: Conch's chatter (info/debug per channel and per window adjust) is dropped.
conch_log = Logger(observer=FilteringLogObserver(
    globalLogPublisher, [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)]))

_DATA_HEAD = struct.Struct(">2L")  # recipient channel, data length
_EXTENDED_HEAD = struct.Struct(">3L")  # recipient channel, data type, data length

OPEN_ADMINISTRATIVELY_PROHIBITED = connection.OPEN_ADMINISTRATIVELY_PROHIBITED
OPEN_CONNECT_FAILED = connection.OPEN_CONNECT_FAILED
OPEN_UNKNOWN_CHANNEL_TYPE = connection.OPEN_UNKNOWN_CHANNEL_TYPE
OPEN_RESOURCE_SHORTAGE = connection.OPEN_RESOURCE_SHORTAGE


class OpenRefused(Exception):
    """A channel open is refused; `code` is an SSH OPEN_* reason code."""

    def __init__(self, code: int, description: str):
        super().__init__(description)
        self.code = code
        self.description = description


class FlowChannel(SSHChannel):
    """A channel with an ordered, window-paced outgoing queue and explicit credit."""

    _log = conch_log

    def __init__(self, *, window: int = WINDOW, max_packet: int = MAX_PACKET,
                 remote_window: int = 0, remote_max_packet: int = 0, conn: Any = None,
                 name: bytes | None = None) -> None:
        super().__init__(localWindow=window, localMaxPacket=max_packet,
                         remoteWindow=remote_window, remoteMaxPacket=remote_max_packet,
                         conn=conn)
        if name is not None:
            self.name = name
        self._queue: deque[tuple[Any, ...]] = deque()
        self.queued_bytes = 0
        self._unacked = 0  # bytes received and consumed but not yet re-granted
        self._held = 0  # bytes received while our consumer is paused
        self._consumer_paused = False
        self._blocked = False
        self._eof_queued = False
        self._close_queued = False
        self._discarding = False  # discard_output: our peer reads no more of our data
        self.is_open = False
        self.opened: Deferred[FlowChannel] = Deferred()
        self.reply_slots: deque[list[Any]] = deque()

    # Opening -------------------------------------------------------------------------

    def channelOpen(self, specificData: bytes) -> None:
        self.is_open = True
        if not self.opened.called:
            self.opened.callback(self)
        self._flush()

    def openFailed(self, reason: Any) -> None:
        if not self.opened.called:
            self.opened.errback(Failure(reason) if isinstance(reason, Exception) else reason)

    # Receiving: credit ---------------------------------------------------------------

    def consumed(self, n: int) -> None:
        """`n` received bytes have been taken by our consumer: re-open the window."""
        if self._consumer_paused:
            self._held += n
            return
        self._unacked += n
        if (self._unacked >= self.localWindowSize // ADJUST_SHARE
                or self.localWindowLeft < self.localMaxPacket):
            grant, self._unacked = self._unacked, 0
            if self.conn is not None and not self.localClosed:
                self.conn.adjustWindow(self, grant)

    def pause_consumer(self) -> None:
        """Our consumer is full: hold credit until :meth:`resume_consumer`."""
        self._consumer_paused = True

    def resume_consumer(self) -> None:
        self._consumer_paused = False
        held, self._held = self._held, 0
        if held:
            self.consumed(held)

    # Sending -------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if data and not self._close_queued and not self._eof_queued:
            if self._discarding:
                self.sent(len(data))
                return
            self._queue.append(("d", data))
            self.queued_bytes += len(data)
            self._flush()

    def writeExtended(self, dataType: int, data: bytes) -> None:
        if data and not self._close_queued and not self._eof_queued:
            if self._discarding:
                self.sent(len(data))
                return
            self._queue.append(("x", dataType, data))
            self.queued_bytes += len(data)
            self._flush()

    def discard_output(self) -> None:
        """Our peer will read none of our data any more: drop what waits for its window,
        and whatever is written from now on, each credited to our feeder as if it had
        left (:meth:`sent`), so that the feeder's window stays open; requests, EOF and
        close still go, in order, and no longer wait for a window that may never open."""
        self._discarding = True
        dropped = self.queued_bytes
        if dropped:
            self._queue = deque(i for i in self._queue if i[0] not in ("d", "x"))
            self.queued_bytes = 0
            self.sent(dropped)
        self._flush()

    def send_request(self, request: bytes, data: bytes, want_reply: bool) -> Deferred[bool] | None:
        """Send a channel request after whatever is queued; fires True/False on reply."""
        if self._close_queued or self.localClosed:
            return defer.succeed(False) if want_reply else None
        d: Deferred[bool] | None = Deferred() if want_reply else None
        self._queue.append(("r", request, data, d))
        self._flush()
        return d

    def send_eof(self) -> None:
        if not self._eof_queued and not self._close_queued:
            self._eof_queued = True
            self._queue.append(("e",))
            self._flush()

    def loseConnection(self) -> None:
        """Close after the queue has gone out."""
        if not self._close_queued:
            self._close_queued = True
            self.closing = 1
            self._queue.append(("c",))
            self._flush()

    def abort(self) -> None:
        """Close now, dropping anything queued."""
        self._queue.clear()
        self.queued_bytes = 0
        self._close_queued = True
        self.closing = 1
        if self.conn is not None and self.is_open and not self.localClosed:
            self.conn.sendClose(self)

    def addWindowBytes(self, data: int) -> None:
        self.remoteWindowLeft += data
        self._flush()

    def _flush(self) -> None:
        if not self.is_open or self.conn is None:
            return
        if self.localClosed:
            self._queue.clear()
            self.queued_bytes = 0
            return
        sent = 0
        conn: Any = self.conn
        queue = self._queue
        while queue:
            item = queue[0]
            kind = item[0]
            if kind in ("d", "x"):
                if conn.writes_held:
                    break  # the socket under the connection is full: wait for it
                data = item[-1]
                n = min(len(data), self.remoteWindowLeft)
                if n <= 0:
                    break
                step = self.remoteMaxPacket or MAX_PACKET
                if n > step or n < len(data):
                    data = memoryview(data)  # cut into packets without copying
                for offset in range(0, n, step):
                    chunk = data[offset:min(n, offset + step)]
                    if kind == "d":
                        conn.sendData(self, chunk)
                    else:
                        conn.sendExtendedData(self, item[1], chunk)
                self.remoteWindowLeft -= n
                sent += n
                if n < len(data):
                    queue[0] = item[:-1] + (data[n:],)
                    break
                queue.popleft()
            elif kind == "r":
                queue.popleft()
                _, request, data, d = item
                result = conn.sendRequest(self, request, data, wantReply=d is not None)
                if d is not None:
                    if result is None:
                        d.callback(False)
                    else:
                        result.addCallbacks(lambda _: True, lambda _: False).chainDeferred(d)
            elif kind == "e":
                queue.popleft()
                conn.sendEOF(self)
            else:
                queue.popleft()
                conn.sendClose(self)
                queue.clear()
        if sent:
            self.queued_bytes -= sent
            self.sent(sent)
        if queue and any(i[0] in ("d", "x") for i in queue):
            if not self._blocked:
                self._blocked = True
                self.writes_blocked()
        elif self._blocked:
            self._blocked = False
            self.writes_unblocked()

    # Hooks -------------------------------------------------------------------------------

    def sent(self, n: int) -> None:
        """`n` bytes of queued data left through the connection."""

    def writes_blocked(self) -> None:
        """The peer's window is shut and data waits: pause whoever writes to us."""

    def writes_unblocked(self) -> None:
        """The queue has drained: resume whoever writes to us."""

    def handle_request(self, request: bytes, data: bytes, want_reply: bool) -> Any:
        """A channel request arrived; return (a Deferred of) a bool."""
        return self.requestReceived(request, data)

    def closeReceived(self) -> None:
        # The peer will take no more: drop what waits, answer with our close.
        self._queue.clear()
        self.queued_bytes = 0
        self._close_queued = False
        self.loseConnection()

    def closed(self) -> None:
        self._queue.clear()
        self.queued_bytes = 0


@implementer(IPushProducer)
class FlowConnection(connection.SSHConnection):
    """ssh-connection with explicit credit, deferred opens, ordered request replies."""

    _log = conch_log
    #: Most channels open (or opening) at once on this connection; None: no limit.
    max_channels: int | None = None

    def __init__(self) -> None:
        super().__init__()
        self._opening = 0
        #: Channel data waits in the channels' queues: the socket is full (pauseProducing).
        self.writes_held = False
        self._next_turn = 0  # the channel that writes first at the next resumeProducing

    @property
    def channel_count(self) -> int:
        return len(self.channels) + self._opening

    # The socket's back-pressure: the connection is the streaming producer registered on
    # the socket it writes to --------------------------------------------------------------

    def pauseProducing(self) -> None:
        """The socket under this connection takes no more for now: channel data waits in
        each channel's queue (bounded by its feeder's window, which gets no credit
        meanwhile) instead of piling up in the socket's buffer, whatever window the
        peer advertised. Control messages still go."""
        self.writes_held = True

    def resumeProducing(self) -> None:
        socket = getattr(self.transport, "transport", None)
        if socket is not None and getattr(socket, "disconnecting", False):
            # Closing (a disconnect sent or received): Twisted closes a socket whose
            # producer was paused only once that producer is unregistered (it resumes the
            # producer instead), so a connection with nothing more to send stayed open
            # for ever, reading stopped. Nothing held goes after the goodbye.
            socket.unregisterProducer()
            return
        if self.writes_held:
            self.writes_held = False
            # Each drain starts at the next channel: from the same one every time, a
            # channel whose studio keeps its queue full (a download) refilled the socket
            # at every drain, and the others (a shell on the same connection) waited
            # for as long as it streamed.
            channels = [c for c in self.channels.values() if isinstance(c, FlowChannel)]
            if channels:
                first = self._next_turn % len(channels)
                self._next_turn = first + 1
                for i, channel in enumerate(channels[first:] + channels[:first]):
                    if self.writes_held:
                        self._next_turn = first + i  # full again: the next one goes first
                        break
                    channel._flush()

    def stopProducing(self) -> None:
        self.writes_held = False  # the socket is gone; nothing more goes out anyway

    # Opens from the peer -----------------------------------------------------------------

    def open_channel(self, channel_type: bytes, window: int, max_packet: int,
                     data: bytes) -> FlowChannel | Deferred[FlowChannel]:
        """Return the channel for a peer's open (or a Deferred); raise OpenRefused."""
        raise OpenRefused(OPEN_UNKNOWN_CHANNEL_TYPE, "unknown channel type")

    def channel_limit_message(self) -> str:
        return f"too many channels on this connection (limit {self.max_channels})"

    def open_refusal(self) -> str | None:
        """Why the peer may not open another channel now (a limit reached), or None."""
        if self.max_channels is not None and self.channel_count >= self.max_channels:
            return self.channel_limit_message()
        return None

    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        channel_type, rest = common.getNS(packet)
        sender, window, max_packet = struct.unpack(">3L", rest[:12])
        data = rest[12:]
        refusal = self.open_refusal()
        if refusal is not None:
            self._open_failed(sender, OPEN_RESOURCE_SHORTAGE, refusal)
            return
        self._opening += 1
        d = defer.maybeDeferred(self.open_channel, channel_type, window, max_packet, data)

        def done(result: Any) -> None:  # a FlowChannel, or the Failure
            self._opening -= 1
            if self.transport is None or getattr(self, "_stopped", False):
                if isinstance(result, FlowChannel):
                    result.closed()
                return
            if isinstance(result, Failure):
                err: Any = result.value
                if result.check(OpenRefused):
                    code, why = err.code, err.description
                elif result.check(error.ConchError):
                    why, code = err.args[0], err.args[1]
                    if isinstance(why, int):
                        why, code = code, why
                    why = why.decode() if isinstance(why, bytes) else str(why)
                else:
                    self._log.failure("opening a {kind} channel", result,
                                      kind=channel_type.decode("latin-1"))
                    code, why = OPEN_CONNECT_FAILED, "internal error"
                self._open_failed(sender, code, why)
                return
            channel = result
            channel.conn = self
            channel.remoteWindowLeft = window
            channel.remoteMaxPacket = max_packet
            local = self.localChannelID
            self.localChannelID += 1
            channel.id = local
            self.channels[local] = channel
            self.channelsToRemoteChannel[channel] = sender
            self.localToRemoteChannel[local] = sender
            assert self.transport is not None
            self.transport.sendPacket(
                connection.MSG_CHANNEL_OPEN_CONFIRMATION,
                struct.pack(">4L", sender, local, channel.localWindowSize,
                            channel.localMaxPacket) + channel.specificData)
            channel.channelOpen(b"")

        d.addBoth(done)

    def _open_failed(self, sender: int, code: int, why: str) -> None:
        assert self.transport is not None
        self.transport.sendPacket(
            connection.MSG_CHANNEL_OPEN_FAILURE,
            struct.pack(">2L", sender, code) + common.NS(why.encode("utf-8", "replace"))
            + common.NS(b""))

    def ssh_CHANNEL_OPEN_CONFIRMATION(self, packet: bytes) -> None:
        local = struct.unpack(">L", packet[:4])[0]
        if local in self.channels:
            super().ssh_CHANNEL_OPEN_CONFIRMATION(packet)

    def ssh_CHANNEL_OPEN_FAILURE(self, packet: bytes) -> None:
        local = struct.unpack(">L", packet[:4])[0]
        if local in self.channels:
            super().ssh_CHANNEL_OPEN_FAILURE(packet)

    # Data: no automatic window adjust ------------------------------------------------------

    def _channel_for_data(self, local: int, n: int) -> FlowChannel | None:
        channel = self.channels.get(local)
        if channel is None:
            return None
        if n > channel.localWindowLeft or n > channel.localMaxPacket:
            self._log.warn("peer sent more than the window allows; closing the channel")
            channel.abort()
            return None
        channel.localWindowLeft -= n
        return channel

    def ssh_CHANNEL_DATA(self, packet: bytes) -> None:
        local, n = struct.unpack(">2L", packet[:8])
        channel = self._channel_for_data(local, n)
        if channel is not None and not channel.remoteClosed:
            channel.dataReceived(packet[8:8 + n])

    def ssh_CHANNEL_EXTENDED_DATA(self, packet: bytes) -> None:
        local, type_code, n = struct.unpack(">3L", packet[:12])
        channel = self._channel_for_data(local, n)
        if channel is not None and not channel.remoteClosed:
            channel.extReceived(type_code, packet[12:12 + n])

    def sendData(self, channel: Any, data: bytes) -> None:
        self._send_data(channel, connection.MSG_CHANNEL_DATA, _DATA_HEAD.pack(
            self.channelsToRemoteChannel[channel], len(data)), data)

    def sendExtendedData(self, channel: Any, dataType: int, data: bytes) -> None:
        self._send_data(channel, connection.MSG_CHANNEL_EXTENDED_DATA, _EXTENDED_HEAD.pack(
            self.channelsToRemoteChannel[channel], dataType, len(data)), data)

    def _send_data(self, channel: Any, message: int, head: bytes, data: bytes) -> None:
        # Conch's version copies the data twice before the packet does (length prefix,
        # then the channel id); the packet's own join is the only copy here.
        if channel.localClosed:
            return
        assert self.transport is not None
        send_parts = getattr(self.transport, "send_parts", None)
        if send_parts is not None:
            send_parts(message, (head, data))
        else:
            self.transport.sendPacket(message, head + data)

    def adjustWindow(self, channel: Any, bytesToAdd: int) -> None:
        if channel.localClosed or channel not in self.channelsToRemoteChannel:
            return
        assert self.transport is not None
        self.transport.sendPacket(
            connection.MSG_CHANNEL_WINDOW_ADJUST,
            struct.pack(">2L", self.channelsToRemoteChannel[channel], bytesToAdd))
        channel.localWindowLeft += bytesToAdd

    # Messages for channels that are already gone are ignored, not KeyErrors.
    def ssh_CHANNEL_WINDOW_ADJUST(self, packet: bytes) -> None:
        local, n = struct.unpack(">2L", packet[:8])
        channel = self.channels.get(local)
        if channel is not None:
            channel.addWindowBytes(n)

    def ssh_CHANNEL_EOF(self, packet: bytes) -> None:
        channel = self.channels.get(struct.unpack(">L", packet[:4])[0])
        if channel is not None:
            channel.eofReceived()

    def ssh_CHANNEL_CLOSE(self, packet: bytes) -> None:
        channel = self.channels.get(struct.unpack(">L", packet[:4])[0])
        if channel is not None:
            super().ssh_CHANNEL_CLOSE(packet)

    # Requests ----------------------------------------------------------------------------

    def ssh_CHANNEL_REQUEST(self, packet: bytes) -> None:
        local = struct.unpack(">L", packet[:4])[0]
        request, rest = common.getNS(packet[4:])
        want_reply = bool(rest[0])
        channel = self.channels.get(local)
        if channel is None:
            return
        d = defer.maybeDeferred(channel.handle_request, request, rest[1:], want_reply)
        if not want_reply:
            d.addErrback(lambda f: self._log.failure("channel request {r}", f,
                                                     r=request.decode("latin-1")))
            return
        slot: list[Any] = [False, False]
        channel.reply_slots.append(slot)

        def answered(result: Any) -> None:
            if isinstance(result, Failure):
                if not result.check(error.ConchError):
                    self._log.failure("channel request {r}", result,
                                      r=request.decode("latin-1"))
                result = False
            slot[0], slot[1] = True, bool(result)
            while channel.reply_slots and channel.reply_slots[0][0]:
                _, ok = channel.reply_slots.popleft()
                if channel.localClosed or channel not in self.channelsToRemoteChannel:
                    continue
                assert self.transport is not None
                self.transport.sendPacket(
                    connection.MSG_CHANNEL_SUCCESS if ok else connection.MSG_CHANNEL_FAILURE,
                    struct.pack(">L", self.localToRemoteChannel[channel.id]))

        d.addBoth(answered)

    def ssh_CHANNEL_SUCCESS(self, packet: bytes) -> None:
        local = struct.unpack(">L", packet[:4])[0]
        if self.deferreds.get(local):
            self.deferreds[local].pop(0).callback(True)

    def gotGlobalRequest(self, requestType: bytes, data: bytes) -> Any:
        # keepalive@openssh.com and anything we do not offer: a failure reply is the answer.
        return 0

    def serviceStopped(self) -> None:
        self._stopped = True
        super().serviceStopped()
