"""The lines a library repeats at every retry, which the gateway says itself: dropped;
everything else (other legacy lines, other namespaces) kept."""

from __future__ import annotations

from twisted.logger import FilteringLogObserver, LogLevel, formatEvent

import studios_gateway.registry.redis_link  # noqa: F401  (registers its lines)
from studios_gateway.logs import PREDICATES


def kept(event: dict) -> list[str]:
    seen: list[str] = []
    FilteringLogObserver(lambda e: seen.append(formatEvent(e) or ""), PREDICATES)(
        {"log_level": LogLevel.info, "log_time": 0.0, **event})
    return seen


def test_the_redis_client_retry_lines_are_dropped_and_nothing_else() -> None:
    legacy = {"log_namespace": "log_legacy", "log_format": "{log_text}"}
    for text in ("Redis error: could not auth: WRONGPASS invalid username-password pair",
                 "Redis error: could not connect: Connection refused"):
        assert kept({**legacy, "message": (text,), "log_text": text}) == []
    other = "Redis error: something else entirely"
    assert kept({**legacy, "message": (other,), "log_text": other}) == [other]
    retry = {"log_format": "Scheduling retry {attempt} to connect", "attempt": 3}
    assert kept({**retry,
                 "log_namespace": "twisted.application._client_service.ClientService"}) == []
    assert kept({**retry, "log_namespace": "studios_gateway.elsewhere"}) == [
        "Scheduling retry 3 to connect"]
