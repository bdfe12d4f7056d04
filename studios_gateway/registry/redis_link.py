"""The Redis store's connections: txredisapi wrapped to reconnect for ever, read and pack
in C, and be watched.

A :class:`Link` is one reconnecting connection (the store has two: commands, and one
subscribed to its events channel) with its state, its PING and what it says in the log;
its factory keeps trying after AUTH/SELECT failures, which txredisapi would give up on.
The protocols note when Redis last sent anything (the deadlines of the store's calls
ask) and size their reads; commands are packed by hiredis where that gives
txredisapi's bytes. tls_options and client_endpoint make the endpoint both links dial.
See docs/decisions/redis-store.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

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
from zope.interface import implementer

from studios_gateway.deadline import within
from studios_gateway.logs import drop_lines
from studios_gateway.repeats import Repeats


class LinkOwner(Protocol):
    """What a Link reads of the store it serves."""

    address: str  # as configured, for the log
    host: str  # the name TLS verifies
    user: str | None
    db: int
    clock: IReactorTime
    timeout: float  # a PING fails once Redis has been silent this long...
    longest_wait: float | None  # ... and in any case after this long
    ping_interval: float
    reconnect_delay: tuple[float, float]
    connect_timeout: float  # to connect, and then for Redis to answer the set-up


def reply_text(value: Any) -> str:
    """A reply (bytes, as the store reads them) as text."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# txredisapi logs (log.msg) each failed connection set-up, and Twisted's ClientService
# under it each retry it schedules, at every retry (0.5-5 s apart, for ever: a wrong
# password, or a Redis down for a day, wrote ~35,000 lines a day each); Link says the
# reason itself, once (then once a minute with a count), and when the link is back.
drop_lines("log_legacy", "Redis error: could not auth: ", "Redis error: could not set dbid=",
           "Redis error: could not connect: ")
drop_lines("twisted.application._client_service.ClientService", "Scheduling retry ")


@implementer(IStreamClientEndpoint)
class _Watched:
    """Redis's endpoint, telling its link of each attempt to connect that failed."""

    def __init__(self, endpoint: IStreamClientEndpoint, link: Link) -> None:
        self._endpoint = endpoint
        self._link = link

    def connect(self, factory: Any) -> Deferred[Any]:
        self._link.backing_off = False

        def failed(f: Failure) -> Failure:
            if not f.check(defer.CancelledError):  # (a stop, not a failure)
                self._link.connect_failed(f)
            return f

        return self._endpoint.connect(factory).addErrback(failed)


