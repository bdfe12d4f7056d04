"""Build the gateway from a config: one MultiService, listeners bound together.

A listener that cannot bind fails the whole start with one clear line (no
half-running process). /ready turns 200 only once every listener is bound
and the session store answers; a graceful shutdown stops accepting, lets the
components drain up to CONNECT_SHUTDOWN_GRACE, then stops the reactor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from errno import EADDRINUSE
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure

from studios_gateway import logs, reactor_loop, storage_root, systemd
from studios_gateway.auth.login import Auth
from studios_gateway.component import (
    Component,
    Listener,
    Part,
    StartError,
    TCPEndpoint,
    endpoint_for,
    fail_start,
    say_to_operator,
    serve_tls,
)
from studios_gateway.config import Config, ConfigError
from studios_gateway.http.component import build_http
from studios_gateway.http.proxy import ProxyFactory
from studios_gateway.management.endpoints import Health
from studios_gateway.management.sessions import studio_routing
from studios_gateway.metrics import Metrics
from studios_gateway.peers import advertised_address, build_peers
from studios_gateway.registry.base import SessionStore, TunnelClaims
from studios_gateway.registry.cache import CachingStore
from studios_gateway.registry.memory import MemoryStore
from studios_gateway.reload import (
    ReloadError,
    apply_log_level,
    needs_restart,
    overridden,
    run_hooks,
    tls_reloader,
)
from studios_gateway.reuseport import SHARED_LISTENERS, ReusePortEndpoint
from studios_gateway.ssh.component import SSHProxy, build_ssh, load_gateway_host_key
from studios_gateway.ssh.keys import fingerprint
from studios_gateway.traffic.api import QuotaResource
from studios_gateway.traffic.component import build_traffic
from studios_gateway.traffic.observer import Traffic
from studios_gateway.tunnel.dialer import Dialer
from studios_gateway.tunnel.server import Routing, TunnelTable

if TYPE_CHECKING:
    from studios_gateway.registry.node_settings import NodeSettingsWatch

STORE_PING_TIMEOUT = 5.0

# The service says "the HTTP proxy listening on 0.0.0.0:8080" and "... stopped listening
# on ...", with the address, in place of Twisted's own lines.
logs.drop_port_lines()


def redis_gauges(inner: Any, metrics: Metrics) -> None:
    """studios_gateway_redis_connected{link}: 1 while that connection to Redis is up (read
    at each scrape), for a store on Redis; nothing for a single node's own store."""
    links_up = getattr(inner, "links_up", None)
    if links_up is None:
        return
    from prometheus_client import Gauge

    gauge = Gauge("studios_gateway_redis_connected", "Whether this node's connection to "
                  "Redis is up (1) or not (0), by link (command, subscriber).", ["link"],
                  registry=metrics.registry)
    def reader(name: str) -> Callable[[], float]:
        return lambda: 1.0 if links_up()[name] else 0.0

    for name in links_up():
        gauge.labels(name).set_function(reader(name))


def watch_node_settings(gateway: GatewayService, inner: Any) -> NodeSettingsWatch | None:
    """With Redis: publish the settings every node must share (and this node's peer
    address), warn about nodes whose differ, and count them in
    studios_gateway_cluster_settings_differ (until a drain)."""
    if not hasattr(inner, "announce_node"):
        return None
    from prometheus_client import Gauge

    from studios_gateway.registry.node_settings import NodeSettingsWatch, shared_settings

    watch = NodeSettingsWatch(inner, shared_settings(gateway.config), gateway.reactor,
                              peer_address=advertised_address(gateway.config))
    gauge = Gauge("studios_gateway_cluster_settings_differ", "How many other nodes on this "
                  "Redis have other cluster settings (CONNECT_PROXY_URL, routing, studios "
                  "domain, login) than this node.", registry=gateway.metrics.registry)
    gauge.set_function(lambda: float(watch.disagreeing))
    watch.start()
    gateway.on_drain.append(watch.stop)
    return watch


