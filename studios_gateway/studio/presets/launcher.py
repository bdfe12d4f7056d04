"""Running a preset's tool next to the connect client.

Tools that serve under the public prefix (``needs_prefix``) are started after
the first bind, with the prefix the gateway announced (the path of
``BindReply.public_url``; CONNECT_TOOL_PATH_PREFIX overrides it; ``/`` when
the gateway does not say). The others start at once and the client binds
once they are ready. Either way the client's streams wait for readiness, not
for an open port.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from studios_gateway.studio.entrypoint import (
    ToolChild,
    child_environment,
    resolve_argv,
    without_secrets,
)
from studios_gateway.studio.presets.base import Installed, Launch, Place, Preset
from studios_gateway.studio.presets.probe import Fetch, Readiness, http_status
from studios_gateway.wire.bind import BindReply

STOP_COMMAND_WAIT = 20.0  # how long `xpra stop` may take before the tool is signalled anyway


def routed_prefix(reply: BindReply) -> str | None:
    """The public path prefix a bind reply announces, or None if the gateway says nothing."""
    if not reply.routing or not reply.public_url:
        return None
    return urlsplit(reply.public_url).path or "/"


def describe(preset: Preset, launch: Launch, given: bool, version: str = "") -> str:
    """The one line that says what the preset does to (or instead of) a command."""
    where = (f"{preset.title} {version or '(version unknown)'} listens on "
             f"127.0.0.1:{launch.port} only, reachable through the gateway's tunnel (which "
             f"authenticates), so its own login is off")
    if launch.foreign:
        return (f"{preset.tool} preset: `{launch.argv[0]}` is not {preset.title}; running the "
                f"command as given (the preset adds nothing; set its port to "
                f"CONNECT_TOOL_PORT={launch.port} yourself)")
    if not given:
        return f"{preset.tool} preset: starting `{shlex.join(launch.argv)}`; {where}"
    if launch.wrapped:
        return (f"{preset.tool} preset: your command runs inside {preset.title}: "
                f"`{shlex.join(launch.argv)}`; {where}")
    if not launch.added:
        return f"{preset.tool} preset: your command has everything it needs; adding nothing"
    return f"{preset.tool} preset: added {' '.join(launch.added)} to your command; {where}"


class _Quiet(ProcessProtocol):
    def __init__(self, ended: Deferred[None]):
        self._ended = ended

    def processEnded(self, reason: Failure) -> None:
        self._ended.callback(None)


class PresetLauncher:
    """Builds the tool's command, starts it (now or at the first bind), probes it, stops it."""

    _log = Logger()

    def __init__(self, reactor: Any, preset: Preset, command: Sequence[str], place: Place,
                 installed: Installed, environ: Mapping[str, str], *,
                 prefix_override: str = "", fetch: Fetch | None = None):
        self.reactor = reactor
        self.preset = preset
        self.command = list(command)
        self.installed = installed
        self.environ = dict(environ)
        self.prefix_override = prefix_override
        self.fetch = fetch
        # Built now (with the override or "/") so a missing flag stops us before anything runs.
        first = place if not prefix_override else replace(place, prefix=prefix_override)
        self.launch = preset.build(self.command, first, installed)
        self.place = replace(first, port=self.launch.port)
        self.child: ToolChild | None = None
        self.started_prefix: str | None = None
        self.ready: Deferred[None] = Deferred()  # the client's streams wait for this
        self.child_started: Deferred[ToolChild] = Deferred()
        self._readiness: Readiness | None = None
        self._private: str | None = None  # files the preset gives the tool; removed at its end

    @property
    def bind_first(self) -> bool:
        return self.preset.needs_prefix

    def start(self, prefix: str | None = None) -> ToolChild:
        """Start the tool with ``prefix`` (the override wins); returns its ToolChild."""
        prefix = self.prefix_override or prefix or "/"
        place = replace(self.place, prefix=prefix)
        launch = self.preset.build(self.command, place, self.installed)
        self.launch = launch
        self.started_prefix = prefix
        self._log.info("{line}", line=describe(self.preset, launch, bool(self.command),
                                               self.installed.version))
        argv = resolve_argv(launch.argv, self.environ.get("PATH", os.defpath))
        env = child_environment(self.environ, launch.port, prefix)
        if not launch.foreign:
            env.update(self.preset.environment(self.environ, self._private_dir, launch.argv))
        self.child = ToolChild(self.reactor, argv, env, path=launch.cwd, own_group=True)
        self.child.start()
        self._readiness = Readiness(self.reactor, launch.port, self.preset.probe_path(place),
                                    self.preset.probe_ok, self.fetch or http_status(self.reactor),
                                    title=self.preset.title)
        self._readiness.start().addCallback(self._ready)
        self.child.ended.addBoth(self._ended)
        self.child_started.callback(self.child)
        return self.child

    def _ready(self, _: Any) -> None:
        if not self.ready.called:
            self.ready.callback(None)

    def _private_dir(self) -> Path:
        if self._private is None:
            self._private = tempfile.mkdtemp(prefix=f"studio-{self.preset.tool}-")
        return Path(self._private)

    def _ended(self, status: Any) -> Any:
        if self._readiness is not None:
            self._readiness.stop()
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)
            self._private = None
        return status

    def on_bind(self, reply: BindReply) -> None:
        """Start a bind-first tool at the first bind; warn if a later bind moves the prefix."""
        prefix = self.prefix_override or routed_prefix(reply) or "/"
        if self.child is None:
            if self.bind_first:
                self.start(prefix)
            return
        if self.preset.needs_prefix and prefix != self.started_prefix:
            self._log.warn("the gateway now routes this studio under {new} but {title} was "
                           "started under {old}; restart the studio to follow",
                           new=prefix, old=self.started_prefix, title=self.preset.title)

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        """Stop the tool: its own stop command first (Xpra), then the signal."""
        child = self.child
        if child is None:
            return
        stop = self.launch.stop_argv
        if not stop or child.ended.called:
            child.terminate(sig)
            return
        self._log.info("stopping {title}: {argv}", title=self.preset.title, argv=shlex.join(stop))
        done: Deferred[None] = Deferred()
        try:
            argv = resolve_argv(stop, self.environ.get("PATH", os.defpath))
            self.reactor.spawnProcess(_Quiet(done), argv[0], argv,
                                      env=without_secrets(self.environ),
                                      childFDs={0: "w", 1: 2, 2: 2})
        except (OSError, FileNotFoundError) as e:
            self._log.warn("cannot run {argv}: {why}", argv=shlex.join(stop), why=str(e))
            child.terminate(sig)
            return
        def waited_enough() -> None:
            if not done.called:
                done.callback(None)

        timer = self.reactor.callLater(STOP_COMMAND_WAIT, waited_enough)

        def then(_: Any) -> None:
            if timer.active():
                timer.cancel()
            child.terminate(sig)

        done.addCallback(then)
