"""The HTTP proxy inside the gateway: its listener, its way to the studios, its hooks.

``build_http(config, reactor, store, dialer, auth)`` (called from
``service.make_service``) builds a :class:`~studios_gateway.http.proxy.ProxyFactory`
from the config and the gateway's parts:

* upstream: a yamux stream from the ``dialer`` (``STREAM_TOOL``) with the
  proxy's protocol attached; no tunnel -> "studio not connected" (503), the
  connect client resetting the stream before the tool said anything -> "tool
  not answering" (504), whichever node holds the tunnel;
* lookup: the session record from the ``store`` plus whether a tunnel is
  bound (here, or on any node);
* login: ``auth.handle`` for ``/_connect/*``, ``authorize_request`` per
  request, and WebSockets tracked so that a logout or a revocation closes them;
* a listener on ``CONNECT_HTTP_PORT`` (HTTPS when ``CONNECT_TLS_CERT_FILE`` and
  ``CONNECT_TLS_KEY_FILE`` are set; the certificate must cover the proxy host
  and, in subdomain mode, ``*.<studios domain>``);
* drain on shutdown: no new connections, in-flight requests finish.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from studios_gateway.auth.login import Auth
from studios_gateway.away import Away, fetch_away, restart_where
from studios_gateway.component import Component, Part, StartError, endpoint_for, serve_tls
from studios_gateway.config import Config
from studios_gateway.http import lane, loop
from studios_gateway.http.proxy import ProxyFactory
from studios_gateway.http.relayed import Relayed
from studios_gateway.http.routing import Router, parse_host
from studios_gateway.http.upstream import (
    FastPath,
    SessionInfo,
    StudioNotConnected,
    ToolNotAnswering,
)
from studios_gateway.metrics import Metrics
from studios_gateway.registry.base import TunnelClaims
from studios_gateway.traffic.observer import Traffic
from studios_gateway.traffic.quota import Quota, admitting
from studios_gateway.tunnel.dialer import Dialer

__all__ = ["TunnelUpstream", "build_http", "check_certificate_names", "https_url_for",
           "make_away", "make_fast_path", "make_lookup"]


class _RefusalGuard(Protocol):
    """Sits between a stream and the proxy's protocol: a stream reset before the tool
    sent a byte means the connect client could not reach the tool (through another node
    as well: that node relays the studio's reset, RESET_RELAYED); the tunnel lost
    (declared dead, say) before then means the studio is not connected, and so does any
    other reset of a stream through another node (that node's word that the tunnel was
    lost there)."""

    def __init__(self, inner: IProtocol, session_id: str):
        self.inner = inner
        self.session_id = session_id
        self.answered = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.inner.makeConnection(self.transport)

    def dataReceived(self, data: bytes) -> None:
        # The tool answered: from now on the guard changes nothing, so the stream hands
        # its reads (and its end) to the proxy's protocol itself (one call less a read).
        self.answered = True
        transport: Any = self.transport
        if getattr(transport, "protocol", None) is self:
            transport.protocol = self.inner
        self.inner.dataReceived(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        from studios_gateway.wire.mux import tunnel_lost
        from studios_gateway.wire.stream import StreamReset

        if not self.answered and tunnel_lost(reason, self.transport):
            reason = Failure(StudioNotConnected(f"the tunnel of studio {self.session_id} "
                                                "was lost"))
        elif not self.answered and reason is not None and reason.check(StreamReset):
            reason = Failure(ToolNotAnswering(f"the tool of studio {self.session_id} "
                                              "refused the connection"))
        self.inner.connectionLost(reason if reason is not None else Failure(ConnectionDone()))


class TunnelUpstream:
    """The proxy's Upstream over the gateway's dialer."""

    def __init__(self, dialer: Dialer):
        self.dialer = dialer

    def connect(self, session_id: str, factory: IProtocolFactory) -> Deferred[IProtocol]:
        from studios_gateway.tunnel.dialer import StudioUnreachable
        from studios_gateway.wire.kinds import STREAM_TOOL

        def attach(stream: Any) -> IProtocol:
            protocol = factory.buildProtocol(stream.getPeer())
            assert protocol is not None
            stream.attach(_RefusalGuard(protocol, session_id))
            return protocol

        def unreachable(f: Failure) -> IProtocol:
            f.trap(StudioUnreachable)
            err: Any = f.value
            # Another node's words (unreachable, refused, the registry away) go to the
            # access line; the plain case is the line's "studio not connected" alone.
            raise StudioNotConnected(err.why, detail="" if err.why == "not connected"
                                     else err.why)

        d: Deferred[Any] = defer.maybeDeferred(self.dialer.dial, session_id, STREAM_TOOL)
        return d.addCallbacks(attach, unreachable)


def make_lookup(store: TunnelClaims, dialer: Dialer) -> Any:
    """lookup(session_id) -> Deferred[SessionInfo | None] from the registry and the dialer."""

    def lookup(session_id: str) -> Deferred[SessionInfo | None]:
        def found(record: Any) -> Any:
            if record is None:
                return None
            if dialer.is_local(session_id):
                return SessionInfo(session_id, record.tool, True)
            d: Deferred[Any] = defer.maybeDeferred(store.get_tunnel, session_id)
            d.addCallback(lambda holder: holder is not None)
            d.addErrback(lambda _: False)  # the registry is away: say "not connected"
            return d.addCallback(lambda bound: SessionInfo(session_id, record.tool, bound))

        return defer.maybeDeferred(store.get, session_id).addCallback(found)

    return lookup


def make_away(store: TunnelClaims, clock: Any,
              platform_url: str | None) -> Callable[[str], Deferred[Away | None]]:
    """away(session_id): which not-connected case it is (studios_gateway.away), from the
    registry, for the not-connected page only."""
    where = restart_where(platform_url)

    def away(session_id: str) -> Deferred[Away | None]:
        return fetch_away(store, session_id, clock, where)

    return away


def make_fast_path(auth: Auth, dialer: Dialer, quota: Quota | None = None) -> FastPath:
    """fast(request, session_id): the login's cached answer (cookie and decision, with
    the session's record) for a studio whose tunnel is on this node; None otherwise (and
    while a transfer quota cannot say at once that the request may go on)."""

    def fast(request: Any, session_id: str) -> tuple[Any, SessionInfo] | None:
        known = auth.authorized_now(request, session_id)
        if known is None or not dialer.is_local(session_id):
            return None
        who, record = known
        if quota is not None and not quota.clear_now(session_id, who.subject):
            return None
        return who, SessionInfo(session_id, record.tool, True)

    return fast


def _load_leaf(cert_file: str) -> Any:
    from studios_gateway.pem_files import load_chain

    return load_chain(cert_file)[0]


def check_certificate_names(cert_file: str, proxy_host: str, studios_domain: str,
                            path_routing: bool) -> str | None:
    """What the certificate fails to cover, as one line for the operator; None if fine."""
    from service_identity import CertificateError, VerificationError
    from service_identity.cryptography import (
        verify_certificate_hostname,
        verify_certificate_ip_address,
    )

    from studios_gateway.pem_files import PemError, problem

    try:
        cert = _load_leaf(cert_file)
    except PemError as e:
        return problem(e, "CONNECT_TLS")

    def covers(name: str) -> bool:
        check: Callable[[Any, str], None]
        try:
            ipaddress.ip_address(name)
        except ValueError:
            check = verify_certificate_hostname
        else:
            check = verify_certificate_ip_address
        try:
            check(cert, name)
        except VerificationError:
            return False
        return True

    missing = []
    try:
        host_covered = covers(proxy_host)
    except CertificateError as e:  # a malformed name in the certificate (e.g. *.localhost)
        return f"CONNECT_TLS_CERT_FILE={cert_file!r}: {e}"
    if not host_covered:
        missing.append(f"the proxy host {proxy_host}")
    # A name no operator would list by hand: only a wildcard covers it.
    if not path_routing and not covers(f"studio-name-check.{studios_domain}"):
        missing.append(f"*.{studios_domain} (studio subdomains)")
    if not missing:
        return None
    return (f"CONNECT_TLS_CERT_FILE={cert_file!r} does not cover {' or '.join(missing)}: "
            "use a certificate whose subjectAltName lists them (or set "
            "TOWER_DATA_STUDIO_ENABLE_PATH_ROUTING=true to need only the proxy host)")


def _track(auth: Any) -> Any:
    def track(session_id: str, identity: Any, close: Any) -> Any:
        subject = getattr(identity, "subject", "")
        return auth.authorizer.track(session_id, subject, close,
                                     login_id=getattr(identity, "login_id", None))

    return track


def check_https_certificate(config: Config) -> str | None:
    """Why the HTTPS proxy would not start with CONNECT_TLS_CERT_FILE/KEY_FILE (one line),
    or None: names it does not cover, a PEM or key that does not load. The start and
    ``studios-gateway check-config`` both ask this."""
    from studios_gateway.wire import tls

    if not (config.tls_cert_file and config.tls_key_file):
        return None
    problem = check_certificate_names(config.tls_cert_file, config.proxy_host,
                                      config.effective_studios_domain, config.path_routing)
    if problem is not None:
        return problem
    from studios_gateway.pem_files import refusal

    cert_file, key_file = config.tls_cert_file, config.tls_key_file
    return refusal(lambda: tls.server_options(cert_file, key_file).getContext(), "CONNECT_TLS")


def build_factory(config: Config, reactor: Any, store: TunnelClaims, dialer: Dialer,
                  auth: Auth, traffic: Traffic | None = None) -> ProxyFactory:
    """The proxy for this gateway's config, store, dialer and login."""
    tls = bool(config.tls_cert_file and config.tls_key_file)
    no_lane = lane.missing(config.compiled_lane)
    if no_lane is not None:
        Logger().warn("{problem}", problem=no_lane)
    return ProxyFactory(
        router=Router(config.effective_studios_domain, config.proxy_host, config.path_routing),
        upstream=TunnelUpstream(dialer),
        lookup=make_lookup(store, dialer),
        reactor=reactor,
        authorize=(admitting(auth.authorize_request, traffic.quota, traffic.quota_refused)
                   if traffic is not None and traffic.quota is not None
                   else auth.authorize_request),
        local_routes=auth.handle,
        fast=make_fast_path(auth, dialer, traffic.quota if traffic is not None else None),
        away=make_away(store, reactor, config.platform_url),
        track=_track(auth),
        observer=traffic,
        relayed=Relayed(store.get_tunnel),
        trusted_proxy_cidrs=config.trusted_proxy_cidrs,
        scheme="https" if tls else "http",
        https_outside=not tls and config.effective_proxy_url.startswith("https://"),
        max_idle_per_session=config.http_pool_size,
        upstream_idle_timeout=config.http_pool_idle_timeout,
        max_request_line=config.http_max_request_line,
        max_header_bytes=config.http_max_header_size,
        max_header_count=config.http_max_headers,
        header_timeout=config.http_header_timeout,
        idle_timeout=config.http_idle_timeout,
        max_connections=config.http_max_connections,
        max_body=config.http_max_body,
        connect_timeout=config.http_connect_timeout,
        response_timeout=config.http_response_timeout,
        compiled_lane=config.compiled_lane,
        marks=loop.Marks(auth.signing_key),
    )


