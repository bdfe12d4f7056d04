"""A command of its own that ignores its path prefix (path mode): browsers got its 404
page and the log said nothing; now one warning says so, once its port accepts."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer, error
from twisted.logger import LogLevel, capturedLogs, formatEvent

from studios_gateway.studio.main import check_prefix


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
