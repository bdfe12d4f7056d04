"""The gateway's SSH proxy: ``ssh alice@<session-id>@gateway -p 2222``.

A user's connection is authenticated here (public key against the user's
registered keys, then the session checks), and only then does the gateway open
a tunnel stream to the studio and run an SSH *client* over it, logging in to
the studio's in-process SSH server with the gateway's host key. The user's
USERAUTH_SUCCESS is sent once the studio has accepted the gateway; from then on
every channel and channel request is relayed both ways with flow control
(:mod:`studios_gateway.ssh.channels`).

Refusals say why, in a userauth banner (which OpenSSH prints) and in the
disconnect reason: not a ``user@session`` name, unknown session, not allowed,
SSH disabled for the session, studio not connected. A wrong key gets the usual
``Permission denied (publickey)``, and nothing about sessions is revealed before
the key has been proven.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from twisted.conch import avatar as conch_avatar
from twisted.conch import error as conch_error
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import common, connection, factory, keys, transport, userauth
from twisted.cred import credentials
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from studios_gateway.away import fetch_away, restart_where
from studios_gateway.durations import format_setting
from studios_gateway.http.flow import Gate, Pacer
from studios_gateway.registry.base import SessionRecord, SessionRecords, StoreUnavailable
from studios_gateway.shown import shown
from studios_gateway.ssh.channels import (
    OPEN_ADMINISTRATIVELY_PROHIBITED,
    OPEN_CONNECT_FAILED,
    OPEN_RESOURCE_SHORTAGE,
    OPEN_UNKNOWN_CHANNEL_TYPE,
    WINDOW,
    FlowChannel,
    FlowConnection,
    OpenRefused,
    conch_log,
)
from studios_gateway.ssh.framing import GCM_CIPHERS, PacketFraming
from studios_gateway.ssh.keys import KeysUnavailable, UserKeys, fingerprint
from studios_gateway.ssh.policy import (
    ConnectionLimiter,
    LoginName,
    MaxStartups,
    Refused,
    StartupLimiter,
    parse_login,
    shown_name,
)
from studios_gateway.traffic.facts import SSH, Finished
from studios_gateway.waiters import EmptyWaiters
from studios_gateway.wire.mux import broke, going_away, tunnel_lost
from studios_gateway.wire.sockopts import bulk_buffers

__all__ = [
    "CIPHERS",
    "INNER_CIPHERS",
    "KEX",
    "MACS",
    "GatewaySSHFactory",
    "SSHSettings",
    "default_authorize",
]

log = Logger(namespace="studios_gateway.ssh")

#: Key exchanges, best first; all are in OpenSSH 9's defaults (mlkem from 9.9).
KEX = [b"mlkem768x25519-sha256", b"curve25519-sha256", b"curve25519-sha256@libssh.org",
       b"ecdh-sha2-nistp256", b"ecdh-sha2-nistp384", b"ecdh-sha2-nistp521"]
#: Offered to users. OpenSSH takes the first of its own list we have: aes128-ctr by
#: default (it lists CTR before GCM); GCM is there for clients that ask for it.
CIPHERS = [b"aes128-ctr", b"aes256-ctr", b"aes192-ctr", *GCM_CIPHERS]
#: Gateway -> studio, where we choose (the client's order wins): GCM first, one AEAD
#: call per packet instead of CTR + HMAC; CTR still agreed with an older studio.
INNER_CIPHERS = [*GCM_CIPHERS, b"aes128-ctr", b"aes256-ctr", b"aes192-ctr"]
MACS = [b"hmac-sha2-256", b"hmac-sha2-512"]
HOST_KEY_ALGORITHMS = [b"ssh-ed25519", b"ecdsa-sha2-nistp256", b"ecdsa-sha2-nistp384",
                       b"ecdsa-sha2-nistp521", b"rsa-sha2-512", b"rsa-sha2-256"]
VERSION = b"SSH-2.0-studios_gateway"
#: Read size and send size (Twisted's: 64 KiB and 128 KiB) on a user's connection.
USER_BUFFER = 512 * 1024
MSG_USERAUTH_BANNER = 53
#: The next step of a refusal for a studio that may connect within seconds (starting, or
#: its tunnel just broke): the browser's page reloads by itself, ssh does not.
SSH_AGAIN = "Try ssh again in a minute."
DISCONNECT_TOO_MANY_CONNECTIONS = 12
#: Fingerprints of refused keys named in a connection's refusal line (then "and N more").
SHOWN_KEYS = 5
#: At most this many characters of a peer's own words (an SSH DISCONNECT's description)
#: are shown in a log line.
MAX_STUDIO_WORDS = 200
#: Refused global requests (-R ...) logged per connection; the rest are refused quietly.
LOGGED_GLOBAL_REQUESTS = 5
#: A connection's channels not yet closed at both ends (those the client has finished
#: with but the studio's side is still closing included) are at most this many times
#: CONNECT_SSH_MAX_CONN_CHANNELS, which counts only the channels in use.
HELD_CHANNELS_FACTOR = 2

#: A logged-in client silent for this long is asked for a sign of life (a keepalive
#: request, which every SSH client answers), and again at this interval; see
#: SSHSettings.client_timeout.
CLIENT_PROBE_EVERY = 60.0
KEEPALIVE = b"keepalive@openssh.com"

#: Errors parsing a connection message (too short, a reply nobody asked for): the
#: client's fault, not ours.
MALFORMED = (struct.error, IndexError, ValueError, TypeError)
#: ssh-connection's messages start here (RFC 4250); below are the transport's and the login's.
FIRST_CONNECTION_MESSAGE = 80

#: Global requests refused without a log line: keepalives, and a notice with no reply.
QUIET_GLOBAL_REQUESTS = {KEEPALIVE, b"no-more-sessions@openssh.com"}

#: Channel types a user may open; the studio may open only agent channels back.
USER_CHANNELS = {b"session", b"direct-tcpip"}
AGENT_CHANNEL = b"auth-agent@openssh.com"

#: authorize(user, record) -> True, or False / a reason the user reads.
Authorize = Callable[[str, SessionRecord], "Deferred[bool | str] | bool | str"]
#: dial(session_id, protocol): attach `protocol` to a new SSH stream to the studio;
#: False (or a Deferred of False) when this node holds no tunnel for the session.
Dial = Callable[[str, IProtocol], "Deferred[bool] | bool"]
#: track(session_id, user, close) -> untrack: revocation closes live connections.
Track = Callable[[str, str, Callable[[str], Any]], Callable[[], None]]
#: watch_keys(user, key blob, close) -> untrack: removing the key closes the connection.
WatchKeys = Callable[[str, bytes, Callable[[str], Any]], Callable[[], None]]


def _supported(wanted: list[bytes], offered: list[bytes]) -> list[bytes]:
    return [w for w in wanted if w in offered]


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


def default_authorize(user: str, record: SessionRecord) -> bool | str:
    """The owner and the session's allow-list may log in."""
    if user == record.owner or user in record.allowed_users:
        return True
    return f"{user} is not allowed on session {record.id}"


