"""A TCP stand-in for the tunnel's SSH streams, for tests, benchmarks and local trials.

:class:`StreamListener` accepts TCP connections and treats each like a tunnel
stream arriving at the connect client: the first byte names the target (``S``),
the connection is paused and handed to ``ssh_target`` (a
:class:`~studios_gateway.wire.splice.SpliceEnd` whose transport is the
socket). :func:`tcp_dial` is the gateway's matching ``dial``: it connects,
writes ``S`` (as ``TunnelTable.open_stream`` does) and attaches the protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import endpoints, protocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol
from twisted.python.failure import Failure

from studios_gateway.wire.splice import SpliceEnd

STREAM_SSH = b"S"


class _StreamSide(SpliceEnd):
    def __init__(self, ssh_target: Callable[[SpliceEnd], None]):
        super().__init__()
        self._target = ssh_target
        self._kind: bytes | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._kind is None:
            self._kind, data = data[:1], data[1:]
            if self._kind != STREAM_SSH:
                self.transport.abortConnection()
                return
            self.transport.pauseProducing()
            self._target(self)
        if data:
            super().dataReceived(data)


def StreamListener(ssh_target: Callable[[SpliceEnd], None]) -> protocol.Factory:  # noqa: N802
    """A factory for a TCP listener that behaves like the connect client's stream side."""
    f = protocol.Factory.forProtocol(lambda: _StreamSide(ssh_target))
    f.noisy = False
    return f


