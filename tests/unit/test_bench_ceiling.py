"""bench.ceiling: a repeated request skips the HTTP work (and only a repeated one), and
uninstall puts the proxy back. Fails when the proxy's names the ceiling relies on change."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench import ceiling, inproc
from studios_gateway.http.exchange import Exchange
from studios_gateway.http.proxy import ProxyProtocol, UpstreamConnection


@pytest.fixture
def installed() -> Iterator[None]:
    ceiling.install()
    try:
        yield
    finally:
        ceiling.uninstall()


def _path() -> tuple[Any, Any, Any, Any]:
    """inproc's proxy after its first request: (client, its transport, tool, its transport)."""
    _, conns = inproc._proxy(inproc.WRK)
    tool, tool_transport = conns[0]
    client = tool.paired
    assert client is not None  # the stream is parked with its client
    return client, client.transport, tool, tool_transport


def _first_tool_head(tool_transport: Any) -> bytes:
    sent = tool_transport.value()
    tool_transport.clear()
    return bytes(sent)


def test_a_repeated_request_goes_straight_to_the_parked_stream(installed: None) -> None:
    client, client_transport, tool, tool_transport = _path()
    head = _first_tool_head(tool_transport)
    assert head.startswith(b"GET /small HTTP/1.1\r\n")
    client_transport.clear()

    client.dataReceived(inproc.WRK)
    assert tool_transport.value() == head  # the same tool head, written again
    assert client._ex is None  # no exchange was made for it
    assert client.ceiling_repeats == 1
    tool.dataReceived(inproc.NGINX)
    assert client_transport.value() == inproc.NGINX  # the tool's bytes as they came

    # and again: the stream stays parked with the client
    tool_transport.clear()
    client_transport.clear()
    client.dataReceived(inproc.WRK)
    tool.dataReceived(inproc.NGINX)
    assert tool_transport.value() == head
    assert client_transport.value() == inproc.NGINX
    assert client.ceiling_repeats == 2


def test_another_request_goes_the_whole_way(installed: None) -> None:
    client, client_transport, tool, tool_transport = _path()
    _first_tool_head(tool_transport)
    client_transport.clear()
    other = inproc.WRK.replace(b"GET /small ", b"GET /other ")
    client.dataReceived(other)
    assert tool_transport.value().startswith(b"GET /other HTTP/1.1\r\n")
    tool.dataReceived(inproc.NGINX)
    answer = client_transport.value()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer != inproc.NGINX  # re-framed
    assert client.__dict__.get("ceiling_repeats", 0) == 0


def test_without_it_a_repeated_request_is_read_and_answered_anew() -> None:
    client, client_transport, tool, tool_transport = _path()
    _first_tool_head(tool_transport)
    client_transport.clear()
    client.dataReceived(inproc.WRK)
    assert client._ex is not None  # an exchange runs
    tool.dataReceived(inproc.NGINX)
    answer = client_transport.value()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer != inproc.NGINX


def test_uninstall_puts_the_proxy_back() -> None:
    own = (ProxyProtocol.dataReceived, ProxyProtocol._response_done,
           UpstreamConnection.dataReceived, Exchange.tool_head)
    ceiling.install()
    ceiling.install()  # (once)
    assert ProxyProtocol.dataReceived is not own[0]
    ceiling.uninstall()
    assert (ProxyProtocol.dataReceived, ProxyProtocol._response_done,
            UpstreamConnection.dataReceived, Exchange.tool_head) == own
