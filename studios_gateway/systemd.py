"""systemd integration: readiness and status (sd_notify), the watchdog, socket activation.

Written against the protocols themselves (sd_notify(3), sd_watchdog_enabled(3),
sd_listen_fds(3)), with no libsystemd binding: a notification is one AF_UNIX
datagram of ``KEY=VALUE`` lines sent to ``$NOTIFY_SOCKET`` (a path, or an
abstract name written with a leading ``@``). Every part is a no-op when its
variables are absent, so the same code runs under systemd, under a plain
``twistd -n`` and in tests.

Socket activation and Twisted: importing :mod:`twisted.internet.endpoints`
runs ``ListenFDs.fromEnvironment()``, which *deletes* ``LISTEN_PID`` and
``LISTEN_FDS`` from ``os.environ`` when they are meant for this process (and
keeps ``LISTEN_FDNAMES``). So :func:`listen_fds` parses the variables itself
when they are still there (tests, an environment snapshot) and otherwise asks
Twisted's own record through the public ``systemd:`` endpoint string.

Nothing here reads ``os.environ``: the caller passes the environment in.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

#: FileDescriptorName= values the gateway looks for, one per listener.
SOCKET_NAMES = ("http", "tunnel", "ssh", "peer", "management")

#: The first inherited descriptor (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3

#: How long wire() waits for check_ready() before it stops trying (systemd's
#: TimeoutStartSec= normally ends the start earlier).
READY_TIMEOUT = 300.0
#: Seconds a stop may take beyond CONNECT_SHUTDOWN_GRACE (closing what is left, the
#: journal's compaction), asked of systemd with EXTEND_TIMEOUT_USEC= at STOPPING=1.
STOP_MARGIN = 15.0
READY_POLL_INTERVAL = 0.25
READY_POLL_MAX_INTERVAL = 2.0

_log = Logger(namespace="studios_gateway.systemd")


def writes_to_journal(environ: Mapping[str, str], fd: int) -> bool:
    """Whether `fd` (standard output) is the journal's stream that systemd gave this
    service: JOURNAL_STREAM names its device and inode (systemd.exec(5))."""
    value = environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd's MONOTONIC_USEC= means."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def notify_address(value: str | None) -> str | None:
    """The sendto() address for a NOTIFY_SOCKET value, or None when unusable.

    ``/run/systemd/notify`` is a path; ``@name`` is the abstract name ``\\0name``.
    Other forms (``vsock:...``) are not supported here and disable notification.
    """
    if not value:
        return None
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when off.

    Off when WATCHDOG_USEC is unset, not a positive integer, or when
    WATCHDOG_PID names another process (the variable was inherited, not meant
    for us).
    """
    raw = environ.get("WATCHDOG_USEC", "").strip()
    if not raw.isdigit() or int(raw) <= 0:
        return None
    owner = environ.get("WATCHDOG_PID", "").strip()
    if owner and owner != str(pid):
        return None
    return int(raw) / 2 / 1_000_000


class Notifier:
    """Sends sd_notify messages; does nothing when NOTIFY_SOCKET is not set."""

    _log = Logger()

    def __init__(self, environ: Mapping[str, str], clock: IReactorTime, *,
                 pid: int | None = None,
                 monotonic: Callable[[], int] = monotonic_usec) -> None:
        self.pid = os.getpid() if pid is None else pid
        raw = environ.get("NOTIFY_SOCKET")
        self.address = notify_address(raw)
        if raw and self.address is None:
            self._log.warn("NOTIFY_SOCKET={value!r} is not a path or @abstract name; "
                           "not notifying systemd", value=raw)
        self.watchdog_interval = watchdog_interval(environ, self.pid)
        self._clock = clock
        self._monotonic = monotonic
        self._sock: socket.socket | None = None
        self._watchdog: LoopingCall | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    # Messages ------------------------------------------------------------------

    def notify(self, *assignments: str) -> bool:
        """Send one datagram of KEY=VALUE lines; True when it was sent."""
        if self.address is None:
            return False
        message = "\n".join(assignments).encode("utf-8")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX,
                                           socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never block the reactor on a full receive queue: drop and say so.
            self._sock.sendto(message, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL, self.address)
        except OSError as e:
            if not self._warned or e.errno not in (errno.EAGAIN, errno.ECONNREFUSED):
                self._log.warn("cannot notify systemd ({assignments}): {error}",
                               assignments=",".join(a.partition("=")[0] for a in assignments),
                               error=e.strerror or e)
                self._warned = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *self._status_lines(status))

    def stopping(self, status: str | None = None, need: float | None = None) -> bool:
        """STOPPING=1; with `need` (seconds the stop may take), EXTEND_TIMEOUT_USEC= so
        that the unit's TimeoutStopSec= does not kill a drain that was given longer."""
        extend = [f"EXTEND_TIMEOUT_USEC={int(need * 1_000_000)}"] if need else []
        return self.notify("STOPPING=1", *extend, *self._status_lines(status))

    def reloading(self, status: str | None = None) -> bool:
        """RELOADING=1 with MONOTONIC_USEC= (required by Type=notify-reload, systemd >= 253)."""
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={self._monotonic()}",
                           *self._status_lines(status))

    def status(self, text: str) -> bool:
        return self.notify(*self._status_lines(text))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    @staticmethod
    def _status_lines(text: str | None) -> list[str]:
        if text is None:
            return []
        return ["STATUS=" + " ".join(text.split())]  # one line: newlines would end the value

    # Watchdog ------------------------------------------------------------------

    def start_watchdog(self) -> LoopingCall | None:
        """Ping at half of WATCHDOG_USEC from the reactor thread, so a wedged reactor
        stops pinging and systemd restarts the process."""
        if self.address is None or self.watchdog_interval is None or self._watchdog:
            return self._watchdog
        call = LoopingCall(self.watchdog)
        call.clock = self._clock
        call.start(self.watchdog_interval, now=True)
        self._watchdog = call
        self._log.info("systemd watchdog: pinging every {interval:.3g}s",
                       interval=self.watchdog_interval)
        return call

    def stop_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None

    def close(self) -> None:
        self.stop_watchdog()
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# --- socket activation -----------------------------------------------------------