def build_store(config: Config, clock: Any) -> CachingStore:
    """The session registry the config asks for, behind a local cache."""
    from studios_gateway.registry.cache import CachingStore

    if config.redis_enabled:
        from studios_gateway.registry.redis_link import checked_tls_files, reply_parser_missing
        from studios_gateway.registry.redis_probe import store_from_config

        tls, problem = checked_tls_files(config)
        if problem is not None:
            raise StartError(problem)
        no_parser = reply_parser_missing()
        if no_parser is not None:
            Logger().warn("{problem}", problem=no_parser)
        host, port = config.redis_address
        inner: Any = store_from_config(config, clock, tls_options=tls)
        from studios_gateway.registry.redis_persistence import log_persistence
        from studios_gateway.registry.redis_prefixes import log_other_clusters

        # Once connected: warn when a Redis restart would lose every session, and when
        # nodes under a prefix like this one's (a typo of it?) share the Redis.
        inner.when_connected().addCallbacks(
            lambda _: log_persistence(inner, f"{host}:{port}"), lambda _: None)
        inner.when_connected().addCallbacks(lambda _: log_other_clusters(inner),
                                            lambda _: None)
    else:
        from studios_gateway.private_files import StorageError
        from studios_gateway.registry.memory import MemoryStore
        from studios_gateway.registry.sessions_file import sessions_path

        # One node: the sessions outlast a restart in CONNECT_STORAGE_ROOT/sessions.json.
        try:
            inner = MemoryStore(clock, sessions_file=sessions_path(config.storage_root))
        except StorageError as e:
            raise StartError(_sessions_unloadable(config, e)) from None
    return CachingStore(inner, config.local_cache_ttl, clock)


def _sessions_unloadable(config: Config, error: Exception) -> str:
    return (f"CONNECT_STORAGE_ROOT={config.storage_root!r}: the saved sessions cannot be "
            f"loaded: {error}")


def check_saved_sessions(config: Config) -> str | None:
    """For check-config: why the start would not load the sessions a single node keeps
    (sessions.json and its journal), in the start's words; None with Redis, or when they
    load (none kept yet too). Writes nothing."""
    if config.redis_enabled:
        return None
    from studios_gateway.private_files import StorageError
    from studios_gateway.registry.sessions_file import sessions_path
    from studios_gateway.registry.sessions_journal import SessionsJournal

    try:
        SessionsJournal(sessions_path(config.storage_root)).read()
    except StorageError as e:
        return _sessions_unloadable(config, e)
    return None


def _where(error: object) -> str:
    """' on host:port' of a listen that failed, when the error says (Twisted's
    CannotListenError does): which port another process holds."""
    if not isinstance(error, CannotListenError):
        return ""
    host = error.interface or "0.0.0.0"  # (Twisted's '' is every interface)
    return f" on [{host}]:{error.port}" if ":" in host else f" on {host}:{error.port}"


#: Listeners a draining process keeps open until it exits: the peer port (other nodes
#: reach its studios through it until they have moved) and the management port.
_KEPT_WHILE_DRAINING = ("peer", "management")


def _draining_hint(name: str, error: object) -> str:
    """For a port in use that a draining process of this node keeps: what to do. A node
    started again while its previous process drained (up to CONNECT_SHUTDOWN_GRACE, kept
    by an ssh session or a download) failed with `Address already in use` alone."""
    errno = getattr(getattr(error, "socketError", None), "errno", None)
    if name not in _KEPT_WHILE_DRAINING or errno != EADDRINUSE:
        return ""
    # (said as the likely case, not as the fact: any other process may hold the port)
    port = getattr(error, "port", "PORT")
    return ("; if a previous process of this node is still draining, it keeps this port "
            "until it exits (at most CONNECT_SHUTDOWN_GRACE): wait for it to exit, as "
            "systemctl restart does, then start again; else another process holds it "
            f"(ss -ltnp 'sport = :{port}')")


