"""What every part of the gateway is built from: a lifecycle, a listener, a start error.

This module sits below every part (http, ssh, peers, auth, the studio side), so
none of them imports the service that wires them together.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from zope.interface import implementer


class StartError(Exception):
    """The gateway cannot start; the message is the one line an operator reads."""


@dataclass
class Listener:
    name: str
    variable: str
    endpoint: IStreamServerEndpoint
    factory: IProtocolFactory
    description: str
    port: IListeningPort | None = None


@dataclass
class Component:
    """Something with a lifecycle inside the gateway (tunnel server, proxy, SSH...)."""

    name: str
    start: Callable[[], Any] = lambda: None
    drain: Callable[[], Deferred[None] | None] = lambda: None
    stop: Callable[[], Deferred[None] | None] = lambda: None
    extra: dict[str, Any] = field(default_factory=dict)
    #: What still holds its drain, in a few words for the line said when the grace runs
    #: out ("" when it cannot say).
    in_use: Callable[[], str] = lambda: ""


@dataclass
class Part:
    """What one builder made, for the service to run: its listeners, its lifecycle, its
    readiness checks, reload checks and reload hooks. Builders return one; only the service
    registers it. A reload check gets the re-read settings before any part's hook runs and
    returns why the part could not take them (one line), or None: one refusal and no
    part changes anything."""

    listeners: list[Listener] = field(default_factory=list)
    components: list[Component] = field(default_factory=list)
    ready_checks: list[Callable[[], str]] = field(default_factory=list)
    #: Like ready_checks, but shown in /ready only: never what makes the node not ready.
    ready_notes: list[Callable[[], str]] = field(default_factory=list)
    reload_checks: list[Callable[[Any], str | None]] = field(default_factory=list)
    reload_hooks: list[Callable[[Any], Any]] = field(default_factory=list)

    def listen(self, name: str, variable: str, endpoint: IStreamServerEndpoint,
               factory: IProtocolFactory, description: str) -> None:
        self.listeners.append(Listener(name, variable, endpoint, factory, description))


@implementer(IStreamServerEndpoint)
class TCPEndpoint:
    """A TCP server endpoint on host:port that remembers both (so the service can
    swap it for a socket-activated or SO_REUSEPORT one)."""

    def __init__(self, reactor: Any, host: str, port: int):
        self.reactor, self.host, self.port = reactor, host, port

    def listen(self, factory: Any) -> Deferred[Any]:
        iface = self.host.replace(":", r"\:")
        endpoint: IStreamServerEndpoint = serverFromString(
            self.reactor, f"tcp:port={self.port}:interface={iface}:backlog={LISTEN_BACKLOG}")
        return endpoint.listen(factory)


#: The listen queue asked of the kernel for every TCP listener (Linux caps it at
#: net.core.somaxconn, 4096 by default): a node that restarts under thousands of studios
#: gets their connects at once, and past Twisted's default of 50 the kernel drops them
#: (each client then waits out a SYN or SYN-ACK retry: 1 s, 3 s, 7 s...).
LISTEN_BACKLOG = 4096


def endpoint_for(reactor: Any, host: str, port: int) -> IStreamServerEndpoint:
    """A TCP server endpoint on host:port (IPv6 literals accepted)."""
    return TCPEndpoint(reactor, host, port)


def serve_tls(config: Any, reactor: Any, metrics: Any, listener: str, options: Any,
              factory: IProtocolFactory, write_at_once: bool = False,
              hold_until_setup: bool = False, plain_http: Any = None) -> IProtocolFactory:
    """`factory` behind server TLS whose handshakes have the configured deadline and cap
    (CONNECT_TLS_HANDSHAKE_TIMEOUT, CONNECT_TLS_MAX_HANDSHAKES), counted in `metrics`
    (the gateway's Metrics, or None) under `listener`. The one way the gateway serves
    TLS (studios_gateway.wire.tls_guard). `write_at_once`: each write is sent when it is
    made, not gathered until the end of the reactor turn (the tunnel, whose multiplexer
    gathers its own). `hold_until_setup`: a connection keeps its place under the cap after
    its handshake until the application calls its transport's `setup_done` (the tunnel:
    until its bind is answered). `plain_http` (a wire.plain_http.PlainHTTP; the HTTPS proxy
    only): what a plain-HTTP request sent to the port is answered with."""
    from studios_gateway.wire.tls_guard import GuardedTLSFactory, HandshakeLimits

    def count(outcome: str) -> None:
        if metrics is not None:
            metrics.tls_handshakes.labels(listener, outcome).inc()

    def paused() -> None:
        if metrics is not None:
            metrics.tls_accept_pauses.labels(listener).inc()

    return GuardedTLSFactory(
        options, factory, clock=reactor,
        limits=HandshakeLimits(config.tls_handshake_timeout, config.tls_max_handshakes),
        on_outcome=count, on_pause=paused, name=f"the {listener} listener",
        write_at_once=write_at_once, hold_until_setup=hold_until_setup,
        plain_http=plain_http)


def say_to_operator(message: str, program: str = "studios-gateway",
                    priority: int = 3) -> None:
    """One line on the real stderr (twistd sends sys.stderr into the log), named by the
    `program` that says it. Under systemd (stderr the journal's stream) with `priority`
    as sd-daemon's prefix (3: an error, 4: a warning), as the log's lines: journald
    filed a start's refusal at info, out of `journalctl -p warning`."""
    from studios_gateway import systemd

    stream = sys.__stderr__ or sys.stderr
    line = f"{program}: {message}"
    try:
        if systemd.writes_to_journal(os.environ, stream.fileno()):
            line = f"<{priority}>{line}"
    except (OSError, ValueError, AttributeError):  # (a stream without a descriptor)
        pass
    print(line, file=stream, flush=True)


#: Exit status of a start refused for its settings (sysexits.h's EX_CONFIG): the units'
#: RestartPreventExitStatus= keep systemd from starting it again until they are fixed.
EX_CONFIG = 78


#: twistd's own options (its ServerOptions, the plugin options' parent), once makeService
#: has them: without -n they hold the pipe its first process waits on for the start's
#: outcome ("statusPipe", from the fork on) and the pid file.
_twistd_options: Any = None


def remember_twistd(options: Any) -> None:
    """Keep twistd's options (the parent of the plugin's `options`) for fail_start."""
    global _twistd_options
    _twistd_options = getattr(options, "parent", None)


def fail_start(message: str, status: int = 1, program: str = "studios-gateway") -> None:
    """Print the one line an operator needs, and exit non-zero (`status`: EX_CONFIG for
    settings that cannot work, 1 for what may pass, such as a port in use)."""
    say_to_operator(message, program)
    _tell_twistd_parent(f"{program}: {message}")
    raise SystemExit(status)


def _tell_twistd_parent(line: str) -> None:
    """Under twistd without -n, after its fork: the line in the log (the daemon's stderr
    is /dev/null), the start's failure told to the first process, which waits on a pipe
    for it, and the pid file removed. Twisted does so for an exception, not for an exit:
    the first process waited for ever, and the pid file stayed, the reason nowhere."""
    options = _twistd_options
    pipe = options.get("statusPipe") if options is not None else None
    if pipe is None:
        return
    from twisted.logger import Logger

    Logger(namespace="studios_gateway").error("{line}", line=line)
    pidfile = options.get("pidfile")
    if pidfile:  # (before the first process is told: it exits then)
        with contextlib.suppress(OSError):
            os.unlink(pidfile)
    os.write(pipe, b"1 " + line.encode("ascii", "backslashreplace")[:98])  # (it reads 100)
    os.close(pipe)
    options["statusPipe"] = None
