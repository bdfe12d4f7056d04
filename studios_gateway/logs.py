"""Log levels for the whole process, from CONNECT_LOG_LEVEL.

twistd starts logging before our service starts, and offers no public hook
to filter it, so at start we wrap the observers already attached to the
global publisher in a level filter. Third-party debug chatter (Conch logs one
line per window adjust) is dropped with everything else below the level, and so
are a library's repeats of what the gateway says itself (:func:`drop_lines`:
txredisapi logs every failed AUTH, and Twisted every retry to connect, for ever).
"""

from __future__ import annotations

import re
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
    PredicateResult,
    formatEventAsClassicLogText,
    globalLogPublisher,
)

LEVELS: dict[str, LogLevel] = {
    "trace": LogLevel.debug,
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "fatal": LogLevel.critical,
}

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)

#: (namespace, start of the line's text) of the lines a library writes that the gateway
#: says itself, in its own words and at its own pace: dropped (see :func:`drop_lines`).
_dropped: tuple[tuple[str, str], ...] = ()


def drop_lines(namespace: str, *starts: str) -> None:
    """Drop `namespace`'s log lines whose text (a legacy ``log.msg``'s message, namespace
    ``log_legacy``, or the format of a twisted.logger event) begins with one of `starts`:
    for a library that logs at every retry what the gateway already says once."""
    global _dropped
    _dropped = tuple(dict.fromkeys(_dropped + tuple((namespace, s) for s in starts)))


#: (namespace, pattern) of lines dropped whole (see :func:`drop_matching`).
_dropped_patterns: tuple[tuple[str, re.Pattern[str]], ...] = ()


def drop_matching(namespace: str, pattern: str) -> None:
    """Drop `namespace`'s log lines whose whole text matches `pattern`: for a library's
    line that names what varies first (Twisted's "ProxyFactory starting on 8080")."""
    global _dropped_patterns
    compiled = re.compile(pattern)
    if (namespace, compiled) not in _dropped_patterns:
        _dropped_patterns = (*_dropped_patterns, (namespace, compiled))


def drop_port_lines() -> None:
    """Drop Twisted's lines as a port starts listening ("ProxyFactory starting on 8080")
    and as it closes ("(TCP Port 8080 Closed)"), for a process that says both itself."""
    drop_matching("log_legacy", r"\S.* starting on \S+")
    drop_matching("log_legacy", r"\((TCP|UNIX|UDP) Port \S+ Closed\)")


def _not_said_twice(event: dict[str, Any]) -> PredicateResult:
    if not _dropped and not _dropped_patterns:
        return PredicateResult.maybe
    namespace = event.get("log_namespace")
    if namespace == "log_legacy":
        message = event.get("message")
        text = message[0] if message else None
    else:
        text = event.get("log_format")
    if isinstance(text, str):
        for where, start in _dropped:
            if where == namespace and text.startswith(start):
                return PredicateResult.no
        for where, pattern in _dropped_patterns:
            if where == namespace and pattern.fullmatch(text):
                return PredicateResult.no
    return PredicateResult.maybe


#: Namespaces let through at a level whatever CONNECT_LOG_LEVEL (see :func:`always`).
_always: dict[str, LogLevel] = {}

#: What every observer of the process is given through (set_level puts them in front).
PREDICATES: list[Any] = [_predicate, _not_said_twice]
#: The level filters set_level put in front of the process's observers, by id: (the filter,
#: the observer behind it). The filter is kept, so its id cannot be another object's.
_installed: dict[int, tuple[ILogObserver, ILogObserver]] = {}


def set_level(level: str, publisher: LogPublisher = globalLogPublisher) -> None:
    """Apply `level` (a CONNECT_LOG_LEVEL value) to every observer of `publisher`.

    Safe to call again (a reload changes the level in place).
    """
    _predicate.setLogLevelForNamespace("", LEVELS[level])
    for namespace, at_least in _always.items():  # (debug lines there too, at debug)
        _predicate.setLogLevelForNamespace(namespace, min(at_least, LEVELS[level]))
    observers: list[ILogObserver] = list(getattr(publisher, "_observers", []))
    for obs in observers:
        if id(obs) in _installed or isinstance(obs, FilteringLogObserver):
            continue
        wrapped = FilteringLogObserver(obs, PREDICATES)
        publisher.removeObserver(obs)
        publisher.addObserver(wrapped)
        _installed[id(wrapped)] = (wrapped, obs)


def observers(publisher: LogPublisher = globalLogPublisher) -> list[ILogObserver] | None:
    """The observers behind :func:`set_level`'s filters on `publisher` (twistd's log file or
    standard output), or None when the publisher has any other observer too (its events
    must then go through the publisher)."""
    current: list[ILogObserver] = list(getattr(publisher, "_observers", []))
    behind: list[ILogObserver] = []
    for obs in current:
        pair = _installed.get(id(obs))
        if pair is None or pair[0] is not obs:
            return None
        behind.append(pair[1])
    return behind or None


#: sd-daemon(3)'s priority prefixes, which journald reads off each line of a service's
#: standard output (SyslogLevelPrefix=, on by default) and takes away.
JOURNAL_PRIORITY = {LogLevel.debug: 7, LogLevel.info: 6, LogLevel.warn: 4,
                    LogLevel.error: 3, LogLevel.critical: 2}


def journal_text(event: dict[str, Any]) -> str | None:
    """twistd's line for `event` as the journal takes it: each line (a traceback's too)
    with the event's priority prefix, and no time (the journal stamps every line)."""
    text = formatEventAsClassicLogText(event, formatTime=lambda _: "-")
    if text is None:
        return None
    priority = JOURNAL_PRIORITY.get(event.get("log_level"), 6)
    # (a traceback's text ends in a line of a tab alone: a blank entry in the journal)
    return "".join(f"<{priority}>{line}\n" for line in text[2:].splitlines()
                   if line.strip())


def journal_observer(stream: IO[Any]) -> ILogObserver:
    """An observer writing :func:`journal_text`'s lines to `stream` (standard output,
    which systemd connects to the journal)."""
    return FileLogObserver(stream, journal_text)


def always(namespace: str, level: LogLevel = LogLevel.info) -> None:
    """Let `namespace`'s events at `level` and above through whatever CONNECT_LOG_LEVEL
    says (the access log is asked for by its own setting); a level below `level` lets
    that namespace's lower events through as everyone else's."""
    _always[namespace] = level
    below = _predicate.logLevelForNamespace("")
    _predicate.setLogLevelForNamespace(namespace, min(level, below))
