"""The relay between a user's SSH connection and the studio's SSH server.

Once :mod:`studios_gateway.ssh.server` has let a user in, :class:`UpstreamTransport`
logs in to the studio's SSH server over a tunnel stream with the gateway's host key;
:class:`UserConnection` (towards the user) and :class:`UpstreamConnection` (towards the
studio) then carry every channel and channel request both ways, in pairs of
:class:`RelayChannel`, with flow control (:mod:`studios_gateway.ssh.channels`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Protocol

from twisted.conch import avatar as conch_avatar
from twisted.conch import error as conch_error
from twisted.conch.ssh import common, keys, transport, userauth
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from studios_gateway.http.flow import Gate, Pacer
from studios_gateway.log_names import KeptNamespace
from studios_gateway.shown import shown
from studios_gateway.ssh.algorithms import (
    HOST_KEY_ALGORITHMS,
    INNER_CIPHERS,
    KEX,
    MACS,
    VERSION,
    _supported,
)
from studios_gateway.ssh.channels import (
    OPEN_ADMINISTRATIVELY_PROHIBITED,
    OPEN_CONNECT_FAILED,
    OPEN_RESOURCE_SHORTAGE,
    OPEN_UNKNOWN_CHANNEL_TYPE,
    FlowChannel,
    FlowConnection,
    OpenRefused,
    conch_log,
)
from studios_gateway.ssh.client_address import REQUEST as CLIENT_ADDRESS
from studios_gateway.ssh.client_address import ClientAddress
from studios_gateway.ssh.framing import PacketFraming
from studios_gateway.ssh.policy import MAX_STUDIO_WORDS, Identity, Refused, shown_name
from studios_gateway.wire.mux import broke, going_away, tunnel_lost

__all__ = [
    "KEEPALIVE",
    "RelayAvatar",
    "UpstreamTransport",
    "UserConnection",
    "describe_global_request",
]

log = Logger(namespace="studios_gateway.ssh")
#: The classes below were ssh/server.py's: their lines (Conch's, through conch_log's
#: filter) keep the namespace they had there.
_conch_log = KeptNamespace("studios_gateway.ssh.server", conch_log.observer)

#: Refused global requests (-R ...) logged per connection; the rest are refused quietly.
LOGGED_GLOBAL_REQUESTS = 5
#: A connection's channels not yet closed at both ends (those the client has finished
#: with but the studio's side is still closing included) are at most this many times
#: CONNECT_SSH_MAX_CONN_CHANNELS, which counts only the channels in use.
HELD_CHANNELS_FACTOR = 2

#: The global request that asks a client for a sign of life (the server's client probe).
KEEPALIVE = b"keepalive@openssh.com"
#: Global requests refused without a log line: keepalives, and a notice with no reply.
QUIET_GLOBAL_REQUESTS = {KEEPALIVE, b"no-more-sessions@openssh.com"}

#: Channel types a user may open; the studio may open only agent channels back.
USER_CHANNELS = {b"session", b"direct-tcpip"}
AGENT_CHANNEL = b"auth-agent@openssh.com"


def describe_global_request(request_type: bytes, data: bytes) -> str:
    """A refused global request in words: ``remote port forwarding (-R) of
    localhost:8080``."""
    name = shown_name(request_type)
    try:
        if request_type in (b"tcpip-forward", b"cancel-tcpip-forward"):
            address, rest = common.getNS(data)
            (port,) = struct.unpack(">L", rest[:4])
            host = shown_name(address) if address else "*"
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            what = "remote port forwarding (-R)" if request_type == b"tcpip-forward" \
                else "cancelling remote port forwarding"
            return f"{what} of {where}"
        if request_type in (b"streamlocal-forward@openssh.com",
                            b"cancel-streamlocal-forward@openssh.com"):
            path = shown_name(common.getNS(data)[0])
            what = "remote socket forwarding (-R)" if not request_type.startswith(b"cancel") \
                else "cancelling remote socket forwarding"
            return f"{what} of {path}"
    except (ValueError, struct.error):
        return f"a malformed {name} request"
    return f"the global request {name}"


class UserTransport(Protocol):
    """What the relay uses of the user's SSH transport (ssh.server's GatewayTransport,
    which is not imported here: it imports this module)."""

    transport: Any
    factory: Any
    avatar: object

    def authenticated(self, conn: UserConnection) -> None: ...

    def who(self) -> str: ...

    def _peer(self) -> str: ...

    def upstream_lost(self, why: str = "", went_away: bool = False,
                      holder_went: bool = False) -> None: ...


class RelayAvatar(conch_avatar.ConchUser):
    """What ssh.server's realm hands Conch for a login: the studio connection that the
    user's :class:`UserConnection` relays to."""

    _log = KeptNamespace("studios_gateway.ssh.server")  # ConchUser's, named as it was

    def __init__(self, identity: Identity, upstream: UpstreamConnection):
        super().__init__()
        self.identity = identity
        self.upstream = upstream