class _Factory(txredisapi.RedisFactory):
    """A txredisapi factory that never stops trying and tells its link about readiness.

    txredisapi calls stopTrying() when AUTH or SELECT fails, which would leave the
    gateway without Redis until restarted (a Redis restarted before its ACL file
    is back, a password rotated in the wrong order). Here the connection is
    dropped and retried with backoff instead.
    """

    noisy = False

    def __init__(self, link: Link, protocol: type, **kwargs: Any):
        super().__init__(None, kwargs.pop("dbid", None), 1, isLazy=True, **kwargs)
        self.protocol = protocol
        self.link = link

    def stopTrying(self) -> Deferred[None]:
        return defer.succeed(None)

    def connectionError(self, why: str) -> None:
        self.link.handshake_failed(why)

    def retryDelay(self, attempt: int) -> float:
        # The link's count of attempts failed in a row, when greater: it goes on across
        # the factories try_now makes, and counts a set-up refused after txredisapi found
        # the connection usable (a SUBSCRIBE refused), which txredisapi's does not.
        return float(super().retryDelay(max(attempt, self.link.failures)))

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool and self.link.factory is self:  # (not one given up: try_now)
            self.link.connected(conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self.link.lost(conn)


#: How a set-up that failed because the other end spoke no Redis begins.
NOT_REDIS = "not Redis"
#: How a set-up that Redis (or what accepted the connection) left unanswered begins.
NO_ANSWER = "no answer"
#: A set-up that Redis answers step by step may take this many times connect_timeout.
SET_UP_LONGEST = 3


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
    how much each read takes (:data:`READ_MIN`, :data:`READ_MAX`); and the connection's
    end, told to its link."""

    factory: Any
    transport: Any

    def connectionMade(self) -> Any:
        if self._the_links():  # (not one try_now left behind)
            self.factory.link.transport_made(self)
        return super().connectionMade()  # type: ignore[misc]

    def connectionLost(self, why: Failure) -> None:
        # (a connection of a factory try_now replaced, closing a turn later, is not the
        # link's: its end must not cancel the new connection's set-up nor name its error)
        if self._the_links():
            self.factory.link.transport_lost(why)
        super().connectionLost(why)  # type: ignore[misc]

    def _the_links(self) -> bool:
        """Whether this connection is its link's current one's (made by the link's factory
        now, not by one try_now replaced)."""
        return getattr(self.factory.link, "factory", self.factory) is self.factory

    def dataReceived(self, data: bytes, *more: Any) -> None:
        if not more:  # (txredisapi calls itself again, with more, for what it held back)
            link = self.factory.link
            link.heard = link.owner.clock.seconds()
            if isinstance(self.transport, tcp.Connection):  # (under TLS: left as it is)
                size = self.transport.bufferSize
                if len(data) >= size:
                    self.transport.bufferSize = min(size * 4, READ_MAX)
                elif size > READ_MIN:
                    self.transport.bufferSize = READ_MIN
        try:
            super().dataReceived(data, *more)  # type: ignore[misc]
        except txredisapi.InvalidData as e:
            # Not Redis's protocol (an HTTP server or another service at the address, a
            # TLS port spoken to in plain text): said by the link, the connection dropped.
            # Let out, it was an "Unhandled Error" traceback in the log at every retry.
            self.factory.link.not_redis(str(e))
            self.transport.abortConnection()


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
    pass


class _Subscriber(_Packs, _Heard, txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.factory.link.message(reply_text(channel), reply_text(message))


class Link:
    """One reconnecting connection to Redis, with its state and a periodic PING."""

    def __init__(self, owner: LinkOwner, name: str, protocol: type,
                 on_ready: Callable[[Any], Any] | None = None,
                 on_lost: Callable[[], None] | None = None,
                 on_message: Callable[[str, str], None] | None = None):
        self.owner = owner
        # Its lines keep the namespace they had when this was registry/redis.py's _Link
        # (an operator's filter may name it); a class attribute would take this module's.
        self._log = Logger(namespace="studios_gateway.registry.redis._Link", source=self)
        self.name = name
        self.protocol_class = protocol
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.on_message = on_message
        self.factory: _Factory | None = None
        self.conn: Any = None
        self.ready = False
        #: Whether it has been ready once since it was made (a first connection is made).
        self.was_ready = False
        self.last_error = "not connected yet"
        #: when_ready's Deferreds (a dict as an ordered set: a cancelled one leaves it).
        self._waiters: dict[Deferred[None], None] = {}
        self._failure_waiters: list[Deferred[str]] = []
        self._transport_error: str | None = None
        self._pinger: task.LoopingCall | None = None
        # A refused set-up (wrong password, TLS) recurs at every retry: said once, then
        # once a minute with a count, until the link is up again.
        self._refusals = Repeats(owner.clock)
        self.heard = 0.0  # when Redis last sent anything on this link (the store's clock)
        #: The store's other link: once this one is up, it tries at once (try_now).
        self.sibling: Link | None = None
        #: An attempt to connect failed, and the next waits for its backoff.
        self.backing_off = False
        self._endpoint: IStreamClientEndpoint | None = None
        self._password: str | None = None
        #: The reason of the connection's end is said already (not_redis, _set_up_late).
        self._reason_said = False
        self._set_up_timer: Any = None
        #: Attempts that failed in a row (to connect, the handshake, the set-up after it):
        #: the backoff's count (_Factory.retryDelay).
        self.failures = 0

    def start(self, endpoint: IStreamClientEndpoint, password: str | None) -> None:
        s = self.owner
        self._endpoint, self._password = endpoint, password
        self._connect()
        self._pinger = task.LoopingCall(self._ping)
        self._pinger.clock = s.clock
        self._pinger.start(s.ping_interval, now=False).addErrback(
            lambda f: self._log.failure("{name} PING loop failed", f, name=self.name))

    def _connect(self) -> None:
        s = self.owner
        self.factory = _Factory(self, self.protocol_class, dbid=s.db, password=self._password,
                                username=s.user, convertNumbers=False, charset="utf-8")
        self.factory.initialDelay, self.factory.maxDelay = s.reconnect_delay
        assert self._endpoint is not None
        self.factory.startConnecting(_Watched(self._endpoint, self))

    def try_now(self) -> None:
        """Redis answered on the store's other link: connect this one now, not at the end
        of its backoff. The two links back off apart (each with its own jitter), and after
        an outage of 20 s one came back up to 5 s after the other: a node whose subscriber
        was back heard a studio's new claim, forgot its route, and answered requests for
        it 503 (`session registry unavailable`) until its command connection was back."""
        if self.factory is None or self.conn is not None or not self.backing_off:
            return
        self.backing_off = False
        old, self.factory = self.factory, None
        old.disconnect()  # (ends the wait for its next attempt)
        self._connect()

    def stop(self) -> Deferred[Any]:
        if self._pinger is not None and self._pinger.running:
            self._pinger.stop()
        self.ready = False
        self._cancel_set_up_timer()  # (a connection whose close is still under way)
        if self.factory is None:
            return defer.succeed(None)
        factory, self.factory = self.factory, None
        return factory.disconnect()

    def when_ready(self) -> Deferred[None]:
        """Fires when the link is (next) up. Cancelled (a command's wait for the first
        connection timed out), it is forgotten: waits that timed out while Redis stayed
        away were kept until it came, one per command made meanwhile."""
        if self.ready:
            return defer.succeed(None)
        d: Deferred[None] = Deferred(self._forget)
        self._waiters[d] = None
        return d

    def _forget(self, d: Deferred[None]) -> None:
        self._waiters.pop(d, None)

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
                               address=self.owner.address)
            self._cancel_set_up_timer()
            self._refusals.clear()
            self.failures = 0
            self.ready = self.was_ready = True
            waiters, self._waiters = self._waiters, {}
            for w in waiters:
                w.callback(None)
            if self.sibling is not None:
                self.sibling.try_now()

        def failed(f: Failure) -> None:
            self._failed(f.getErrorMessage(),
                         "Redis {name} connection set-up failed: {why}{more}")
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
                           name=self.name, address=self.owner.address)
        if self.on_lost is not None:
            self.on_lost()

    def when_failed(self) -> Deferred[str]:
        """Fires with the reason of the next failed connection set-up (the handshake's
        AUTH/SELECT/TLS, or what follows it: the SUBSCRIBE)."""
        d: Deferred[str] = Deferred()
        self._failure_waiters.append(d)
        return d

    def connect_failed(self, why: Failure) -> None:
        """An attempt to connect failed (nothing listens there, no route, a name that does
        not resolve): said as a refused set-up is, once, then once a minute with a count.
        Before, the gateway retried in silence (the library's and Twisted's own lines for
        each attempt are dropped from the log), and a node started with Redis away, or at
        a wrong CONNECT_REDIS_ADDRESS, logged nothing of it."""
        self.backing_off = True
        reason = (why.getErrorMessage() or type(why.value).__name__).rstrip(".")
        self._failed(f"cannot connect: {reason}",
                     "Redis {name} connection to {address}: {why}; will retry{more}")

    def not_redis(self, why: str) -> None:
        """What answered on this connection does not speak Redis's protocol (`why`, the
        reply parser's words): the reason its set-up failed, or it was lost."""
        self._transport_error = (
            f"{NOT_REDIS}: what answers at {self.owner.address} sent no Redis reply ({why}); "
            "check that CONNECT_REDIS_ADDRESS is a Redis server's, with "
            "CONNECT_REDIS_TLS_ENABLE as that port expects")
        self._reason_said = True

    def transport_made(self, protocol: Any) -> None:
        """A connection is made: Redis has connect_timeout to answer its set-up (AUTH,
        SELECT, the SUBSCRIBE), or the connection is dropped and made again. A Redis that
        accepted connections and answered nothing (stopped with SIGSTOP, out of memory
        for its client buffers, a proxy in front of it with no Redis behind) kept the link
        waiting for ever: no line in the log, /ready saying `not connected yet`."""
        self._cancel_set_up_timer()
        self._set_up_deadline(protocol, self.owner.clock.seconds(),
                              self.owner.connect_timeout)

    def _set_up_deadline(self, protocol: Any, started: float, after: float) -> None:
        clock = self.owner.clock

        def deadline() -> None:  # (an answer read in the next poll still counts: within)
            self._set_up_timer = clock.callLater(0, self._set_up_late, protocol, started)

        self._set_up_timer = clock.callLater(after, deadline)

    def _cancel_set_up_timer(self) -> None:
        timer, self._set_up_timer = self._set_up_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _set_up_late(self, protocol: Any, started: float) -> None:
        """connect_timeout after the connection was made, or after Redis last answered on
        it: a set-up Redis answers step by step (AUTH, SELECT, SUBSCRIBE) goes on while
        it is heard from, up to SET_UP_LONGEST times connect_timeout in all. A gateway
        busy with a storm of TLS handshakes reads each answer a turn of a second or two
        late (deadline.within), and its healthy Redis's set-up was dropped at 5 s."""
        self._set_up_timer = None
        if protocol.transport is None or self.ready:
            return
        timeout, now = self.owner.connect_timeout, self.owner.clock.seconds()
        answered = self.heard > started
        quiet_at = self.heard + timeout
        if answered and quiet_at > now and now < started + SET_UP_LONGEST * timeout:
            self._set_up_deadline(protocol, started,
                                  min(quiet_at, started + SET_UP_LONGEST * timeout) - now)
            return
        what = ("answered part of its set-up, then nothing for" if answered
                else "answered nothing of its set-up within")
        self._transport_error = (
            f"{NO_ANSWER}: Redis at {self.owner.address} accepted the connection but "
            f"{what} {timeout:g}s")
        self._reason_said = True
        protocol.transport.abortConnection()

    def transport_lost(self, why: Failure) -> None:
        self._cancel_set_up_timer()
        if self._reason_said:  # (the abort that followed: the reason is said already)
            self._reason_said = False
            return
        from service_identity import VerificationError

        if why.check(VerificationError):  # signed by a trusted CA, but for another name
            self._transport_error = (
                f"TLS: Redis's certificate does not name {self.owner.host} (the host of "
                "CONNECT_REDIS_ADDRESS)")
            return
        self._transport_error = why.getErrorMessage() or type(why.value).__name__

    def handshake_failed(self, why: str) -> None:
        if "Lost connection" in why and self._transport_error:
            if self._transport_error.startswith(("TLS: ", NOT_REDIS, NO_ANSWER)):
                why = self._transport_error
            else:
                why = f"{why} ({self._transport_error})"
        elif "NOAUTH" in why:  # no AUTH was sent; the failing step named is SELECT's
            why = (f"{why} (Redis asks for a password: set CONNECT_REDIS_PASSWORD, and "
                   "CONNECT_REDIS_USER for an ACL user)")
        self.backing_off = True
        self._failed(why, "Redis {name} connection: {why}; will retry{more}")
        self._tell_failure(why)

    def _failed(self, why: str, line: str) -> None:
        """An attempt failed (to connect, its handshake, or the set-up after it), for
        `why`: counted for the backoff, kept as last_error (what /ready says), and said in
        `line` (a log format of {name}, {address}, {why} and {more}) once, then once a
        minute with a count, until the link is up again."""
        self.failures += 1
        self.last_error = why
        unsaid = self._refusals.due(why)
        if unsaid is not None:
            self._log.warn(line, name=self.name, address=self.owner.address, why=why,
                           more=self._refusals.more(unsaid))

    def _tell_failure(self, why: str) -> None:
        waiters, self._failure_waiters = self._failure_waiters, []
        for w in waiters:
            w.callback(why)

    def message(self, channel: str, message: str) -> None:
        if self.on_message is not None:
            self.on_message(channel, message)

    def last_heard(self) -> float:
        """When Redis last sent anything on this link (deadline.within's `heard`)."""
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
        d = within(defer.maybeDeferred(conn.execute_command, "PING"), self.owner.timeout,
                   self.owner.clock, heard=self.last_heard, longest=self.owner.longest_wait)

        def dead(f: Failure) -> None:
            if self.conn is conn:
                if f.check(defer.TimeoutError):  # (its words were "(2.004, 'Deferred')")
                    args = getattr(f.value, "args", ())
                    waited = args[0] if args else self.owner.timeout
                    why = f"no answer within {round(waited, 1):g}s"
                else:
                    why = f.getErrorMessage() or type(f.value).__name__
                self.last_error = f"PING failed: {why}"
                self._log.warn("Redis {name} connection: {error}; dropping it", name=self.name,
                               error=self.last_error)
                conn.transport.abortConnection()

        d.addErrback(dead)


def command_link(owner: LinkOwner) -> Link:
    """The link for commands."""
    return Link(owner, "command", _Commands)


def subscriber_link(owner: LinkOwner, *, on_ready: Callable[[Any], Any],
                    on_lost: Callable[[], None],
                    on_message: Callable[[str, str], None]) -> Link:
    """The link subscribed to the events channel: `on_ready(conn)` subscribes (the link is
    ready when what it returns fires), `on_lost()` when the connection goes,
    `on_message(channel, message)` for each message."""
    return Link(owner, "subscriber", _Subscriber, on_ready=on_ready, on_lost=on_lost,
                on_message=on_message)


def client_endpoint(host: str, port: int, connect_timeout: float,
                    tls: Any | None = None) -> IStreamClientEndpoint:
    """The endpoint both links dial: `host`:`port`, under TLS with `tls`'s options."""
    from twisted.internet import reactor

    ep: IStreamClientEndpoint = HostnameEndpoint(reactor, host, port,
                                                 timeout=connect_timeout)
    if tls is not None:
        ep = wrapClientTLS(tls, ep)
    return ep


def check_tls_files(config: Any) -> str | None:
    """Why the Redis store would not start with CONNECT_REDIS_TLS_CERT_FILE/KEY_FILE/CA_FILE
    (one line naming the file to fix), or None. ``studios-gateway check-config`` asks
    this; the start, :func:`checked_tls_files`. A key that was not the certificate's ended
    the start in a traceback, after the listeners were bound."""
    return checked_tls_files(config)[1]


def checked_tls_files(config: Any) -> tuple[Any | None, str | None]:
    """The client TLS options for Redis (None without CONNECT_REDIS_TLS_ENABLE, or with
    Redis off) and why the files were refused (one line naming the file to fix), or
    None: each file read once."""
    from studios_gateway.pem_files import loaded

    if not (config.redis_enabled and config.redis_tls_enable):
        return None, None
    host, _ = config.redis_address
    return loaded(lambda: tls_options(
        host, skip_verify=config.redis_tls_skip_verify, cert_file=config.redis_tls_cert_file,
        key_file=config.redis_tls_key_file, ca_file=config.redis_tls_ca_file),
        "CONNECT_REDIS_TLS")


def tls_options(host: str, *, skip_verify: bool, cert_file: str | None,
                key_file: str | None, ca_file: str | None) -> Any:
    """The client TLS options for Redis at `host`: its certificate verified against
    `ca_file` (else the system's CAs) unless `skip_verify`; a client certificate when
    `cert_file` and `key_file` are given."""
    from OpenSSL import crypto
    from twisted.internet.ssl import KeyPair

    from studios_gateway.pem_files import load_ca, load_pair

    client: PrivateCertificate | None = None
    if cert_file and key_file:  # (read without a prompt for a passphrase)
        chain, key = load_pair(cert_file, key_file)
        client = PrivateCertificate.fromCertificateAndKeyPair(
            Certificate(crypto.X509.from_cryptography(chain[0])), KeyPair(key))
    if skip_verify:
        # optionsForClientTLS always verifies; an old-style context factory is what
        # TLSMemoryBIOFactory (under wrapClientTLS) accepts for "do not verify".
        kwargs: dict[str, Any] = {"verify": False}
        if client is not None:
            kwargs["certificate"] = client.original
            kwargs["privateKey"] = client.privateKey.original
        return CertificateOptions(**kwargs)
    trust = (Certificate(crypto.X509.from_cryptography(load_ca(ca_file)))
             if ca_file else platformTrust())
    return optionsForClientTLS(host, trustRoot=trust, clientCertificate=client)