@dataclass(frozen=True)
class SSHSettings:
    #: Logged-in connections (CONNECT_SSH_MAX_CONNECTIONS).
    max_connections: int = 2000
    #: Channels in use per connection (CONNECT_SSH_MAX_CONN_CHANNELS); with those still
    #: closing, HELD_CHANNELS_FACTOR times as many.
    max_conn_channels: int = 30
    #: From accept until logged in (CONNECT_SSH_HANDSHAKE_TIMEOUT).
    handshake_timeout: float = 60.0
    window: int = WINDOW
    #: Connections not logged in yet, with early random drop (CONNECT_SSH_MAX_STARTUPS).
    max_startups: MaxStartups = MaxStartups(10, 30, 100)
    #: From accept until the key exchange is done (CONNECT_SSH_KEX_TIMEOUT).
    kex_timeout: float = 10.0
    #: A logged-in connection whose client has sent nothing for this long is closed
    #: (CONNECT_SSH_CLIENT_TIMEOUT); 0: never. The gateway asks a silent client for a
    #: sign of life every CLIENT_PROBE_EVERY (or a third of this, when shorter).
    client_timeout: float = 15 * 60.0
    #: Where a user starts a studio again (PLATFORM_URL; None: named, not linked), in the
    #: refusal for a studio not connected.
    platform_url: str | None = None


# Authentication -------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    login: LoginName
    key_fingerprint: str
    key_blob: bytes = b""


