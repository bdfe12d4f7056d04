"""Entry-point mode: run the tool as our child, next to the tunnel.

``studios-connect -- jupyter lab --port 8888`` starts the command with
CONNECT_TOOL_PORT and CONNECT_TOOL_PATH_PREFIX in its environment, forwards
SIGTERM/SIGINT to it, kills it if it has not exited after the grace period,
and exits with its status.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet import process
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

KILL_GRACE = 30.0
# Runs the tool as the leader of a process group of its own (same pid), so that signals
# reach every process it starts: code-server's extension hosts otherwise outlive it.
GROUP_LEADER = "import os, sys; os.setpgid(0, 0); os.execvp(sys.argv[1], sys.argv[1:])"


def exit_status(reason: Failure) -> int:
    """The shell's view of how a child ended: its code, or 128 + the signal."""
    value = reason.value
    if isinstance(value, ProcessDone):
        return 0
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            return 128 + int(value.signal)
        return int(value.exitCode or 0)
    return 1


class _ToolProcess(ProcessProtocol):
    def __init__(self, ended: Deferred[int]):
        self._ended = ended

    def processEnded(self, reason: Failure) -> None:
        self._ended.callback(exit_status(reason))


class ToolChild:
    """The tool process: started once, signalled, killed after a grace period."""

    _log = Logger()

    def __init__(self, reactor: Any, argv: Sequence[str], env: Mapping[str, str], *,
                 grace: float = KILL_GRACE, child_fds: Mapping[int, int] | None = None,
                 path: str | None = None, own_group: bool = False):
        self.reactor = reactor
        self.child_fds = dict(child_fds or {0: 0, 1: 1, 2: 2})  # the tool shares our stdio
        self.argv = list(argv)
        self.env = dict(env)
        self.grace = grace
        self.path = path  # its working directory (None: ours)
        self.own_group = own_group  # signal its whole process group; end stragglers with it
        self.ended: Deferred[int] = Deferred()
        self._transport: Any = None
        self._pid: int | None = None
        self._kill_call: Any = None

    def start(self) -> None:
        self._log.info("starting the tool: {argv}", argv=" ".join(self.argv))
        argv = self.argv
        if self.own_group:
            argv = [sys.executable, "-c", GROUP_LEADER, *self.argv]
        self._transport = self.reactor.spawnProcess(
            _ToolProcess(self.ended), argv[0], argv, env=self.env,
            childFDs=self.child_fds, path=self.path)
        self._pid = getattr(self._transport, "pid", None)
        self.ended.addBoth(self._ended)

    def _ended(self, status: Any) -> Any:
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        if self._kill_call is None:  # not asked to: the container ends with it
            self._log.warn("the tool exited by itself with status {status}; studios-connect "
                           "ends with it", status=status)
        else:
            self._log.info("the tool exited with status {status}", status=status)
        if self.own_group and self._group_signal(signal.SIGTERM):
            self._log.info("stopped what the tool left running in its process group")
        return status

    def _group_signal(self, sig: int) -> bool:
        """Signal the tool's process group; False if there is none (yet, or any more)."""
        if self._pid is None:
            return False
        try:
            os.killpg(self._pid, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def _signal(self, sig: int | str) -> None:
        number = signal.SIGKILL if sig == "KILL" else int(sig)
        if self.own_group and self._group_signal(number):
            return
        self._transport.signalProcess(sig)

    def terminate(self, sig: int = signal.SIGTERM) -> Deferred[int]:
        """Pass `sig` on; SIGKILL after the grace period. Fires with the exit status."""
        if self._transport is not None and not self.ended.called:
            try:
                self._signal(sig)
            except ProcessExitedAlready:
                pass
            else:
                self._log.info("passed signal {sig} to the tool; killing it in {grace:g}s if it "
                               "has not exited", sig=sig, grace=self.grace)
                if self._kill_call is None:
                    self._kill_call = self.reactor.callLater(self.grace, self._kill)
        d: Deferred[int] = Deferred()
        def tell(status: Any) -> Any:
            d.callback(status)
            return status

        self.ended.addBoth(tell)
        return d

    def _kill(self) -> None:
        self._log.warn("the tool did not exit within {grace:g}s; killing it", grace=self.grace)
        try:
            self._signal("KILL")
        except ProcessExitedAlready:
            pass


#: Ours, not the tool's: the session's token (alone, or in its connect string).
NOT_FOR_THE_TOOL = frozenset({"CONNECT_SESSION_TOKEN", "CONNECT_STRING"})


def without_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without what is ours alone (NOT_FOR_THE_TOOL), for what the tool runs."""
    return {k: v for k, v in environ.items() if k not in NOT_FOR_THE_TOOL}


def child_environment(environ: Mapping[str, str], tool_port: int, prefix: str) -> dict[str, str]:
    """The tool's environment: ours, minus the session token, plus its port and prefix."""
    env = without_secrets(environ)
    env["CONNECT_TOOL_PORT"] = str(tool_port)
    env["CONNECT_TOOL_PATH_PREFIX"] = prefix
    return env


def reap_orphans(handlers: Mapping[int, Any] | None = None) -> int:
    """Reap every child that has exited but is not one of Twisted's processes; returns how
    many. A child Twisted spawned (the tool, ``xpra stop``, an SSH shell) is reaped by
    Twisted's own handler, so its exit status still reaches its protocol.

    As a container's entry point studios-connect is PID 1, which inherits every process
    whose parent dies (a job a terminal left in the background, what a tool's worker
    started): unreaped, each would stay a zombie for the studio's life and use up pids.
    """
    handlers = process.reapProcessHandlers if handlers is None else handlers
    reaped = 0
    handed: set[int] = set()
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return reaped
        if info is None:
            return reaped
        handler = handlers.get(info.si_pid)
        if handler is None:
            os.waitpid(info.si_pid, os.WNOHANG)
            reaped += 1
        elif info.si_pid in handed:  # Twisted left it (it never does): no spinning
            return reaped
        else:
            handed.add(info.si_pid)
            handler.reapProcess()  # Twisted's: processEnded gets the status


def install_orphan_reaping(reactor: Any) -> None:
    """Reap orphans (see :func:`reap_orphans`) at every SIGCHLD, in the reactor thread, and
    once now. Twisted's own SIGCHLD handling (its wake-up of the loop) is kept."""
    previous = signal.getsignal(signal.SIGCHLD)

    def handler(signum: int, frame: Any) -> None:
        if callable(previous):
            previous(signum, frame)
        reactor.callFromThread(_reap_and_say)

    signal.signal(signal.SIGCHLD, handler)
    signal.siginterrupt(signal.SIGCHLD, False)
    _reap_and_say()


def _reap_and_say() -> None:
    n = reap_orphans()
    if n:
        ToolChild._log.debug("reaped {n} orphaned process(es)", n=n)


def install_signal_forwarding(reactor: Any, on_signal: Callable[[int], Any]) -> None:
    """Route SIGTERM and SIGINT to `on_signal` inside the reactor thread."""

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(on_signal, signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def resolve_argv(argv: Sequence[str], path: str) -> list[str]:
    """Find the command on PATH as a shell would, so spawnProcess gets a real file."""
    cmd = argv[0]
    if "/" not in cmd:
        for d in path.split(os.pathsep):
            candidate = os.path.join(d, cmd)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return [candidate, *argv[1:]]
        raise FileNotFoundError(f"command not found on PATH: {cmd}")
    return list(argv)

