"""The shared registry: Redis through txredisapi (several gateway nodes, one truth).

Keys, under the configured prefix (``connect:session`` by default):

- ``<prefix>:<id>``: the session record (JSON);
- ``<prefix>:<id>:tunnel``: the tunnel holder (JSON) with a PX TTL the holding
  node refreshes;
- ``<prefix>:<id>:seen``: when the studio was last connected (:class:`~.base.Seen`,
  JSON ``{"b": bind time, "u": unbind time}``, each absent until known), written by
  create (``{}``), claim and release, deleted with the session, with a PX TTL of
  SEEN_TTL renewed at each write; read only when a studio is not connected;
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

Two connections (:mod:`.redis_link`): one for commands, one subscribed to the events
channel. Both reconnect forever with backoff (also after AUTH/SELECT failures, which
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
from typing import Any

import txredisapi
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from studios_gateway.deadline import within
from studios_gateway.registry.base import (
    MAX_NODE_RECORD,
    MAX_PENDING_LOGIN_BYTES,
    MAX_SEEN_BYTES,
    MAX_USER_KEYS,
    SEEN_TTL,
    SINGLE_USE_ID,
    BadUserKeys,
    Invalidation,
    MalformedRecord,
    Refresh,
    Seen,
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
from studios_gateway.registry.redis_link import (
    client_endpoint,
    command_link,
    reply_text,
    subscriber_link,
    tls_options,
)
from studios_gateway.registry.redis_scripts import (
    ADD_KEYS,
    ADD_TRANSFER,
    ANNOUNCE_NODE,
    BOUNDED_GETS,
    CLAIM,
    CREATE,
    DELETE,
    LOG_OUT,
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
from studios_gateway.registry.subscribers import Subscribers
from studios_gateway.wire.ids import SESSION_ID

#: Prefix of the events that name a user whose keys changed (never a session id).
KEYS_EVENT = "keys:"
#: Prefix of the events that name a login that ended.
LOGOUT_EVENT = "logout:"
#: Prefix of the events that name a node that (re)announced its settings.
NODE_EVENT = "node:"
#: The key, under the prefix, of the index of the nodes' settings records.
NODES_INDEX = "_nodes"
#: At most this many nodes in the index of nodes' settings records (``<prefix>:_nodes``).
MAX_NODES = 1000
#: SCAN calls (1000 keys each) a look for other clusters' prefixes makes at most: ~0.1 s
#: of Redis time; a Redis with more keys is looked at in part (and the node says so).
PREFIX_SCAN_CALLS = 100

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
                 reconnect_delay: tuple[float, float] = (0.5, 5.0),
                 tls_options: Any = None):
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
        #: The client TLS options made of those files already (the start's check made
        #: them: the files are read once); None: made by endpoint().
        self._tls_options = tls_options
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
        #: Commands' waits for the first connection (_when_first_connected): a stop ends them.
        self._first_waits: dict[Deferred[None], None] = {}
        self._lost_again = False  # told again once commands work (_subscribed)
        #: when_connected's waits for that second telling (see when_connected).
        self._told_again: list[Deferred[None]] = []
        if (tls_cert_file is None) != (tls_key_file is None):
            raise ValueError("a Redis TLS client certificate needs both the certificate "
                             "file and the key file")
        self._commands = command_link(self)
        self._events = subscriber_link(self, on_ready=self._subscribe,
                                       on_lost=self._events_lost, on_message=self._message)
        self._commands.sibling, self._events.sibling = self._events, self._commands

    def __repr__(self) -> str:
        auth = f", user={self.user!r}" if self.user else ""
        secret = ", password=***" if self._password else ""
        return (f"RedisStore(address={self.address!r}{auth}{secret}, db={self.db}, "
                f"prefix={self.prefix!r}, tls={self.tls})")

    # Lifecycle -------------------------------------------------------------------

    def endpoint(self) -> IStreamClientEndpoint:
        tls = None
        if self.tls:
            tls = self._tls_options or tls_options(
                self.host, skip_verify=self.tls_skip_verify, cert_file=self.tls_cert_file,
                key_file=self.tls_key_file, ca_file=self.tls_ca_file)
        return client_endpoint(self.host, self.port, self.connect_timeout, tls)

    def start(self) -> None:
        """Start connecting (in the background; calls fail with StoreUnavailable until
        the connection is up)."""
        if self._started:
            return
        self._started = True
        endpoint = self.endpoint()
        self._commands.start(endpoint, self._password)
        self._events.start(endpoint, self._password)

    def stop(self) -> Deferred[Any]:
        self._started = False
        waits, self._first_waits = self._first_waits, {}
        for d in waits:  # (their commands fail now: "Redis store not started")
            d.cancel()
        return defer.gatherResults([self._commands.stop(), self._events.stop()],
                                   consumeErrors=True).addCallback(lambda _: None)

    def when_connected(self) -> Deferred[None]:
        """Fires when both connections are up (the event subscription included), and
        after the "events lost" notice a subscriber that came up first gives again once
        the command connection is up (_subscribed): a subscriber added once this has
        fired hears no notice from before it (it came after, in the same turn, when the
        wait for this began before the subscriber came up: ci51f)."""
        return defer.gatherResults([self._commands.when_ready(), self._events.when_ready()],
                                   consumeErrors=True).addCallback(self._after_told_again)

    def _after_told_again(self, _: Any) -> Deferred[None] | None:
        if not self._lost_again:
            return None
        told: Deferred[None] = Deferred()
        self._told_again.append(told)
        return told

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
                   heard=self._events.last_heard, longest=self.longest_wait)
        # Whatever happened while we were not listening is unknown: expire caches.
        return d.addCallback(lambda _: self._subscribed())

    def _subscribed(self) -> None:
        """Tell every subscriber that events were lost; again once the command connection
        is up, when it is not yet: the subscriber often comes back first (after an outage,
        at start), and what the subscribers do on lost events (look up every tunnel this
        node holds and claim again the claims Redis let expire, compare the nodes'
        settings, read the logouts) failed then and waited for their next round (a held
        studio unreachable through the other nodes for up to 10 s, measured 6 s)."""
        self._events_lost()
        if not self._commands.ready and not self._lost_again:
            self._lost_again = True

            def again(_: Any) -> None:
                self._lost_again = False
                self._events_lost()
                waits, self._told_again = self._told_again, []
                for told in waits:
                    told.callback(None)

            self._commands.when_ready().addCallback(again)

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

    def _call(self, what: str, command: Callable[[Any], Deferred[Any]],
              first: bool = True) -> Deferred[Any]:
        """`command` on the command connection, within the deadline. With `first`, a
        command made while the store's first connection since its start is still being
        made waits for it (as long as a command may take), instead of failing at once: a
        request that reached a node as it started was answered 503 "not connected yet"
        (a restart quicker than a load balancer's checks sent it there)."""
        conn = self._commands.usable()
        if conn is None:
            if first and self._started and not self._commands.was_ready:
                return self._when_first_connected(what, command)
            return defer.fail(self._unavailable(what))
        # While Redis is still sending (replies to earlier commands), a late answer is
        # this process's own backlog: the deadline waits for Redis to fall silent.
        d = within(defer.maybeDeferred(command, conn), self.timeout, self.clock,
                   heard=self._commands.last_heard, longest=self.longest_wait)

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

    def _when_first_connected(self, what: str, command: Callable[[Any], Deferred[Any]]
                              ) -> Deferred[Any]:
        d = self._commands.when_ready()
        self._first_waits[d] = None
        d.addTimeout(self.timeout, self.clock)

        def over(result: Any) -> Any:
            self._first_waits.pop(d, None)
            return result

        def late(f: Failure) -> Failure:
            f.trap(defer.TimeoutError, defer.CancelledError)
            raise self._unavailable(what)

        return d.addBoth(over).addCallbacks(lambda _: self._call(what, command, first=False), late)

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
        """Whether Redis answers now (never waits for a first connection: /ready's probe)."""
        return self._call("PING", lambda conn: conn.execute_command("PING"),
                          first=False).addCallback(lambda _: None)

    def _seen_key(self, session_id: str) -> str:
        return f"{self.prefix}:{session_id}:seen"

    def create(self, record: SessionRecord) -> Deferred[None]:
        d = self._eval("create", CREATE, [self._key(record.id), self._seen_key(record.id)],
                       [record.to_json(), self.channel, record.id, Seen().to_json(),
                        _ms(SEEN_TTL)])

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
                          [self._key(session_id), self._tunnel_key(session_id),
                           self._seen_key(session_id)],
                          [self.channel, session_id]).addCallback(lambda n: int(n) > 0)

    def get(self, session_id: str) -> Deferred[SessionRecord | None]:
        if not SESSION_ID.fullmatch(session_id):
            return defer.succeed(None)
        d = self._call("get", lambda conn: conn.execute_command("GET", self._key(session_id)))
        return d.addCallback(lambda v: None if v is None else SessionRecord.from_json(v))

    def _scan(self, what: str, under: str) -> Deferred[dict[str, str]]:
        """Every key ``<prefix>:<under><name>``: {key: name}."""
        start = f"{self.prefix}:{under}"
        return self._scan_matching(what, _glob_escape(start) + "*").addCallback(
            lambda keys: {key: key[len(start):] for key in keys})

    def _scan_matching(self, what: str, pattern: str) -> Any:
        """Every key that matches the glob `pattern`, in the order SCAN gives them."""
        return self._scan_calls(what, pattern, None).addCallback(lambda found: found[0])

    @defer.inlineCallbacks
    def _scan_calls(self, what: str, pattern: str, calls: int | None) -> Any:
        """(keys matching `pattern`, whether the whole keyspace was seen): SCAN at 1000
        keys a call, at most `calls` calls (None: until the end)."""
        keys: list[str] = []
        cursor = "0"
        made = 0
        while True:
            def scan(conn: Any, c: str = cursor) -> Any:
                return conn.execute_command("SCAN", c, "MATCH", pattern, "COUNT", 1000)

            reply = yield self._call(what, scan)
            made += 1
            cursor = reply_text(reply[0])
            keys += [reply_text(key) for key in reply[1]]
            if cursor == "0":
                return keys, True
            if calls is not None and made >= calls:
                return keys, False

    def cluster_prefixes(self) -> Deferred[tuple[list[str], bool]]:
        """The CONNECT_REDIS_PREFIX of every cluster with a live node on this Redis (its
        nodes' index ``<prefix>:_nodes``), this one's too once announced, for
        registry.redis_prefixes; and whether the whole keyspace was looked at. One SCAN,
        cut after :data:`PREFIX_SCAN_CALLS` calls: on a Redis shared with millions of
        other keys the whole of it cost seconds of Redis time at every start."""
        end = ":" + NODES_INDEX
        return self._scan_calls("cluster_prefixes", "*" + end, PREFIX_SCAN_CALLS).addCallback(
            lambda found: (sorted({key[:-len(end)] for key in found[0] if key.endswith(end)}),
                           found[1]))

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
        d = self._eval("claim", CLAIM,
                       [self._key(sid), self._tunnel_key(sid), self._seen_key(sid)],
                       [holder.to_json(), px, self.channel, sid,
                        Seen(holder.bound_at).to_json(), _ms(SEEN_TTL)])

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
        seen = Seen(holder.bound_at, self.clock.seconds())
        return self._eval("release", RELEASE,
                          [self._tunnel_key(sid), self._key(sid), self._seen_key(sid)],
                          [holder.tunnel_id, holder.node_id, self.channel, sid,
                           seen.to_json(), _ms(SEEN_TTL)]).addCallback(
            lambda n: int(n) == 1)

    def last_connected(self, session_id: str) -> Deferred[Seen | None]:
        if not SESSION_ID.fullmatch(session_id):
            return defer.succeed(None)

        def read(values: list[Any]) -> Seen | None:
            value = values[0]
            if value is None:
                return None
            try:  # 0: longer than any node writes (Redis did not send it)
                return Seen.from_json(reply_text(value)) if value != 0 else None
            except MalformedRecord as e:
                self._log.warn("ignoring the malformed last-connected record of "
                               "{sid}: {error}", sid=session_id, error=str(e))
                return None

        return self._bounded_gets("last_connected", [self._seen_key(session_id)],
                                  MAX_SEEN_BYTES).addCallback(read)

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
            lines = json.loads(reply_text(value))
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
        keys = [self._node_key(self.node_id), f"{self.prefix}:{NODES_INDEX}"]
        keys += [self._node_key(node) for node in gone]
        event = NODE_EVENT + self.node_id if tell else ""
        d = self._eval("announce_node", ANNOUNCE_NODE, keys,
                       [value, _ms(ttl), self.node_id, MAX_NODES, self.channel, event, *gone])

        def keep(reply: Any) -> str | None:
            prev = reply[1] if isinstance(reply, list) and len(reply) > 1 else None
            return None if prev is None else reply_text(prev)

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
        are read only if they are short enough (MAX_NODES * 100 and MAX_NODE_RECORD):
        Redis sends no longer value, a longer record is no node's and is left out."""
        index, = yield self._bounded_gets("node_records", [f"{self.prefix}:{NODES_INDEX}"],
                                          MAX_NODES * 100)
        try:  # a damaged, hostile or too long index: none (the next announcement rebuilds it)
            ids = json.loads(reply_text(index)) if index else []
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
                                              MAX_NODE_RECORD)
            found.update(zip(chunk, values, strict=True))
        self._nodes_gone = [n for n in nodes if found.get(n) is None]
        return {n: reply_text(v) for n, v in found.items() if v is not None and v != 0}


def _ms(ttl: float) -> int:
    if not isinstance(ttl, int | float) or isinstance(ttl, bool) or not ttl > 0:
        raise ValueError(f"a TTL must be a positive number of seconds, not {ttl!r}")
    return max(1, int(ttl * 1000))


__all__ = ["RedisStore", "default_node_id", "parse_address"]
