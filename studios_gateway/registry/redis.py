"""The shared registry: Redis through txredisapi (several gateway nodes, one truth).

Keys, under the configured prefix (``connect:session`` by default):

- ``<prefix>:<id>``: the session record (JSON);
- ``<prefix>:<id>:tunnel``: the tunnel holder (JSON) with a PX TTL the holding
  node refreshes;
- ``<prefix>:_keys:<user>``: a user's SSH public keys (JSON list of key lines);
  ``_`` never starts a session id, so these never collide with sessions;
- ``<prefix>:_once:<id>``: a spent single-use id (login link, hand-off code),
  set with NX and a PX TTL of the id's remaining lifetime: the first SET wins;
- ``<prefix>:_logout:<login id>``: a login that ended, with a PX TTL of the
  login's lifetime;
- ``<prefix>:_pending:<state>``: an OpenID login between its start and its callback
  (JSON: nonce, PKCE verifier, the page to return to, the browser binding; at most
  MAX_PENDING_LOGIN_BYTES), set with NX and a PX TTL of the login's time limit, taken
  (GET and DEL in one script) by the callback on whichever node it lands;
- ``<prefix>:_node:<node id>``: the settings a node says must agree across the cluster
  (JSON, see :mod:`.node_settings`), with a PX TTL the node refreshes;
- ``<prefix>:_nodes``: the ids of the nodes with such a record (JSON list, at most
  MAX_NODES; each announcement adds its own and drops those found expired), so finding
  them never SCANs the sessions;
- channel ``<prefix>:events``: every change publishes the session id there (a
  change of a user's keys publishes ``keys:<user>``, a logout ``logout:<login
  id>``, a node that starts ``node:<node id>``); all nodes drop their cached copy
  (or end that login, or compare settings) when they hear it.

Claim, refresh, release, create, update and delete are Lua scripts (in
:mod:`.redis_scripts`), so each is one atomic step and a node deletes only a holder
that is still its own.

Two connections: one for commands, one subscribed to the events channel. Both
reconnect forever with backoff (also after AUTH/SELECT failures, which
txredisapi would otherwise give up on), both are PINGed periodically and
dropped when the PING goes unanswered. While the command connection is down
every call fails at once with StoreUnavailable; calls on a live connection are
bounded by `timeout` seconds on `clock`. See docs/decisions/redis-store.md.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import txredisapi
from twisted.internet import defer, task, tcp
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    optionsForClientTLS,
    platformTrust,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from studios_gateway.deadline import within
from studios_gateway.logs import drop_lines
from studios_gateway.registry.base import (
    MAX_PENDING_LOGIN_BYTES,
    MAX_USER_KEYS,
    SINGLE_USE_ID,
    BadUserKeys,
    Invalidation,
    MalformedRecord,
    Refresh,
    SessionExists,
    SessionNotFound,
    SessionRecord,
    StoreUnavailable,
    TunnelHolder,
    check_pending_login,
    check_single_use_id,
    check_user_keys,
    unique_keys,
)
from studios_gateway.registry.memory import Subscribers
from studios_gateway.registry.redis_scripts import (
    ADD_KEYS,
    ADD_TRANSFER,
    ANNOUNCE_NODE,
    BOUNDED_GETS,
    CLAIM,
    CREATE,
    DELETE,
    LOG_OUT,
    MAX_RECORD_BYTES,
    PTTLS,
    REFRESH,
    REFRESHED,
    RELEASE,
    REMOVE_KEYS,
    SET_KEYS,
    TAKE,
    UPDATE,
    WITHDRAW_NODE,
)
from studios_gateway.repeats import Repeats
from studios_gateway.wire.ids import SESSION_ID

#: Prefix of the events that name a user whose keys changed (never a session id).
KEYS_EVENT = "keys:"
#: Prefix of the events that name a login that ended.
LOGOUT_EVENT = "logout:"
#: Prefix of the events that name a node that (re)announced its settings.
NODE_EVENT = "node:"
#: At most this many nodes in the index of nodes' settings records (``<prefix>:_nodes``).
MAX_NODES = 1000

#: Redis errors that mean "not usable right now" rather than "your command is wrong".
_TRANSIENT = ("LOADING", "BUSY", "MASTERDOWN", "READONLY", "NOAUTH", "NOPERM", "WRONGPASS",
              "TRYAGAIN", "CLUSTERDOWN")


def default_node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def parse_address(address: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``host`` (port 6379)."""
    text = address.strip()
    for scheme in ("redis://", "rediss://"):
        if text.startswith(scheme):
            text = text[len(scheme):]
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "6379"
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, "6379"
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"Redis address must be host:port, not {address!r}")
    return host, int(port)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# txredisapi wrappers -----------------------------------------------------------


# txredisapi logs (log.msg) each failed connection set-up, and Twisted's ClientService
# under it each retry it schedules, at every retry (0.5-5 s apart, for ever: a wrong
# password, or a Redis down for a day, wrote ~35,000 lines a day each); _Link says the
# reason itself, once (then once a minute with a count), and when the link is back.
drop_lines("log_legacy", "Redis error: could not auth: ", "Redis error: could not set dbid=",
           "Redis error: could not connect: ")
drop_lines("twisted.application._client_service.ClientService", "Scheduling retry ")


