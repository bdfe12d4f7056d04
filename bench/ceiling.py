"""The gateway with no HTTP work for a repeated request: what a lane can reach at most.

    .venv/bin/python -m bench.ab --tree main=. --ceiling --conns 1,32

A measuring device, never part of the gateway: :func:`install` changes
``ProxyProtocol`` and ``UpstreamConnection`` in the process it runs in. ``bench.ab
--ceiling`` starts one more gateway, from the first ``--tree``, with
``bench/ceiling_site`` first on its ``PYTHONPATH``: that directory's
``sitecustomize`` calls :func:`install` as the interpreter starts.

Once a client connection's request has gone the whole way (read, routed, logged
in, sent to a pooled tool stream, answered, the stream parked with the connection),
a next request whose bytes are the same as that one's is not read at all: the tool
head written for it then is written to the parked stream again, and what the tool
sends back goes to the client as it comes, with no response read, no access line
and no metrics. The idle timer is re-armed and the stream's pool entry renewed
(without them the pool closes the stream after its idle timeout and wrk waits out a
lost request). The reactor, the tunnel's multiplexer, its TLS and both sockets work as
they always do. So its figures bound any lane that skips the HTTP layer's work for
such requests (docs/decisions/compiled-lane.md, "Stop 26").

It relies on the proxy's names (``_ex``, ``_paired``, ``_timer``, ``_response_done``,
``Exchange.tool_head``...); tests/unit/test_bench_ceiling.py fails when they change.
"""

from __future__ import annotations

from typing import Any

_saved: dict[str, Any] = {}


def install() -> None:
    """Put the ceiling's methods in place (once)."""
    if _saved:
        return
    from studios_gateway.http.exchange import Exchange
    from studios_gateway.http.proxy import ProxyProtocol, UpstreamConnection

    tool_head = Exchange.tool_head
    data_received = ProxyProtocol.dataReceived
    response_done = ProxyProtocol._response_done
    upstream_received = UpstreamConnection.dataReceived
    _saved.update(tool_head=tool_head, data_received=data_received,
                  response_done=response_done, upstream_received=upstream_received)

    def remember_head(self: Any, *args: Any) -> bytes:
        head = tool_head(self, *args)
        self.ceiling_head = head
        return head

    def client_data(self: Any, data: bytes) -> None:
        conn = self.__dict__.get("ceiling_conn")
        if (conn is not None and self._ex is None and self._paired is conn
                and not self._closing and data == self.ceiling_request):
            conn.ceiling = True
            conn.transport.write(self.ceiling_tool)
            f = self.factory
            self._timer.arm(f.limits.idle_timeout, self._idle_timed_out)
            f.pool.put(conn.session_id, f.pool.take(conn.session_id, conn))
            self.ceiling_repeats = self.__dict__.get("ceiling_repeats", 0) + 1
            return
        if self._ex is None:
            self.ceiling_last = data
        data_received(self, data)

    def done(self: Any, ex: Any, conn: Any) -> None:
        response_done(self, ex, conn)
        head = ex.__dict__.get("ceiling_head")
        request = ex.request
        if (self._paired is conn and head is not None and request.content_length is None
                and not request.chunked and "ceiling_last" in self.__dict__):
            self.ceiling_conn, self.ceiling_request, self.ceiling_tool = (
                conn, self.ceiling_last, head)
        else:
            self.ceiling_conn = None

    def tool_data(self: Any, data: bytes) -> None:
        client = self.paired
        if client is not None and self.__dict__.get("ceiling"):
            client.transport.write(data)
            return
        upstream_received(self, data)

    Exchange.tool_head = remember_head  # type: ignore[method-assign]
    ProxyProtocol.dataReceived = client_data  # type: ignore[method-assign]
    ProxyProtocol._response_done = done  # type: ignore[method-assign]
    UpstreamConnection.dataReceived = tool_data  # type: ignore[method-assign]


def uninstall() -> None:
    """Put the proxy's own methods back (for tests)."""
    if not _saved:
        return
    from studios_gateway.http.exchange import Exchange
    from studios_gateway.http.proxy import ProxyProtocol, UpstreamConnection

    Exchange.tool_head = _saved["tool_head"]  # type: ignore[method-assign]
    ProxyProtocol.dataReceived = _saved["data_received"]  # type: ignore[method-assign]
    ProxyProtocol._response_done = _saved["response_done"]  # type: ignore[method-assign]
    UpstreamConnection.dataReceived = _saved["upstream_received"]  # type: ignore[method-assign]
    _saved.clear()