class RelayChannel(FlowChannel):
    """One half of a relayed channel; its peer is the other connection's half."""

    _log = _conch_log

    def __init__(self, relay: Relay, **kw: Any):
        super().__init__(window=relay.window, **kw)
        self.relay = relay
        self.peer: RelayChannel | None = None
        self.counted = False  # counted as an open channel (the user's half)
        self.sftp = False  # the user's half of a channel the user asked sftp on
        #: The user's half: the client has sent its EOF or CLOSE, so it sends nothing more
        #: on this channel; until the studio's side has closed too it is "closing".
        self.client_done = False

    def dataReceived(self, data: bytes) -> None:
        self.relay.count(self, len(data))
        if self.peer is not None:
            self.peer.write(data)
        else:
            self.consumed(len(data))

    def extReceived(self, dataType: int, data: bytes) -> None:
        self.relay.count(self, len(data))
        if self.peer is not None:
            self.peer.writeExtended(dataType, data)
        else:
            self.consumed(len(data))

    def sent(self, n: int) -> None:
        # Our peer's data left towards our side's client: our peer may take more.
        if self.peer is not None:
            self.peer.consumed(n)

    def handle_request(self, request: bytes, data: bytes, want_reply: bool) -> Any:
        if self.peer is None:
            return False
        if request == b"auth-agent-req@openssh.com" and self.relay.user_side(self):
            self.relay.agent_requested = True
        if (request == b"subsystem" and data == common.NS(b"sftp")
                and self.relay.user_side(self)):
            self.sftp = True
        return self.peer.send_request(request, data, want_reply)

    def eofReceived(self) -> None:
        if self.relay.user_side(self):
            self.client_done = True
        if self.sftp:
            # An SFTP client's EOF ends its session: it asks nothing more, and replies
            # still on their way are not for it (OpenSSH's sftp-server drops its unsent
            # replies at EOF too). They are dropped here, so that the studio's exit
            # status, EOF and close reach the client at once: an OpenSSH ssh whose scp or
            # sftp died discards what it had buffered without re-opening its window (it
            # tells only an OpenSSH server so, with eow@openssh.com), then waits for our
            # close; behind those replies, it waited for ever.
            self.discard_output()
        if self.peer is not None:
            self.peer.send_eof()

    def closeReceived(self) -> None:
        if self.relay.user_side(self):
            self.client_done = True
        super().closeReceived()
        if self.peer is not None:
            self.peer.loseConnection()

    def closed(self) -> None:
        super().closed()
        if self.counted:
            self.counted = False
            self.relay.channel_count(-1)
        relay = self.relay
        relay.closing_at_studio.discard(self)
        peer, self.peer = self.peer, None
        if peer is not None:
            peer.peer = None
            if relay.user_side(self):
                # Closed at the user's end first: the studio's half still holds a slot,
                # as "closing", until the studio has closed it too (data queued for the
                # studio goes first).
                relay.closing_at_studio.add(peer)
            peer.loseConnection()


