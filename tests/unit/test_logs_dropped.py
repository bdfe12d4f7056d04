"""logs: a library's lines that repeat what the gateway says itself are dropped, by the
start of their text (drop_lines) or by a pattern of the whole text (drop_matching)."""

from __future__ import annotations

from typing import Any

from twisted.logger import PredicateResult

from studios_gateway import (
    logs,
    service,  # noqa: F401 - registers the listener line's pattern
)


def _legacy(text: str) -> dict[str, Any]:
    return {"log_namespace": "log_legacy", "message": (text,)}


def test_twisteds_lines_as_a_port_starts_and_stops_listening_are_dropped_and_others_kept(
) -> None:
    said = logs._not_said_twice
    assert said(_legacy("ProxyFactory starting on 8080")) is PredicateResult.no
    assert said(_legacy("TunnelServerFactory (TLS) starting on 24671")) is PredicateResult.no
    assert said(_legacy("(TCP Port 8080 Closed)")) is PredicateResult.no
    assert said(_legacy("(TCP Port 8080 Closed) again")) is PredicateResult.maybe
    assert said(_legacy("the studio is starting on its own")) is PredicateResult.maybe
    same_words = {"log_namespace": "studios_gateway.x", "log_format": "A starting on 1"}
    assert said(same_words) is PredicateResult.maybe  # another namespace: kept


def test_a_pattern_registered_twice_is_kept_once() -> None:
    before = len(logs._dropped_patterns)
    logs.drop_matching("log_legacy", r"\S.* starting on \S+")
    assert len(logs._dropped_patterns) == before
