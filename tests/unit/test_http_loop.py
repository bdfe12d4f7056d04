"""The loop mark (X-Connect-Session) as a client may send it: what it can make the gateway
say in its log."""

from __future__ import annotations

from twisted.logger import LogLevel, capturedLogs

from tests.unit.test_http_proxy import Harness, status_of


def _ask(h: Harness, host: bytes, sid: str) -> int:
    p, t = h.client()
    p.dataReceived(b"GET / HTTP/1.1\r\nHost: %s\r\nX-Connect-Session: %s\r\n\r\n"
                   % (host, sid.encode()))
    return status_of(t)


def test_a_client_inventing_session_ids_draws_one_loop_warning_a_minute() -> None:
    """A request for none of the studios (the gateway's own routes) with a mark of any
    well-formed id is taken for a loop; a client inventing ids drew a warning per id, each
    naming a studio that may not exist."""
    h = Harness()
    with capturedLogs() as events:
        statuses = {_ask(h, b"studios.test", f"made-up-{i}") for i in range(200)}
    assert statuses == {508}
    said = [e for e in events if e.get("log_level") == LogLevel.warn
            and "came back" in str(e.get("line", ""))]
    assert len(said) == 1, len(said)


def test_a_loop_of_a_studio_is_said_once_a_minute_per_studio() -> None:
    """A request that routes to the studio its mark names (answered by the gateway
    itself: here its studio is not connected) is each studio's own line a minute."""
    from studios_gateway.http.upstream import SessionInfo

    h = Harness()
    h.sessions["off2"] = SessionInfo("off2", "jupyter", False)
    with capturedLogs() as events:
        statuses = {_ask(h, f"{sid}.studios.test".encode(), sid)
                    for sid in ("off", "off2", "off", "off2", "off")}
        h.clock.advance(61)
        statuses.add(_ask(h, b"off.studios.test", "off"))
    assert statuses == {508}
    said = [str(e["line"]).split(":")[0] for e in events
            if "came back" in str(e.get("line", ""))]
    assert said == ["session off", "session off2", "session off"]
