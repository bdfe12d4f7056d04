"""`studios-connect`: the connect client, as a console script (with entry-point mode).

    studios-connect --connect 'studios-connect://<id>:<token>@gw:7070/?pin=...' --tool-port 8888
    studios-connect --tool-port 8888 -- jupyter lab --port 8888 --no-browser

Everything can also come from CONNECT_* variables (see settings.py). With a
command after ``--`` the tool runs as our child and we exit with its status.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from studios_gateway.config import ConfigError
from studios_gateway.wire import tools

OPTION_VARS = {"connect": "CONNECT_STRING", "gateway": "CONNECT_GATEWAY_URL",
               "session": "CONNECT_SESSION_ID", "tool_port": "CONNECT_TOOL_PORT",
               "tool": "CONNECT_TOOL", "tool_path_prefix": "CONNECT_TOOL_PATH_PREFIX",
               "log_level": "CONNECT_CLIENT_LOG_LEVEL"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="studios-connect",
        description="Connect a studio to a studios gateway: hold a tunnel and serve the tool "
                    "through it. Options override CONNECT_* environment variables.",
        epilog="With `-- COMMAND ...`, run the tool as a child: CONNECT_TOOL_PORT and "
               "CONNECT_TOOL_PATH_PREFIX are set in its environment, SIGTERM is passed on "
               "(SIGKILL after 30s), and the exit status is the tool's.")
    p.add_argument("--connect", metavar="STRING", help="connect string (CONNECT_STRING)")
    p.add_argument("--gateway", metavar="URL",
                   help="gateway tunnel address(es), comma-separated (CONNECT_GATEWAY_URL)")
    p.add_argument("--session", metavar="ID", help="session id (CONNECT_SESSION_ID)")
    p.add_argument("--tool-port", metavar="PORT", help="the tool's port (CONNECT_TOOL_PORT)")
    p.add_argument("--tool", help=f"{tools.accepted()} (CONNECT_TOOL)")
    p.add_argument("--tool-path-prefix", metavar="PATH",
                   help="path prefix the tool serves under (CONNECT_TOOL_PATH_PREFIX)")
    p.add_argument("--log-level", help="CONNECT_CLIENT_LOG_LEVEL (default info)")
    return p


def start_logging(level: str) -> None:
    from studios_gateway.logs import LEVELS

    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def main(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in args_list:
        i = args_list.index("--")
        args_list, command = args_list[:i], args_list[i + 1:]
    args = build_parser().parse_args(args_list)
    environ = dict(os.environ if environ is None else environ)

    from studios_gateway.studio.settings import load_client_settings

    options = {var: getattr(args, attr) for attr, var in OPTION_VARS.items()}
    try:
        settings = load_client_settings(environ, options)
    except ConfigError as e:
        print(f"studios-connect: {e}", file=sys.stderr)
        return 2
    start_logging(settings.log_level)
    return run(settings, command, environ)


def run(settings: Any, command: list[str], environ: dict[str, str]) -> int:
    from twisted.internet import reactor

    from studios_gateway.studio.client import ConnectClient
    from studios_gateway.studio.entrypoint import (
        ToolChild,
        child_environment,
        install_signal_forwarding,
        resolve_argv,
    )
    from studios_gateway.studio.ssh import StudioSSH

    status = {"code": 0}
    child: ToolChild | None = None

    def finish(code: int) -> None:
        status["code"] = code
        if client.running:
            client.stopService()
        if reactor.running:
            reactor.stop()

    def fatal(message: str) -> None:
        print(f"studios-connect: {message}", file=sys.stderr, flush=True)
        if child is None:
            finish(2)

    ssh = StudioSSH(reactor)  # reachable only through the tunnel, as the gateway
    client = ConnectClient(settings, reactor, on_fatal=fatal, ssh_target=ssh.ssh_target,
                           on_bind=ssh.on_bind)
    if command:
        try:
            argv = resolve_argv(command, environ.get("PATH", os.defpath))
        except FileNotFoundError as e:
            print(f"studios-connect: {e}", file=sys.stderr)
            return 127
        child = ToolChild(reactor, argv, child_environment(environ, settings.tool_port,
                                                           settings.tool_path_prefix))

    def on_signal(signum: int) -> None:
        if child is not None:
            child.terminate(signum)
        else:
            finish(0)

    def startup() -> None:
        install_signal_forwarding(reactor, on_signal)
        if child is not None:
            child.start()
            child.ended.addCallback(finish)
        client.startService()

    reactor.callWhenRunning(startup)
    # Twisted's handlers are needed for SIGCHLD (the tool's exit); startup() then replaces
    # its SIGTERM/SIGINT handlers with ours.
    reactor.run()
    return status["code"]


def console() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console()