class _Prefixed(protocol.Protocol):
    """Writes the stream kind, then hands the connection to the inner protocol."""

    def __init__(self, inner: IProtocol):
        self.inner = inner

    def connectionMade(self) -> None:
        self.transport.write(STREAM_SSH)
        self.inner.makeConnection(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.inner.dataReceived(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.inner.connectionLost(reason)


def tcp_dial(reactor: Any, host: str, port: int) -> Callable[[str, IProtocol], Deferred[bool]]:
    """A ``dial`` for GatewaySSHFactory that reaches every session at host:port."""

    def dial(session_id: str, proto: IProtocol) -> Deferred[bool]:
        endpoint = endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=5)
        f = protocol.Factory.forProtocol(lambda: _Prefixed(proto))
        f.noisy = False
        d = endpoint.connect(f)
        return d.addCallbacks(lambda _: True, lambda _: False)

    return dial


def main(argv: list[str] | None = None) -> None:
    """Run a gateway SSH proxy and a studio SSH server joined by loopback TCP.

    For tests, benchmarks and trying things out::

        python -m tests.support.ssh_loopback --storage-root DIR --sessions FILE.json

    FILE.json is a list of session records (the registry's JSON form). Users' keys
    come from ``<storage-root>/ssh/user_keys.json``. Prints ``ready <ssh-port>``.
    """
    import argparse
    import json
    import sys

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from studios_gateway.registry.base import SessionRecord
    from studios_gateway.registry.memory import MemoryStore
    from studios_gateway.ssh.keys import fingerprint, load_host_key
    from studios_gateway.ssh.policy import MaxStartups
    from studios_gateway.ssh.server import GatewaySSHFactory, SSHSettings
    from studios_gateway.ssh.user_keys import StoreUserKeys, keep_in_file
    from studios_gateway.studio.sshd import StudioSSHServer

    p = argparse.ArgumentParser(prog="python -m tests.support.ssh_loopback")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--storage-root", required=True)
    p.add_argument("--sessions", required=True)
    p.add_argument("--key-path")
    p.add_argument("--cwd")
    p.add_argument("--max-connections", type=int, default=2000)
    p.add_argument("--max-channels", type=int, default=30)
    p.add_argument("--handshake-timeout", type=float, default=60.0)
    p.add_argument("--max-startups", default="10:30:100")
    p.add_argument("--kex-timeout", type=float, default=10.0)
    p.add_argument("--client-timeout", type=float, default=900.0)
    p.add_argument("--offline", action="append", default=[],
                   help="session ids whose studio is not connected")
    p.add_argument("--pin", help="fingerprint the studio trusts (default: the host key's)")
    p.add_argument("--tunnel", action="store_true",
                   help="join them through the real tunnel (TLS, yamux, connect client) "
                        "for every session, instead of loopback TCP")
    args = p.parse_args(argv)

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    store = MemoryStore(reactor)
    with open(args.sessions) as fh:
        records = json.load(fh)
    tokens: dict[str, str] = {}
    for data in records:
        if args.tunnel:
            from studios_gateway.registry.base import hash_token, new_token

            tokens[data["id"]] = new_token()
            data = {**data, "token_hash": hash_token(tokens[data["id"]])}
        store.create(SessionRecord.from_dict(data))
    keep_in_file(store, args.storage_root)  # users' keys, as a single gateway node keeps them
    host_key = load_host_key(args.key_path, None, args.storage_root)
    studio = StudioSSHServer(reactor=reactor, cwd=args.cwd,
                             trusted=[args.pin or fingerprint(host_key)])
    offline = set(args.offline)
    bound: list[Deferred[None]] = []
    if args.tunnel:
        tunnel_dial = _tunnel(reactor, store, studio, args.storage_root,
                              {s: t for s, t in tokens.items() if s not in offline}, bound)
    else:
        studio_port = reactor.listenTCP(0, StreamListener(studio.ssh_target),
                                        interface="127.0.0.1")
        tunnel_dial = tcp_dial(reactor, "127.0.0.1", studio_port.getHost().port)

    def dial(session_id: str, proto: IProtocol) -> Any:
        return False if session_id in offline else tunnel_dial(session_id, proto)

    fac = GatewaySSHFactory(
        host_key=host_key, user_keys=StoreUserKeys(store), store=store,
        dial=dial, settings=SSHSettings(max_connections=args.max_connections,
                                        max_conn_channels=args.max_channels,
                                        handshake_timeout=args.handshake_timeout,
                                        max_startups=MaxStartups.parse(args.max_startups),
                                        kex_timeout=args.kex_timeout,
                                        client_timeout=args.client_timeout),
        clock=reactor)
    port = reactor.listenTCP(args.port, fac, interface="127.0.0.1")
    from twisted.internet import defer

    defer.gatherResults(bound).addCallback(
        lambda _: print(f"ready {port.getHost().port}", flush=True))
    reactor.run()


def _tunnel(reactor: Any, store: Any, studio: Any, storage_root: str, tokens: dict[str, str],
            bound: list[Deferred[None]]) -> Callable[[str, IProtocol], bool]:
    """A tunnel server and one connect client per session, all in this process."""
    from pathlib import Path

    from twisted.protocols.tls import TLSMemoryBIOFactory

    from studios_gateway.studio.client import ConnectClient
    from studios_gateway.studio.settings import ClientSettings, Gateway
    from studios_gateway.tunnel.server import (
        STREAM_SSH,
        TunnelServerFactory,
        TunnelSettings,
        TunnelTable,
    )
    from studios_gateway.wire import tls

    cert, key = tls.ensure_self_signed(Path(storage_root) / "tunnel", ["127.0.0.1"])
    table = TunnelTable(store, node_id="n1", node_address="127.0.0.1:1", clock=reactor,
                        settings=TunnelSettings())
    table.start()
    port = reactor.listenTCP(0, TLSMemoryBIOFactory(tls.server_options(cert, key), False,
                                                    TunnelServerFactory(table)),
                             interface="127.0.0.1")
    tool = reactor.listenTCP(0, protocol.Factory.forProtocol(protocol.Protocol),
                             interface="127.0.0.1")
    pin = tls.fingerprint_pem(cert.read_bytes())
    for sid, token in tokens.items():
        settings = ClientSettings(gateways=(Gateway("127.0.0.1", port.getHost().port, pin),),
                                  session_id=sid, token=token, tool_port=tool.getHost().port)
        client = ConnectClient(settings, reactor, ssh_target=studio.ssh_target)
        client.startService()
        bound.append(client.ready)

    def dial(session_id: str, proto: IProtocol) -> bool:
        stream = table.open_stream(session_id, STREAM_SSH)
        if stream is None:
            return False
        stream.attach(proto)
        return True

    return dial


if __name__ == "__main__":
    main()