@implementer(ICredentialsChecker)
class UserKeyChecker:
    """Public-key check against the user's keys (registered, or the Platform's).

    When the keys cannot be looked up (registry or Platform down) the key is
    refused like an unknown one, so the client goes on with its other keys, and
    `notice` tells the user why (once per connection)."""

    credentialInterfaces = (credentials.ISSHPrivateKey,)

    def __init__(self, user_keys: UserKeys, notice: Callable[[str], Any] = lambda _: None,
                 not_accepted: Callable[[str], Any] = lambda _: None):
        self.user_keys = user_keys
        self.notice = notice
        #: not_accepted(fingerprint): an offered key that did not let the user in.
        self.not_accepted = not_accepted
        self._noticed = False

    # Our avatar ids are Identity objects (user, session, key), not the bytes Conch's
    # interface names: a real boundary between Conch's portal and the gateway.
    def requestAvatarId(self, creds: Any) -> Deferred[Identity]:  # type: ignore[override]
        return Deferred.fromCoroutine(self._check(creds))

    async def _check(self, creds: Any) -> Identity:
        login = parse_login(creds.username)  # Refused(kind="usage") says how to log in
        try:
            offered = keys.Key.fromString(creds.blob)
        except Exception:
            raise UnauthorizedLogin("unreadable key") from None
        try:
            known = await self.user_keys.accepts(login.user, offered)
        except KeysUnavailable as e:
            if not self._noticed:
                self._noticed = True
                self.notice(str(e))
            self.not_accepted(fingerprint(offered))
            raise UnauthorizedLogin("keys unavailable") from None
        if not known:
            self.not_accepted(fingerprint(offered))
            raise UnauthorizedLogin("key not registered for this user")
        if creds.signature is None:
            raise conch_error.ValidPublicKey()
        if not offered.verify(creds.signature, creds.sigData):
            self.not_accepted(fingerprint(offered))
            raise UnauthorizedLogin("bad signature")
        return Identity(login, fingerprint(offered), offered.blob())


class RelayAvatar(conch_avatar.ConchUser):
    def __init__(self, identity: Identity, upstream: UpstreamConnection):
        super().__init__()
        self.identity = identity
        self.upstream = upstream


@implementer(IRealm)
class SessionRealm:
    """After the key: the session checks, then the studio connection."""

    def __init__(self, factory: GatewaySSHFactory, transport: GatewayTransport):
        self.factory = factory
        self.transport = transport

    def requestAvatar(  # type: ignore[override]  # the avatar id is an Identity (above)
            self, avatar_id: Identity, mind: Any, *interfaces: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._login(avatar_id))

    async def _login(self, identity: Identity) -> tuple[Any, Any, Callable[[], None]]:
        f, login = self.factory, identity.login
        sid, user = login.session_id, login.user
        self.transport.identity = identity  # for the access log, also when refused
        if not self.transport.logged_in():
            raise Refused("the gateway has too many SSH connections; try again later",
                          kind="too_many_connections")
        try:
            record = await defer.maybeDeferred(f.store.get, sid)
        except StoreUnavailable:
            raise Refused("the session registry is unavailable; try again shortly",
                          kind="unavailable") from None
        if record is None:
            raise Refused(f"there is no session {sid} (check the session id)",
                          kind="unknown_session")
        verdict = await defer.maybeDeferred(f.authorize, user, record)
        if verdict is not True:
            reason = verdict if isinstance(verdict, str) and verdict else (
                f"{user} is not allowed on session {sid}")
            raise Refused(reason, kind="not_allowed")
        self.transport.tool = record.tool
        if not record.ssh_enabled:
            raise Refused(f"SSH is not enabled for session {sid}", kind="ssh_disabled")
        upstream = await self.transport.connect_studio(identity)
        avatar = RelayAvatar(identity, upstream)
        return IConchUser, avatar, lambda: None


class GatewayUserAuth(userauth.SSHUserAuthServer):
    # Set by Conch before the service starts: this connection's GatewayTransport.
    transport: Any
    _log = conch_log
    attemptsBeforeDisconnect = 6

    def serviceStarted(self) -> None:
        # Conch's version reads factory.portal and starts its own login timer; ours has a
        # portal per connection (the realm dials this connection's studio), and the
        # transport's handshake timeout governs.
        self.authenticatedWith = []
        self.loginAttempts = 0
        self.user = None
        self.nextService = None
        self._cancelLoginTimeout = None  # type: ignore[assignment]  # Conch: None = no timer
        t = self.transport
        self.portal = Portal(SessionRealm(t.factory, t),
                             [UserKeyChecker(t.factory.user_keys, notice=t.keys_unavailable,
                                             not_accepted=t.key_not_accepted)])
        self.supportedAuthentications = [b"publickey"]

    def ssh_USERAUTH_REQUEST(self, packet: bytes) -> Any:
        self.transport.login_attempt(common.getNS(packet)[0])
        return super().ssh_USERAUTH_REQUEST(packet)

    def _ebBadAuth(self, reason: Failure) -> None:
        if reason.check(Refused):
            self.transport.refuse(reason.value)
            return
        if (self.method != b"none" and not reason.check(conch_error.IgnoreAuthentication)
                and self.loginAttempts >= self.attemptsBeforeDisconnect):
            # Conch would say "too many bad auths"; an agent holding many keys is the
            # usual cause, and the cure is to name the one key.
            self.transport.too_many_keys(self.attemptsBeforeDisconnect + 1)
            return
        super()._ebBadAuth(reason)


