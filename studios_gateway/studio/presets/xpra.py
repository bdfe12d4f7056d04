"""Xpra: an X session on a display of its own, shown in the browser by its HTML5 client.

``xpra start :N`` with ``--bind-tcp 127.0.0.1:PORT --html on`` in the
foreground (``--daemon no``), an xterm as the default program (``--start``; its
selection in the CLIPBOARD, which the HTML5 client shares with the browser),
and the desktop services a container lacks turned off (systemd, mDNS, audio,
printing, webcam, D-Bus and the notifications that need it). A command that is
not ``xpra`` is run inside the session (``--start-child``, and the session ends
with it). Start commands from the system's configuration (Debian's
``/etc/X11/Xsession true``) are left out (see ``environment``). The gateway strips the
path prefix. Shutdown runs
``xpra stop :N``. Readiness: ``/`` (the HTML5 client's page) answers 200.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from studios_gateway.studio.presets.base import Flag, Place, Preset

# The xterm's selection and paste use the CLIPBOARD, the one selection Xpra's HTML5 client
# (3.1.3) exchanges with the browser's clipboard: by default xterm selects into PRIMARY and
# pastes from it, so text went neither way between the browser and the terminal.
DEFAULT_CHILD = "xterm -xrm XTerm*selectToClipboard:true"
# Debian's /etc/xpra/conf.d/60_server.conf says `start = /etc/X11/Xsession true`, and a
# --start of ours adds to that list instead of replacing it. In a studio that Xsession
# finds no session ("true" is not a path to it), puts an error dialog (xmessage) in the
# user's session and, once it is dismissed, starts a second terminal. Xpra reads the
# directory named by XPRA_USER_CONF_DIRS last, key by key: an empty `start` there
# leaves only the preset's own --start.
NO_XSESSION = (
    "# written by studios-connect's xpra preset: no start commands from the system's\n"
    "# configuration (Debian's runs /etc/X11/Xsession); the preset gives its own\n"
    "start =\n")
FIRST_DISPLAY = 100
X_SOCKETS = "/tmp/.X11-unix"  # noqa: S108 - where every X server puts its socket


def free_display(exists: Callable[[str], bool] = os.path.exists, first: int | None = None
                 ) -> int:
    """The first display number from ``first`` with no X socket and no lock file.

    By default the search starts at 100 plus our pid modulo 400: two studios starting at
    the same moment on one machine (tests; a container has one) rarely try the same number.
    """
    n = FIRST_DISPLAY + os.getpid() % 400 if first is None else first
    while exists(f"{X_SOCKETS}/X{n}") or exists(f"/tmp/.X{n}-lock"):  # noqa: S108
        n += 1
    return n


class Xpra(Preset):
    tool = "xpra"
    title = "Xpra"
    executables = ("xpra",)

    def head(self, argv: Sequence[str]) -> int | None:
        if argv and os.path.basename(argv[0]) == "xpra" and len(argv) > 1 \
                and argv[1] in ("start", "start-desktop"):
            return 2
        return None

    def version_argv(self, head: Sequence[str]) -> list[str]:
        return [head[0], "--version"]

    def default_command(self, place: Place) -> list[str]:
        return ["xpra", "start", f"--start={DEFAULT_CHILD}"]

    def wrap(self, argv: Sequence[str], place: Place) -> list[str] | None:
        if argv and os.path.basename(argv[0]) == "xpra":
            return None  # another xpra subcommand: run it as given
        # The session lives as long as the person's program (entry-point mode: its end is ours).
        return ["xpra", "start", f"--start-child={shlex.join(argv)}", "--exit-with-children=yes"]

    def positional(self, rest: list[str], place: Place, default: bool) -> tuple[list[str],
                                                                                list[str]]:
        if any(a.startswith(":") for a in rest):
            return rest, []
        return [f":{place.display}", *rest], [f":{place.display}"]

    def flags(self, place: Place) -> list[Flag]:
        return [
            Flag(("--bind-tcp",), f"127.0.0.1:{place.port}", "listen on loopback only",
                 port=True),
            Flag(("--html",), "on", "serve its HTML5 client"),
            Flag(("--daemon",), "no", "stay in the foreground as our child"),
            Flag(("--tcp-auth",), "none", "turn its login off (the gateway authenticates)"),
            Flag(("--systemd-run",), "no", "not use systemd (containers have none)"),
            Flag(("--mdns",), "no", "not announce itself on the network"),
            Flag(("--pulseaudio",), "no", "not start a sound server"),
            Flag(("--dbus-launch",), "", "not start a D-Bus session"),
            Flag(("--dbus-control",), "no", "not serve D-Bus control"),
            Flag(("--dbus-proxy",), "no", "not proxy D-Bus"),
            Flag(("--notifications",), "no", "not forward notifications (they need D-Bus)"),
            Flag(("--printing",), "no", "not set up printing"),
            Flag(("--webcam",), "no", "not forward webcams"),
        ]

    def environment(self, environ: Mapping[str, str], private: Callable[[], Path],
                    argv: Sequence[str] = ()) -> dict[str, str]:
        """XPRA_USER_CONF_DIRS naming a directory whose xpra.conf empties `start`, unless
        the person set the variable, or has an Xpra configuration of their own in their
        home (the variable replaces those directories)."""
        home = Path(environ.get("HOME") or os.path.expanduser("~"))
        config_home = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
        if "XPRA_USER_CONF_DIRS" in environ or any(
                d.is_dir() for d in (config_home / "xpra", home / ".xpra")):
            return {}
        conf = private()
        (conf / "xpra.conf").write_text(NO_XSESSION)
        return {"XPRA_USER_CONF_DIRS": str(conf)}

    def stop_argv(self, head: Sequence[str], rest: Sequence[str]) -> list[str] | None:
        display = next((a for a in rest if a.startswith(":")), None)
        return [head[0], "stop", display] if display else None
