"""The `twistd studios-connect` plugin: the connect client as a twistd service."""

from __future__ import annotations

import os
from typing import Any

from twisted.python import usage

from studios_gateway.config import ConfigError
from studios_gateway.studio.main import OPTION_VARS


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
    from studios_gateway.studio.settings import load_client_settings

    values = {var: options[attr.replace("_", "-")] for attr, var in OPTION_VARS.items()}
    try:
        settings = load_client_settings(os.environ, values)
    except ConfigError as e:
        fail_start(str(e), EX_CONFIG)
    from twisted.internet import reactor

    def fatal(message: str) -> None:
        if reactor.running:
            reactor.stop()

    return ConnectClient(settings, reactor, on_fatal=fatal)