def _pair(a: RelayChannel, b: RelayChannel) -> None:
    a.peer, b.peer = b, a


class Relay:
    """The two connections of one login and the rules for what crosses between them."""

    def __init__(self, window: int):
        self.window = window
        self.user: UserConnection | None = None
        self.studio: UpstreamConnection | None = None
        self.agent_requested = False
        self.meter: Any = None  # traffic meter: channel data from and to the user
        self.on_channels: Callable[[int], Any] | None = None  # open channels +1 / -1
        #: The session's bandwidth cap: pace(n) -> seconds to stop reading (and a clock).
        self.pace: Callable[[int], float] | None = None
        self.clock: Any = None
        self._pacers: dict[bool, Pacer] = {}
        #: The studio's halves of channels already closed at the user's end.
        self.closing_at_studio: set[RelayChannel] = set()

    def count(self, channel: RelayChannel, n: int) -> None:
        meter = self.meter
        from_user = channel.conn is self.user
        if meter is not None:
            if from_user:
                meter.inbound(n)
            else:
                meter.outbound(n)
        if self.pace is not None:
            delay = self.pace(n)
            if delay > 0:
                self._pacer(from_user).hold(delay)

    def _pacer(self, user_side: bool) -> Pacer:
        """Pauses reading the user's connection, or the studio's stream, for a while."""
        pacer = self._pacers.get(user_side)
        if pacer is None:
            conn = self.user if user_side else self.studio
            assert conn is not None
            ssh_transport: Any = conn.transport  # the SSH transport over the TCP one
            pacer = self._pacers[user_side] = Pacer(Gate(ssh_transport.transport), self.clock)
        return pacer

    def stop_pacing(self) -> None:
        for pacer in self._pacers.values():
            pacer.cancel()

    def channel_count(self, delta: int) -> None:
        if self.on_channels is not None:
            self.on_channels(delta)

    def user_side(self, channel: RelayChannel) -> bool:
        return channel.conn is self.user

    def open_towards_studio(self, channel_type: bytes, data: bytes) -> Deferred[RelayChannel]:
        """A user opened a channel: open its twin at the studio; fire with the user half."""
        if channel_type not in USER_CHANNELS:
            raise OpenRefused(OPEN_UNKNOWN_CHANNEL_TYPE,
                              f"{channel_type.decode('latin-1')} channels are not offered")
        assert self.studio is not None
        return self._open(channel_type, data, self.studio)

    def open_towards_user(self, channel_type: bytes, data: bytes) -> Deferred[RelayChannel]:
        """The studio opened a channel (an agent connection): open its twin at the user."""
        if channel_type != AGENT_CHANNEL:
            raise OpenRefused(OPEN_ADMINISTRATIVELY_PROHIBITED,
                              f"{channel_type.decode('latin-1')} channels are not relayed")
        if not self.agent_requested:
            raise OpenRefused(OPEN_ADMINISTRATIVELY_PROHIBITED, "agent forwarding not requested")
        user = self.user
        if user is None:
            raise OpenRefused(OPEN_CONNECT_FAILED, "no user connection")
        refusal = user.open_refusal()
        if refusal is not None:
            raise OpenRefused(OPEN_RESOURCE_SHORTAGE, refusal)
        return self._open(channel_type, data, user)

    def _open(self, channel_type: bytes, data: bytes,
              far: FlowConnection) -> Deferred[RelayChannel]:
        near_half = RelayChannel(self)
        far_half = RelayChannel(self, name=channel_type)
        far.openChannel(far_half, data)

        def opened(_: Any) -> RelayChannel:
            _pair(near_half, far_half)
            if far is self.studio:  # a user's channel
                near_half.counted = True
                self.channel_count(1)
            return near_half

        def failed(f: Failure) -> Any:  # raises OpenRefused
            value = f.value
            if isinstance(value, conch_error.ConchError):
                why, code = value.args[0], value.args[1] if len(value.args) > 1 else 2
                if isinstance(why, int):
                    why, code = code, why
                why = why.decode("utf-8", "replace") if isinstance(why, bytes) else str(why)
                raise OpenRefused(int(code), why)
            raise OpenRefused(OPEN_CONNECT_FAILED, f.getErrorMessage())

        return far_half.opened.addCallbacks(opened, failed)