class GatewayService(MultiService):
    """The whole gateway: store, listeners, components, readiness and drain."""

    _log = Logger()

    def __init__(self, config: Config, reactor: Any, store: SessionStore,
                 metrics: Metrics | None = None,
                 environ: Mapping[str, str] | None = None):
        super().__init__()
        self.config = config
        # The process environment as given (NOTIFY_SOCKET, LISTEN_FDS...); never os.environ here.
        self.environ: Mapping[str, str] = environ if environ is not None else {}
        # Called once when a drain begins; a Deferred one returns is waited for.
        self.on_drain: list[Callable[[], Any]] = []
        self._reload_hooks: list[Callable[[Config], Any]] = []
        self._reload_checks: list[Callable[[Config], str | None]] = []
        self.reactor = reactor
        self.store = store
        self.metrics = metrics or Metrics()
        self.listeners: list[Listener] = []
        self.components: list[Component] = []
        self.draining = False
        self.start_failed: str | None = None
        self._stopping_reactor = False
        self._drained = True  # False once the drain ran out of CONNECT_SHUTDOWN_GRACE
        #: The session store has answered a readiness check since the start: from then
        #: on an outage of it does not make this node "not ready" (see check_ready).
        self._store_answered = False
        self._ready_checks: list[Callable[[], str]] = []
        self._ready_notes: list[Callable[[], str]] = []
        self.systemd: systemd.Wiring | None = None  # set by make_service
        self.built: Built | None = None  # what make_service built (tests look at it)
        #: What twistd logs to instead of its own choice (see setServiceParent).
        self.log_observer: ILogObserver | None = None

    def setServiceParent(self, parent: Any) -> None:
        """twistd's application: when `log_observer` is set (under systemd: tap.py), it is
        the application's log observer, which twistd starts logging to (twistd's
        "customizing logging" component), the lines of the settings' checks too."""
        super().setServiceParent(parent)
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.log_observer)

    # Assembly ----------------------------------------------------------------

    def add_listener(self, name: str, variable: str, endpoint: IStreamServerEndpoint,
                     factory: IProtocolFactory, description: str) -> Listener:
        # A socket systemd passed under this listener's name replaces the configured port.
        endpoint = systemd.activated_endpoint(self.reactor, name, self.environ) or endpoint
        if (self.config.reuse_port and name in SHARED_LISTENERS
                and isinstance(endpoint, TCPEndpoint)):
            endpoint = ReusePortEndpoint(self.reactor, endpoint.host, endpoint.port)
        listener = Listener(name, variable, endpoint, factory, description)
        self.listeners.append(listener)
        return listener

    def add_ready_check(self, check: Callable[[], str]) -> None:
        """A check that returns 'name=ok' or 'name=<why not>' for /ready."""
        self._ready_checks.append(check)

    def add_ready_note(self, note: Callable[[], str]) -> None:
        """Like a ready check ('name=ok' or 'name=<what is wrong>'), shown in /ready, but
        never what makes the node not ready."""
        self._ready_notes.append(note)

    def add_component(self, component: Component) -> Component:
        self.components.append(component)
        return component

    def add_reload_hook(self, hook: Callable[[Config], Any]) -> None:
        """`hook(new_config)` runs on SIGHUP; it raises to say its part failed."""
        self._reload_hooks.append(hook)

    def add_reload_check(self, check: Callable[[Config], str | None]) -> None:
        """`check(new_config)` runs on SIGHUP before any hook: why the new settings cannot
        be taken (then no hook runs, nothing changes), or None."""
        self._reload_checks.append(check)

    def reload(self, config: Config) -> None:
        problems = [p for p in (check(config) for check in self._reload_checks) if p]
        if problems:
            raise ReloadError("; ".join(dict.fromkeys(problems)))
        run_hooks(self._reload_hooks, config)
        # What the re-read settings draw that the start's did not (a misspelt name added
        # to the env file, a weak key): said at the start only, a reload said nothing.
        for warning in config.warnings:
            if warning not in self.config.warnings:
                self._log.warn("reload: config: {warning}", warning=warning)
        for change in needs_restart(self.config, config):
            self._log.warn("reload: {change}, which takes a restart; running on with the "
                           "old value", change=change)
        for change in overridden(self.config, config):
            self._log.warn("reload: {change}; running on with that value", change=change)

    def reload_from(self, reread: Callable[[], Config]) -> None:
        """SIGHUP: re-read the settings and apply them. Invalid settings, or a part that
        cannot take them, raise ReloadRefused (one line for the operator, no traceback)."""
        try:
            self.reload(reread())
        except (ConfigError, ReloadError) as e:
            raise systemd.ReloadRefused(str(e)) from None

    def add_part(self, part: Part) -> None:
        """Run what one builder made: bind its listeners with the others, start and drain
        its components, ask its readiness checks, run its reload checks and hooks."""
        for spec in part.listeners:
            self.add_listener(spec.name, spec.variable, spec.endpoint, spec.factory,
                              spec.description)
        for component in part.components:
            self.add_component(component)
        for check in part.ready_checks:
            self.add_ready_check(check)
        for note in part.ready_notes:
            self.add_ready_note(note)
        for refusal in part.reload_checks:
            self.add_reload_check(refusal)
        for hook in part.reload_hooks:
            self.add_reload_hook(hook)

    # Lifecycle ---------------------------------------------------------------

    def privilegedStartService(self) -> None:
        # The filters before the listeners bind (Twisted's "... starting on 8080" is
        # dropped), at the most permissive level until startService sets the configured
        # one: the start's lines up to then are written whatever CONNECT_LOG_LEVEL says,
        # as before (the listeners' "listening on" lines, which tests and people look for).
        logs.set_level("debug")
        super().privilegedStartService()
        try:
            self.bind_all()
        except StartError as e:
            fail_start(str(e))

    def bind_all(self) -> None:
        """Bind every listener now; raise StartError naming the first that fails."""
        for listener in self.listeners:
            if listener.port is not None:
                continue
            outcome: list[Any] = []
            # (the line below says it: not Twisted's "Starting factory <... at 0x...>",
            # of the factory nor of the one a TLS factory wraps)
            factory: Any = listener.factory
            while factory is not None and hasattr(factory, "noisy"):
                factory.noisy = False
                factory = getattr(factory, "wrappedFactory", None)
            listener.endpoint.listen(listener.factory).addBoth(outcome.append)
            if not outcome:
                raise StartError(f"{listener.description} ({listener.variable}): the listener "
                                 "did not bind synchronously")
            result = outcome[0]
            if isinstance(result, Failure):
                self.unbind_all()
                reason = getattr(result.value, "socketError", None) or result.value
                raise StartError(f"cannot listen for {listener.description} "
                                 f"({listener.variable}){_where(result.value)}: {reason}"
                                 f"{_draining_hint(listener.name, result.value)}")
            listener.port = result
            # A TLS listener pauses accepting while its handshake cap is reached (tls_guard).
            listening_on = getattr(listener.factory, "listening_on", None)
            if listening_on is not None:
                listening_on(result)
            self.metrics.listeners.labels(listener.name).set(1)
            addr = result.getHost()
            self._log.info("{description} listening on {host}:{port}",
                           description=listener.description, host=getattr(addr, "host", "?"),
                           port=getattr(addr, "port", "?"))

    def unbind_all(self) -> Deferred[Any]:
        ds = [self._unbind(listener) for listener in self.listeners
              if listener.port is not None]
        return defer.DeferredList(ds, consumeErrors=True)

    def _unbind(self, listener: Listener) -> Deferred[Any]:
        """Stop `listener` accepting, and say so (in place of Twisted's "(TCP Port 8080
        Closed)", written a turn later: after the drain's lines it reads as out of order).
        A port stops accepting as stopListening is called; the socket closes a turn later."""
        port, listener.port = listener.port, None
        assert port is not None
        self.metrics.listeners.labels(listener.name).set(0)
        addr = port.getHost()
        self._log.info("{description} stopped listening on {host}:{port}",
                       description=listener.description, host=getattr(addr, "host", "?"),
                       port=getattr(addr, "port", "?"))
        return defer.maybeDeferred(port.stopListening)

    def startService(self) -> None:
        logs.set_level(self.config.log_level)
        for warning in self.config.warnings:
            self._log.warn("config: {warning}", warning=warning)
        reactor_loop.install(self.reactor)  # before the tick metrics wrap doIteration
        self.metrics.instrument_reactor(self.reactor)
        self.store.start()
        for component in self.components:
            d = defer.maybeDeferred(component.start)
            d.addErrback(self._component_failed, component)
        super().startService()

    def _component_failed(self, f: Failure, component: Component) -> None:
        """A part could not start (a wrong registration token, say): say why, exit 1."""
        message = f"{component.name} could not start: {f.getErrorMessage()}"
        self._log.critical("{message}", message=message)
        say_to_operator(message)
        self.start_failed = message
        import os

        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        if getattr(self.reactor, "running", False):
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)

    def stopService(self) -> Deferred[Any]:
        # Reached by reactor.stop() (SIGINT, a failed start...): drain first, as /shutdown does.
        d = self._drain() if not (self.draining or self.start_failed) else defer.succeed(None)
        d.addCallback(lambda _: MultiService.stopService(self))

        def stop_rest(_: Any) -> Deferred[Any]:
            ds = [defer.maybeDeferred(c.stop) for c in reversed(self.components)]
            ds.append(self.unbind_all())
            ds.append(defer.maybeDeferred(self.store.stop))
            self.metrics.uninstrument_reactor()
            return defer.DeferredList(ds, consumeErrors=True)

        return d.addCallback(stop_rest)

    # Health ------------------------------------------------------------------

    def check_ready(self) -> Deferred[tuple[bool, dict[str, str]]]:
        """(ready, {check: "ok" or why not}): every listener bound, not draining, the
        components' own checks, and the session store answering, or once answered: an
        outage of the store later is shown but does not make the node not ready."""
        checks: dict[str, str] = {}
        for listener in self.listeners:
            checks[f"listener:{listener.name}"] = "ok" if listener.port else "not bound"
        if self.draining:
            checks["draining"] = "shutting down"
        for check in self._ready_checks:
            name, _, state = check().partition("=")
            checks[name] = state
        tolerated: set[str] = set()
        for note in self._ready_notes:
            name, _, state = note().partition("=")
            checks[name] = state
            tolerated.add(name)
        d: Deferred[Any] = defer.maybeDeferred(self.store.ping)
        d.addTimeout(STORE_PING_TIMEOUT, self.reactor)

        def store_ok(_: Any) -> None:
            checks["store"] = "ok"
            self._store_answered = True

        def store_failed(f: Failure) -> None:
            why = f"unavailable: {f.getErrorMessage() or type(f.value).__name__}"
            if self._store_answered:
                # The shared store (Redis) goes away for every node at once: were that
                # "not ready", a load balancer would take the whole cluster out, while
                # each node still serves the studios it knows from its cache and keeps
                # every open connection. A node that has never reached it knows nothing
                # and stays not ready.
                tolerated.add("store")
                why += "; still ready: serving the studios it knows meanwhile"
            checks["store"] = why

        d.addCallbacks(store_ok, store_failed)
        d.addCallback(lambda _: (all(v == "ok" for k, v in checks.items()
                                     if k not in tolerated), checks))
        return d

    # Drain -------------------------------------------------------------------

    def shutdown(self) -> Deferred[None]:
        """Graceful: stop accepting, drain components (bounded), then stop the reactor."""
        if self.draining:
            return defer.succeed(None)
        return self._drain().addCallback(lambda _: self._stop_reactor(self._drained))

    def terminate(self) -> None:
        """SIGTERM: drain like shutdown(); a second SIGTERM stops without waiting."""
        if self.draining:
            self._log.info("second SIGTERM: stopping without waiting for the drain")
            self._stop_reactor(drained=False)
        else:
            self.shutdown()

    def _drain(self) -> Deferred[None]:
        self.draining = True
        # A hook's Deferred is waited for too (bounded by the grace, below), so what it
        # sends (the cluster settings record's deletion) goes before the store stops.
        hooked = [d for d in (hook() for hook in self.on_drain) if isinstance(d, Deferred)]
        grace = self.config.shutdown_grace
        self._log.info("draining: no new connections; waiting up to {grace}s for in-flight work",
                       grace=grace)
        # Keep answering /ready (503) and /metrics while draining, and other nodes' peer
        # links: they relay into the tunnels this node still serves while its studios
        # move (TunnelTable.drain), and a node that had no link to this one yet needs one.
        keep = {"management", "peer"}
        for listener in self.listeners:
            if listener.port is not None and listener.name not in keep:
                self._unbind(listener)
        busy = [c.name for c in self.components]  # those whose drain has not finished

        def drained(_: Any, name: str) -> None:
            busy.remove(name)

        drains = [defer.maybeDeferred(c.drain).addBoth(drained, c.name)
                  for c in self.components]
        d: Deferred[Any] = defer.DeferredList(drains + hooked, consumeErrors=True)

        def out_of_time() -> None:
            # (said before the cancel: cancelled drains count as finished)
            said = {c.name: c.in_use() for c in self.components}
            self._log.warn("drain did not finish within {grace}s (still in use: {busy}); "
                           "stopping", grace=grace,
                           busy="; ".join(f"{name}: {said[name]}" if said.get(name) else name
                                          for name in busy))
            self._drained = False
            d.cancel()

        timer = self.reactor.callLater(grace, out_of_time)

        def finished(result: Any) -> None:
            if timer.active():
                timer.cancel()

        return d.addBoth(finished)

    def _stop_reactor(self, drained: bool) -> None:
        """`drained`: every part finished its drain (else the warning or the second SIGTERM
        said why not, and 'drained' after it read as a contradiction)."""
        if not self._stopping_reactor:
            self._stopping_reactor = True
            self._log.info("drained; stopping" if drained else "stopping")
            self.reactor.stop()


