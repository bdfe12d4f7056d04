"""Before the reactor runs: pick the preset, ask the installed tool about itself, plan.

Everything that can fail with a clear line (the tool missing, a flag its
version lacks, a bad working directory) fails here, before a tunnel or a
process exists.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from twisted.logger import Logger

from studios_gateway.studio.entrypoint import resolve_argv
from studios_gateway.studio.presets import pick
from studios_gateway.studio.presets.base import (
    Installed,
    Place,
    PresetError,
    Runner,
    inspect_tool,
    run_for_text,
)
from studios_gateway.studio.presets.launcher import PresetLauncher
from studios_gateway.studio.presets.xpra import free_display

_log = Logger(namespace="studios_gateway.studio.presets.setup")


def free_port() -> int:
    """A port nobody listens on now (the tool takes it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def home_of(environ: Mapping[str, str], workdir: str) -> str:
    """The tool's working directory: CONNECT_TOOL_WORKDIR, else $HOME, else the user's home."""
    if workdir:
        return workdir
    home = environ.get("HOME", "").strip()
    if home.startswith("/"):
        return home
    try:
        return pwd.getpwuid(os.geteuid()).pw_dir or "/"
    except KeyError:
        return "/"


def place_for(settings: Any, environ: Mapping[str, str], tool: str) -> Place:
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = str(os.geteuid())
    workdir = home_of(environ, settings.tool_workdir)
    if not os.path.isdir(workdir):
        raise PresetError(f"the tool's working directory {workdir} does not exist (set "
                          f"CONNECT_TOOL_WORKDIR or HOME to the studio's home)")
    return Place(port=settings.tool_port, prefix=settings.tool_path_prefix or "/",
                 workdir=workdir, user=user, root=os.geteuid() == 0,
                 display=free_display() if tool == "xpra" else 0)


def prepare(settings: Any, command: Sequence[str], environ: Mapping[str, str], *,
            run: Runner = run_for_text, reactor: Any = None) -> tuple[Any, PresetLauncher]:
    """The settings to bind with (the tool's port and version) and the launcher.

    Raises PresetError (one line) or FileNotFoundError (the command is not on PATH).
    """
    # A tool installed next to studios-connect (the same virtualenv) is found too.
    path = os.pathsep.join([environ.get("PATH", os.defpath), os.path.dirname(sys.executable)])
    environ = {**environ, "PATH": path}
    preset = pick(settings.tool, command, lambda name: shutil.which(name, path=path) is not None)
    if preset is None:
        raise PresetError(f"no preset for tool {settings.tool}")
    place = place_for(settings, environ, preset.tool)
    head = preset.tool_head(command, place)
    if head:
        head = [resolve_argv(head, path)[0], *head[1:]]
        _log.info("asking {title} for its version and options (`{version}`, `{help}`); a "
                  "tool can take seconds to answer", title=preset.title,
                  version=" ".join(preset.version_argv(head)),
                  help=" ".join(preset.help_argv(head)))
        installed = inspect_tool(preset, head, run,
                                 lambda answer: not preset.lacks(command, place, answer))
    else:
        installed = Installed("")
    if reactor is None:
        from twisted.internet import reactor
    launcher = PresetLauncher(reactor, preset, command, place, installed, environ,
                              prefix_override=settings.tool_path_prefix)
    resolve_argv(launcher.launch.argv, path)
    if launcher.launch.stop_argv:
        resolve_argv(launcher.launch.stop_argv, path)
    return replace(settings, tool_port=launcher.launch.port,
                   tool_version=installed.version), launcher
