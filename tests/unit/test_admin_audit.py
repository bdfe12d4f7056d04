"""The admin API's audit lines are written whatever CONNECT_LOG_LEVEL says: a change to
a user's SSH keys or a reset of the transfer quota counts is said at info, like a
session created, and an operator who runs the gateway at warn kept none of them
(admin-api.md: every change made through the API is logged)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogPublisher,
    formatEvent,
    globalLogPublisher,
)

from studios_gateway import logs
from studios_gateway.registry.memory import MemoryStore
from studios_gateway.ssh.api import UserKeysResource
from studios_gateway.traffic.api import QuotaResource
from studios_gateway.traffic.quota import Quota, QuotaSettings
from tests.unit.test_ssh_keys import _call, _pub


@pytest.fixture
def written_at_warn() -> Iterator[list[str]]:
    """The lines a gateway at CONNECT_LOG_LEVEL=warn writes, while the test runs."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    observer = FilteringLogObserver(observe, logs.PREDICATES)
    logs.set_level("warn", LogPublisher())
    globalLogPublisher.addObserver(observer)
    try:
        yield lines
    finally:
        globalLogPublisher.removeObserver(observer)
        logs.set_level("info", LogPublisher())


def test_ssh_key_changes_and_quota_resets_are_written_at_warn(
        written_at_warn: list[str]) -> None:
    keys = UserKeysResource(MemoryStore(Clock()))
    assert _call(keys, "PUT", "alice/keys", _pub().encode())[0] == 200
    clock = Clock()
    quota = Quota(QuotaSettings(window=3600, user_bytes=1000), MemoryStore(clock), clock)
    assert _call(QuotaResource(quota), "DELETE", "users/alice") == (
        200, {"user": "alice", "reset": True})
    Logger(namespace="studios_gateway.elsewhere").info("an info line of another part")

    assert any(line.startswith("admin API: SSH keys of alice replaced (1 key) by 192.0.2.7")
               for line in written_at_warn), written_at_warn
    assert ("admin API: transfer quota counts of user alice reset by 192.0.2.7"
            in written_at_warn), written_at_warn
    assert "an info line of another part" not in written_at_warn  # warn holds elsewhere


def test_a_namespace_written_whatever_the_level_has_its_debug_lines_at_debug() -> None:
    """always() let a namespace's info through at warn, and also kept its debug lines
    out at debug."""
    lines: list[str] = []
    observer = FilteringLogObserver(lambda e: lines.append(formatEvent(e)), logs.PREDICATES)
    logs.always("studios_gateway.test_always")
    log = Logger(namespace="studios_gateway.test_always")
    globalLogPublisher.addObserver(observer)
    try:
        logs.set_level("debug", LogPublisher())
        log.debug("a debug line")
        logs.set_level("warn", LogPublisher())
        log.debug("not this one")
        log.info("an info line")
    finally:
        globalLogPublisher.removeObserver(observer)
        logs.set_level("info", LogPublisher())
    assert lines == ["a debug line", "an info line"], lines