def _self_signed_damaged(config: Config, error: Exception) -> str:
    """The self-made tunnel pair under the storage root, damaged (a restore cut short, a
    full disk when it was written): it ended the start in a traceback. `error` is what
    loading it raised: a PemError names the file; anything else (what OpenSSL alone
    refuses) the pair, not CONNECT_TLS_*, which the operator did not set."""
    from studios_gateway.pem_files import PemError

    directory = Path(config.storage_root) / "tunnel"
    what = (f"tunnel certificate's file {error.path} {error}" if isinstance(error, PemError)
            else f"tunnel certificate and key in {directory} cannot be loaded ({error})")
    return (f"CONNECT_STORAGE_ROOT={config.storage_root!r}: the self-signed {what}: restore "
            f"{directory} from a backup, or remove it to have a new certificate made (every "
            "connect string's pin changes then: studios-gateway sessions token ID for each "
            "session)")


def check_self_signed(config: Config) -> str | None:
    """For check-config: why the start would refuse the self-signed tunnel pair kept under
    the storage root (none kept yet, or CONNECT_TLS_* given: None)."""
    from studios_gateway.pem_files import PemError, load_pair

    directory = Path(config.storage_root) / "tunnel"
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        if config.tls_cert_file or not (cert.exists() and key.exists()):
            return None
    except OSError:  # (check-config run by a user who may not look in there: the start
        return None  # says what it finds; this ended check-config in a traceback)
    try:
        load_pair(cert, key)
    except PemError as e:
        return _self_signed_damaged(config, e)
    return None


