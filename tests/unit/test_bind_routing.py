"""The bind answer tells the studio how browsers reach it: the routing mode and its URL."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport

from studios_gateway.config_loading import load_config
from studios_gateway.management.sessions import studio_routing
from studios_gateway.service import make_service
from studios_gateway.tunnel.server import (
    Routing,
    TunnelServerFactory,
)
from studios_gateway.wire.bind import BindReply, BindRequest, parse_reply
from tests.support.tables import TOKEN, memory_table


def bind_answer(routing: Routing | None) -> BindReply:
    """What a studio reads after sending its bind to a table built with `routing`."""
    _, table = memory_table(Clock(), tool="vscode", routing=routing)
    protocol = TunnelServerFactory(table).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(BindRequest("s1", TOKEN, "0.12.0", "code-server", 8080).encode())
    line = transport.value().split(b"\n", 1)[0]
    protocol.connectionLost(None)
    return parse_reply(line)


@pytest.mark.parametrize("path_routing,mode,url", [
    (True, "path", "https://gw.example.com/_studio/s1/"),
    (False, "subdomain", "https://s1.studios.example.com/"),
])
def test_the_bind_answer_carries_routing_and_public_url(path_routing, mode, url) -> None:
    routing = studio_routing("https://gw.example.com", "studios.example.com", path_routing)
    reply = bind_answer(routing)
    assert reply.ok and (reply.routing, reply.public_url) == (mode, url)


def test_without_routing_the_answer_says_nothing_and_the_studio_keeps_its_settings() -> None:
    reply = bind_answer(None)
    assert reply.ok and (reply.routing, reply.public_url) == ("", "")


def test_a_port_in_the_proxy_url_is_kept_in_both_modes() -> None:
    assert studio_routing("http://localhost:8080", "localhost", False)("ab") \
        == ("subdomain", "http://ab.localhost:8080/")
    assert studio_routing("http://localhost:8080/", "localhost", True)("ab") \
        == ("path", "http://localhost:8080/_studio/ab/")


@pytest.mark.parametrize("path_routing", [True, False])
def test_the_gateway_wires_its_routing_into_the_tunnel_table(tmp_path: Path,
                                                              path_routing: bool) -> None:
    config = load_config(environ={
        "CONNECT_PROXY_URL": "https://gw.example.com", "CONNECT_STUDIOS_DOMAIN": "s.example.com",
        "TOWER_DATA_STUDIO_ENABLE_PATH_ROUTING": str(path_routing).lower(),
        "CONNECT_STORAGE_ROOT": str(tmp_path), "CONNECT_MANAGEMENT_PORT": "9000"})
    table = make_service(config, MemoryReactorClock()).built.tunnel_table
    assert table.routing is not None
    assert table.routing("s1") == studio_routing("https://gw.example.com", "s.example.com",
                                                 path_routing)("s1")
    assert table.routing("s1")[0] == ("path" if path_routing else "subdomain")


def test_the_bind_answer_gives_the_studio_its_loop_mark(tmp_path: Path) -> None:
    """studios-connect asks its tool's port at the bind with X-Connect-Session and the
    session's mark (studio.points_back): the gateway takes a request for a loop only with
    a mark it made, so the studio is told its own; a gateway that does not say it, or a
    mark that is not base64url, is no mark."""
    from studios_gateway.http.loop import Marks

    _, table = memory_table(Clock(), tool="vscode", routing=None)
    marks = Marks(b"k" * 32)
    table.loop_mark = marks.of
    protocol = TunnelServerFactory(table).buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(BindRequest("s1", TOKEN, "0.12.0", "code-server", 8080).encode())
    reply = parse_reply(transport.value().split(b"\n", 1)[0])
    protocol.connectionLost(None)
    assert reply.ok and reply.loop_mark == marks.of("s1").decode()
    assert bind_answer(None).loop_mark == ""
    for sent in ('"a b"', "7", '"' + "x" * 65 + '"'):
        assert parse_reply(b'{"ok": true, "loop_mark": %s}' % sent.encode()).loop_mark == ""
    # the gateway's own marks are the proxy's, derived from the login's signing key
    config = load_config(environ={"CONNECT_STORAGE_ROOT": str(tmp_path),
                                  "CONNECT_MANAGEMENT_PORT": "9000"})
    built = make_service(config, MemoryReactorClock()).built
    assert built.tunnel_table.loop_mark is not None
    assert built.tunnel_table.loop_mark("s1") == built.http.marks.of("s1") \
        == Marks(built.auth.signing_key).of("s1")