class GatewayTransport(PacketFraming, transport.SSHServerTransport):
    """One user's connection: limits, the handshake timer, the studio link."""

    _log = conch_log
    ourVersionString = VERSION
    factory: GatewaySSHFactory

    def __init__(self) -> None:
        super().__init__()
        self.supportedKeyExchanges = _supported(KEX, self.supportedKeyExchanges)
        self.supportedCiphers = CIPHERS
        self.supportedMACs = MACS
        self.supportedCompressions = [b"none"]
        self._counted = False  # holds a slot of CONNECT_SSH_MAX_CONNECTIONS (logged in)
        self.starting = False  # holds a slot of CONNECT_SSH_MAX_STARTUPS (not logged in)
        self._timer: Any = None
        self._kex_timer: Any = None
        self._untrack: list[Callable[[], None]] = []
        self.upstream: UpstreamTransport | None = None
        self.identity: Identity | None = None
        self.closing = False
        self._got_bytes = False
        self._heard_at = 0.0  # when the client last sent anything
        self._note_heard = False  # CONNECT_SSH_CLIENT_TIMEOUT is on: note _heard_at per read
        self._alive_timer: Any = None  # the client-silence check, once logged in
        self._user_conn: UserConnection | None = None
        self._started = 0.0
        self._refusal = ""  # why this connection was refused, for the access log
        self._ended = ""  # why the gateway ended it (the first disconnect reason it sent)
        self.login_name: bytes | None = None  # the last login name the client gave
        self._not_accepted: list[str] = []  # fingerprints of offered keys not accepted
        self._more_keys = 0  # ... and how many more than SHOWN_KEYS
        self._keys_problem = ""  # the users' keys could not be looked up: why
        self.meter: Any = None  # the traffic meter, once logged in
        self.tool = ""  # the session's tool, once its record was read
        self.relaying = False  # logged in: the studio accepted the gateway
        self.tried_login = False

    def connectionMade(self) -> None:
        super().connectionMade()
        f = self.factory
        f.connections.add(self)
        self._started = f.clock.seconds()
        self._note_heard = f.settings.client_timeout > 0
        if hasattr(self.transport, "setTcpNoDelay"):  # as OpenSSH does: keystrokes go now
            self.transport.setTcpNoDelay(True)
        # Bulk reads and sends of up to USER_BUFFER: a scp moves 4x fewer syscalls.
        bulk_buffers(self.transport, USER_BUFFER)
        self._timer = f.clock.callLater(f.settings.handshake_timeout, self._timed_out)
        self._kex_timer = f.clock.callLater(f.settings.kex_timeout, self._kex_timed_out)

    # Logging in ----------------------------------------------------------------------

    def login_attempt(self, name: bytes) -> None:
        """The client asked to log in (any method) as `name`."""
        self.tried_login = True
        self.login_name = name

    def key_not_accepted(self, fp: str) -> None:
        """An offered key was not accepted (not registered, or not checkable now)."""
        if fp in self._not_accepted:
            return
        if len(self._not_accepted) < SHOWN_KEYS:
            self._not_accepted.append(fp)
        else:
            self._more_keys += 1

    def keys_unavailable(self, message: str) -> None:
        """The user's keys cannot be looked up now: tell the user (once) and remember."""
        self._keys_problem = message
        self.banner(message)

    def login(self) -> LoginName | None:
        """The user and session this connection is (or tried to be) logged in as."""
        if self.identity is not None:
            return self.identity.login
        if self.login_name is None:
            return None
        try:
            return parse_login(self.login_name)
        except Refused:
            return None

    def who(self) -> str:
        """For log lines: ``user@session``, else the login name as given, else ``?``."""
        login = self.login()
        if login is not None:
            return shown_name(str(login))
        return shown_name(self.login_name) if self.login_name is not None else "?"

    def _no_login(self, keys: bool) -> str:
        """Why a connection that tried to log in never did (no refusal of ours): with
        `keys`, the fingerprints of the keys offered."""
        if self._keys_problem:
            why = self._keys_problem
        elif self._not_accepted:
            why = "no accepted key"
            if keys:
                more = f" and {self._more_keys} more" if self._more_keys else ""
                why += f" (offered {', '.join(self._not_accepted)}{more})"
        else:
            why = "no key offered"
        return f"{why}; {self._ended}" if self._ended else why

    def logged_in(self) -> bool:
        """The user's key is accepted: from a startup slot to a connection slot (False
        when CONNECT_SSH_MAX_CONNECTIONS are logged in already)."""
        f = self.factory
        self._end_startup()
        if self._counted:
            return True
        if not f.limiter.acquire():
            log.warn("SSH: refusing {peer}: {live} connections logged in "
                     "(CONNECT_SSH_MAX_CONNECTIONS={limit})", peer=self._peer(),
                     live=f.limiter.live, limit=f.limiter.limit)
            return False
        self._counted = True
        return True

    def _end_startup(self) -> None:
        if self.starting:
            self.starting = False
            self.factory.startups.release()

    def ssh_NEWKEYS(self, packet: bytes) -> None:
        super().ssh_NEWKEYS(packet)
        if self._kex_timer is not None and self._kex_timer.active():
            self._kex_timer.cancel()
        self._kex_timer = None

    def _kex_timed_out(self) -> None:
        self._kex_timer = None
        log.info("SSH: {peer} did not finish the key exchange within {t:g}s; disconnecting",
                 peer=self._peer(), t=self.factory.settings.kex_timeout)
        self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR,
                            b"key exchange timed out (the gateway allows %gs)"
                            % self.factory.settings.kex_timeout)

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        if self.closing:
            return  # we have said goodbye: the rest of what the client sent is not acted on
        try:
            super().dispatchMessage(messageNum, payload)
        except MALFORMED as e:
            if messageNum < FIRST_CONNECTION_MESSAGE:
                raise  # the transport's and the login's own messages: Conch's handling
            self.malformed(messageNum, e)

    def malformed(self, message: int, error: Exception) -> None:
        """The client sent a connection message too short to parse, or a reply nobody
        asked for: one line in the log, a protocol-error disconnect naming the message
        for the client; before, a traceback in the log and a close without a word."""
        name = connection.messages.get(message, f"message {message}")
        log.info("SSH: {who} from {peer} sent a malformed or unexpected {name} ({why}); "
                 "disconnecting", who=self.who(), peer=self._peer(), name=name,
                 why=str(error) or type(error).__name__)
        self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR,
                            f"malformed or unexpected {name}".encode())

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        # A client saying goodbye (code 11, "disconnected by user") is not an error.
        log.debug("SSH: {peer} disconnected ({code}: {why})", peer=self._peer(),
                  code=reasonCode, why=shown(description, MAX_STUDIO_WORDS, words=True))

    def _peer(self) -> str:
        peer = self.transport.getPeer()
        return f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"

    def dataReceived(self, data: bytes) -> None:
        self._got_bytes = True
        if self._note_heard:
            self._heard_at = self.factory.clock.seconds()
        super().dataReceived(data)

    # A client gone silent --------------------------------------------------------------

    def _probe_every(self) -> float:
        return min(CLIENT_PROBE_EVERY, self.factory.settings.client_timeout / 3)

    def _watch_client(self) -> None:
        """Logged in: from now on a client silent for CONNECT_SSH_CLIENT_TIMEOUT (a laptop
        closed, a path gone, with no FIN or RST to say so) is disconnected; until then it
        is asked for a sign of life every so often."""
        if self.factory.settings.client_timeout > 0:
            self._heard_at = self.factory.clock.seconds()
            self._alive_timer = self.factory.clock.callLater(self._probe_every(),
                                                             self._check_client)

    def _check_client(self) -> None:
        self._alive_timer = None
        if self.closing or self.transport is None:
            return
        f = self.factory
        limit = f.settings.client_timeout
        silent = f.clock.seconds() - self._heard_at
        if silent >= limit:
            self.client_silent(limit)
            return
        every = self._probe_every()
        conn = self._user_conn
        if silent >= every - 1e-6 and conn is not None and conn.transport is not None:
            # Any packet back (the client's reply, or anything else) counts as heard.
            d = conn.sendGlobalRequest(KEEPALIVE, b"", wantReply=1)
            if d is not None:
                d.addErrback(lambda _: None)  # a failure reply is a reply too
        self._alive_timer = f.clock.callLater(min(every, max(limit - silent, 0.001)),
                                              self._check_client)

    def client_silent(self, limit: float) -> None:
        """Nothing came from the client for `limit` seconds, though asked: it is gone.
        Disconnect (the reason is the access line's; a gone client reads nothing) and
        drop the socket at once: a clean close would wait behind data the client never
        acknowledges, until the kernel gives up retransmitting it."""
        why = (f"nothing heard from the client for {format_setting(limit)} "
               "(CONNECT_SSH_CLIENT_TIMEOUT)")
        log.info("SSH: closing the connection of {who} from {peer}: {why}", who=self.who(),
                 peer=self._peer(), why=why)
        self.sendDisconnect(transport.DISCONNECT_CONNECTION_LOST, why.encode())
        if self.transport is not None:
            self.transport.abortConnection()

    def _timed_out(self) -> None:
        self._timer = None
        log.info("SSH: {peer} did not log in within {t:g}s; disconnecting", peer=self._peer(),
                 t=self.factory.settings.handshake_timeout)
        self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR,
                            b"login timed out (the gateway allows %gs)"
                            % self.factory.settings.handshake_timeout)

    def _cancel_timer(self) -> None:
        for timer in (self._timer, self._kex_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._kex_timer = None

    def _cancel_alive(self) -> None:
        if self._alive_timer is not None and self._alive_timer.active():
            self._alive_timer.cancel()
        self._alive_timer = None

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        if self.closing:
            return
        self.closing = True
        self._ended = desc.decode("utf-8", "replace")  # for the access line
        if self._user_conn is not None:
            # Nothing of the channels' goes after the goodbye (a client that ignored it
            # and read on was sent the studio's output for as long as it read).
            self._user_conn.writes_held = True
        super().sendDisconnect(reason, desc)

    def banner(self, text: str) -> None:
        """Show `text` to the user now (OpenSSH prints userauth banners)."""
        message = f"studios-gateway: {text}"
        self.sendPacket(MSG_USERAUTH_BANNER, common.NS(message.encode() + b"\r\n")
                        + common.NS(b""))

    def too_many_keys(self, tried: int) -> None:
        """The client offered more keys than a login may try (an agent full of keys,
        say), none accepted: tell the user how to offer the right one, and hang up."""
        if self._keys_problem:
            text = self._keys_problem
        else:
            login = self.login()
            whose = f"registered for {login.user}" if login is not None else "registered"
            text = (f"{tried} keys were tried and none is {whose}; offer that one key: "
                    "ssh -i <key file> -o IdentitiesOnly=yes ...")
        self.banner(text)
        self.sendDisconnect(transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
                            text.encode())

    def refuse(self, refusal: Refused) -> None:
        """Tell the user why (banner, then disconnect reason) and hang up."""
        log.info("SSH: refused {who} from {peer}: {why}", who=self.who(), peer=self._peer(),
                 why=refusal.message)
        self._refusal = self._refusal or refusal.message
        self.banner(refusal.message)
        code = {"usage": transport.DISCONNECT_ILLEGAL_USER_NAME,
                "too_many_connections": DISCONNECT_TOO_MANY_CONNECTIONS}.get(
                    refusal.kind, transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE)
        self.sendDisconnect(code, refusal.message.encode())

    # The studio ----------------------------------------------------------------------

    async def connect_studio(self, identity: Identity) -> UpstreamConnection:
        """Dial the studio over the tunnel and log in to its SSH server as the gateway."""
        self.identity = identity
        sid = identity.login.session_id
        ready: Deferred[UpstreamConnection] = Deferred()
        up = UpstreamTransport(identity.login.user, self.factory.host_key, ready, self)
        self.upstream = up
        try:
            ok = await defer.maybeDeferred(self.factory.dial, sid, up)
        except Exception as e:
            log.info("SSH: cannot open a stream to session {sid}: {why}", sid=sid, why=str(e))
            ok = False
        if not ok:
            self.upstream = None
            raise Refused(await self._not_connected(sid), kind="not_connected")
        try:
            return await ready
        except Refused:
            raise
        except _TunnelLostFirst:  # (under the studio's SSH answer: not connected now)
            raise Refused(await self._not_connected(sid), kind="not_connected") from None
        except Exception as e:
            raise Refused(f"the studio of session {sid} did not accept the SSH connection "
                          f"({e})", kind="studio_failed") from None

    async def _not_connected(self, sid: str) -> str:
        """The one line for a studio not connected: which case it is when the registry
        can tell (bounded: studios_gateway.away), else "is it running?". The browser's
        page reloads by itself while the studio may connect within seconds (`soon`);
        ssh does not, so those words end with what to do meanwhile."""
        f = self.factory
        away = await fetch_away(f.store, sid, f.clock, restart_where(f.settings.platform_url),
                                studio=f"the studio of session {sid}")
        if away is None:
            return f"the studio of session {sid} is not connected (is it running?)"
        return f"{away.text} {SSH_AGAIN}" if away.soon else away.text

    def authenticated(self, conn: UserConnection) -> None:
        self._cancel_timer()
        self.relaying = True
        self._user_conn = conn
        self._watch_client()
        identity = self.identity
        assert identity is not None
        log.info("SSH: {who} logged in from {peer} (key {fp})", who=str(identity.login),
                 peer=self._peer(), fp=identity.key_fingerprint)
        if self.factory.track is not None:
            self._untrack.append(self.factory.track(identity.login.session_id,
                                                    identity.login.user, self.revoke))
        if self.factory.watch_keys is not None:
            # KeyWatch logs its own line when it closes a connection.
            self._untrack.append(self.factory.watch_keys(identity.login.user,
                                                         identity.key_blob, self.end_access))
        traffic = self.factory.traffic
        if traffic is not None:
            traffic.metrics.login("ssh", True)
            self.meter = traffic.open(SSH, identity.login.session_id, identity.login.user,
                                      self.stop_data)
            conn.relay.meter = self.meter
            conn.relay.on_channels = traffic.ssh_channels
            throttles, sid = traffic.throttles, identity.login.session_id
            if throttles is not None:
                conn.relay.clock = self.factory.clock
                conn.relay.pace = lambda n: throttles.delay(sid, n)

    def stop_data(self, message: str) -> None:
        """Stop this connection's data (a transfer quota): the user reads `message`."""
        self.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, message.encode())

    def end_access(self, reason: str) -> None:
        """Disconnect with ``access ended: <reason>`` (the caller logs why)."""
        self.sendDisconnect(transport.DISCONNECT_BY_APPLICATION,
                            f"access ended: {reason}".encode())

    def revoke(self, reason: str) -> None:
        """Access to the session ended (revoked, the session ended, SSH turned off): one
        line in the log, then ``access ended: <reason>`` to the user."""
        if self.closing:
            return
        log.info("SSH: closing the connection of {who} from {peer}: {why}", who=self.who(),
                 peer=self._peer(), why=reason)
        self.end_access(reason)

    def upstream_lost(self, why: str = "", went_away: bool = False) -> None:
        """The studio's side ended: closed (its SSH server, the session), went away on
        purpose (`went_away`: its connect client stopping or restarting said GoAway
        first), or broke (``why``: its tunnel lost, say), which the user reads."""
        if not self.closing and self.transport is not None:
            if went_away:
                text = ("the studio's connection went away (the studio stopped or "
                         "restarted); ssh again to reconnect")
            elif why:
                text = f"the connection to the studio broke: {why}"
            else:
                text = "the connection to the studio was closed"
            self.sendDisconnect(transport.DISCONNECT_CONNECTION_LOST, text.encode())

    def _facts(self) -> Finished:
        login = self.login()
        if login is not None:
            user, sid = login.user, login.session_id
        else:
            user, sid = (shown_name(self.login_name) if self.login_name else ""), ""
        peer = self.transport.getPeer() if self.transport is not None else None
        now = self.factory.clock.seconds()
        return Finished(SSH, started=self._started, duration=max(0.0, now - self._started),
                        session_id=sid, subject=user, tool=self.tool,
                        client=str(getattr(peer, "host", "")), method="SSH",
                        reason=self._refusal or self._ended)

    def _report(self) -> None:
        traffic = self.factory.traffic
        if traffic is None:
            return
        if self.meter is not None:
            traffic.close(self.meter, self._facts())
            self.meter = None
        elif self._refusal or self.tried_login:
            traffic.metrics.login("ssh", False)
            facts = self._facts()
            if not self._refusal:
                facts = replace(facts, reason=self._no_login(keys=False))
            traffic.ssh_refused(facts)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._cancel_timer()
        self._cancel_alive()
        self._user_conn = None
        self.factory.forget(self)
        if self.tried_login and self.identity is None and not self._refusal:
            # One line per connection, however many keys it offered.
            log.info("SSH: refused {who} from {peer}: {why}", who=self.who(),
                     peer=self._peer(), why=self._no_login(keys=True))
        self._report()
        self._end_startup()
        if self._counted:
            self._counted = False
            self.factory.limiter.release()
        untrack, self._untrack = self._untrack, []
        for forget in untrack:
            forget()
        if not self._got_bytes:
            log.debug("SSH: {peer} closed without a handshake (health check?)",
                      peer=self._peer())
        up, self.upstream = self.upstream, None
        if up is not None:
            up.relay.stop_pacing()
            up.user_gone()
        super().connectionLost(reason)