def prepare_storage(root: str) -> Path:
    """CONNECT_STORAGE_ROOT, created when missing; StartError (in check-config's words)
    when it cannot be used."""
    try:
        return storage_root.prepare(root)
    except ConfigError as e:
        raise StartError(str(e)) from None


@dataclass
class Built:
    """The parts make_service built, kept on the service for tests and introspection."""

    tunnel_table: TunnelTable
    tunnel_pin: str | None
    dialer: Dialer
    auth: Auth
    http: ProxyFactory
    ssh: SSHProxy | None
    api_mounts: dict[bytes, Any]
    traffic: Traffic


def make_service(config: Config, reactor: Any = None, environ: Mapping[str, str] | None = None,
                 reload: Callable[[], Config] | None = None) -> GatewayService:
    """Assemble every part the config enables into one GatewayService, in data-flow order:
    store -> tunnels -> peers -> dialer -> auth -> http -> ssh -> management -> systemd.

    Each builder gets its collaborators as arguments and returns what it built (a
    :class:`Part` for the service to run); nothing is set on a shared object. `environ`
    is the process environment (systemd's variables); `reload` re-reads the settings
    for a SIGHUP reload.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    metrics = Metrics()
    # First: the store of a single node keeps its sessions there.
    storage = prepare_storage(config.storage_root)
    store = build_store(config, reactor)
    redis_gauges(store.inner, metrics)
    # The embedded registry of a single node keeps users' keys and login state in files.
    local = store.inner if isinstance(store.inner, MemoryStore) else None
    gateway = GatewayService(config, reactor, store, metrics, environ)
    watch = watch_node_settings(gateway, store.inner)
    host_key = load_gateway_host_key(config) if config.ssh_enabled else None

    # How browsers reach a studio: shown by the admin API, told to the studio at bind.
    routing = studio_routing(config.effective_proxy_url, config.effective_studios_domain,
                             config.path_routing)
    table, pin, tunnel_factory, tunnels = build_tunnels(
        config, reactor, store, metrics, storage, node_address=advertised_address(config),
        ssh_host_key=fingerprint(host_key) if host_key is not None else None, routing=routing)
    gateway.add_part(tunnels)
    remote, peers = build_peers(config, reactor, store, table, metrics,
                                nodes=watch)
    gateway.add_part(peers)
    # Every way into a studio (HTTP, SSH, peers) gets its streams from here.
    dialer = Dialer(table, remote)
    traffic, observing = build_traffic(config, reactor, metrics, store)
    gateway.add_part(observing)
    auth, login = build_auth(config, reactor, store, local)
    auth.on_login = traffic.metrics.login
    table.on_gone = ended_session(auth, traffic)
    if auth.authorizer.platform is not None:
        auth.authorizer.platform.on_call = traffic.metrics.platform_call
    gateway.add_part(login)
    http, proxy = build_http(config, reactor, store, dialer, auth, traffic, metrics,
                             carry=tunnel_factory)
    gateway.add_part(proxy)
    table.loop_mark = http.marks.of  # (told to each studio at its bind)
    ssh: SSHProxy | None = None
    api_mounts: dict[bytes, Any] = {}
    if host_key is not None:
        ssh = build_ssh(config, reactor, store, dialer, auth, host_key, traffic, local=local,
                        fresh=store.inner)
        gateway.add_part(ssh.part)
        api_mounts.update(ssh.api)
    api_mounts[b"quota"] = QuotaResource(traffic.quota)
    if config.management_port is not None:
        gateway.add_part(build_management(config, reactor, store, table, pin, auth, api_mounts,
                                          health=gateway, metrics=metrics,
                                          shutdown=gateway.shutdown, traffic=traffic,
                                          routing=routing))
    gateway.add_reload_hook(apply_log_level)
    gateway.systemd = systemd.wire(
        gateway, gateway.environ, reactor,
        reload=(lambda: gateway.reload_from(reload)) if reload else None,
        terminate=gateway.terminate)
    gateway.built = Built(table, pin, dialer, auth, http, ssh, api_mounts, traffic)
    return gateway


def build_auth(config: Config, reactor: Any, store: SessionStore,
               local: MemoryStore | None = None) -> tuple[Auth, Part]:
    """Login and authorization, and its Part (started before /ready says ok)."""
    auth = Auth.from_config(config, store, reactor=reactor, local=local)
    state = {"started": False}

    def start() -> Deferred[None]:
        d = auth.start()
        return d.addCallback(lambda _: state.update(started=True))

    part = Part()
    part.components.append(Component("login (OpenID Connect)", start=start, stop=auth.stop))
    part.ready_checks.append(lambda: "login=" + ("ok" if state["started"] else "starting"))
    return auth, part


def build_tunnels(config: Config, reactor: Any, store: TunnelClaims, metrics: Metrics,
                  storage: Path, *,
                  node_address: str, ssh_host_key: str | None, routing: Routing
                  ) -> tuple[TunnelTable, str | None, IProtocolFactory, Part]:
    """The tunnel listener and table; the pin of a self-made certificate (None with the
    operator's certificate), and the Part (listener, lifecycle, certificate reload)."""
    from studios_gateway.pem_files import refused
    from studios_gateway.reload import ReloadableServerTLS
    from studios_gateway.tunnel.server import (
        TunnelMetrics,
        TunnelServerFactory,
        TunnelSettings,
        move_wait_within,
    )
    from studios_gateway.wire import tls

    pin: str | None = None
    if config.tls_cert_file and config.tls_key_file:
        cert_path, key_path = config.tls_cert_file, config.tls_key_file
    else:
        host, _ = config.effective_tunnel_url
        names = [host, config.proxy_host, "localhost", "127.0.0.1"]
        cert, key = tls.ensure_self_signed(storage / "tunnel", names)
        cert_path, key_path = str(cert), str(key)
    try:
        options = ReloadableServerTLS(cert_path, key_path, tls.tunnel_server_options)
    except Exception as e:  # the file to fix and why, in one line
        raise StartError(refused(e, "CONNECT_TLS") if config.tls_cert_file
                         else _self_signed_damaged(config, e)) from None
    if not config.tls_cert_file:
        pin = tls.fingerprint_pem(Path(cert_path).read_bytes())
    settings = TunnelSettings(window_size=config.tunnel_window_size,
                              ping_interval=config.tunnel_ping_interval,
                              ping_timeout=config.tunnel_ping_timeout,
                              retry_period=config.tunnel_retry_period,
                              holder_ttl=config.tunnel_claim_ttl,
                              move_wait=move_wait_within(config.shutdown_grace))
    table = TunnelTable(store, node_id=config.effective_node_id, node_address=node_address,
                        clock=reactor, settings=settings,
                        metrics=TunnelMetrics(metrics.registry), ssh_host_key=ssh_host_key,
                        routing=routing)
    part = Part()
    part.reload_hooks.append(tls_reloader(options, "the tunnel listener"))  # SIGHUP: renewed
    # A studio's connection holds its place under CONNECT_TLS_MAX_HANDSHAKES until its bind
    # is answered, so a restarted node never takes on more binds than that at once.
    factory = serve_tls(config, reactor, metrics, "tunnel", options, TunnelServerFactory(table),
                        write_at_once=True, hold_until_setup=True)
    part.listen("tunnel", "CONNECT_TUNNEL_PORT",
                endpoint_for(reactor, config.bind_address, config.tunnel_port),
                factory, "the tunnel listener")
    part.components.append(Component("tunnels", start=table.start, drain=table.drain,
                                     stop=table.stop, in_use=table.in_use))
    return table, pin, factory, part


def ended_session(auth: Auth, traffic: Traffic) -> Callable[[str], None]:
    """What a session's end means beyond its tunnel: its open connections (HTTP, SSH)
    close saying the session was ended, its traffic figures go."""
    def ended(session_id: str) -> None:
        auth.authorizer.session_ended(session_id)
        traffic.session_ended(session_id)

    return ended


def build_management(config: Config, reactor: Any, store: SessionStore, table: TunnelTable,
                     pin: str | None, auth: Auth, api_mounts: Mapping[bytes, Any], *,
                     health: Health, metrics: Metrics, shutdown: Callable[[], Any],
                     traffic: Traffic, routing: Routing) -> Part:
    """The management listener: /live /ready /metrics /shutdown and the admin API."""
    from studios_gateway.management.api import make_api
    from studios_gateway.management.endpoints import ManagementRoot, make_site
    from studios_gateway.management.sessions import (
        NewSession,
        Sessions,
        connect_string,
    )

    def on_end(session_id: str) -> None:
        # Its connections close as ended first (table.on_gone: ended_session), then its
        # tunnel; once, though the registry's event for it is looked up too.
        table.session_ended(session_id)

    sessions = Sessions(store, clock=reactor, on_end=on_end,
                        on_revoke=auth.authorizer.revoke_user, usage=traffic.describe,
                        workspace_allowed=config.workspace_allowed,
                        platform_url=config.platform_url)
    tunnel_host, tunnel_port = config.effective_tunnel_url

    def present(new: NewSession) -> dict[str, Any]:
        sid = new.record.id
        return {
            "id": sid,
            "url": routing(sid)[1],
            "token": new.token,
            "connect_string": connect_string(sid, new.token, tunnel_host, tunnel_port, pin),
            "tool": new.record.tool,
            "owner": new.record.owner,
            "image": new.record.image,
            "tool_version": new.record.tool_version,
            "update_version": new.record.update_version,
            "connect_version": new.record.connect_version,
            "login_link": (None if auth.settings.issuer
                           else auth.mint_login_link(sid, new.record.owner)),
        }

    api = make_api(sessions, present,
                   None if auth.settings.issuer else auth.mint_login_link)
    for name, child in api_mounts.items():
        api.putChild(name, child)
    root = ManagementRoot(auth_key=config.management_auth_key, health=health,
                          metrics=metrics, shutdown=shutdown, api=api)
    assert config.management_port is not None
    part = Part()
    part.listen("management", "CONNECT_MANAGEMENT_PORT",
                endpoint_for(reactor, config.bind_address, config.management_port),
                make_site(root), "the management endpoints")
    return part
