"""The loop mark (X-Connect-Session and its X-Connect-Mark) as a client may send it: what
it can make the gateway answer and say in its log."""

from __future__ import annotations

import pytest
from twisted.logger import LogLevel, capturedLogs

from studios_gateway.http.loop import Marks, came_back
from tests.unit.test_http_proxy import Harness, status_of


def _ask(h: Harness, host: bytes, sid: str, mark: bytes | None = None) -> int:
    p, t = h.client()
    marked = b"X-Connect-Mark: %s\r\n" % mark if mark is not None else b""
    p.dataReceived(b"GET / HTTP/1.1\r\nHost: %s\r\nX-Connect-Session: %s\r\n%s\r\n"
                   % (host, sid.encode(), marked))
    return status_of(t)


def _warned(events: list[dict[str, object]]) -> list[str]:
    return [str(e["line"]).split(":")[0] for e in events
            if e.get("log_level") == LogLevel.warn and "came back" in str(e.get("line", ""))]


def test_a_session_id_without_its_mark_is_no_loop() -> None:
    """Ids are short and seen in addresses: a request that named a real studio in
    X-Connect-Session was answered 508 and had the gateway warn, once a minute, that the
    studio's tool port was the gateway's own. Without the mark only the gateway makes
    (HMAC of the id), or with another session's, it is an ordinary request."""
    from studios_gateway.http.upstream import SessionInfo

    h = Harness()
    h.sessions["off"] = SessionInfo("off", "jupyter", False)
    other = h.factory.marks.of("off2")
    with capturedLogs() as events:
        routed = {_ask(h, b"off.studios.test", "off", mark)
                  for mark in (None, b"", b"x" * 22, other, Marks().of("off"))}
        own = {_ask(h, b"studios.test", f"made-up-{i}") for i in range(20)}
    assert 508 not in routed | own, (routed, own)
    assert _warned(list(events)) == []


def test_a_client_inventing_session_ids_draws_one_loop_warning_a_minute() -> None:
    """A request for none of the studios (the gateway's own routes) with a mark that
    proves its id is taken for a loop; those share one warning a minute (a request's
    id there names a session only its header names)."""
    h = Harness()
    with capturedLogs() as events:
        statuses = {_ask(h, b"studios.test", f"made-up-{i}", h.factory.marks.of(f"made-up-{i}"))
                    for i in range(200)}
    assert statuses == {508}
    assert len(_warned(list(events))) == 1


def test_a_loop_of_a_studio_is_said_once_a_minute_per_studio() -> None:
    """A request that routes to the studio its mark names (answered by the gateway
    itself: here its studio is not connected) is each studio's own line a minute."""
    from studios_gateway.http.upstream import SessionInfo

    h = Harness()
    h.sessions["off2"] = SessionInfo("off2", "jupyter", False)
    marks = h.factory.marks
    with capturedLogs() as events:
        statuses = {_ask(h, f"{sid}.studios.test".encode(), sid, marks.of(sid))
                    for sid in ("off", "off2", "off", "off2", "off")}
        h.clock.advance(61)
        statuses.add(_ask(h, b"off.studios.test", "off", marks.of("off")))
    assert statuses == {508}
    assert _warned(list(events)) == ["session off", "session off2", "session off"]


def test_marks_are_the_deployments_and_per_session() -> None:
    """Every process with the same signing key (per-core instances, nodes sharing
    auth-signing.key) knows the others' marks; a mark proves its session only."""
    key = b"k" * 32
    one, two = Marks(key), Marks(key)
    assert one.of("abc") == two.of("abc") and len(one.of("abc")) == 22
    assert two.proves("abc", one.of("abc"))
    assert not two.proves("abd", one.of("abc"))
    assert not Marks(b"j" * 32).proves("abc", one.of("abc"))
    assert Marks().of("abc") != Marks().of("abc")  # no key: this process's own
    headers = [(b"x-connect-session", b"abc"), (b"X-Connect-Mark", one.of("abc"))]
    assert came_back(headers, "abc", two) == "abc"
    assert came_back(headers, None, two) == "abc"
    assert came_back(headers, "other", two) is None  # passed on to another studio


@pytest.mark.parametrize("spelling", [b"X-Connect-Mark", b"x_connect_mark"])
def test_a_clients_mark_never_reaches_the_tool(spelling: bytes) -> None:
    from studios_gateway.http.headers import request_headers

    sent = [(b"Host", b"a.studios.test"), (spelling, b"forged")]
    out = request_headers(sent, "192.0.2.7", False, "http", "alice", False, None, set())
    assert not [v for _, v in out if v == b"forged"]
