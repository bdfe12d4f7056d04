"""The gateway's side of tunnels: the bind handshake, the table of live tunnels.

A connect client dials CONNECT_TUNNEL_PORT over TLS and sends its bind. The
gateway checks the Connect version, the session and its token, claims the
session's tunnel in the store (replacing any earlier holder atomically),
answers, and from then on speaks yamux on the connection. Streams the gateway
opens start with one byte naming their target in the studio: ``T`` the tool,
``S`` the studio's SSH server.

While a tunnel lives its claim is refreshed; when it dies the claim is
released (only if still ours), and if this node dies the claim expires.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from studios_gateway import versions
from studios_gateway.registry.base import (
    Refresh,
    SessionNotFound,
    SessionRecord,
    StoreUnavailable,
    TunnelClaims,
    TunnelHolder,
    token_matches,
)
from studios_gateway.repeats import Repeats
from studios_gateway.tunnel.twins import Twins, peer_host
from studios_gateway.waiters import EmptyWaiters
from studios_gateway.wire import tools
from studios_gateway.wire.bind import (
    BindError,
    BindReply,
    BindRequest,
    LineBuffer,
    parse_request,
)
from studios_gateway.wire.closing import close_within
from studios_gateway.wire.frames import GO_AWAY_ALONE, GO_AWAY_NORMAL, GO_AWAY_REPLACED
from studios_gateway.wire.kinds import STREAM_SSH, STREAM_TOOL
from studios_gateway.wire.mux import Multiplexer, TunnelSilent, facing, lost_uncleanly, words
from studios_gateway.wire.sockopts import (
    TUNNEL_BUFFER,
    TUNNEL_UNACKED_MARGIN,
    bulk_buffers,
    no_delay,
    retransmit_cap,
    unacked_limit,
    unsent_bound,
    write_through,
)

#: Registry look-ups in flight at once for change events (the rest wait their turn): when
#: the registry's events were lost every tunnel is looked up, and 10,000 GETs at once
#: queued the binds' commands and the link's PING behind them (the PING failed, the link
#: was dropped with every command on it, and the events were lost again).
CHECKS_IN_FLIGHT = 16
#: Bind refusals every retrying studio gets for as long as a cause shared by all lasts
#: (Redis away: ~N/8 lines a second for N studios without a tunnel): logged once a
#: minute with a count (each is counted in studios_gateway_tunnel_binds_total).
QUIET_REFUSALS = frozenset({"store_unavailable"})
#: Bind refusals that only a studio holding its session's token gets, for a mistake in
#: how it was started (its tool is not the session's): warnings, since that studio will
#: not start until someone changes it (the others, a stranger's guesses among them, info).
WARNED_REFUSALS = frozenset({"tool_mismatch"})
#: A refresh round (_refresh_all) renews this many claims per registry command (one Lua
#: script on Redis), with this many commands in flight at once.
REFRESH_BATCH = 200
REFRESHES_IN_FLIGHT = 2
#: How long a drain waits for the registry to say whether other nodes are live (then it
#: takes it there are none: idle tunnels close, as on a node of its own).
OTHER_NODES_WAIT = 2.0
#: How long a drain with other live nodes keeps an idle tunnel for its studio to bind
#: elsewhere, from its last GoAway (studios-connect rebinds within REBIND_WITHIN of its
#: GoAway, or, older than stop 47, after a random 0-8 s; when that dial fails it tries
#: again within 0.5 s, then 0-8 s later). Then it closes once idle, as on a node alone: a
#: studio not bound elsewhere by then likely cannot be (every node stops, another node's
#: record outlived its process), and the drain must not wait out its grace for it, nor
#: make a restart much slower (at 20 s, a test that waits 15 s for a stop killed it).
#: A shorter shutdown grace shortens it (move_wait_within).
MOVE_WAIT = 10.0
#: A drain with other live nodes sends the GoAways of the tunnels whose clients said they
#: rebind soon after one (``paced_go_away`` at the bind) at this rate, GOAWAY_TICK apart
#: (the first batch at once), and tells those clients at bind to rebind within
#: REBIND_WITHIN seconds of theirs. 10,000 tunnels take 8 s, the rate at which the
#: clients' own 0-8 s spread (studio.client.GOAWAY_SPREAD) brought them to the other
#: nodes; a node of 100 studios is left in one batch instead of up to 8 s. Older clients'
#: GoAways go at once, and they spread their rebind themselves.
GOAWAY_RATE = 1250.0
GOAWAY_TICK = 0.1
#: A larger node's batches are larger, so that its last GoAway goes within this, as the
#: clients' own spread did: at GOAWAY_RATE alone 40,000 studios took 32 s, past the
#: drain's grace (CONNECT_SHUTDOWN_GRACE, 30 s), and those not told by then lost their
#: tunnel at its end and all retried within 0.5 s.
GOAWAY_LONGEST = 8.0
REBIND_WITHIN = 0.25
#: Seconds between two warnings about one generic session whose studio runs a tool.
GENERIC_SAID_EVERY = 3600.0

# routing(session_id) -> ("subdomain" | "path", the studio's URL as browsers see it, ending
# in "/"): how the gateway serves a studio, told to it in the bind answer.
Routing = Callable[[str], tuple[str, str]]

#: The multiplexer of this end: a silent path is "nothing heard from the studio".
STUDIO_MUX = facing("the studio")


def move_wait_within(grace: float) -> float:
    """How long a drain keeps the tunnel of a studio that has not moved, under a shutdown
    grace (CONNECT_SHUTDOWN_GRACE) of `grace` seconds: MOVE_WAIT (the default 30 s
    grace's third), or a third of a shorter grace. A keep as long as the grace (10 s)
    ended with it: the drain cut ("drain did not finish"), no time left after the keep
    for the streams still in flight."""
    return min(MOVE_WAIT, grace / 3)


@dataclass(frozen=True)
class TunnelSettings:
    window_size: int = 6 * 1024 * 1024
    ping_interval: float = 10.0
    ping_timeout: float = 20.0
    retry_period: float = 8.0  # CONNECT_TUNNEL_RETRY_PERIOD, told to the studio at bind
    holder_ttl: float = 30.0
    bind_timeout: float = 10.0
    max_streams: int = 1024
    move_wait: float = MOVE_WAIT  # move_wait_within(the shutdown grace)


class TunnelMetrics:
    def __init__(self, registry: Any) -> None:
        self.tunnels = Gauge("studios_gateway_tunnels", "Live tunnels held by this node.",
                             registry=registry)
        self.binds = Counter("studios_gateway_tunnel_binds", "Bind attempts by outcome.",
                             ["outcome"], registry=registry)
        self.streams = Counter("studios_gateway_tunnel_streams_opened",
                               "Streams opened to studios.", ["kind"], registry=registry)
        self.losses = Counter("studios_gateway_tunnel_losses",
                              "Bound tunnels that ended, by how: closed (cleanly), lost (the "
                              "connection broke), silent (nothing heard for "
                              "CONNECT_TUNNEL_PING_TIMEOUT).", ["reason"],
                              registry=registry)


class BindVerifier:
    """Decides whether a bind may proceed. Plain object: no transport, no reactor."""

    def __init__(self, store: TunnelClaims,
                 server_version: versions.ConnectVersion | None = None):
        self._store = store
        self._server_version = server_version or versions.CONNECT_PROTOCOL_VERSION

    @defer.inlineCallbacks
    def verify(self, req: BindRequest) -> Any:
        try:
            client = versions.parse_connect_version(req.connect_version)
        except ValueError as e:
            raise BindError("incompatible_version", f"cannot read connect version: {e}")
        try:
            versions.check_client_compatible(client, self._server_version)
        except versions.IncompatibleVersion as e:
            raise BindError("incompatible_version", str(e))
        try:
            record = yield self._store.get(req.session_id)
        except StoreUnavailable as e:
            raise BindError("store_unavailable", f"session store unavailable: {e}")
        if record is None:
            raise BindError("unknown_session", f"no session {req.session_id} on this gateway")
        if not token_matches(req.token, record.token_hash):
            raise BindError("bad_token", "the connect token is not valid for this session")
        # The request's tool is canonical (parse_request); a record could hold an alias.
        if tools.canonical(record.tool) not in (req.tool, "generic"):
            raise BindError("tool_mismatch",
                            f"session {record.id} is a {record.tool} studio, not {req.tool}")
        return record


def same_process(ours: str, theirs: str) -> bool:
    """Two binds' instances (wire.bind) name one studios-connect process (both said one)."""
    return bool(ours) and ours == theirs


class Tunnel:
    """One live tunnel on this node."""

    # One per bound tunnel, for its whole life: slots, and of the session's record only
    # the tool (a store on Redis hands each bind a record of its own, ~0.3 KiB) and the
    # hash of the token it was bound with (a token replaced since closes it).
    __slots__ = ("tool", "holder", "mux", "protocol", "token_hash", "ended", "paced",
                 "knows_replaced")

    def __init__(self, tool: str, holder: TunnelHolder, mux: Multiplexer, protocol: Protocol,
                 token_hash: str = "", paced: bool = False, knows_replaced: bool = False):
        self.tool = tool
        self.holder = holder
        self.mux = mux
        self.protocol = protocol
        self.token_hash = token_hash
        #: Its client rebinds within REBIND_WITHIN of a GoAway: a drain paces its GoAway.
        self.paced = paced
        #: Its client knows GO_AWAY_REPLACED (a newer bind took its session's tunnel).
        self.knows_replaced = knows_replaced
        #: Its session ended (TunnelTable.on_gone was called for it): closing.
        self.ended = False

    @property
    def session_id(self) -> str:
        return self.holder.session_id

    def open_stream(self, kind: bytes) -> Any:
        # The kind byte and the SYN go out with the stream's first write (the request),
        # as one TLS record.
        return self.mux.open_stream(kind)

    def retire(self, keep: bool = False, alone: bool = False, replaced: bool = False) -> None:
        """No new streams from the studio (GoAway); close once the streams in flight have
        finished, or, with `keep`, keep serving until told (the node drains
        in a cluster: the studio is served here until it has bound elsewhere). `alone`:
        the node stops with no other to take the studio: a paced client is told to spread
        its rebind itself (GO_AWAY_ALONE), as the others do anyway. `replaced`: a newer
        bind of the session took its place here; a client that knows it is told so
        (GO_AWAY_REPLACED), and rebinds later rather than at once."""
        if replaced and self.knows_replaced:
            code = GO_AWAY_REPLACED
        else:
            code = GO_AWAY_ALONE if alone and self.paced else GO_AWAY_NORMAL
        self.mux.go_away(code)
        if not keep:
            self.close_when_idle()

    def close_when_idle(self) -> None:
        """Close once no stream is open (now, if none is)."""
        self.mux.when_idle(self.close)

    def close(self) -> None:
        if self.mux.transport is not None:
            self.mux.close()
            return
        transport = self.protocol.transport
        if transport is not None:
            close_within(transport, self.mux.clock, "tunnel connection (its bind unanswered)")


class TunnelTable:
    """The tunnels this node holds, their claims in the store, and drain."""

    _log = Logger()

    def __init__(self, store: TunnelClaims, *, node_id: str, node_address: str, clock: Any,
                 settings: TunnelSettings, metrics: TunnelMetrics | None = None,
                 verifier: BindVerifier | None = None, ssh_host_key: str | None = None,
                 routing: Routing | None = None):
        self.store = store
        self.node_id = node_id
        self.node_address = node_address
        self.clock = clock
        self.settings = settings
        self.metrics = metrics
        self.verifier = verifier or BindVerifier(store)
        #: Fingerprint of the SSH proxy's key, told to every studio at bind (None: no SSH).
        self.ssh_host_key = ssh_host_key
        #: session id -> (routing mode, public URL), told to every studio at bind (None: not
        #: told; the studio keeps its own settings).
        self.routing = routing
        #: session id -> its mark (http.loop.Marks.of), told to every studio at bind, which
        #: asks its tool's port with it (studio.points_back); None: not told.
        self.loop_mark: Callable[[str], bytes] | None = None
        #: on_gone(session id): a session this node holds a tunnel for is gone from the
        #: registry (ended here or on another node, or lost): called before its tunnel
        #: closes, so its open connections close as ended, not as broken.
        self.on_gone: Callable[[str], Any] = lambda session_id: None
        #: other_nodes() -> Deferred[int]: how many other live nodes could take this
        #: node's studios (set with peers; None: none can). While there are some, a drain
        #: keeps each retired tunnel open until its studio has bound elsewhere (or the
        #: studio closes it, or settings.move_wait passes), so that the studio is served
        #: meanwhile.
        self.other_nodes: Callable[[], Deferred[int]] | None = None
        self.draining = False
        #: A drain's next timed step: its next batch of GoAways, or the end of its
        #: move wait (cancelled by stop()).
        self._keep_call: Any = None
        #: A drain's question to the registry (other_nodes), until answered; stop()
        #: cancels it, and an answer after the stop does nothing.
        self._others_asked: Deferred[int] | None = None
        self._drain_began = 0.0
        self._tunnels: dict[str, Tunnel] = {}
        #: Sessions whose tunnel is replaced again and again: two studios on one session.
        self._twins = Twins(clock)
        #: Tunnels whose session another node holds now: out of the table (requests go to
        #: the new holder), finishing their streams in flight until closed at the timer.
        self._moved: dict[Tunnel, Any] = {}
        self._unsubscribe: Callable[[], None] | None = None
        #: Sessions whose holder is to be looked up (a dict as an ordered set: changes
        #: heard again before the look-up coalesce; True: queued because events were lost,
        #: so a session found gone was ended unheard), and look-ups in flight.
        self._to_check: dict[str, bool] = {}
        self._checking = 0
        #: Claims of this node's whose change event has not come yet, per session. The
        #: registry publishes one event per claim, in the order the claims were made, so
        #: the next event of a session after our claim is ours, or a change made before
        #: ours (which ours overrides): no look-up for it (one registry GET per bind).
        self._own_claims: dict[str, int] = {}
        self._pumping = False
        #: Refusals of the QUIET_REFUSALS codes: said once a minute, with a count.
        self.quiet_refusals = Repeats(clock)
        #: Generic sessions whose studio runs a tool: said once an hour per session, with
        #: the count of its binds between (each GoAway, reconnect or twin's turn binds).
        self._generic_said = Repeats(clock, every=GENERIC_SAID_EVERY, max_kinds=1024)
        #: Tunnels held here whose claim a look-up found gone: claimed again at once.
        self._reclaiming: dict[Tunnel, None] = {}
        #: Sessions found gone without an event saying so, for the next warning.
        self._unheard: list[str] = []
        #: The claims made again and that warning, when due (cancelled by stop()).
        self._reclaim_call: Any = None
        self._unheard_call: Any = None
        self._empty = EmptyWaiters()
        self._refresher = task.LoopingCall(self._refresh_all)
        self._refresher.clock = clock

    # Lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        if not self._refresher.running:
            self._refresher.start(self.settings.holder_ttl / 3, now=False)
        if self._unsubscribe is None:
            self._unsubscribe = self.store.subscribe(self._changed)

    def stop(self) -> Deferred[None]:
        if self._refresher.running:
            self._refresher.stop()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._to_check.clear()
        self._own_claims.clear()  # (events after a restart of the table: all looked up)
        for call in (self._reclaim_call, self._unheard_call, self._keep_call):
            if call is not None and call.active():
                call.cancel()
        self._reclaim_call = self._unheard_call = self._keep_call = None
        asked, self._others_asked = self._others_asked, None
        if asked is not None:
            asked.cancel()
        self._reclaiming.clear()
        self._unheard.clear()
        for tunnel in [*self._tunnels.values(), *self._moved]:
            tunnel.close()
        return defer.succeed(None)

    def drain(self) -> Deferred[None]:
        """GoAway to every tunnel: clients rebind elsewhere; resolves when all are gone.

        A tunnel's streams finish on it. An idle tunnel closes at once, unless other
        nodes are live (:attr:`other_nodes`): then it stays until its studio has bound
        elsewhere (this node hears the registry's change: :meth:`_held_elsewhere`), the
        studio closes it or the move wait (``settings.move_wait``, MOVE_WAIT by default)
        passes, and requests through other nodes reach the studio through it meanwhile,
        instead of "not connected" for the 0-8 s the studio takes to rebind.

        Tunnels whose clients rebind soon after a GoAway (:attr:`Tunnel.paced`) get theirs
        at GOAWAY_RATE once other live nodes are known (the registry's answer), so that
        the studios of a large node do not all bind to the others at once (each such
        client rebinds within REBIND_WITHIN of its GoAway); with none, at once, saying
        GO_AWAY_ALONE: those clients spread their rebind themselves, as older ones do (a
        restarted node's studios then come back evenly, not all within moments into its
        listen queue)."""
        self.draining = True
        self._drain_began = self.clock.seconds()
        tunnels = list(self._tunnels.values())
        other_nodes = self.other_nodes
        cluster = other_nodes is not None
        for tunnel in tunnels:
            if not (cluster and tunnel.paced):
                tunnel.retire(keep=cluster, alone=not cluster)
        if other_nodes is not None and tunnels:
            d = self._others_asked = defer.maybeDeferred(other_nodes)
            d.addTimeout(OTHER_NODES_WAIT, self.clock)

            def answered(others: int, failure: Failure | None = None) -> None:
                if self._others_asked is d:  # (not stopped meanwhile)
                    self._others_asked = None
                    self._others_known(others, tunnels, failure)

            d.addCallbacks(answered, lambda f: answered(0, f))
        return self.wait_empty()

    def _others_known(self, others: int, tunnels: list[Tunnel],
                      failure: Failure | None = None) -> None:
        """The registry said how many other nodes are live. With some, the paced tunnels'
        GoAways go out in batches, then the move wait. With none (or none known: the
        registry did not say in time) the paced tunnels are told GO_AWAY_ALONE and every
        tunnel closes once idle, as on a node of its own: no studio can move."""
        paced = [t for t in tunnels if t.paced]
        if others > 0:
            batch = self._goaway_batch(len(paced), self.clock.seconds() - self._drain_began)
            ticks = -(-len(paced) // batch)  # (the first batch at once)
            self._log.info("draining: {n} tunnel(s) kept until their studios have bound to "
                           "one of {others} other node(s), {wait:g}s at most{paced}",
                           n=len(self._tunnels), others=others, wait=self.settings.move_wait,
                           paced=f" after {len(paced)} GoAways paced over "
                                 f"{round((ticks - 1) * GOAWAY_TICK, 1):g}s"
                           if ticks > 1 else "")
            self._go_away_paced(paced, 0, tunnels, batch)
            return
        if failure is not None:
            self._log.info("draining: other nodes not known ({why}); tunnels close once idle",
                           why=failure.getErrorMessage())
        for tunnel in paced:
            if self._holds(tunnel):
                tunnel.retire(keep=True, alone=True)
        for tunnel in tunnels:
            tunnel.close_when_idle()

    @staticmethod
    def _goaway_batch(paced: int, waited: float = 0.0) -> int:
        """How many of `paced` GoAways go in a batch: GOAWAY_RATE's share of a tick, more
        if the last would go later than GOAWAY_LONGEST after the drain began (`waited`
        of it gone, asking the registry for other nodes: up to OTHER_NODES_WAIT), so
        that a studio has bound elsewhere within peers.remote.SSH_REBIND_WAIT."""
        ticks = max(1, int((GOAWAY_LONGEST - waited) / GOAWAY_TICK))
        return max(1, int(GOAWAY_RATE * GOAWAY_TICK), -(-paced // ticks))

    def _go_away_paced(self, paced: list[Tunnel], start: int, tunnels: list[Tunnel],
                       batch: int) -> None:
        """GoAway to the next `batch` of `paced` tunnels still held here (one that moved or
        closed meanwhile needs none), the next batch GOAWAY_TICK later; after the last,
        the move wait for the studios to bind elsewhere."""
        self._keep_call = None
        end = start + batch
        for tunnel in paced[start:end]:
            if self._holds(tunnel):
                tunnel.retire(keep=True)
        if end < len(paced):
            self._keep_call = self.clock.callLater(GOAWAY_TICK, self._go_away_paced, paced,
                                                   end, tunnels, batch)
        else:
            self._keep_call = self.clock.callLater(self.settings.move_wait, self._stop_keeping,
                                                   tunnels)

    def _stop_keeping(self, tunnels: list[Tunnel]) -> None:
        """The move wait after the last GoAway: the tunnels whose studio has not bound
        elsewhere close once idle, as on a node alone."""
        self._keep_call = None
        left = [t for t in tunnels if self._holds(t)]
        if left:
            self._log.info("draining: {n} studio(s) not bound to another node within "
                           "{wait:g}s; their tunnels close once idle", n=len(left),
                           wait=self.settings.move_wait)
        for tunnel in left:
            tunnel.close_when_idle()

    def in_use(self) -> str:
        """What holds the drain: the tunnels still open and their streams (a tunnel told
        GoAway closes once its streams end; what is left at the grace's end is mostly
        WebSockets, some relayed by other nodes, whose pages reconnect when it closes)."""
        tunnels = [*self._tunnels.values(), *self._moved]
        if not tunnels:
            return ""
        streams = sum(len(t.mux.streams) for t in tunnels)
        sessions = sorted({t.session_id for t in tunnels})
        shown = ", ".join(sessions[:5]) + (f" and {len(sessions) - 5} more"
                                            if len(sessions) > 5 else "")
        if not streams:  # kept for their studios to move (drain), which have not yet
            return (f"{len(tunnels)} tunnel{'s' * (len(tunnels) != 1)} with no open stream, "
                    f"kept for {'their studios' if len(tunnels) != 1 else 'its studio'} to "
                    f"bind to another node, of session{'s' * (len(sessions) != 1)} {shown}")
        return (f"{len(tunnels)} tunnel{'s' * (len(tunnels) != 1)} with {streams} open "
                f"stream{'s' * (streams != 1)} (long-lived connections such as WebSockets, "
                f"ssh sessions or downloads: they close now, and pages reconnect their "
                f"WebSockets) of "
                f"session{'s' * (len(sessions) != 1)} {shown}")

    def wait_empty(self) -> Deferred[None]:
        return self._empty.wait(not self._tunnels and not self._moved)

    # Queries -----------------------------------------------------------------

    def get(self, session_id: str) -> Tunnel | None:
        return self._tunnels.get(session_id)

    def _holds(self, tunnel: Tunnel) -> bool:
        """Whether `tunnel` is still its session's tunnel here (not lost, moved or
        replaced since)."""
        return self._tunnels.get(tunnel.session_id) is tunnel

    def __len__(self) -> int:
        return len(self._tunnels)

    def open_stream(self, session_id: str, kind: bytes = STREAM_TOOL) -> Any | None:
        tunnel = self._tunnels.get(session_id)
        if tunnel is None:
            return None
        stream = tunnel.open_stream(kind)  # raises TunnelUnavailable while it closes
        if self.metrics:
            self.metrics.streams.labels("ssh" if kind == STREAM_SSH else "tool").inc()
        return stream

    def session_ended(self, session_id: str) -> None:
        """The session was ended through this node (the admin API's delete): its
        connections here are told (on_gone), then its tunnel, if held here, closes. Once:
        the look-up of the registry's event (:meth:`_gone`) may have come first, or come
        after; whichever is second does nothing."""
        tunnel = self._tunnels.get(session_id)
        if tunnel is not None:
            self._gone(tunnel, unheard=False)
        else:
            self._tell_gone(session_id)

    def _tell_gone(self, session_id: str) -> None:
        try:
            self.on_gone(session_id)
        except Exception:
            self._log.failure("ending the connections of session {sid}", sid=session_id)

    def _say_generic_session_runs(self, sid: str, tool: str) -> None:
        """A generic session (made without a tool, from an image whose name names none)
        whose studio runs a tool's preset is served as a generic web application: for
        R-IDE, VS Code and Xpra in path mode that is their prefix passed where they need it
        stripped, a page that never loads. It bound without a word (builder50). Once an
        hour per session: a studio binds again at each GoAway and reconnect, and two
        studios on one session (tunnel.twins) several times a second."""
        unsaid = self._generic_said.due(sid)
        if unsaid is None:
            return
        spec = tools.spec_for(tool)
        how = (f"; in path mode {spec.title} gets its prefix passed, not stripped as it "
               "needs" if spec.strip_prefix else "")
        self._log.warn("session {sid} is a generic studio but its studio runs {title} "
                       "(studios-connect --tool {tool}): it is served as a generic web "
                       "application{how}. Create its sessions with tool {tool} (--tool), or "
                       "from an image whose repository name names the tool{more}", sid=sid,
                       title=spec.title, tool=tool, how=how,
                       more=self._generic_said.more(unsaid))

    def end_session(self, session_id: str) -> None:
        tunnel = self._tunnels.get(session_id)
        if tunnel is not None:
            self._log.info("session {sid} ended: closing its tunnel", sid=session_id)
            tunnel.close()

    # Binding -----------------------------------------------------------------

    @defer.inlineCallbacks
    def bind(self, req: BindRequest, make_mux: Callable[[], Multiplexer],
             protocol: Protocol) -> Any:
        """Verify and claim; return the new Tunnel or raise BindError."""
        if self.draining:
            raise BindError("draining", "this gateway is shutting down; try another")
        record = yield self.verifier.verify(req)
        if tools.canonical(record.tool) == "generic" and req.tool != "generic":
            self._say_generic_session_runs(req.session_id, req.tool)
        holder = TunnelHolder(
            session_id=req.session_id, node_id=self.node_id, node_address=self.node_address,
            tunnel_id=secrets.token_hex(8), client_version=sys.intern(req.connect_version),
            tool_port=req.tool_port, bound_at=time.time(),
            tool_version=sys.intern(req.tool_version),  # versions: one copy for all studios
            instance=req.instance)
        sid = req.session_id
        if req.if_free:
            yield self._refuse_if_held(req, protocol)
        self._own_claims[sid] = self._own_claims.get(sid, 0) + 1
        try:
            yield self.store.claim_tunnel(holder, self.settings.holder_ttl)
            tunnel = Tunnel(sys.intern(record.tool), holder, make_mux(), protocol,
                            record.token_hash, paced=req.paced_go_away,
                            knows_replaced=req.replaced_go_away)
        except BaseException as e:  # (the claim made or not, its tunnel not in the table)
            self._claim_failed(sid)
            if isinstance(e, StoreUnavailable):
                raise BindError("store_unavailable", f"session store unavailable: {e}")
            if isinstance(e, SessionNotFound):
                raise BindError("unknown_session", f"session {sid} has ended")
            raise
        old = self._tunnels.get(sid)
        self._tunnels[sid] = tunnel
        if old is not None and same_process(old.holder.instance, req.instance):
            # The studio back before its old connection was found dead: not two studios.
            self._log.info("session {sid}: its studio bound again before its old tunnel "
                           "was found dead; the new tunnel replaces it", sid=sid)
            old.retire()
        elif old is not None:
            self._log.info("session {sid}: a new tunnel replaces the old one", sid=sid)
            twins = self._twins.replaced(sid, peer_host(old.protocol), peer_host(protocol),
                                         told=req.replaced)
            if twins is not None:
                self._log.warn("{twins}", twins=twins)
            old.retire(replaced=True)
        self._update_gauge()
        return tunnel

    @defer.inlineCallbacks
    def _refuse_if_held(self, req: BindRequest, protocol: Protocol) -> Any:
        """A studio whose tunnel a newer bind took over asks to bind only while no other
        tunnel holds the session (``if_free``): refused ``held`` while one is held here or
        claimed by another node, so it does not take the session back from the newer one
        (they took turns); it binds once that one has stopped (its claim released, or
        expired after its tunnel was found dead)."""
        sid = req.session_id
        here = self._tunnels.get(sid)
        if here is not None and same_process(here.holder.instance, req.instance):
            return  # (its own old tunnel, not yet found dead: not another studio's)
        if here is not None:
            where = f"from {peer_host(here.protocol)}"
        else:
            try:
                holder = yield self.store.get_tunnel(sid)
            except StoreUnavailable as e:
                raise BindError("store_unavailable", f"session store unavailable: {e}")
            if holder is None or same_process(holder.instance, req.instance):
                return  # (free, or held by its own old tunnel through another node)
            where = f"through node {holder.node_id}"
        said = self._twins.waiting(sid, where, peer_host(protocol))
        if said is not None:
            self._log.warn("{twins}", twins=said)
        raise BindError("held", f"session {sid} is served by another studios-connect (bound "
                                f"{where}); this one binds once that one has stopped")

    def lost(self, tunnel: Tunnel) -> None:
        """A tunnel's connection ended: forget it and release its claim if still ours."""
        timer = self._moved.pop(tunnel, None)
        if timer is not None and timer.active():
            timer.cancel()
        if self._holds(tunnel):
            del self._tunnels[tunnel.session_id]
            self._release(tunnel)
        self._update_gauge()
        if not self._tunnels and not self._moved:
            self._empty.fire()

    def _release(self, tunnel: Tunnel) -> None:
        d = defer.maybeDeferred(self.store.release_tunnel, tunnel.holder)
        d.addErrback(lambda f: self._log.info(
            "could not release the claim of session {sid} ({why}); it expires by itself",
            sid=tunnel.session_id, why=f.getErrorMessage()))

    def _update_gauge(self) -> None:
        if self.metrics:
            self.metrics.tunnels.set(len(self._tunnels))

    def _refresh_all(self) -> Deferred[Any]:
        """Refresh every claim, REFRESH_BATCH per registry command and REFRESHES_IN_FLIGHT
        commands at once. One claim per command, 16 in flight, a round of 10,000 claims
        on Redis cost the gateway ~2 s of CPU on a slow machine every 10 s, and its
        commands queued ahead of the binds' in a reconnect storm."""
        return self._refresh_batched(list(self._tunnels.values()))

    def _refresh_batched(self, tunnels: list[Tunnel]) -> Deferred[Any]:
        limit = defer.DeferredSemaphore(REFRESHES_IN_FLIGHT)
        return defer.DeferredList([limit.run(self._refresh, tunnels[at:at + REFRESH_BATCH])
                                   for at in range(0, len(tunnels), REFRESH_BATCH)])

    @defer.inlineCallbacks
    def _refresh(self, tunnels: list[Tunnel]) -> Any:
        try:
            answers = yield self.store.refresh_tunnels([t.holder for t in tunnels],
                                                       self.settings.holder_ttl)
        except StoreUnavailable:
            return  # keep serving; retry at the next round
        except Exception:
            self._log.failure("refreshing the claims of {n} sessions", n=len(tunnels))
            return
        for tunnel, answer in zip(tunnels, answers, strict=True):
            if not self._holds(tunnel):
                # Lost (and released) while its refresh was on the way, which may have
                # claimed it again: release that claim (only if still ours).
                if answer is Refresh.OURS:
                    self._release(tunnel)
            elif answer is Refresh.GONE:
                # No event said it ended (or it would have been looked up and closed):
                # Redis lost it, or this node was not listening.
                self._gone(tunnel, unheard=True)
            elif answer is Refresh.HELD_ELSEWHERE:
                self._held_elsewhere(tunnel, "its claim could not be refreshed")

    # Following the registry ----------------------------------------------------

    def _claim_failed(self, sid: str) -> None:
        """A claim of ours failed: whether its event will come is unknown, so events are
        no longer taken as ours, and a tunnel we still hold is looked up (an event
        taken as ours meanwhile may have been another node's)."""
        self._own_claims.pop(sid, None)
        if sid in self._tunnels:
            self._to_check[sid] = self._to_check.get(sid, False)
            self._check_next()

    def _changed(self, session_id: str | None) -> None:
        """The registry says a session changed (None: anything may have): if another
        node claimed the tunnel of one we hold, stop routing to ours at once; if the
        session's connect token was replaced (the admin API's POST .../token), close the
        tunnel bound with the old one."""
        lost = session_id is None
        if session_id is None:
            self._own_claims.clear()
            ids: list[str] = list(self._tunnels)
        else:
            own = self._own_claims.get(session_id)
            if own:  # our own claim's event (see _own_claims)
                if own == 1:
                    del self._own_claims[session_id]
                else:
                    self._own_claims[session_id] = own - 1
                return
            ids = [session_id] if session_id in self._tunnels else []
        for sid in ids:
            self._to_check[sid] = lost or self._to_check.get(sid, False)
        self._check_next()

    def _check_next(self) -> None:
        """Start look-ups of queued sessions, CHECKS_IN_FLIGHT at most at once."""
        if self._pumping:  # a look-up answered at once, inside the loop below
            return
        self._pumping = True
        try:
            while self._to_check and self._checking < CHECKS_IN_FLIGHT:
                sid = next(iter(self._to_check))
                lost = self._to_check.pop(sid)
                tunnel = self._tunnels.get(sid)
                if tunnel is None:
                    continue
                self._checking += 1
                d: Deferred[Any] = defer.maybeDeferred(self.store.get_tunnel, sid)
                d.addCallback(self._check_holder, tunnel)
                d.addCallback(self._record_of, tunnel)
                d.addCallback(self._check_record, tunnel, lost)
                d.addErrback(lambda f: None)  # the registry is away: the refresh loop retries
                d.addBoth(self._checked)
        finally:
            self._pumping = False

    def _checked(self, _: object) -> None:
        self._checking -= 1
        self._check_next()

    def _check_holder(self, holder: TunnelHolder | None,
                      tunnel: Tunnel) -> TunnelHolder | None:
        # Only a claim by another tunnel proves the studio has moved.
        if holder is not None and holder.tunnel_id != tunnel.holder.tunnel_id:
            if same_process(tunnel.holder.instance, holder.instance):
                # (the same studios-connect bound through another node before this tunnel
                # was found dead: it moved, it is not a second studio)
                self._held_elsewhere(tunnel, f"node {holder.node_id} holds it now")
                return holder
            if self._holds(tunnel) and (holder.node_id, holder.node_address) != (
                    self.node_id, self.node_address):
                # Two studios on one session through two nodes take turns as on one node
                # (each claim retires the other node's tunnel, whose studio binds again
                # at once): counted as a replacement here, and said the same way.
                twins = self._twins.replaced(tunnel.session_id, peer_host(tunnel.protocol),
                                             f"a studio bound through node {holder.node_id}")
                if twins is not None:
                    self._log.warn("{twins}", twins=twins)
            # (a studio that moved on its own is told too: its client has left this tunnel
            # and only closes it; a second studio is told to wait for the session, if_free)
            self._held_elsewhere(tunnel, f"node {holder.node_id} holds it now", replaced=True)
        return holder

    def _record_of(self, holder: TunnelHolder | None, tunnel: Tunnel) -> Deferred[Any]:
        """(holder, the session's record) of `tunnel`'s session."""
        return self.store.get(tunnel.session_id).addCallback(lambda record: (holder, record))

    def _check_record(self, found: tuple[TunnelHolder | None, SessionRecord | None],
                      tunnel: Tunnel, lost: bool) -> None:
        holder, record = found
        if not self._holds(tunnel):
            return
        if record is None:
            # Ended (through another node: its delete removed the claim too), or lost
            # by Redis: closed now, not "moved" at the next refresh round.
            self._gone(tunnel, unheard=lost)
            return
        if holder is None:
            # The claim expired while Redis was away longer than its TTL (or Redis lost
            # it): claimed again now, not at the next refresh round (up to a third of the
            # TTL later, all that time every other node finding no holder and answering
            # "not connected"). The refresh script claims only while nobody else has.
            if self._reclaim_call is None:
                self._reclaim_call = self.clock.callLater(0, self._reclaim)
            self._reclaiming[tunnel] = None
        self._check_token(record, tunnel)

    def _reclaim(self) -> Deferred[Any]:
        """Refresh (so claim again) the tunnels whose claim a look-up found gone, as the
        refresh loop does, batched; those left the table meanwhile are skipped."""
        self._reclaim_call = None
        tunnels = [t for t in self._reclaiming if self._holds(t)]
        self._reclaiming.clear()
        return self._refresh_batched(tunnels)

    def _gone(self, tunnel: Tunnel, *, unheard: bool) -> None:
        """`tunnel`'s session is no longer in the registry: close its tunnel. `unheard`:
        no event said it ended (this node was not listening, or Redis lost it): the
        operator is told, once a second at most with a count."""
        if tunnel.ended:
            return  # (ended here and looked up too: told and closed once)
        tunnel.ended = True
        self._tell_gone(tunnel.session_id)
        self.end_session(tunnel.session_id)
        if unheard:
            if self._unheard_call is None:
                self._unheard_call = self.clock.callLater(1.0, self._say_unheard)
            self._unheard.append(tunnel.session_id)

    def _say_unheard(self) -> None:
        self._unheard_call = None
        gone, self._unheard = self._unheard, []
        self._log.warn(
            "{n} session(s) this node held a tunnel for are no longer in the registry, "
            "though no event said they ended ({ids}): closed their tunnels. If nobody "
            "ended them, Redis lost them (restarted without its data, or emptied by "
            "FLUSHALL, FLUSHDB or a DEL of the prefix's keys? see cluster.md, \"Redis must "
            "persist\")",
            n=len(gone), ids=", ".join(gone[:5]) + (", ..." if len(gone) > 5 else ""))

    def _check_token(self, record: SessionRecord | None, tunnel: Tunnel) -> None:
        # A tunnel bound with a token that was replaced since (a leaked one, say) must
        # not go on serving the studio's users: closed, its streams too. The studio's
        # client is refused with the old token from then on (bad_token).
        if (record is not None and tunnel.token_hash
                and record.token_hash != tunnel.token_hash
                and self._holds(tunnel)):
            self._log.info("session {sid}: its connect token was replaced; closing the "
                           "tunnel bound with the old one", sid=tunnel.session_id)
            tunnel.close()

    def _held_elsewhere(self, tunnel: Tunnel, why: str, replaced: bool = False) -> None:
        """Take the tunnel out of the table (requests go to the new holder) and let the
        streams in flight finish (GoAway), for at most a claim-refresh period (the bound
        the refresh loop gave before): then it is closed. While this node drains, the
        studio moved because this node told it to (GoAway) and its old tunnel still
        carries the streams in flight (SSH sessions, downloads; from other nodes too,
        over the peer link): those finish within the drain's grace, as every other
        connection's, so no refresh-period bound is set."""
        if not self._holds(tunnel):
            return
        self._log.info("session {sid} moved ({why}): retiring this node's tunnel",
                       sid=tunnel.session_id, why=why)
        del self._tunnels[tunnel.session_id]
        self._moved[tunnel] = (None if self.draining else
                               self.clock.callLater(self.settings.holder_ttl / 3, tunnel.close))
        self._update_gauge()
        tunnel.retire(replaced=replaced)


class TunnelServerProtocol(Protocol):
    """Reads the bind, answers it, then hands the connection to the multiplexer."""

    # Set by makeConnection before any other event: a TLS connection from a connect client.
    transport: Any

    _log = Logger()

    def __init__(self, table: TunnelTable):
        self.table = table
        self._lines: LineBuffer | None = LineBuffer()
        self._mux: Multiplexer | None = None
        self._tunnel: Tunnel | None = None
        self._timeout: Any = None
        self._closed = False

    def connectionMade(self) -> None:
        no_delay(self.transport)
        unsent_bound(self.transport)
        retransmit_cap(self.transport)
        # (the kernel would end it ~27 s into a silence under the cap: before the pings)
        unacked_limit(self.transport, self.table.settings.ping_timeout + TUNNEL_UNACKED_MARGIN)
        bulk_buffers(self.transport, TUNNEL_BUFFER)
        write_through(self.transport)
        self._timeout = self.table.clock.callLater(self.table.settings.bind_timeout,
                                                   self._bind_timed_out)

    def _bind_timed_out(self) -> None:
        # A message that waited in the socket while this process was busy still counts:
        # the refusal goes after the reactor's next poll, unless the message came in it.
        self._timeout = self.table.clock.callLater(0, self._no_bind_message)

    def _no_bind_message(self) -> None:
        self._timeout = None
        # Retryable: a studio starved of CPU (or on a slow path) is late, not wrong; the
        # bind's own steps have their own deadlines (the registry's), so this timer only
        # waits for the message.
        self._refuse(BindError("bind_timeout", "no bind message within "
                                               f"{self.table.settings.bind_timeout:g}s"))

    def dataReceived(self, data: bytes) -> None:
        if self._mux is not None:
            self._mux.dataReceived(data)
            return
        if self._lines is None:
            return  # bind in progress: the client must wait for the answer
        try:
            got = self._lines.feed(data)
        except BindError as e:
            self._refuse(e)
            return
        if got is None:
            return
        line, rest = got
        self._lines = None
        self._cancel_timeout()  # the message is here
        if rest:
            self._refuse(BindError("malformed", "data sent before the bind was answered"))
            return
        try:
            req = parse_request(line)
        except BindError as e:
            self._refuse(e)
            return
        d = self.table.bind(req, self._make_mux, self)
        d.addCallbacks(self._bound, self._bind_failed, errbackArgs=(req,))

    def _make_mux(self) -> Multiplexer:
        s = self.table.settings
        return STUDIO_MUX(is_client=False, clock=self.table.clock, window_size=s.window_size,
                          max_streams=s.max_streams, ping_interval=s.ping_interval,
                          ping_timeout=s.ping_timeout, on_stream=self._refuse_stream,
                          gather=True)

    @staticmethod
    def _refuse_stream(stream: Any) -> None:
        stream.abortConnection()  # studios do not open streams towards the gateway

    def _bound(self, tunnel: Tunnel) -> None:
        self._cancel_timeout()
        if self._closed:
            self.table.lost(tunnel)
            return
        self._tunnel = tunnel
        if self.table.metrics:
            self.table.metrics.binds.labels("ok").inc()
        self._log.info("session {sid} bound (connect {version}, tool {tool} {tool_version}"
                       "on port {port})", sid=tunnel.session_id,
                       version=tunnel.holder.client_version, tool=tunnel.tool,
                       tool_version=tunnel.holder.tool_version + " " if tunnel.holder.tool_version
                       else "", port=tunnel.holder.tool_port)
        s = self.table.settings
        mode, url = self.table.routing(tunnel.session_id) if self.table.routing else ("", "")
        self.transport.write(BindReply(ok=True, tunnel_id=tunnel.holder.tunnel_id,
                                       ssh_host_key=self.table.ssh_host_key or "",
                                       routing=mode, public_url=url,
                                       ping_interval=s.ping_interval,
                                       ping_timeout=s.ping_timeout,
                                       retry_period=s.retry_period,
                                       rebind_within=REBIND_WITHIN if tunnel.paced
                                       else 0.0,
                                       loop_mark=self.table.loop_mark(tunnel.session_id).decode()
                                       if self.table.loop_mark else "").encode())
        self._setup_done()
        self._mux = tunnel.mux
        # Said with the session here (the multiplexer's own line named only "the studio";
        # the class's logger: the tunnel's multiplexer keeps no reference to this protocol,
        # nor to its tunnel: no cycle for the collector)
        log, sid = type(self)._log, tunnel.session_id
        self._mux.on_go_away = lambda code: log.info(
            "session {sid}: the studio is going away: no new streams on its tunnel", sid=sid)
        self._mux.makeConnection(self.transport)
        deliver_to = getattr(self.transport, "deliver_to", None)
        if deliver_to is not None:
            deliver_to(self._mux)  # the tunnel's TLS reads go to the mux without this hop
        if self.table.draining:
            # A drain that began during this bind's check and claim did not tell this
            # tunnel: told now (else the drain would wait out its grace for it).
            tunnel.retire()

    def _bind_failed(self, f: Failure, req: BindRequest) -> None:
        if f.check(BindError):
            assert isinstance(f.value, BindError)
            self._refuse(f.value)
        else:
            self._log.failure("bind of session {sid} failed", f, sid=req.session_id)
            self._refuse(BindError("internal", "internal error; try again"))

    def _refuse(self, err: BindError) -> None:
        self._cancel_timeout()
        if self.table.metrics:
            self.table.metrics.binds.labels(err.code).inc()
        peer = self.transport.getPeer() if self.transport else None
        unsaid: int | None = 0
        if err.code in QUIET_REFUSALS:  # every studio that retries, for the whole outage
            unsaid = self.table.quiet_refusals.due(err.code)
        if unsaid is not None:
            say = self._log.warn if err.code in WARNED_REFUSALS else self._log.info
            say("bind refused from {peer}: {code}: {reason}{more}",
                peer=getattr(peer, "host", "?"), code=err.code, reason=err.reason,
                more=self.table.quiet_refusals.more(unsaid))
        if self.transport is not None and not self._closed:
            self.transport.write(BindReply.refusal(err).encode())
            self._setup_done()
            close_within(self.transport, self.table.clock, "tunnel connection (bind refused)")

    def _setup_done(self) -> None:
        """The bind is answered: the connection's place under the listener's cap on
        connections being set up is free (wire/tls_guard.py, hold_until_setup)."""
        done = getattr(self.transport, "setup_done", None)
        if done is not None:
            done()

    def _cancel_timeout(self) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closed = True
        self._cancel_timeout()
        if self._mux is not None:
            self._mux.connectionLost(reason)
        # The tunnel keeps this protocol (Tunnel.protocol) for as long as anything
        # holds the tunnel; this end lets go, so the two are freed by reference
        # counting, not left as a cycle for a full collection.
        tunnel, self._tunnel = self._tunnel, None
        if tunnel is not None:
            how = self._log_end(tunnel, tunnel.mux.ended_by(reason))
            if self.table.metrics:
                self.table.metrics.losses.labels(how).inc()
            self.table.lost(tunnel)

    def _log_end(self, tunnel: Tunnel, why: Failure | None) -> str:
        """One line saying which tunnel ended and why; the losses counter's reason."""
        sid = tunnel.session_id
        if why is not None and why.check(TunnelSilent):
            # The multiplexer's words ("nothing heard from the studio for 20s").
            self._log.warn("session {sid}: tunnel lost: {why} (CONNECT_TUNNEL_PING_TIMEOUT); "
                           "it is routed nowhere until the studio binds again", sid=sid,
                           why=words(why))
            return "silent"
        if why is None or why.check(ConnectionDone):
            self._log.info("session {sid}: tunnel closed", sid=sid)
            return "closed"
        if tunnel.mux.remote_go_away == GO_AWAY_NORMAL and lost_uncleanly(why):
            # The studio said GoAway (studios-connect stopping: SIGTERM, its tool exited),
            # then closed; its TLS end is often not clean (the process exits before the
            # close_notify exchange ends). A stop on purpose, not a broken connection.
            self._log.info("session {sid}: tunnel closed (the studio stopped: it said it "
                           "was going away, then its connection ended)", sid=sid)
            return "closed"
        self._log.info("session {sid}: tunnel lost: {why}", sid=sid, why=words(why))
        return "lost"


class TunnelServerFactory(Factory):
    def __init__(self, table: TunnelTable):
        self.table = table

    def buildProtocol(self, addr: Any) -> Protocol:
        p = TunnelServerProtocol(self.table)
        p.factory = self
        return p