def https_url_for(config: Config, router: Router) -> Callable[[str, str], str | None]:
    """For a plain-HTTP request sent to the HTTPS port (wire/plain_http.py): the https://
    URL of its Host header value and target when the router serves that host, else None.
    The port is CONNECT_PROXY_URL's (the public HTTPS port the gateway's links name), not
    the one in the Host header, which was the client's guess at a plain-HTTP port."""
    port = urlsplit(config.effective_proxy_url).port
    suffix = "" if port in (None, 443) else f":{port}"

    def https_url(host_header: str, target: str) -> str | None:
        hostname = parse_host(host_header)
        if hostname is None or not router.serves(hostname):
            return None
        return f"https://{hostname}{suffix}{target}"

    return https_url


def build_http(config: Config, reactor: Any, store: TunnelClaims, dialer: Dialer,
               auth: Auth, traffic: Traffic | None = None,
               metrics: Metrics | None = None, carry: Any = None) -> tuple[ProxyFactory, Part]:
    """The HTTP(S) proxy and its Part: the listener, drain and stop, the TLS reload hook."""
    from studios_gateway.http.plain_answer import PlainHTTP
    from studios_gateway.reload import ReloadableServerTLS, tls_reloader
    from studios_gateway.wire import tls

    part = Part()
    factory = build_factory(config, reactor, store, dialer, auth, traffic)
    # Tunnels carried in WebSockets to /_connect/tunnel go to the tunnel listener's protocol.
    factory.carry = carry
    served: Any = factory
    description = "the HTTP proxy"
    if config.tls_cert_file and config.tls_key_file:
        problem = check_https_certificate(config)
        if problem is not None:
            raise StartError(problem)
        # SIGHUP loads the files again (a renewed certificate): systemd reload. A renewal
        # the start would refuse (one without the studios' wildcard, say) is refused before
        # the HTTPS or tunnel port takes it: served, it would fail every browser.
        options = ReloadableServerTLS(config.tls_cert_file, config.tls_key_file,
                                      tls.https_server_options)
        part.reload_checks.append(check_https_certificate)
        part.reload_hooks.append(tls_reloader(options, "the HTTPS proxy"))
        # A plain-HTTP request sent to this port is answered (a redirect or 400), not
        # closed without a word.
        plain = PlainHTTP(https_url_for(config, factory.router),
                          max_request_line=config.http_max_request_line,
                          max_header_count=config.http_max_headers)
        served = serve_tls(config, reactor, metrics, "http", options, factory,
                           plain_http=plain)
        description = "the HTTPS proxy"
    part.listen("http", "CONNECT_HTTP_PORT",
                endpoint_for(reactor, config.bind_address, config.http_port), served, description)
    # A session whose tunnel changed (moved to another node, say): its idle upstream
    # connections may lead to the old holder, so they are let go, and the upgraded ones
    # relayed to that holder are ended (the pages reconnect to the new one).
    unsubscribe: list[Any] = []

    def start() -> None:
        unsubscribe.append(store.subscribe(factory.pool.drop))
        if factory.relayed is not None:
            unsubscribe.append(store.subscribe(factory.relayed.changed))

    def stop() -> Any:
        while unsubscribe:
            unsubscribe.pop()()
        return factory.stop()

    part.components.append(Component("HTTP proxy", start=start, drain=factory.drain, stop=stop))
    return factory, part