class ActivationError(Exception):
    """An inherited socket cannot be used; the message is for the operator."""


class ReloadRefused(Exception):
    """A reload refused by the settings themselves (an operator's error, not a bug): logged
    as one line saying why, without a traceback."""


@dataclass(frozen=True)
class InheritedSockets:
    """Descriptors passed by the service manager, by FileDescriptorName=."""

    fds: tuple[int, ...] = ()
    names: tuple[str, ...] = ()

    def named(self, name: str) -> list[int]:
        return [fd for fd, n in zip(self.fds, self.names, strict=True) if n == name]


def listen_fds(environ: Mapping[str, str], pid: int | None = None,
               start: int = LISTEN_FDS_START) -> InheritedSockets:
    """Parse LISTEN_PID / LISTEN_FDS / LISTEN_FDNAMES (sd_listen_fds_with_names(3)).

    Nothing when LISTEN_PID is not this process or LISTEN_FDS is not a positive
    number. Missing names are "unknown", as systemd documents. The environment
    is not modified.
    """
    pid = os.getpid() if pid is None else pid
    if environ.get("LISTEN_PID", "").strip() != str(pid):
        return InheritedSockets()
    raw = environ.get("LISTEN_FDS", "").strip()
    if not raw.isdigit() or int(raw) <= 0:
        return InheritedSockets()
    count = int(raw)
    fds = tuple(range(start, start + count))
    names_raw = environ.get("LISTEN_FDNAMES")
    names = tuple(names_raw.split(":")) if names_raw else ()
    if len(names) != count:
        if names:
            _log.warn("LISTEN_FDNAMES has {names} names for {count} sockets; ignoring the names",
                      names=len(names), count=count)
        names = ("unknown",) * count
    return InheritedSockets(fds, names)


def _consumed_by_twisted(reactor: Any, name: str, environ: Mapping[str, str]) -> int | None:
    """The descriptor Twisted recorded for `name` when it consumed LISTEN_FDS, if any."""
    if "LISTEN_FDS" in environ or name not in environ.get("LISTEN_FDNAMES", "").split(":"):
        return None
    try:
        endpoint = serverFromString(reactor, f"systemd:domain=INET6:name={name}")
    except (KeyError, IndexError, ValueError):
        return None
    fileno = getattr(endpoint, "fileno", None)
    return fileno if isinstance(fileno, int) else None


def socket_family(fd: int) -> int:
    """The address family of a listening stream socket; ActivationError otherwise."""
    try:
        probe = socket.socket(fileno=os.dup(fd))
    except OSError as e:
        raise ActivationError(f"descriptor {fd} is not a socket ({e.strerror or e})") from None
    try:
        if probe.type != socket.SOCK_STREAM:
            raise ActivationError(f"descriptor {fd} is not a stream socket "
                                  "(use ListenStream= in the .socket unit)")
        if not probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ActivationError(f"descriptor {fd} is not listening")
        return int(probe.family)
    finally:
        probe.close()


@implementer(IStreamServerEndpoint)
class _FailingEndpoint:
    """Reports an unusable inherited socket when the listener binds (one clear line)."""

    def __init__(self, error: ActivationError) -> None:
        self.error = error

    def listen(self, factory: Any) -> Deferred[Any]:
        return defer.fail(self.error)


