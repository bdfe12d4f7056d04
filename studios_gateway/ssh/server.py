"""The gateway's SSH proxy: ``ssh alice@<session-id>@gateway -p 2222``.

A user's connection is authenticated here (public key against the user's
registered keys, then the session checks), and only then does the gateway open
a tunnel stream to the studio and run an SSH *client* over it, logging in to
the studio's in-process SSH server with the gateway's host key. The user's
USERAUTH_SUCCESS is sent once the studio has accepted the gateway; from then on
every channel and channel request is relayed both ways with flow control
(:mod:`studios_gateway.ssh.relay`).

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
from studios_gateway.registry.base import SessionRecord, SessionRecords, StoreUnavailable
from studios_gateway.shown import shown
from studios_gateway.ssh.algorithms import (
    CIPHERS,
    HOST_KEY_ALGORITHMS,
    KEX,
    MACS,
    VERSION,
    _supported,
)
from studios_gateway.ssh.channels import WINDOW, conch_log
from studios_gateway.ssh.framing import PacketFraming
from studios_gateway.ssh.keys import KeysUnavailable, UserKeys, fingerprint
from studios_gateway.ssh.policy import (
    MAX_STUDIO_WORDS,
    ConnectionLimiter,
    Identity,
    LoginName,
    MaxStartups,
    Refused,
    StartupLimiter,
    parse_login,
    shown_name,
)
from studios_gateway.ssh.relay import (
    KEEPALIVE,
    RelayAvatar,
    UpstreamConnection,
    UpstreamTransport,
    UserConnection,
    _TunnelLostFirst,
)
from studios_gateway.traffic.facts import SSH, Finished
from studios_gateway.waiters import EmptyWaiters
from studios_gateway.wire.closing import abort_unless_gone
from studios_gateway.wire.sockopts import ack_now, bulk_buffers

__all__ = [
    "GatewaySSHFactory",
    "SSHSettings",
    "default_authorize",
]

log = Logger(namespace="studios_gateway.ssh")

#: Read size and send size (Twisted's: 64 KiB and 128 KiB) on a user's connection.
USER_BUFFER = 512 * 1024
MSG_USERAUTH_BANNER = 53
#: The next step of a refusal for a studio that may connect within seconds (starting, or
#: its tunnel just broke): the browser's page reloads by itself, ssh does not.
SSH_AGAIN = "Try ssh again in a minute."
DISCONNECT_TOO_MANY_CONNECTIONS = 12
#: Fingerprints of refused keys named in a connection's refusal line (then "and N more").
SHOWN_KEYS = 5

#: A logged-in client silent for this long is asked for a sign of life (a keepalive
#: request, which every SSH client answers), and again at this interval; see
#: SSHSettings.client_timeout.
CLIENT_PROBE_EVERY = 60.0

#: Errors parsing a connection message (too short, a reply nobody asked for): the
#: client's fault, not ours.
MALFORMED = (struct.error, IndexError, ValueError, TypeError)
#: ssh-connection's messages start here (RFC 4250); below are the transport's and the login's.
FIRST_CONNECTION_MESSAGE = 80

#: authorize(user, record) -> True, or False / a reason the user reads.
Authorize = Callable[[str, SessionRecord], "Deferred[bool | str] | bool | str"]
#: dial(session_id, protocol): attach `protocol` to a new SSH stream to the studio;
#: False (or a Deferred of False) when this node holds no tunnel for the session.
Dial = Callable[[str, IProtocol], "Deferred[bool] | bool"]
#: track(session_id, user, close) -> untrack: revocation closes live connections.
Track = Callable[[str, str, Callable[[str], Any]], Callable[[], None]]
#: watch_keys(user, key blob, close) -> untrack: removing the key closes the connection.
WatchKeys = Callable[[str, bytes, Callable[[str], Any]], Callable[[], None]]


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
        if self._kex_timer is not None:  # the first key exchange: see ack_now
            ack_now(self.transport)
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
        super().sendDisconnect(reason, desc)  # (and loseConnection)
        if self.transport is not None:
            # A client that reads nothing would keep the connection for good: the close
            # waits behind what is buffered for it (wire/closing.py).
            abort_unless_gone(self.transport, self.factory.clock, "SSH connection")

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

    def upstream_lost(self, why: str = "", went_away: bool = False,
                      holder_went: bool = False) -> None:
        """The studio's side ended: closed (its SSH server, the session), went away on
        purpose (`went_away`: its connect client stopping or restarting said GoAway
        first; `holder_went`: the other gateway node it was reached through stopped,
        drained or killed, while the studio goes on), or broke (``why``: its tunnel
        lost, say), which the user reads."""
        if not self.closing and self.transport is not None:
            if holder_went:
                text = ("the gateway node that held the studio's connection stopped or "
                        "restarted; ssh again to reconnect")
            elif went_away:
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
