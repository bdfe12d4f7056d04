"""The `twistd studios-connect` plugin: the connect client as a twistd service."""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.logger import Logger
from twisted.python import usage

from studios_gateway.studio.main import EXIT_REFUSED, OPTION_VARS


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("Holds a studio's tunnel to a studios gateway and serves the tool through it. "
                "Options override CONNECT_* environment variables. For entry-point mode (the "
                "tool as a child) use the studios-connect command.")
    optParameters = [[attr.replace("_", "-"), None, None, f"{var}"]
                     for attr, var in OPTION_VARS.items()]


def makeService(options: Options) -> Any:
    from studios_gateway.component import EX_CONFIG, fail_start
    from studios_gateway.studio.client import ConnectClient
    from studios_gateway.studio.settings import SettingsRefused, load_at_start, warn_unknown

    values = {var: options[attr.replace("_", "-")] for attr, var in OPTION_VARS.items()}
    try:
        settings, unknown = load_at_start(os.environ, values)
    except SettingsRefused as e:
        fail_start(str(e), EX_CONFIG, program="studios-connect")
    warn_unknown(unknown, Logger(namespace="studios_gateway.studio.tap"))
    from twisted.internet import reactor

    refused: list[int] = []

    def fatal(message: str) -> None:
        """A final refusal (a wrong token, a deleted session): stop, and exit 2 as the
        studios-connect command does, so that a unit (`Restart=on-failure`,
        `RestartPreventExitStatus=2`) shows it failed instead of cleanly stopped."""
        if not refused:
            refused.append(EXIT_REFUSED)
            reactor.addSystemEventTrigger("after", "shutdown", exit_refused)
        if reactor.running:
            reactor.stop()

    def exit_refused() -> None:
        # twistd returns 0 whenever its reactor stops; the shutdown is done by now.
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(refused[0])

    from studios_gateway.studio import points_back

    def points_back_here(problem: str) -> None:
        Logger(namespace="studios_gateway.studio.tap").error("{problem}", problem=problem)
        fatal(problem)

    # The tool runs elsewhere here: is its port the gateway's own, by mistake?
    on_bind = points_back.at_first_bind(reactor, settings, points_back_here)
    return ConnectClient(settings, reactor, on_fatal=fatal, on_bind=on_bind)