def activated_endpoint(reactor: Any, name: str, environ: Mapping[str, str],
                       pid: int | None = None,
                       start: int = LISTEN_FDS_START) -> IStreamServerEndpoint | None:
    """A server endpoint on the inherited socket named `name`, or None if none was passed.

    The endpoint adopts the descriptor (AF_INET, AF_INET6 or AF_UNIX, found from
    the socket itself). A descriptor that is not a listening stream socket gives
    an endpoint whose listen() fails with the reason, so the start stops there.
    """
    inherited = listen_fds(environ, pid, start).named(name)
    fd = inherited[0] if inherited else _consumed_by_twisted(reactor, name, environ)
    if fd is None:
        return None
    if len(inherited) > 1:
        _log.warn("{count} sockets are named {name!r}; using the first (descriptor {fd})",
                  count=len(inherited), name=name, fd=fd)
    try:
        family = socket_family(fd)
    except ActivationError as e:
        return _FailingEndpoint(ActivationError(f"socket-activated {name!r}: {e}"))
    _log.info("{name}: using the socket passed by the service manager (descriptor {fd})",
              name=name, fd=fd)
    return AdoptedStreamServerEndpoint(reactor, fd, family)


# --- wiring the gateway to systemd --------------------------------------------------


class Wiring:
    """READY after the gateway is ready, STATUS as it changes, watchdog, STOPPING, reload."""

    _log = Logger()

    def __init__(self, gateway: Any, notifier: Notifier, clock: IReactorTime,
                 reload: Callable[[], Any] | None = None, *,
                 ready_timeout: float = READY_TIMEOUT) -> None:
        self.gateway = gateway
        self.notifier = notifier
        self.clock = clock
        self.reload_action = reload
        self.ready_timeout = ready_timeout
        self.ready = False
        self.stopping = False
        self.reloading = False
        self._started_at: float | None = None
        self._interval = READY_POLL_INTERVAL
        self._pending: Any = None

    def start(self) -> None:
        """Begin (at the first reactor iteration, after bind_all())."""
        self._started_at = self.clock.seconds()
        self.notifier.start_watchdog()
        self.notifier.status("starting: waiting for listeners and the session store")
        self._poll()

    def _poll(self) -> None:
        self._pending = None
        if self.stopping or self.ready:
            return
        d = defer.maybeDeferred(self.gateway.check_ready)
        d.addCallbacks(self._checked, self._check_failed)

    def _checked(self, result: tuple[bool, dict[str, str]]) -> None:
        if self.stopping or self.ready:
            return
        ok, checks = result
        if ok:
            self.ready = True
            self.notifier.ready(status="ready: " + self.listening_summary())
            self._log.info("ready; told systemd (READY=1)" if self.notifier.enabled else "ready")
            return
        waiting = ", ".join(f"{k}: {v}" for k, v in sorted(checks.items()) if v != "ok")
        self._again(f"starting: waiting for {waiting}")

    def _check_failed(self, f: Failure) -> None:
        self._log.failure("readiness check failed", f)
        self._again(f"starting: readiness check failed ({f.getErrorMessage()})")

    def _again(self, status: str) -> None:
        assert self._started_at is not None
        elapsed = self.clock.seconds() - self._started_at
        if elapsed >= self.ready_timeout:
            self.notifier.status(f"not ready after {elapsed:.0f}s: {status}")
            self._log.error("not ready after {elapsed:.0f}s ({status}); giving up on READY=1",
                            elapsed=elapsed, status=status)
            return
        self.notifier.status(status)
        self._pending = self.clock.callLater(self._interval, self._poll)
        self._interval = min(self._interval * 2, READY_POLL_MAX_INTERVAL)

    def listening_summary(self) -> str:
        parts = []
        for listener in getattr(self.gateway, "listeners", []):
            port = listener.port
            if port is None:
                continue
            addr = port.getHost()
            where = (f"{getattr(addr, 'host', '?')}:{getattr(addr, 'port', '?')}"
                     if hasattr(addr, "port") else str(getattr(addr, "name", addr)))
            parts.append(f"{listener.name} {where}")
        return ", ".join(parts) or "no listeners"

    def on_stopping(self) -> None:
        """Shutdown has begun (a drain, or the reactor stopping): STOPPING=1 once."""
        if self.stopping:
            return
        self.stopping = True
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        # The drain takes up to CONNECT_SHUTDOWN_GRACE, then the close: ask systemd for that
        # much (it only ever extends its TimeoutStopSec=, 45s in the units).
        config = getattr(self.gateway, "config", None)
        grace = getattr(config, "shutdown_grace", None)
        need = grace + STOP_MARGIN if isinstance(grace, (int, float)) else None
        self.notifier.stopping(status="stopping: draining connections", need=need)

    def on_reload(self) -> Deferred[None]:
        """RELOADING=1, run the reload action, then READY=1 (also when it failed)."""
        if self.reloading or self.stopping:
            return defer.succeed(None)
        self.reloading = True
        self.notifier.reloading(status="reloading")
        self._log.info("reloading")
        d = defer.maybeDeferred(self.reload_action or (lambda: None))

        def done(result: Any) -> None:
            self.reloading = False
            if isinstance(result, Failure) and result.check(ReloadRefused):
                # The operator's settings: one line that says why, no traceback.
                self._log.error("reload failed: {why}; running on with the old settings",
                                why=result.getErrorMessage())
                status = f"reload failed ({result.getErrorMessage()}); running: "
            elif isinstance(result, Failure):  # a bug: keep its traceback
                self._log.failure("reload failed; running on with the old settings", result)
                status = f"reload failed ({result.getErrorMessage()}); running: "
            else:
                status = "ready (reloaded): "
            if not self.stopping:
                self.notifier.ready(status=status + self.listening_summary())

        d.addBoth(done)
        return d