class UserConnection(FlowConnection):
    """ssh-connection towards the user."""

    _log = _conch_log

    # Set by Conch before the service starts: this connection's GatewayTransport.
    transport: Any

    _refused_global = 0

    def serviceStarted(self) -> None:
        super().serviceStarted()
        t: UserTransport = self.transport
        # A client that advertises a large window and then does not read its socket
        # would otherwise have the studio's output pile up in our send buffer (GiBs in
        # seconds); held, it waits in the channels' queues, bounded by their windows.
        t.transport.registerProducer(self, True)
        self.max_channels = t.factory.settings.max_conn_channels
        avatar = t.avatar
        assert isinstance(avatar, RelayAvatar)  # our realm makes no other kind
        self.relay = avatar.upstream.relay
        self.relay.user = self
        t.authenticated(self)

    def open_channel(self, channel_type: bytes, window: int, max_packet: int,
                     data: bytes) -> Any:
        return self.relay.open_towards_studio(channel_type, data)

    def channels_held(self) -> tuple[int, int]:
        """(in use, closing): channels the client may still send on, opens not answered
        yet included; and channels the client has finished with (its EOF or CLOSE sent:
        an `ssh -L` whose local connection ended) whose studio side has not closed yet."""
        in_use, closing = self._opening, len(self.relay.closing_at_studio)
        for channel in self.channels.values():
            if getattr(channel, "client_done", False):
                closing += 1
            else:
                in_use += 1
        return in_use, closing

    def open_refusal(self) -> str | None:
        """CONNECT_SSH_MAX_CONN_CHANNELS counts the channels in use. A channel the client
        has finished with no longer does (OpenSSH closes a -L channel only once the
        studio's end has answered its EOF, a round trip through the studio after the
        local connection ended), but it still holds a socket at the studio and
        queued data here until both ends have closed it: all of them together are
        bounded at HELD_CHANNELS_FACTOR times the limit."""
        limit = self.max_channels
        if limit is None:
            return None
        in_use, closing = self.channels_held()
        if in_use >= limit:
            return self.channel_limit_message()
        if in_use + closing >= HELD_CHANNELS_FACTOR * limit:
            return (f"too many channels on this connection, counting {closing} still "
                    f"closing at the studio (limit {HELD_CHANNELS_FACTOR * limit})")
        return None

    def gotGlobalRequest(self, requestType: bytes, data: bytes) -> Any:
        # keepalive@openssh.com gets its (failure) reply, as from OpenSSH's sshd; and
        # no-more-sessions@openssh.com wants none. The rest is refused with one log line
        # each (a few per connection): the failure reply carries no text, so the user
        # reads only OpenSSH's own "remote port forwarding failed for listen port N".
        if requestType not in QUIET_GLOBAL_REQUESTS:
            self._refused_global += 1
            if self._refused_global <= LOGGED_GLOBAL_REQUESTS:
                t: UserTransport = self.transport
                log.info("SSH: refused {what} for {who} from {peer}: not offered by the "
                         "gateway", what=describe_global_request(requestType, data),
                         who=t.who(), peer=t._peer())
        return 0

    def serviceStopped(self) -> None:
        super().serviceStopped()
        self.relay.user = None


