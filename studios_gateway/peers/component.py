"""The peers part of the gateway: listener, dialing pool, advertised address, metrics."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter
from twisted.internet import defer, ssl
from twisted.logger import Logger

from studios_gateway.component import Component, Part, StartError, endpoint_for, serve_tls
from studios_gateway.config import Config
from studios_gateway.metrics import Metrics
from studios_gateway.peers.handshake import PeerAuth
from studios_gateway.peers.link import PeerPool, PeerServerFactory, PeerSettings
from studios_gateway.peers.probe import PeerProbe
from studios_gateway.peers.remote import make_remote
from studios_gateway.registry.base import TunnelClaims
from studios_gateway.registry.node_settings import NodeSettingsWatch, node_records
from studios_gateway.tunnel.dialer import RemoteDial
from studios_gateway.tunnel.server import TunnelTable
from studios_gateway.wire.tls import answer_alpn

_log = Logger(namespace="studios_gateway.peers")


def advertised_address(config: Config) -> str:
    """host:port other nodes dial to reach this node's peer listener."""
    return config.effective_advertise_address


def peer_tls_options(config: Any) -> ssl.CertificateOptions | None:
    """Mutual TLS between nodes: present our certificate, require one signed by the CA.
    The same options serve both directions (no host-name check: the CA is the cluster)."""
    if not config.peer_tls_cert_file:
        return None
    from OpenSSL import crypto

    from studios_gateway.pem_files import load_ca, load_pair

    chain, key = load_pair(config.peer_tls_cert_file, config.peer_tls_key_file)
    ca = load_ca(config.peer_tls_ca_file)
    options = ssl.CertificateOptions(privateKey=key,
                                     certificate=crypto.X509.from_cryptography(chain[0]),
                                     verify=True, caCerts=[crypto.X509.from_cryptography(ca)],
                                     requireCertificate=True,
                                     raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
    # Nodes offer no ALPN; a client that does (a probe, a TLS-checking balancer) must not
    # fail the handshake on Twisted's own ALPN callback (wire/tls.py answer_alpn).
    answer_alpn(options.getContext(), ())
    return options


def check_peer_tls(config: Any) -> str | None:
    """Why the peer listener would not start with CONNECT_PEER_TLS_* (one line naming the
    file to fix), or None. ``studios-gateway check-config`` asks this; the start,
    :func:`checked_peer_tls`."""
    return checked_peer_tls(config)[1]


def checked_peer_tls(config: Any) -> tuple[ssl.CertificateOptions | None, str | None]:
    """The peer TLS options (None without CONNECT_PEER_TLS_*, or with Redis off) and why
    the files were refused (one line naming the file to fix), or None: each file read
    once."""
    from studios_gateway.pem_files import loaded

    if not (config.redis_enabled and config.peer_tls_cert_file):
        return None, None
    return loaded(lambda: peer_tls_options(config), "CONNECT_PEER_TLS")


def settings_from(config: Any) -> PeerSettings:
    return PeerSettings(window_size=config.tunnel_window_size,
                        ping_interval=config.tunnel_ping_interval,
                        ping_timeout=config.tunnel_ping_timeout)


def build_peers(config: Config, reactor: Any, store: TunnelClaims, table: TunnelTable,
                metrics: Metrics, nodes: NodeSettingsWatch | None = None
                ) -> tuple[RemoteDial | None, Part]:
    """The peer listener and the dialing pool to other nodes, as a Part, and the dial
    for sessions held elsewhere (None for one node: an in-memory registry has no peers).
    `nodes`: the comparison of the nodes' settings records, whose every reading of them
    tries a link to each node as soon as it is seen (peers.probe)."""
    part = Part()
    if not config.redis_enabled:
        return None, part
    tls, problem = checked_peer_tls(config)
    if problem is not None:
        raise StartError(problem)
    auth = PeerAuth(config.peer_secret, mutual_tls=tls is not None)
    streams = Counter("studios_gateway_peer_streams", "Streams carried between gateway nodes, "
                      "by direction and outcome.", ["direction", "outcome"],
                      registry=metrics.registry)
    settings = settings_from(config)
    server = PeerServerFactory(table, auth, settings, reactor,
                               on_outcome=lambda o: streams.labels("in", o).inc())
    factory: Any = server
    if tls is not None:
        factory = serve_tls(config, reactor, metrics, "peer", tls, factory)
    part.listen("peer", "CONNECT_LISTENER_PORT",
                endpoint_for(reactor, config.bind_address, config.listener_port),
                factory, "the peer listener")
    pool = PeerPool(reactor, auth, table.node_id, settings, tls=tls)
    inner = getattr(store, "inner", store)  # (the node records are not cached)
    if auth.enabled and hasattr(inner, "node_records"):
        # A drain keeps each tunnel until its studio has moved while another node lives.
        table.other_nodes = lambda: inner.node_records().addCallback(
            lambda records: sum(1 for node, _ in node_records(records) if node != table.node_id))
    if auth.enabled and nodes is not None:
        probe = PeerProbe(pool.connect, pool.is_up)
        nodes.on_records.append(probe.seen)
        nodes.compare_at_refresh.append(lambda: probe.failing)
        part.ready_notes.append(lambda: "peers=" + probe.state())
    remote = make_remote(store, pool, table.node_id, lambda: table.node_address,
                         on_outcome=lambda o: streams.labels("out", o).inc(),
                         local=table.open_stream, clock=reactor)

    def start() -> None:
        how = " and ".join(w for w, on in (("a shared secret", bool(config.peer_secret)),
                                            ("mutual TLS", tls is not None)) if on)
        if auth.enabled:
            _log.info("node {node} reachable by peers at {address} (peers authenticate with "
                      "{how})", node=table.node_id, address=table.node_address, how=how)
        else:
            _log.warn("peer listener refuses every peer: set CONNECT_PEER_SECRET (or "
                      "CONNECT_PEER_TLS_*) on every node to share sessions between them")

    def stop() -> Any:
        return defer.DeferredList([pool.close(), server.close()])

    part.components.append(Component("peers", start=start, stop=stop))
    return remote, part
