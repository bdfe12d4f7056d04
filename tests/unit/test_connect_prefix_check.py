"""A command of its own that ignores its path prefix (path mode), or one given another
prefix than the gateway routes it under: browsers got its 404 pages and the log said
nothing; now one warning says so."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer, error
from twisted.logger import LogLevel, capturedLogs, formatEvent

from studios_gateway.studio.main import check_prefix, given_prefix_differs
from studios_gateway.studio.settings import ClientSettings, Gateway
from studios_gateway.wire.bind import BindReply


def site(answers: dict[str, Any]) -> Any:
    """A fetch that answers each path with a status (or fails with an exception)."""
    def fetch(url: str) -> defer.Deferred[int]:
        answer = answers[url.split(":9", 1)[1]]
        return defer.fail(answer) if isinstance(answer, Exception) else defer.succeed(answer)
    return fetch


@pytest.mark.parametrize(("answers", "warned"), [
    ({"/_studio/abcd1234/": 404, "/": 200}, True),  # serves at the root
    ({"/_studio/abcd1234/": 404, "/": 302}, True),  # its root redirects to its login
    ({"/_studio/abcd1234/": 200, "/": 404}, False),  # serves under its prefix
    ({"/_studio/abcd1234/": 302, "/": 404}, False),
    ({"/_studio/abcd1234/": 404, "/": 404}, False),  # nothing at either: no guess
    ({"/_studio/abcd1234/": 404, "/": error.ConnectionLost()}, False),
])
def test_a_tool_that_serves_at_the_root_instead_of_its_prefix_is_one_warning(
        answers: dict[str, Any], warned: bool) -> None:
    with capturedLogs() as events:
        done: list[Any] = []
        check_prefix(site(answers), 9, "/_studio/abcd1234/").addBoth(done.append)
    assert done == [None]
    said = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    if not warned:
        assert said == []
        return
    assert said == [f"the tool answers 404 at /_studio/abcd1234/ but {answers['/']} at /: it "
                    "seems to serve at the root and ignore its path prefix, so browsers get "
                    "its 404 page. It must serve under CONNECT_TOOL_PATH_PREFIX "
                    "(/_studio/abcd1234/); in subdomain mode it would be served at /"]


def test_nothing_is_asked_in_subdomain_mode() -> None:
    def fetch(url: str) -> defer.Deferred[int]:
        raise AssertionError(url)
    done: list[Any] = []
    check_prefix(fetch, 9, "/").addBoth(done.append)
    assert done == [None]


def settings(tool: str = "generic", prefix: str = "/") -> ClientSettings:
    return ClientSettings(gateways=(Gateway("127.0.0.1", 1, None),), session_id="abcd1234",
                          token="t" * 43, tool_port=9, tool=tool, tool_path_prefix=prefix)


PATH_MODE = BindReply(ok=True, routing="path",
                      public_url="https://gw.example/_studio/abcd1234/")


def test_a_given_prefix_that_is_not_the_routed_one_is_said() -> None:
    """CONNECT_TOOL_PATH_PREFIX=/ in path mode started the tool at once under /, and
    browsers got its 404 pages without a word in the log."""
    assert given_prefix_differs(settings(), PATH_MODE) == (
        "CONNECT_TOOL_PATH_PREFIX is / but the gateway routes this studio under "
        "/_studio/abcd1234/ (path mode) and passes that path on unchanged, so the tool gets "
        "requests under /_studio/abcd1234/; unset CONNECT_TOOL_PATH_PREFIX to be told the "
        "gateway's")


@pytest.mark.parametrize(("given", "reply"), [
    (settings(prefix="/_studio/abcd1234/"), PATH_MODE),  # the same
    (settings(prefix=""), PATH_MODE),  # not given: the gateway's is used
    (settings(tool="vscode"), PATH_MODE),  # a tool whose prefix the gateway strips
    (settings(), BindReply(ok=True, routing="subdomain", public_url="https://x.gw.example/")),
    (settings(), BindReply(ok=True)),  # an older gateway that does not say
])
def test_a_given_prefix_that_fits_is_not_said(given: ClientSettings, reply: BindReply) -> None:
    assert given_prefix_differs(given, reply) is None