class UpstreamConnection(FlowConnection):
    """ssh-connection towards the studio."""

    _log = _conch_log

    def __init__(self, relay: Relay, ready: Deferred[UpstreamConnection]):
        super().__init__()
        self.relay = relay
        self._ready = ready

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.relay.studio = self
        # Before any of the user's channels: where the user came from, for the
        # studio's SSH_CONNECTION and SSH_CLIENT (studios_gateway.ssh.client_address).
        client = getattr(self.transport, "client", None)
        if client is not None:
            self.sendGlobalRequest(CLIENT_ADDRESS, client.encode())
        if not self._ready.called:
            self._ready.callback(self)

    def open_channel(self, channel_type: bytes, window: int, max_packet: int,
                     data: bytes) -> Any:
        return self.relay.open_towards_user(channel_type, data)

    def serviceStopped(self) -> None:
        super().serviceStopped()
        self.relay.studio = None


class UpstreamAuth(userauth.SSHUserAuthClient):
    """Logs in to the studio with the gateway's host key."""

    _log = _conch_log
    preferredOrder = [b"publickey"]

    def __init__(self, user: str, key: keys.Key, conn: UpstreamConnection):
        super().__init__(user.encode("utf-8"), conn)
        self._key = key
        self._offered = False

    def getPublicKey(self) -> keys.Key | None:
        if self._offered:
            return None
        self._offered = True
        return self._key.public()

    def getPrivateKey(self) -> Deferred[keys.Key]:
        return defer.succeed(self._key)

    def getPassword(self, prompt: Any = None) -> None:
        return None


class _TunnelLostFirst(ConnectionError):
    """The studio's tunnel was lost before its SSH server let the gateway in."""


class UpstreamTransport(PacketFraming, transport.SSHClientTransport):
    """The gateway's SSH client, over a tunnel stream, towards the studio."""

    _log = _conch_log
    ourVersionString = VERSION

    def __init__(self, user: str, key: keys.Key, ready: Deferred[UpstreamConnection],
                 user_transport: UserTransport):
        super().__init__()
        self.supportedKeyExchanges = _supported([b"curve25519-sha256"] + KEX,
                                                self.supportedKeyExchanges)
        self.supportedCiphers = INNER_CIPHERS
        self.supportedMACs = MACS
        self.supportedCompressions = [b"none"]
        self.supportedPublicKeys = _supported(HOST_KEY_ALGORITHMS, self.supportedPublicKeys)
        self.relay = Relay(user_transport.factory.settings.window)
        self._user = user
        self._key = key
        self._ready = ready
        self._user_transport: UserTransport | None = user_transport
        tcp = user_transport.transport
        #: The user's address and the gateway's they connected to, told to the studio.
        self.client = ClientAddress.of(tcp.getPeer(), tcp.getHost()) if tcp else None

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> Deferred[bool]:
        # The studio is reached through its authenticated tunnel; its SSH host key is
        # ephemeral. The studio, in turn, pins the gateway's key.
        return defer.succeed(True)

    def connectionSecure(self) -> None:
        conn = UpstreamConnection(self.relay, self._ready)
        self.requestService(UpstreamAuth(self._user, self._key, conn))

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        if not self._ready.called:
            # The studio's words, shown escaped: they reach the log line of the refusal
            # (a line break in them began a line of the studio's making) and the user.
            self._ready.errback(Refused(
                "the studio refused the gateway: "
                + shown(description, MAX_STUDIO_WORDS, words=True), kind="studio_failed"))

    def user_gone(self) -> None:
        self._user_transport = None
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        why = broke(reason)
        if not self._ready.called:
            self._ready.errback(_TunnelLostFirst(why) if tunnel_lost(reason, self.transport)
                                else ConnectionError(why or "the studio closed the stream"))
        user, self._user_transport = self._user_transport, None
        if user is not None:
            went = bool(why) and going_away(self.transport)
            # Through another node (a peer stream, whose reset means a lost tunnel), the
            # link going away is that node's: it stopped (drained, killed), not the studio.
            user.upstream_lost(why, went_away=went,
                               holder_went=went and bool(getattr(self.transport,
                                                                 "RESET_IS_LOST", False)))
