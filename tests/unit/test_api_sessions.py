"""The admin API's PATCH /api/sessions/{id}: a new allow-list, revocation of removed users,
SSH on and off."""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from studios_gateway.away import fetch_away, restart_where
from studios_gateway.config_loading import load_config
from studios_gateway.management.api import make_api
from studios_gateway.management.sessions import Sessions
from studios_gateway.registry.base import StoreUnavailable
from studios_gateway.registry.memory import MemoryStore


def call(api: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    parts = [p.encode() for p in path.strip("/").split("/")]
    request = DummyRequest(parts[2:])
    request.method = method.encode()
    request.path = path.encode()  # type: ignore[attr-defined]  # (a Request's, not Dummy's)
    request.content = BytesIO(b"" if body is None else json.dumps(body).encode())
    resource = api.getChildWithDefault(parts[1], request)
    assert resource.render(request) == NOT_DONE_YET
    assert request.finished
    return request.responseCode or 200, json.loads(b"".join(request.written))


def setup() -> tuple[Any, list[tuple[str, str]]]:
    revoked: list[tuple[str, str]] = []
    sessions = Sessions(MemoryStore(Clock()), clock=Clock(),
                        on_revoke=lambda s, u: revoked.append((s, u)))
    api = make_api(sessions, lambda new: {"id": new.record.id})
    status, _ = call(api, "POST", "/api/sessions",
                     {"id": "abc", "owner": "alice", "allowed_users": ["bob", "carol"]})
    assert status == 201
    return api, revoked


def test_patch_replaces_the_allow_list_and_revokes_the_removed() -> None:
    api, revoked = setup()
    status, body = call(api, "PATCH", "/api/sessions/abc", {"allowed_users": ["carol", "dan"]})
    assert status == 200 and body["allowed_users"] == ["carol", "dan"]
    assert revoked == [("abc", "bob")]
    assert call(api, "GET", "/api/sessions/abc")[1]["allowed_users"] == ["carol", "dan"]


def test_patch_refuses_other_fields_bad_names_and_unknown_sessions() -> None:
    api, revoked = setup()
    status, body = call(api, "PATCH", "/api/sessions/abc", {"owner": "mallory"})
    assert status == 400
    assert body["error"] == "only allowed_users and ssh_enabled can be changed, not owner"
    assert call(api, "PATCH", "/api/sessions/abc", {"allowed_users": ["a b"]})[0] == 400
    assert call(api, "PATCH", "/api/sessions/abc", {"ssh_enabled": "yes"})[0] == 400
    assert call(api, "PATCH", "/api/sessions/abc", {})[0] == 400
    assert call(api, "PATCH", "/api/sessions/nope", {"allowed_users": []})[0] == 404
    assert revoked == []


def test_patch_turns_ssh_on_and_off_and_keeps_the_allow_list() -> None:
    api, revoked = setup()
    assert call(api, "GET", "/api/sessions/abc")[1]["ssh_enabled"] is False
    status, body = call(api, "PATCH", "/api/sessions/abc", {"ssh_enabled": True})
    assert status == 200 and body["ssh_enabled"] is True
    assert body["allowed_users"] == ["bob", "carol"] and revoked == []
    status, body = call(api, "PATCH", "/api/sessions/abc",
                        {"ssh_enabled": False, "allowed_users": ["bob"]})
    assert status == 200 and body["ssh_enabled"] is False and body["allowed_users"] == ["bob"]
    assert revoked == [("abc", "carol")]


def test_a_session_no_one_could_use_is_refused_at_creation() -> None:
    # TOWER_DATA_STUDIO_ALLOWED_WORKSPACES=111,222: a session of workspace 333, or of none,
    # was created (201, a connect string, a studio started) and then every request to it
    # was refused with 403.
    config = load_config(environ={"TOWER_DATA_STUDIO_ALLOWED_WORKSPACES": "111,222"})
    store = MemoryStore(Clock())
    api = make_api(Sessions(store, clock=Clock(), workspace_allowed=config.workspace_allowed),
                   lambda new: {"id": new.record.id})
    status, body = call(api, "POST", "/api/sessions",
                        {"id": "abc", "owner": "alice", "workspace_id": "333"})
    assert (status, body) == (400, {"error": "workspace 333 may not use studios "
                                             "(TOWER_DATA_STUDIO_ALLOWED_WORKSPACES)"})
    status, body = call(api, "POST", "/api/sessions", {"id": "abc", "owner": "alice"})
    assert (status, body) == (400, {"error": "workspace_id is required: TOWER_DATA_STUDIO_"
                                             "ALLOWED_WORKSPACES lets only the workspaces it "
                                             "lists use studios"})
    assert call(api, "GET", "/api/sessions/abc")[0] == 404  # nothing was kept
    status, _ = call(api, "POST", "/api/sessions",
                     {"id": "abc", "owner": "alice", "workspace_id": 222})
    assert status == 201


def _with_links(links: Any) -> tuple[Any, MemoryStore]:
    store = MemoryStore(Clock())
    api = make_api(Sessions(store, clock=Clock()), lambda new: {"id": new.record.id}, links)
    assert call(api, "POST", "/api/sessions",
                {"id": "abc", "owner": "alice", "allowed_users": ["bob"]})[0] == 201
    return api, store


def test_login_links_for_the_owner_and_allowed_users_only() -> None:
    minted: list[tuple[str, str]] = []

    def link(sid: str, user: str) -> str:
        minted.append((sid, user))
        return f"https://gw/_connect/link?token={sid}-{user}"

    api, store = _with_links(link)
    token_hash = store.get("abc").result.token_hash  # type: ignore[union-attr]
    for user in ("alice", "bob"):
        status, body = call(api, "POST", "/api/sessions/abc/login-links", {"user": user})
        assert status == 201, body
        assert body == {"id": "abc", "user": user,
                        "login_link": f"https://gw/_connect/link?token=abc-{user}"}
    status, body = call(api, "POST", "/api/sessions/abc/login-links", {"user": "mallory"})
    assert status == 403 and "mallory" in body["error"] and "allow-list" in body["error"]
    assert "studios-gateway sessions users abc --add mallory" in body["error"]
    assert call(api, "POST", "/api/sessions/nope/login-links", {"user": "bob"})[0] == 404
    assert call(api, "POST", "/api/sessions/abc/login-links", {"user": "a b"})[0] == 400
    assert call(api, "POST", "/api/sessions/abc/login-links", {})[0] == 400
    assert minted == [("abc", "alice"), ("abc", "bob")]
    # the studio's connect token is untouched
    assert store.get("abc").result.token_hash == token_hash  # type: ignore[union-attr]


def test_login_links_are_refused_when_an_issuer_logs_users_in() -> None:
    api, _ = _with_links(None)
    status, body = call(api, "POST", "/api/sessions/abc/login-links", {"user": "alice"})
    assert status == 409 and "OpenID issuer" in body["error"]


def test_every_change_is_in_the_log_and_no_token_or_link_is() -> None:
    """The audit trail: create, change, new token, login link and end each log one line
    naming the session; the connect token and the login link never appear."""
    from twisted.logger import formatEvent, globalLogPublisher

    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if str(event.get("log_namespace", "")).startswith("studios_gateway.management"):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        api = make_api(Sessions(MemoryStore(Clock()), clock=Clock()),
                       lambda new: {"id": new.record.id, "token": new.token},
                       lambda sid, user: f"https://gw/_connect/link?token=secret-{sid}-{user}")
        made = call(api, "POST", "/api/sessions", {"id": "abc", "owner": "alice"})[1]
        assert call(api, "PATCH", "/api/sessions/abc",
                    {"allowed_users": ["bob", "carol"]})[0] == 200
        assert call(api, "PATCH", "/api/sessions/abc", {"ssh_enabled": True})[0] == 200
        rotated = call(api, "POST", "/api/sessions/abc/token")[1]
        assert call(api, "POST", "/api/sessions/abc/login-links", {"user": "bob"})[0] == 201
        assert call(api, "DELETE", "/api/sessions/abc")[0] == 200
        assert call(api, "DELETE", "/api/sessions/abc")[0] == 404  # nothing changed: no line
    finally:
        globalLogPublisher.removeObserver(observe)
    assert [line.split(" by ")[0] for line in lines] == [
        "admin API: session abc created for alice (tool generic)",
        "admin API: session abc changed (allowed_users=bob,carol)",
        "admin API: session abc changed (ssh_enabled=true)",
        "admin API: session abc given a new connect token",
        "admin API: a one-time login link for bob on session abc made",
        "admin API: session abc ended",
    ]
    text = "\n".join(lines)
    for secret in (made["token"], rotated["token"], "secret-abc"):
        assert secret not in text


def test_a_body_nested_too_deeply_is_a_bad_request() -> None:
    api, _ = setup()
    for body in ("[" * 30000 + "]" * 30000, '{"a":' * 10000 + "1" + "}" * 10000):
        request = DummyRequest([])
        request.method = b"POST"
        request.content = BytesIO(body.encode())
        resource = api.getChildWithDefault(b"sessions", request)
        assert resource.render(request) == NOT_DONE_YET
        assert request.responseCode == 400
        assert json.loads(b"".join(request.written)) == {
            "error": "the body is not valid JSON: nested too deeply"}


def test_a_bad_user_name_is_named_in_the_error() -> None:
    # "allowed_users must be a list of user names" did not say which of 50 names was
    # wrong; "owner is required" was said of an owner that was given.
    api, revoked = setup()
    status, body = call(api, "PATCH", "/api/sessions/abc",
                        {"allowed_users": ["bob", "carol smith", "dan"]})
    assert (status, body["error"]) == (400, "allowed_users: 'carol\\x20smith' is not a user "
                                            "name: 1 to 128 letters, digits and ._@+-")
    status, body = call(api, "PATCH", "/api/sessions/abc", {"allowed_users": ["bob", 7]})
    assert body["error"].startswith("allowed_users: 7 is not a user name")
    status, body = call(api, "POST", "/api/sessions", {"owner": "a\nb"})
    assert (status, body["error"]) == (400, "owner 'a\\x0ab' is not a user name: 1 to 128 "
                                            "letters, digits and ._@+-")
    status, body = call(api, "POST", "/api/sessions", {"allowed_users": []})
    assert body["error"] == "owner is required: 1 to 128 letters, digits and ._@+-"
    status, body = call(api, "POST", "/api/sessions",
                        {"owner": "alice", "allowed_users": ["u"] * 1001})
    assert body["error"] == "allowed_users has 1001 names; at most 1000"
    assert revoked == []


def answer(root: Any, method: str, path: str) -> DummyRequest:
    """`method path` through the management root as twisted.web routes it."""
    from twisted.web.resource import getChildForRequest

    request = DummyRequest(path.strip("/").encode().split(b"/") if path != "/" else [b""])
    request.method = method.encode()
    request.content = BytesIO(b"")
    body = getChildForRequest(root, request).render(request)
    if isinstance(body, bytes):
        request.write(body)
        request.finish()
    return request


def test_a_method_an_endpoint_does_not_take_is_405_with_the_methods_it_does() -> None:
    # admin-api.md promises 405 with an Allow header; /api/sessions answered 405 without
    # one ("no such endpoint or method"), /api/quota 404; GET / listed /api/sessions only.
    from twisted.internet.defer import succeed

    from studios_gateway.management.endpoints import ManagementRoot
    from studios_gateway.metrics import Metrics
    from studios_gateway.traffic.api import QuotaResource

    api, _ = setup()
    api.putChild(b"quota", QuotaResource(None))

    class Health:
        def check_ready(self) -> Any:
            return succeed((True, {}))

    root = ManagementRoot(auth_key=None, health=Health(), metrics=Metrics(),
                          shutdown=lambda: None, api=api)
    for method, path, allowed in [("PUT", "/api/sessions/abc", "GET, PATCH, DELETE"),
                                  ("PATCH", "/api/sessions", "GET, POST"),
                                  ("GET", "/api/sessions/abc/token", "POST"),
                                  ("DELETE", "/api/sessions/abc/login-links", "POST"),
                                  ("POST", "/api/quota/users/alice", "GET, DELETE")]:
        request = answer(root, method, path)
        assert request.responseCode == 405, (method, path)
        assert request.responseHeaders.getRawHeaders(b"allow") == [allowed.encode()], path
        error = json.loads(b"".join(request.written))["error"]
        assert error.startswith(f"method {method} not allowed here; use "), error
    for path in ("/api/sessions/abc/nothing", "/api/sessions/abc/token/x"):
        request = answer(root, "GET", path)
        assert request.responseCode == 404, path
        assert json.loads(b"".join(request.written))["error"].startswith("no such endpoint")
    listed = json.loads(b"".join(answer(root, "GET", "/").written))["endpoints"]
    assert listed == ["/live", "/ready", "/metrics", "/shutdown", "/api/quota", "/api/sessions"]


def test_each_endpoints_allow_header_names_exactly_the_methods_it_answers() -> None:
    """The 405's Allow table was a second copy of the dispatch's if/elif (a method added
    to one and not the other would be answered but not listed, or listed and refused):
    for each path shape of /api/sessions, every method either runs a handler or is
    refused with 405, and the Allow header names exactly those that ran."""
    from studios_gateway.management.api import _ROUTES

    for shape in _ROUTES:
        tail = ["abc"] * shape if isinstance(shape, int) else ["abc", shape.decode()]
        answered: set[str] = set()
        allowed: set[bytes] = set()
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"):
            api, _ = setup()  # a fresh session each time (DELETE ends it)
            request = DummyRequest([t.encode() for t in tail])
            request.method = method.encode()
            request.content = BytesIO(b"{}")
            if api.getChildWithDefault(b"sessions", request).render(request) == NOT_DONE_YET:
                answered.add(method)
            else:
                assert request.responseCode == 405, (method, shape)
                allowed.update(request.responseHeaders.getRawHeaders(b"allow"))
        assert len(allowed) == 1, (shape, allowed)  # the same header for every refusal
        assert set(allowed.pop().decode().split(", ")) == answered, shape
        assert answered, shape


def test_the_session_view_says_when_the_studio_was_last_connected() -> None:
    import time

    from tests.unit.test_registry_memory import holder

    clock = Clock()
    clock.advance(time.time())
    store = MemoryStore(clock)
    api = make_api(Sessions(store, clock=clock, platform_url="https://platform.example"),
                   lambda new: {"id": new.record.id})
    assert call(api, "POST", "/api/sessions", {"id": "abc", "owner": "alice"})[0] == 201
    body = call(api, "GET", "/api/sessions/abc")[1]
    assert body["connected"] is False
    assert body["last_connected"] == {"bound_at": None, "unbound_at": None}
    assert body["away"]["case"] == "starting" and body["away"]["since"] is None
    assert "has not connected yet" in body["away"]["text"]
    bound = holder("abc", bound_at=clock.seconds())
    store.claim_tunnel(bound, 30)
    body = call(api, "GET", "/api/sessions/abc")[1]
    assert body["connected"] is True and "away" not in body
    assert body["last_connected"] == {"bound_at": bound.bound_at, "unbound_at": None}
    clock.advance(20)
    store.release_tunnel(bound)
    clock.advance(600)
    [listed] = call(api, "GET", "/api/sessions")[1]["sessions"]
    assert listed["last_connected"]["unbound_at"] == bound.bound_at + 20
    assert listed["away"]["case"] == "stopped"
    assert listed["away"]["since"] == bound.bound_at + 20
    assert "(10 minutes ago)" in listed["away"]["text"]
    # The page's words, to the letter: the Platform named by its address (PLATFORM_URL),
    # where the admin view said only "the Studios tab of its workspace in Seqera Platform".
    page: list[Any] = []
    fetch_away(store, "abc", clock, restart_where("https://platform.example")).addCallback(
        page.append)
    assert listed["away"]["text"] == page[0].text
    assert listed["away"]["text"].endswith("Seqera Platform (https://platform.example).")
    # A registry that cannot say now: no record, no case; the view itself still answers.
    store.last_connected = lambda sid: defer.fail(StoreUnavailable("down"))  # type: ignore[method-assign]
    [listed] = call(api, "GET", "/api/sessions")[1]["sessions"]
    assert listed["last_connected"] is None and listed["away"] is None


def test_a_change_the_store_cannot_save_is_said_in_the_log_once_a_minute(
        tmp_path: Any, monkeypatch: Any) -> None:
    """A full disk under CONNECT_STORAGE_ROOT: the API's caller got 503 'short write (236
    of 317 bytes)', and the gateway's log said nothing at all."""
    import os

    from twisted.logger import LogLevel, formatEvent, globalLogPublisher

    from studios_gateway.management.api import _Async
    from studios_gateway.registry.sessions_file import sessions_path

    # (one memory for the process, on the wall clock: a 503 of another test within the
    # minute would leave this one's line unsaid)
    _Async._repeats.clear()
    said: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") == LogLevel.warn and str(
                event.get("log_namespace", "")).startswith("studios_gateway.management"):
            said.append(formatEvent(event))

    api = make_api(Sessions(MemoryStore(Clock(), sessions_file=sessions_path(str(tmp_path))),
                            clock=Clock()), lambda new: {"id": new.record.id})
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:20]))  # disk full
    globalLogPublisher.addObserver(observe)
    try:
        for sid in ("abc", "abd"):
            status, body = call(api, "POST", "/api/sessions", {"id": sid, "owner": "alice"})
            assert status == 503, body
            assert "the disk or the gateway user's quota is full" in body["error"], body
    finally:
        globalLogPublisher.removeObserver(observe)
    [line] = said  # (the second within the minute: counted, not said)
    assert line.startswith(
        "admin API: POST /api/sessions not done: session store unavailable: the session "
        f"could not be saved: cannot write {tmp_path}/sessions.journal: short write (20 of "
    ) and line.endswith("bytes): the disk or the gateway user's quota is full"), line