class _Factory(txredisapi.RedisFactory):
    """A txredisapi factory that never stops trying and tells its link about readiness.

    txredisapi calls stopTrying() when AUTH or SELECT fails, which would leave the
    gateway without Redis until restarted (a Redis restarted before its ACL file
    is back, a password rotated in the wrong order). Here the connection is
    dropped and retried with backoff instead.
    """

    noisy = False

    def __init__(self, link: _Link, protocol: type, **kwargs: Any):
        super().__init__(None, kwargs.pop("dbid", None), 1, isLazy=True, **kwargs)
        self.protocol = protocol
        self.link = link

    def stopTrying(self) -> Deferred[None]:
        return defer.succeed(None)

    def connectionError(self, why: str) -> None:
        self.link.handshake_failed(why)

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self.link.connected(conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self.link.lost(conn)


#: Bytes read from a Redis connection per readable event: Twisted's 64 KiB, grown four
#: times over each time a read fills it, up to READ_MAX, and back to it once a read
#: does not. A gateway rebinding thousands of studios has a thousand or more commands
#: in flight and long reactor turns (a TLS handshake's turn is a millisecond each), so
#: at 64 KiB a turn a burst of GET replies took many turns to read, and a PING behind
#: them its 10 s. Not READ_MAX always: CPython allocates the whole size for every
#: recv(), and 1 MiB costs ~10x a 64 KiB recv of a small reply.
READ_MIN, READ_MAX = 64 << 10, 1 << 20


class _Heard:
    """Mixin for the connection's protocol: when Redis last sent anything (the link's
    ``heard``, on the store's clock), which deadlines on the link ask (deadline.within);
    and how much each read takes (:data:`READ_MIN`, :data:`READ_MAX`)."""

    factory: Any
    transport: Any

    def dataReceived(self, data: bytes, *more: Any) -> None:
        if not more:  # (txredisapi calls itself again, with more, for what it held back)
            link = self.factory.link
            link.heard = link.store.clock.seconds()
            if isinstance(self.transport, tcp.Connection):  # (under TLS: left as it is)
                size = self.transport.bufferSize
                if len(data) >= size:
                    self.transport.bufferSize = min(size * 4, READ_MAX)
                elif size > READ_MIN:
                    self.transport.bufferSize = READ_MIN
        super().dataReceived(data, *more)  # type: ignore[misc]


# txredisapi reads replies with hiredis (C) when it is installed, and it is a dependency
# of ours: its own Python reader takes one reactor turn per bulk reply (it pauses the
# connection and reschedules the rest of the read with callLater(0), copying what is
# left each time), so a burst of 2,000 GET replies took ~2,000 turns, each behind every
# TLS handshake that came in that turn; with hiredis, a read's replies are all handled
# in it (docs/decisions/redis-store.md, "Replies read in C").
def reply_parser_missing() -> str | None:
    """What to tell the operator when this install reads Redis's replies in Python
    (check-config prints it, the gateway logs it at start); None: nothing to say."""
    if issubclass(txredisapi.RedisProtocol, txredisapi.HiredisProtocol):
        return None
    return ("hiredis is not installed: Redis replies are read in Python, one reactor turn "
            "each, which slows binds after a restart (pip install hiredis)")


#: hiredis's command packer (C), as txredisapi found hiredis; None without it.
_pack: Callable[[tuple[Any, ...]], bytes] | None = getattr(
    getattr(txredisapi, "hiredis", None), "pack_command", None)


#: The ints given to hiredis (the ones Redis can take at all): hiredis 3.5's packer
#: crashes the process on an int longer than Python's int-to-text limit.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class _Packs:
    """Mixin for the connection's protocol: commands put into Redis's wire format by
    hiredis's ``pack_command`` (C) where txredisapi would give the same bytes: every
    argument text (in UTF-8, strict: the store's charset), bytes or an int of at most
    64 bits. Anything else (a float, which txredisapi writes in fixed point; text it
    cannot encode, which it refuses with its own error) goes to txredisapi's
    ``_build_command``, which made ~4 % of the gateway's CPU per bind in a rebind."""

    charset: str | None
    errors: str

    def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
        if _pack is not None and self.charset == "utf-8" and self.errors == "strict":
            for arg in args:
                kind = type(arg)
                if kind is not str and kind is not bytes and (
                        kind is not int or not _INT_MIN <= arg <= _INT_MAX):
                    break
            else:
                try:
                    return _pack(args)
                except (UnicodeError, ValueError, TypeError):
                    pass  # txredisapi's own error, below
        return super()._build_command(*args, **kwargs)  # type: ignore[misc]


class _Commands(_Packs, _Heard, txredisapi.RedisProtocol):
    def connectionLost(self, why: Failure) -> None:
        self.factory.link.transport_lost(why)
        super().connectionLost(why)


class _Subscriber(_Packs, _Heard, txredisapi.SubscriberProtocol):
    def connectionLost(self, why: Failure) -> None:
        self.factory.link.transport_lost(why)
        super().connectionLost(why)

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.factory.link.message(_text(channel), _text(message))


class _Link:
    """One reconnecting connection to Redis, with its state and a periodic PING."""

    _log = Logger()

    def __init__(self, store: RedisStore, name: str, protocol: type,
                 on_ready: Callable[[Any], Any] | None = None,
                 on_lost: Callable[[], None] | None = None,
                 on_message: Callable[[str, str], None] | None = None):
        self.store = store
        self.name = name
        self.protocol_class = protocol
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.on_message = on_message
        self.factory: _Factory | None = None
        self.conn: Any = None
        self.ready = False
        self.last_error = "not connected yet"
        self._waiters: list[Deferred[None]] = []
        self._failure_waiters: list[Deferred[str]] = []
        self._transport_error: str | None = None
        self._pinger: task.LoopingCall | None = None
        # A refused set-up (wrong password, TLS) recurs at every retry: said once, then
        # once a minute with a count, until the link is up again.
        self._refusals = Repeats(store.clock)
        self.heard = 0.0  # when Redis last sent anything on this link (the store's clock)

    def start(self, endpoint: IStreamClientEndpoint) -> None:
        s = self.store
        self.factory = _Factory(self, self.protocol_class, dbid=s.db, password=s._password,
                                username=s.user, convertNumbers=False, charset="utf-8")
        self.factory.initialDelay, self.factory.maxDelay = s.reconnect_delay
        self.factory.startConnecting(endpoint)
        self._pinger = task.LoopingCall(self._ping)
        self._pinger.clock = s.clock
        self._pinger.start(s.ping_interval, now=False).addErrback(
            lambda f: self._log.failure("{name} PING loop failed", f, name=self.name))

    def stop(self) -> Deferred[Any]:
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        self.ready = False
        if self.factory is None:
            return defer.succeed(None)
        factory, self.factory = self.factory, None
        return factory.disconnect()

    def when_ready(self) -> Deferred[None]:
        if self.ready:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    # Called by the factory / protocol.

    def connected(self, conn: Any) -> None:
        self.conn = conn
        if self.on_ready is not None:
            d = defer.maybeDeferred(self.on_ready, conn)
        else:
            d = defer.succeed(None)

        def ready(_: Any) -> None:
            if self.conn is not conn or not conn.connected:
                return
            if not self.ready:
                self._log.info("Redis {name} connection to {address} is up", name=self.name,
                               address=self.store.address)
            self._refusals.clear()
            self.ready = True
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                w.callback(None)

        def failed(f: Failure) -> None:
            self.last_error = f.getErrorMessage()
            unsaid = self._refusals.due(self.last_error)
            if unsaid is not None:
                self._log.warn("Redis {name} connection set-up failed: {error}{more}",
                               name=self.name, error=self.last_error,
                               more=self._refusals.more(unsaid))
            conn.transport.loseConnection()
            self._tell_failure(self.last_error)

        d.addCallbacks(ready, failed)

    def lost(self, conn: Any) -> None:
        if conn is not self.conn:
            return
        self.conn = None
        was_ready, self.ready = self.ready, False
        self.last_error = "connection lost"
        if was_ready:
            self._log.warn("Redis {name} connection to {address} lost; reconnecting",
                           name=self.name, address=self.store.address)
        if self.on_lost is not None:
            self.on_lost()

    def when_failed(self) -> Deferred[str]:
        """Fires with the reason of the next failed connection set-up (the handshake's
        AUTH/SELECT/TLS, or what follows it: the SUBSCRIBE)."""
        d: Deferred[str] = Deferred()
        self._failure_waiters.append(d)
        return d

    def transport_lost(self, why: Failure) -> None:
        from service_identity import VerificationError

        if why.check(VerificationError):  # signed by a trusted CA, but for another name
            self._transport_error = (
                f"TLS: Redis's certificate does not name {self.store.host} (the host of "
                "CONNECT_REDIS_ADDRESS)")
            return
        self._transport_error = why.getErrorMessage() or type(why.value).__name__

    def handshake_failed(self, why: str) -> None:
        if "Lost connection" in why and self._transport_error:
            if self._transport_error.startswith("TLS: "):
                why = self._transport_error
            else:
                why = f"{why} ({self._transport_error})"
        elif "NOAUTH" in why:  # no AUTH was sent; the failing step named is SELECT's
            why = (f"{why} (Redis asks for a password: set CONNECT_REDIS_PASSWORD, and "
                   "CONNECT_REDIS_USER for an ACL user)")
        self.last_error = why
        unsaid = self._refusals.due(why)
        if unsaid is not None:
            self._log.warn("Redis {name} connection: {why}; will retry{more}", name=self.name,
                           why=why, more=self._refusals.more(unsaid))
        self._tell_failure(why)

    def _tell_failure(self, why: str) -> None:
        waiters, self._failure_waiters = self._failure_waiters, []
        for w in waiters:
            w.callback(why)

    def message(self, channel: str, message: str) -> None:
        if self.on_message is not None:
            self.on_message(channel, message)

    def _heard(self) -> float:
        return self.heard

    def usable(self) -> Any:
        conn = self.conn
        if self.ready and conn is not None and conn.connected:
            return conn
        return None

    def _ping(self) -> None:
        conn = self.usable()
        if conn is None:
            return
        d = within(defer.maybeDeferred(conn.execute_command, "PING"), self.store.timeout,
                   self.store.clock, heard=self._heard, longest=self.store.longest_wait)

        def dead(f: Failure) -> None:
            if self.conn is conn:
                self.last_error = f"PING failed: {f.getErrorMessage() or type(f.value).__name__}"
                self._log.warn("Redis {name} connection: {error}; dropping it", name=self.name,
                               error=self.last_error)
                conn.transport.abortConnection()

        d.addErrback(dead)


# The store ----------------------------------------------------------------------


class RedisStore:
    """A SessionStore in Redis, shared by every gateway node that uses the same prefix."""

    _log = Logger()

    def __init__(self, address: str = "redis:6379", user: str | None = None,
                 password: str | None = None, db: int = 0, prefix: str = "connect:session",
                 tls: bool = False, tls_skip_verify: bool = False,
                 tls_cert_file: str | None = None, tls_key_file: str | None = None,
                 tls_ca_file: str | None = None, clock: IReactorTime | None = None,
                 node_id: str | None = None, *, timeout: float = 2.0,
                 longest_wait: float | None = None,
                 ping_interval: float = 5.0, connect_timeout: float = 5.0,
                 reconnect_delay: tuple[float, float] = (0.5, 5.0)):
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.address = address
        self.host, self.port = parse_address(address)
        self.user = user or None
        self._password = password
        self.db = int(db)
        self.prefix = prefix
        self.tls = tls
        self.tls_skip_verify = tls_skip_verify
        self.tls_cert_file = tls_cert_file
        self.tls_key_file = tls_key_file
        self.tls_ca_file = tls_ca_file
        self.clock: IReactorTime = clock
        self.node_id = node_id or default_node_id()
        # A command fails once Redis has been silent for `timeout` while it waits, and in
        # any case after `longest_wait` (None: deadline.within's default, 5 x `timeout`).
        self.timeout = timeout
        self.longest_wait = longest_wait
        self.ping_interval = ping_interval
        self.connect_timeout = connect_timeout
        self.reconnect_delay = reconnect_delay
        self.channel = f"{prefix}:events"
        self._subscribers = Subscribers()
        self._key_subscribers = Subscribers()
        self._logout_subscribers = Subscribers()
        self._node_subscribers = Subscribers()
        self._nodes_gone: list[str] = []  # in the nodes' index, their records gone
        self._started = False
        if (tls_cert_file is None) != (tls_key_file is None):
            raise ValueError("a Redis TLS client certificate needs both the certificate "
                             "file and the key file")
        self._commands = _Link(self, "command", _Commands)
        self._events = _Link(self, "subscriber", _Subscriber, on_ready=self._subscribe,
                             on_lost=self._events_lost, on_message=self._message)

    def __repr__(self) -> str:
        auth = f", user={self.user!r}" if self.user else ""
        secret = ", password=***" if self._password else ""
        return (f"RedisStore(address={self.address!r}{auth}{secret}, db={self.db}, "
                f"prefix={self.prefix!r}, tls={self.tls})")

    # Lifecycle -------------------------------------------------------------------

    def endpoint(self) -> IStreamClientEndpoint:
        from twisted.internet import reactor

        ep: IStreamClientEndpoint = HostnameEndpoint(reactor, self.host, self.port,
                                                     timeout=self.connect_timeout)
        if self.tls:
            ep = wrapClientTLS(self._tls_options(), ep)
        return ep

    def _tls_options(self) -> Any:
        client: PrivateCertificate | None = None
        if self.tls_cert_file and self.tls_key_file:
            client = PrivateCertificate.loadPEM(
                Path(self.tls_cert_file).read_text() + "\n" + Path(self.tls_key_file).read_text())
        if self.tls_skip_verify:
            # optionsForClientTLS always verifies; an old-style context factory is what
            # TLSMemoryBIOFactory (under wrapClientTLS) accepts for "do not verify".
            kwargs: dict[str, Any] = {"verify": False}
            if client is not None:
                kwargs["certificate"] = client.original
                kwargs["privateKey"] = client.privateKey.original
            return CertificateOptions(**kwargs)
        trust = (Certificate.loadPEM(Path(self.tls_ca_file).read_bytes())
                 if self.tls_ca_file else platformTrust())
        return optionsForClientTLS(self.host, trustRoot=trust, clientCertificate=client)

    def start(self) -> None:
        """Start connecting (in the background; calls fail with StoreUnavailable until
        the connection is up)."""
        if self._started:
            return
        self._started = True
        endpoint = self.endpoint()
        self._commands.start(endpoint)
        self._events.start(endpoint)

    def stop(self) -> Deferred[Any]:
        self._started = False
        return defer.gatherResults([self._commands.stop(), self._events.stop()],
                                   consumeErrors=True).addCallback(lambda _: None)

    def when_connected(self) -> Deferred[None]:
        """Fires when both connections are up (the event subscription included)."""
        return defer.gatherResults([self._commands.when_ready(), self._events.when_ready()],
                                   consumeErrors=True).addCallback(lambda _: None)

    def next_connection_failure(self) -> Deferred[str]:
        """Fires with the reason the next attempt to set up the command connection failed
        (refused AUTH, failed TLS verification, ...)."""
        return self._commands.when_failed()

    def next_subscriber_failure(self) -> Deferred[str]:
        """Fires with the reason the next attempt to set up the subscriber connection
        failed (also a SUBSCRIBE refused for want of the channel right)."""
        return self._events.when_failed()

    @property
    def connected(self) -> bool:
        return self._commands.ready and self._events.ready

    def links_up(self) -> dict[str, bool]:
        """Whether each of this node's two connections to Redis is up, by name."""
        return {self._commands.name: self._commands.ready,
                self._events.name: self._events.ready}

    # Invalidation -----------------------------------------------------------------

    def subscribe(self, callback: Invalidation) -> Callable[[], None]:
        return self._subscribers.add(callback)

    def _subscribe(self, conn: Any) -> Deferred[Any]:
        d = within(conn.subscribe(self.channel), self.timeout, self.clock,
                   heard=self._events._heard, longest=self.longest_wait)
        # Whatever happened while we were not listening is unknown: expire caches.
        return d.addCallback(lambda _: self._events_lost())

    def _events_lost(self) -> None:
        self._subscribers.notify(None)
        self._key_subscribers.notify(None)
        self._logout_subscribers.notify(None)
        self._node_subscribers.notify(None)

    def _message(self, channel: str, message: str) -> None:
        if channel != self.channel:
            return
        if SESSION_ID.fullmatch(message):
            self._subscribers.notify(message)
        elif message.startswith(KEYS_EVENT) and len(message) > len(KEYS_EVENT):
            self._key_subscribers.notify(message[len(KEYS_EVENT):])
        elif message.startswith(LOGOUT_EVENT) \
                and SINGLE_USE_ID.fullmatch(message[len(LOGOUT_EVENT):]):
            self._logout_subscribers.notify(message[len(LOGOUT_EVENT):])
        elif message.startswith(NODE_EVENT) and len(message) > len(NODE_EVENT):
            self._node_subscribers.notify(message[len(NODE_EVENT):])

    # Commands ---------------------------------------------------------------------

    def _unavailable(self, what: str) -> StoreUnavailable:
        if not self._started:
            return StoreUnavailable(f"Redis store not started ({what})")
        return StoreUnavailable(f"Redis at {self.address} is unavailable "
                                f"({self._commands.last_error}); {what} failed")

    def _call(self, what: str, command: Callable[[Any], Deferred[Any]]) -> Deferred[Any]:
        conn = self._commands.usable()
        if conn is None:
            return defer.fail(self._unavailable(what))
        # While Redis is still sending (replies to earlier commands), a late answer is
        # this process's own backlog: the deadline waits for Redis to fall silent.
        d = within(defer.maybeDeferred(command, conn), self.timeout, self.clock,
                   heard=self._commands._heard, longest=self.longest_wait)

        def translate(f: Failure) -> Failure:
            if f.check(defer.TimeoutError):
                args = getattr(f.value, "args", ())
                waited = args[0] if args else self.timeout
                raise StoreUnavailable(f"Redis at {self.address} did not answer {what} "
                                       f"within {round(waited, 1):g}s")
            if f.check(txredisapi.ResponseError):
                message = str(f.value)
                if not message.startswith(_TRANSIENT):
                    self._log.error("Redis refused {what}: {message}", what=what,
                                    message=message)
                raise StoreUnavailable(f"Redis at {self.address} refused {what}: {message}")
            if f.check(txredisapi.ConnectionError, ConnectionError, defer.CancelledError):
                raise StoreUnavailable(f"Redis at {self.address} is unavailable "
                                       f"({f.getErrorMessage()}); {what} failed")
            return f

        return d.addErrback(translate)

    def _eval(self, what: str, script: str, keys: list[str], args: list[Any]) -> Deferred[Any]:
        return self._call(what, lambda conn: conn.eval(script, keys, args))

    def _key(self, session_id: str) -> str:
        return f"{self.prefix}:{session_id}"

    def _tunnel_key(self, session_id: str) -> str:
        return f"{self.prefix}:{session_id}:tunnel"

    def command(self, *args: Any) -> Deferred[Any]:
        """One raw Redis command on the store's connection (diagnostics and tests)."""
        return self._call(str(args[0]), lambda conn: conn.execute_command(*args))

    def ping(self) -> Deferred[None]:
        return self._call("PING", lambda conn: conn.execute_command("PING")).addCallback(
            lambda _: None)

    def create(self, record: SessionRecord) -> Deferred[None]:
        d = self._eval("create", CREATE, [self._key(record.id)],
                       [record.to_json(), self.channel, record.id])

        def done(created: Any) -> None:
            if int(created) != 1:
                raise SessionExists(f"session {record.id} exists already")

        return d.addCallback(done)

    def update(self, record: SessionRecord) -> Deferred[None]:
        d = self._eval("update", UPDATE, [self._key(record.id)],
                       [record.to_json(), self.channel, record.id])

        def done(updated: Any) -> None:
            if int(updated) != 1:
                raise SessionNotFound(f"no session {record.id}")

        return d.addCallback(done)

    def delete(self, session_id: str) -> Deferred[bool]:
        return self._eval("delete", DELETE,
                          [self._key(session_id), self._tunnel_key(session_id)],
                          [self.channel, session_id]).addCallback(lambda n: int(n) > 0)

    def get(self, session_id: str) -> Deferred[SessionRecord | None]:
        if not SESSION_ID.fullmatch(session_id):
            return defer.succeed(None)
        d = self._call("get", lambda conn: conn.execute_command("GET", self._key(session_id)))
        return d.addCallback(lambda v: None if v is None else SessionRecord.from_json(v))

    @defer.inlineCallbacks
    def _scan(self, what: str, under: str) -> Any:
        """Every key ``<prefix>:<under><name>``: {key: name}."""
        start = f"{self.prefix}:{under}"
        pattern = _glob_escape(start) + "*"
        keys: dict[str, str] = {}
        cursor = "0"
        while True:
            def scan(conn: Any, c: str = cursor) -> Any:
                return conn.execute_command("SCAN", c, "MATCH", pattern, "COUNT", 1000)

            reply = yield self._call(what, scan)
            cursor = _text(reply[0])
            for key in reply[1]:
                keys[_text(key)] = _text(key)[len(start):]
            if cursor == "0":
                break
        return keys

    @defer.inlineCallbacks
    def _mget(self, what: str, keys: list[str]) -> Any:
        """[(key, value)] of each of `keys` that exists, 500 keys per MGET."""
        out: list[tuple[str, Any]] = []
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            def mget(conn: Any, c: list[str] = chunk) -> Any:
                return conn.execute_command("MGET", *c)

            values = yield self._call(what, mget)
            out += [(k, v) for k, v in zip(chunk, values, strict=True) if v is not None]
        return out

    @defer.inlineCallbacks
    def list_sessions(self) -> Any:
        found = yield self._scan("list", "")
        keys = [key for key, sid in found.items() if SESSION_ID.fullmatch(sid)]
        records: list[SessionRecord] = []
        for key, value in (yield self._mget("list", keys)):
            try:
                records.append(SessionRecord.from_json(value))
            except MalformedRecord as e:
                self._log.error("skipping malformed session record {key}: {error}",
                                key=key, error=str(e))
        return records

    def claim_tunnel(self, holder: TunnelHolder, ttl: float) -> Deferred[TunnelHolder | None]:
        sid = holder.session_id
        try:
            px = _ms(ttl)
        except ValueError as e:
            return defer.fail(e)
        d = self._eval("claim", CLAIM, [self._key(sid), self._tunnel_key(sid)],
                       [holder.to_json(), px, self.channel, sid])

        def done(reply: Any) -> TunnelHolder | None:
            if int(reply[0]) != 1:
                raise SessionNotFound(f"no session {sid}")
            if len(reply) < 2 or reply[1] is None:
                return None
            try:
                return TunnelHolder.from_json(reply[1])
            except MalformedRecord as e:
                self._log.error("replaced a malformed tunnel holder of {sid}: {error}",
                                sid=sid, error=str(e))
                return None

        return d.addCallback(done)

    def refresh_tunnel(self, holder: TunnelHolder, ttl: float) -> Deferred[bool]:
        return self.refresh_tunnels([holder], ttl).addCallback(
            lambda answers: answers[0] is Refresh.OURS)

    def refresh_tunnels(self, holders: Sequence[TunnelHolder],
                        ttl: float) -> Deferred[list[Refresh]]:
        if not holders:
            return defer.succeed([])
        try:
            px = _ms(ttl)
        except ValueError as e:
            return defer.fail(e)
        keys: list[str] = []
        args: list[Any] = [px, self.channel]
        for holder in holders:
            sid = holder.session_id
            keys += (self._tunnel_key(sid), self._key(sid))
            args += (holder.tunnel_id, holder.node_id, holder.to_json(), sid)

        def done(answers: Any) -> list[Refresh]:
            if (not isinstance(answers, list) or len(answers) != len(holders)
                    or not all(isinstance(n, int) and n in REFRESHED for n in answers)):
                raise StoreUnavailable(f"Redis at {self.address} answered a refresh of "
                                       f"{len(holders)} claims with {answers!r:.80}")
            for h, n in zip(holders, answers, strict=True):
                if n == 2:
                    self._log.info("the claim of session {sid}'s tunnel had expired (the "
                                   "store was away longer than its TTL?): claimed it again",
                                   sid=h.session_id)
            return [REFRESHED[n] for n in answers]

        return self._eval("refresh", REFRESH, keys, args).addCallback(done)

    def release_tunnel(self, holder: TunnelHolder) -> Deferred[bool]:
        sid = holder.session_id
        return self._eval("release", RELEASE, [self._tunnel_key(sid)],
                          [holder.tunnel_id, holder.node_id, self.channel, sid]).addCallback(
            lambda n: int(n) == 1)

    def get_tunnel(self, session_id: str) -> Deferred[TunnelHolder | None]:
        if not SESSION_ID.fullmatch(session_id):
            return defer.succeed(None)
        d = self._call("get_tunnel", lambda conn: conn.execute_command(
            "GET", self._tunnel_key(session_id)))
        return d.addCallback(lambda v: None if v is None else TunnelHolder.from_json(v))

    # Users' SSH keys -----------------------------------------------------------------

    def subscribe_user_keys(self, callback: Invalidation) -> Callable[[], None]:
        return self._key_subscribers.add(callback)

    def _keys_key(self, user: str) -> str:
        return f"{self.prefix}:_keys:{user}"

    def get_user_keys(self, user: str) -> Deferred[list[str]]:
        d = self._call("get_user_keys", lambda conn: conn.execute_command(
            "GET", self._keys_key(user)))
        return d.addCallback(lambda v: [] if v is None else self._decode_keys(user, v))

    def _decode_keys(self, user: str, value: Any) -> list[str]:
        try:
            lines = json.loads(_text(value))
            if isinstance(lines, dict) and not lines:  # how cjson writes an empty list
                return []
            if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
                raise ValueError("not a list of key lines")
            check_user_keys(user, lines)
        except ValueError as e:
            self._log.error("ignoring the malformed SSH keys of {user} in Redis: {error}",
                            user=user, error=str(e))
            return []
        return lines

    def set_user_keys(self, user: str, lines: list[str]) -> Deferred[None]:
        try:
            check_user_keys(user, lines)
        except BadUserKeys as e:
            return defer.fail(e)
        value = json.dumps(lines) if lines else ""
        return self._eval("set_user_keys", SET_KEYS, [self._keys_key(user)],
                          [value, self.channel, KEYS_EVENT + user]).addCallback(lambda _: None)

    def add_user_keys(self, user: str, lines: list[str]) -> Deferred[list[str]]:
        new = unique_keys(lines)
        try:
            check_user_keys(user, new[:MAX_USER_KEYS])
            if len(new) > MAX_USER_KEYS:
                raise BadUserKeys(f"at most {MAX_USER_KEYS} keys per user")
        except BadUserKeys as e:
            return defer.fail(e)
        d = self._eval("add_user_keys", ADD_KEYS, [self._keys_key(user)],
                       [MAX_USER_KEYS, self.channel, KEYS_EVENT + user, json.dumps(new)])

        def done(reply: Any) -> list[str]:
            if int(reply[0]) != 1:
                raise BadUserKeys(f"at most {MAX_USER_KEYS} keys per user ({user} has "
                                  f"{int(reply[1])})")
            return self._decode_keys(user, reply[1])

        return d.addCallback(done)

    def remove_user_keys(self, user: str, blobs: list[str] | None = None) -> Deferred[int]:
        which = "" if blobs is None else json.dumps(list(blobs))
        return self._eval("remove_user_keys", REMOVE_KEYS, [self._keys_key(user)],
                          [self.channel, KEYS_EVENT + user, which]).addCallback(int)

    # Login state ------------------------------------------------------------------------

    def subscribe_logouts(self, callback: Invalidation) -> Callable[[], None]:
        return self._logout_subscribers.add(callback)

    def _once_key(self, key: str) -> str:
        return f"{self.prefix}:_once:{key}"

    def _logout_key(self, login_id: str) -> str:
        return f"{self.prefix}:_logout:{login_id}"

    def _pending_key(self, state: str) -> str:
        return f"{self.prefix}:_pending:{state}"

    def keep_pending_login(self, state: str, value: str, ttl: float) -> Deferred[None]:
        try:
            px = _ms(check_pending_login(state, value, ttl))
        except ValueError as e:
            return defer.fail(e)

        def kept(reply: Any) -> None:
            if reply is None:  # (a state is 32 random bytes: never in practice)
                raise ValueError("a pending login with this state is kept already")

        return self._call("keep_pending_login", lambda conn: conn.execute_command(
            "SET", self._pending_key(state), value, "NX", "PX", px)).addCallback(kept)

    def take_pending_login(self, state: str) -> Deferred[str | None]:
        if not isinstance(state, str) or not SINGLE_USE_ID.fullmatch(state):
            return defer.succeed(None)

        def value(reply: Any) -> str | None:
            if reply is None:
                return None
            text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
            return text if len(text.encode("utf-8")) <= MAX_PENDING_LOGIN_BYTES else None

        return self._eval("take_pending_login", TAKE, [self._pending_key(state)],
                          []).addCallback(value)

    def drop_pending_logins(self, states: Sequence[str]) -> Deferred[None]:
        names = [self._pending_key(s) for s in states
                 if isinstance(s, str) and SINGLE_USE_ID.fullmatch(s)]
        if not names:
            return defer.succeed(None)
        return self._call("drop_pending_logins", lambda conn: conn.execute_command(
            "DEL", *names)).addCallback(lambda _: None)

    def _transfer_key(self, key: str, bucket: int) -> str:
        return f"{self.prefix}:_transfer:{key}:{bucket}"

    def add_transfer(self, counts: dict[str, int], bucket: int, ttl: float) -> Deferred[None]:
        keys = [self._transfer_key(k, bucket) for k in counts]
        return self._eval("add_transfer", ADD_TRANSFER, keys,
                          [_ms(ttl), *counts.values()]).addCallback(lambda _: None)

    def get_transfer(self, keys: list[str], buckets: list[int]
                     ) -> Deferred[dict[str, list[int]]]:
        names = [self._transfer_key(k, b) for k in keys for b in buckets]
        if not names:
            return defer.succeed({})

        def split(values: list[Any]) -> dict[str, list[int]]:
            counts = [int(v) if v is not None else 0 for v in values]
            n = len(buckets)
            return {k: counts[i * n:(i + 1) * n] for i, k in enumerate(keys)}

        return self._call("get_transfer", lambda conn: conn.execute_command(
            "MGET", *names)).addCallback(split)

    def reset_transfer(self, key: str, buckets: list[int]) -> Deferred[None]:
        names = [self._transfer_key(key, b) for b in buckets]
        return self._call("reset_transfer", lambda conn: conn.execute_command(
            "DEL", *names)).addCallback(lambda _: None)

    def spend_once(self, key: str, ttl: float) -> Deferred[bool]:
        try:
            px = _ms(check_single_use_id(key, ttl))
        except ValueError as e:
            return defer.fail(e)
        return self._call("spend_once", lambda conn: conn.execute_command(
            "SET", self._once_key(key), "1", "NX", "PX", px)).addCallback(
            lambda reply: reply is not None)

    def is_spent(self, key: str) -> Deferred[bool]:
        if not SINGLE_USE_ID.fullmatch(key):
            return defer.succeed(False)
        return self._call("is_spent", lambda conn: conn.execute_command(
            "EXISTS", self._once_key(key))).addCallback(lambda n: int(n) > 0)

    def log_out(self, login_id: str, ttl: float) -> Deferred[None]:
        try:
            px = _ms(check_single_use_id(login_id, ttl))
        except ValueError as e:
            return defer.fail(e)
        return self._eval("log_out", LOG_OUT, [self._logout_key(login_id)],
                          [px, self.channel, LOGOUT_EVENT + login_id]).addCallback(
            lambda _: None)

    @defer.inlineCallbacks
    def logged_out(self) -> Any:
        found = yield self._scan("logged_out", "_logout:")
        keys = list(found)
        out: dict[str, float] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            ttls = yield self._eval("logged_out", PTTLS, chunk, [])
            for key, pttl in zip(chunk, ttls, strict=True):
                if int(pttl) > 0 and SINGLE_USE_ID.fullmatch(found[key]):
                    out[found[key]] = int(pttl) / 1000
        return out


    # Nodes' shared settings --------------------------------------------------------------

    def subscribe_nodes(self, callback: Invalidation) -> Callable[[], None]:
        """Call `callback(node id)` when a node announces itself (None: events were lost)."""
        return self._node_subscribers.add(callback)

    def announce_node(self, value: str, ttl: float, *, tell: bool) -> Deferred[str | None]:
        """Store this node's settings record for `ttl` seconds (and its id in the index
        ``<prefix>:_nodes``, without the nodes whose records the last node_records found
        gone); with `tell`, publish ``node:<node id>`` so every node compares at once (in
        the same script: one round trip, and no node hears of a record not yet written).
        Fires with the record this one replaced (None: none, or a too long one)."""
        gone = self._nodes_gone[:100]
        keys = [self._node_key(self.node_id), f"{self.prefix}:_nodes"]
        keys += [self._node_key(node) for node in gone]
        event = NODE_EVENT + self.node_id if tell else ""
        d = self._eval("announce_node", ANNOUNCE_NODE, keys,
                       [value, _ms(ttl), self.node_id, MAX_NODES, self.channel, event, *gone])

        def keep(reply: Any) -> str | None:
            prev = reply[1] if isinstance(reply, list) and len(reply) > 1 else None
            return None if prev is None else _text(prev)

        return d.addCallback(keep)

    def _node_key(self, node: str) -> str:
        return f"{self.prefix}:_node:{node}"

    def withdraw_node(self) -> Deferred[None]:
        """Delete this node's settings record (a node that stops cleanly) and publish
        ``node:<node id>``, so every node compares again at once, without it."""
        return self._eval("withdraw_node", WITHDRAW_NODE, [self._node_key(self.node_id)],
                          [self.channel, NODE_EVENT + self.node_id]).addCallback(
            lambda _: None)

    def _bounded_gets(self, what: str, keys: list[str], limit: int) -> Deferred[list[Any]]:
        """The value of each of `keys`: None when missing, 0 when longer than `limit`
        bytes (never sent by Redis), else the value."""
        return self._eval(what, BOUNDED_GETS, keys, [limit]).addCallback(
            lambda values: [None if v is None else 0 if isinstance(v, int) else v
                            for v in values])

    @defer.inlineCallbacks
    def node_records(self) -> Any:
        """Every live node's settings record: {node id: JSON text}. Read from the index
        (two scripts' GETs, whatever the number of sessions). The index and each record
        are read only if they are short enough (MAX_NODES * 100 and MAX_RECORD_BYTES):
        Redis sends no longer value, a longer record is no node's and is left out."""
        index, = yield self._bounded_gets("node_records", [f"{self.prefix}:_nodes"],
                                          MAX_NODES * 100)
        try:  # a damaged, hostile or too long index: none (the next announcement rebuilds it)
            ids = json.loads(_text(index)) if index else []
        except (ValueError, RecursionError):
            ids = []
        if not isinstance(ids, list):
            ids = []
        nodes = list(dict.fromkeys(i for i in ids if isinstance(i, str)))[:MAX_NODES]
        found: dict[str, Any] = {}
        for i in range(0, len(nodes), 500):
            chunk = nodes[i:i + 500]
            values = yield self._bounded_gets("node_records",
                                              [self._node_key(n) for n in chunk],
                                              MAX_RECORD_BYTES)
            found.update(zip(chunk, values, strict=True))
        self._nodes_gone = [n for n in nodes if found.get(n) is None]
        return {n: _text(v) for n, v in found.items() if v is not None and v != 0}


def _ms(ttl: float) -> int:
    if not isinstance(ttl, int | float) or isinstance(ttl, bool) or not ttl > 0:
        raise ValueError(f"a TTL must be a positive number of seconds, not {ttl!r}")
    return max(1, int(ttl * 1000))


__all__ = ["RedisStore", "default_node_id", "parse_address"]
