"""Classes moved to another module keep their log lines' namespace (it is in every text
log line, ``[namespace#level]``, and in operators' filters)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.logger import Logger, globalLogPublisher

from studios_gateway.log_names import KeptNamespace
from studios_gateway.ssh import relay
from studios_gateway.ssh.channels import conch_log


class _Moved:
    _log = KeptNamespace("some.old.module")


def test_a_kept_namespace_names_the_class_as_a_logger_would_in_its_old_module() -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        thing = _Moved()
        thing._log.info("hello {who}", who="you")
    finally:
        globalLogPublisher.removeObserver(events.append)
    [event] = [e for e in events if e.get("log_format") == "hello {who}"]
    assert event["log_namespace"] == "some.old.module._Moved"
    assert event["log_source"] is thing
    assert _Moved._log.source is _Moved


def test_a_kept_namespace_keeps_the_observer_it_was_given() -> None:
    kept = KeptNamespace("old", conch_log.observer)
    assert kept.__get__(None, _Moved).observer is conch_log.observer
    assert KeptNamespace("old").observer is Logger().observer


@pytest.mark.parametrize("cls, conch", [
    (relay.RelayAvatar, False),
    (relay.RelayChannel, True),
    (relay.UserConnection, True),
    (relay.UpstreamConnection, True),
    (relay.UpstreamAuth, True),
    (relay.UpstreamTransport, True),
])
def test_the_ssh_relay_keeps_the_names_it_had_in_ssh_server(cls: type, conch: bool) -> None:
    log = cls._log  # type: ignore[attr-defined]
    assert log.namespace == f"studios_gateway.ssh.server.{cls.__name__}"
    # Conch's own lines still go through conch_log's filter (warnings and worse).
    assert (log.observer is conch_log.observer) is conch


def test_a_stream_keeps_the_name_it_had_in_wire_mux() -> None:
    from studios_gateway.wire.stream import Stream

    assert Stream._log.namespace == "studios_gateway.wire.mux.Stream"
    assert Stream._log.observer is Logger().observer