class GatewaySSHFactory(factory.SSHFactory):
    """The SSH listener's factory. Every collaborator is a plain argument."""

    protocol = GatewayTransport
    _log = conch_log
    noisy = False

    def __init__(self, *, host_key: keys.Key, user_keys: UserKeys, store: SessionRecords,
                 dial: Dial,
                 authorize: Authorize = default_authorize, settings: SSHSettings | None = None,
                 clock: Any = None, track: Track | None = None,
                 watch_keys: WatchKeys | None = None, traffic: Any = None,
                 random: Callable[[], float] | None = None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.host_key = host_key
        self.user_keys = user_keys
        self.store = store
        self.dial = dial
        self.authorize = authorize
        self.settings = settings or SSHSettings()
        self.clock = clock
        self.track = track
        self.watch_keys = watch_keys
        self.traffic = traffic  # studios_gateway.traffic.observer.Traffic, or None
        self.limiter = ConnectionLimiter(self.settings.max_connections)
        if random is None:
            import random as random_module

            random = random_module.random
        self.startups = StartupLimiter(self.settings.max_startups, random)
        self._crowded = False  # said once per crowd, not once per socket
        self.connections: set[GatewayTransport] = set()
        self._idle = EmptyWaiters()
        self.publicKeys = {host_key.sshType(): host_key.public()}
        self.privateKeys = {host_key.sshType(): host_key}
        self.primes = None
        self.services = {b"ssh-userauth": GatewayUserAuth, b"ssh-connection": UserConnection}

    def buildProtocol(self, addr: Any) -> GatewayTransport | None:  # type: ignore[override]
        # Too many connections not logged in: None closes the socket at accept, before
        # our version line and any key exchange (OpenSSH's MaxStartups does the same).
        if not self.startups.acquire():
            if not self._crowded:
                self._crowded = True
                log.warn("SSH: {n} connections are not logged in yet "
                         "(CONNECT_SSH_MAX_STARTUPS={policy}); closing new ones at random "
                         "until they log in or time out", n=self.startups.live,
                         policy=str(self.startups.policy))
            return None
        if self.startups.live <= self.startups.policy.start // 2:
            self._crowded = False
        t: GatewayTransport = super().buildProtocol(addr)  # type: ignore[assignment]
        t.supportedPublicKeys = _supported(HOST_KEY_ALGORITHMS, t.supportedPublicKeys)
        t.starting = True
        return t

    @property
    def live_connections(self) -> int:
        return self.limiter.live

    def host_key_fingerprint(self) -> str:
        return fingerprint(self.host_key)

    def forget(self, conn: GatewayTransport) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self._idle.fire()

    def when_idle(self) -> Deferred[None]:
        """Fires once no user connection is open (for a graceful drain)."""
        return self._idle.wait(not self.connections)

    def session_changed(self, session_id: str | None) -> Deferred[None]:
        """The registry says a session changed (None: any may have): close the open
        connections to a session whose SSH was turned off. A session that is gone is the
        authorizer's (its tracked connections close with "the session was ended")."""
        by_session: dict[str, list[GatewayTransport]] = {}
        for conn in self.connections:
            if conn.relaying and conn.identity is not None and not conn.closing:
                sid = conn.identity.login.session_id
                if session_id is None or sid == session_id:
                    by_session.setdefault(sid, []).append(conn)
        return defer.gatherResults(
            [Deferred.fromCoroutine(self._recheck_ssh(sid, conns))
             for sid, conns in sorted(by_session.items())],
            consumeErrors=True).addCallback(lambda _: None)

    async def _recheck_ssh(self, session_id: str, conns: list[GatewayTransport]) -> None:
        try:
            record = await defer.maybeDeferred(self.store.get, session_id)
        except StoreUnavailable:
            return  # kept; the next change (or a re-check) decides
        if record is None or record.ssh_enabled:
            return
        for conn in conns:
            conn.revoke(f"SSH was turned off for session {session_id}")

    def disconnect_all(self, reason: str) -> None:
        """Say goodbye to every user connection (the gateway is stopping)."""
        for conn in list(self.connections):
            conn.sendDisconnect(transport.DISCONNECT_BY_APPLICATION, reason.encode())
            if conn.transport is not None:
                conn.transport.loseConnection()


# The relay ---------------------------------------------------------------------------------


class RelayChannel(FlowChannel):
    """One half of a relayed channel; its peer is the other connection's half."""

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

    # Set by Conch before the service starts: this connection's GatewayTransport.
    transport: Any

    _refused_global = 0

    def serviceStarted(self) -> None:
        super().serviceStarted()
        t: GatewayTransport = self.transport
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
                t: GatewayTransport = self.transport
                log.info("SSH: refused {what} for {who} from {peer}: not offered by the "
                         "gateway", what=describe_global_request(requestType, data),
                         who=t.who(), peer=t._peer())
        return 0

    def serviceStopped(self) -> None:
        super().serviceStopped()
        self.relay.user = None


class UpstreamConnection(FlowConnection):
    """ssh-connection towards the studio."""

    def __init__(self, relay: Relay, ready: Deferred[UpstreamConnection]):
        super().__init__()
        self.relay = relay
        self._ready = ready

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.relay.studio = self
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

    _log = conch_log
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

    _log = conch_log
    ourVersionString = VERSION

    def __init__(self, user: str, key: keys.Key, ready: Deferred[UpstreamConnection],
                 user_transport: GatewayTransport):
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
        self._user_transport: GatewayTransport | None = user_transport

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
            user.upstream_lost(why, went_away=bool(why) and going_away(self.transport))