def install_sighup(reactor: Any, handler: Callable[[], Any]) -> None:
    """Run `handler` in the reactor on SIGHUP (the default action would kill us)."""
    install_signal(reactor, signal.SIGHUP, handler)


def install_sigterm(reactor: Any, handler: Callable[[], Any]) -> None:
    """Run `handler` in the reactor on SIGTERM, in place of Twisted's handler.

    Installed once the reactor runs (after Twisted's own handlers). Twisted's
    handler stops the reactor and makes twistd die by the same signal; `handler`
    drains and stops the reactor itself, so the process exits 0.
    """
    install_signal(reactor, signal.SIGTERM, handler)


def install_signal(reactor: Any, signum: int, handler: Callable[[], Any]) -> None:
    def on_signal(signum: int, frame: Any) -> None:
        reactor.callFromThread(handler)

    signal.signal(signum, on_signal)


def unused_sockets(gateway: Any, environ: Mapping[str, str], pid: int | None = None) -> list[str]:
    """Names of inherited sockets that no listener of the gateway took."""
    names = set(listen_fds(environ, pid).names)
    if not names and "LISTEN_FDS" not in environ:
        names = {n for n in environ.get("LISTEN_FDNAMES", "").split(":") if n}
    used = {listener.name for listener in getattr(gateway, "listeners", [])}
    return sorted(names - used)


def wire(gateway: Any, environ: Mapping[str, str], clock: IReactorTime, *,
         reload: Callable[[], Any] | None = None, reactor: Any = None,
         notifier: Notifier | None = None, handle_sighup: bool = True,
         terminate: Callable[[], Any] | None = None,
         ready_timeout: float = READY_TIMEOUT) -> Wiring:
    """Tie a GatewayService's lifecycle to systemd.

    At the first reactor iteration (after privilegedStartService's bind_all()
    succeeded: a failed bind exits before the reactor runs) it starts the
    watchdog and polls ``gateway.check_ready()`` with `clock` until it is
    ready, then sends READY=1 with a STATUS= line naming the listeners.
    STOPPING=1 goes out when a drain begins (``gateway.on_drain``, when the
    gateway has it) or before reactor shutdown; SIGHUP sends RELOADING=1, runs
    `reload` and sends READY=1. With `terminate`, SIGTERM (systemd's stop) runs it
    instead of Twisted's immediate reactor stop.
    """
    reactor = reactor if reactor is not None else getattr(gateway, "reactor", clock)
    notifier = notifier if notifier is not None else Notifier(environ, clock)
    wiring = Wiring(gateway, notifier, clock, reload, ready_timeout=ready_timeout)
    clock.callLater(0, wiring.start)
    reactor.addSystemEventTrigger("before", "shutdown", wiring.on_stopping)
    reactor.addSystemEventTrigger("after", "shutdown", notifier.close)
    hooks = getattr(gateway, "on_drain", None)
    if isinstance(hooks, list):
        hooks.append(wiring.on_stopping)
    if handle_sighup:
        reactor.callWhenRunning(install_sighup, reactor, wiring.on_reload)
    if terminate is not None:
        reactor.callWhenRunning(install_sigterm, reactor, terminate)
    for name in unused_sockets(gateway, environ):
        _log.warn("the service manager passed a socket named {name!r} that no listener uses "
                  "(known names: {known})", name=name, known=", ".join(SOCKET_NAMES))
    return wiring
