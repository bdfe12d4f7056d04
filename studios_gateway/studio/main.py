"""`studios-connect`: the connect client, as a console script (with entry-point mode).

    CONNECT_STRING='studios-connect://<id>:<token>@gw:7070/...' studios-connect --tool-port 8888
    studios-connect --tool-port 8888 -- jupyter lab --port 8888 --no-browser
    studios-connect --tool jupyterlab            # the preset starts JupyterLab itself
    studios-connect --tool xpra -- igv           # the preset adds what `igv` needs (in Xpra)

Everything can also come from CONNECT_* variables (see settings.py); the connect
string (it holds the studio's token) had better: other local users can read a
process's arguments (``--connect``) with ps, not its environment. With a
command after ``--`` the tool runs as our child and we exit with its status.
A tool with a preset (studio/presets/) gets the flags it needs behind the
gateway: with ``--tool X`` and no command the preset starts the tool; with a
command (and CONNECT_TOOL or --tool naming the tool) it adds what is missing.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from studios_gateway.wire import tools

#: The exit status for a setting that is wrong and for a gateway's final refusal of the
#: studio (a wrong token, a deleted session, an incompatible version, a pin mismatch).
EXIT_REFUSED = 2

OPTION_VARS = {"connect": "CONNECT_STRING", "gateway": "CONNECT_GATEWAY_URL",
               "session": "CONNECT_SESSION_ID", "tool_port": "CONNECT_TOOL_PORT",
               "tool": "CONNECT_TOOL", "tool_path_prefix": "CONNECT_TOOL_PATH_PREFIX",
               "log_level": "CONNECT_CLIENT_LOG_LEVEL"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="studios-connect",
        usage="%(prog)s [options] [-- COMMAND ...]",
        description="Connect a studio to a studios gateway: hold a tunnel and serve the tool "
                    "through it. Options override CONNECT_* environment variables.",
        epilog="With `-- COMMAND ...`, run the tool as a child: CONNECT_TOOL_PORT and "
               "CONNECT_TOOL_PATH_PREFIX are set in its environment (it starts at the first "
               "bind, which says the prefix, unless CONNECT_TOOL_PATH_PREFIX is given), "
               "SIGTERM is passed on "
               "(SIGKILL after 30s), and the exit status is the tool's; 2 when the gateway "
               "refuses the studio for good (the tool is then stopped), or when a setting is "
               "wrong (one line names it, before anything starts); 127 when the command is "
               "not installed. docs/studios.md "
               "lists every CONNECT_* variable (CONNECT_TOOL_WORKDIR, CONNECT_TOOL_PRESET, "
               "...).")
    p.add_argument("--connect", metavar="STRING",
                   help="connect string (CONNECT_STRING; better set in the environment: "
                        "other local users can read a command line with ps)")
    p.add_argument("--gateway", metavar="URL",
                   help="gateway tunnel address(es), comma-separated (CONNECT_GATEWAY_URL)")
    p.add_argument("--session", metavar="ID", help="session id (CONNECT_SESSION_ID)")
    p.add_argument("--tool-port", metavar="PORT", help="the tool's port (CONNECT_TOOL_PORT)")
    p.add_argument("--tool", help=f"{tools.accepted()} (CONNECT_TOOL); with no command, "
                                  "starts the tool through its preset")
    p.add_argument("--tool-path-prefix", metavar="PATH",
                   help="path prefix the tool serves under (CONNECT_TOOL_PATH_PREFIX)")
    p.add_argument("--log-level", help="CONNECT_CLIENT_LOG_LEVEL (default info)")
    return p


def parse_options(args_list: list[str]) -> argparse.Namespace:
    """The options before ``--``. A command given without ``--`` (an image's
    ``CMD ["jupyter", "lab"]`` after the entry point's ``studios-connect --tool ...``) is
    refused saying where it goes; argparse said only ``unrecognized arguments``."""
    parser = build_parser()
    args, rest = parser.parse_known_args(args_list)
    if rest:
        if not rest[0].startswith("-"):
            command = _command_words(parser, args_list)
            words = " ".join(command)
            as_json = ", ".join(f'"{word}"' for word in ["--", *command])
            parser.error(f"unrecognized arguments: {words}; a command goes after '--': "
                         f"studios-connect [options] -- {words} (in a Containerfile: "
                         f"CMD [{as_json}])")
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def _command_words(parser: argparse.ArgumentParser, args_list: list[str]) -> list[str]:
    """The command given without ``--``: everything from the first word that is neither
    one of our options nor its value (argparse also took that command's own options that
    share a name with ours, ``--log-level=DEBUG`` say, and left them out of what it did
    not know). An option of ours is known by a prefix too, as argparse knows it
    (``--log debug``)."""
    actions = parser._option_string_actions
    i = 0
    while i < len(args_list):
        name, has_value, _ = args_list[i].partition("=")
        action = actions.get(name)
        if action is None and name.startswith("--") and parser.allow_abbrev:
            named = {a for option, a in actions.items() if option.startswith(name)}
            action = named.pop() if len(named) == 1 else None
        if action is None:
            break
        i += 1 if has_value or action.nargs == 0 else 2
    return args_list[i:]


def start_logging(level: str, beginner: Any = globalLogBeginner, out: Any = None) -> None:
    """Log to ``out`` (standard error) at ``level`` and above, through ``beginner``."""
    from studios_gateway.logs import LEVELS
    from studios_gateway.wire import mux

    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
    observer = FilteringLogObserver(textFileLogObserver(out or sys.stderr), [predicate])
    beginner.beginLoggingTo([observer], redirectStandardIO=False)
    # The one observer drops debug events below this level: the multiplexer need not make
    # its two per-stream debug lines only for them to be dropped.
    mux.stream_debug = LEVELS[level] == LogLevel.debug


def main(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in args_list:
        i = args_list.index("--")
        args_list, command = args_list[:i], args_list[i + 1:]
    args = parse_options(args_list)
    environ = dict(os.environ if environ is None else environ)

    from studios_gateway.studio.settings import SettingsRefused, load_at_start, warn_unknown

    options = {var: getattr(args, attr) for attr, var in OPTION_VARS.items()}
    try:
        settings, unknown = load_at_start(environ, choose_port(environ, options, command))
    except SettingsRefused as e:
        print(f"studios-connect: {e}", file=sys.stderr)
        return 2
    start_logging(settings.log_level)
    warn_unknown(unknown, Logger(namespace="studios_gateway.studio.main"))
    launcher = None
    if uses_preset(settings, command, tool_on_command_line=args.tool is not None):
        from studios_gateway.studio.presets.base import PresetError
        from studios_gateway.studio.presets.setup import prepare

        try:
            settings, launcher = prepare(settings, command, environ)
        except PresetError as e:
            print(f"studios-connect: {e}", file=sys.stderr)
            return 2
        except FileNotFoundError as e:
            print(f"studios-connect: {e}", file=sys.stderr)
            return 127
    return run(settings, command, environ, launcher)


def uses_preset(settings: Any, command: list[str], tool_on_command_line: bool) -> bool:
    """A preset applies to a command for its tool, or starts the tool when --tool names it."""
    from studios_gateway.studio.presets import preset_for

    if preset_for(settings.tool) is None or not settings.preset:
        return False
    return bool(command) or tool_on_command_line


def choose_port(environ: dict[str, str], options: dict[str, str | None],
                command: list[str]) -> dict[str, str | None]:
    """With --tool naming a preset's tool and no port given, a free loopback port. Not with
    CONNECT_TOOL_PRESET=off: no preset starts a tool on it, so nothing ever listened there
    and the client waited for it without end; the missing port is refused instead."""
    from studios_gateway.studio.presets import preset_for

    tool = tools.canonical(options.get("CONNECT_TOOL") or environ.get("CONNECT_TOOL") or "")
    if tool is None or preset_for(tool) is None:
        return options
    from studios_gateway.studio.settings import PRESET_OFF

    if (environ.get("CONNECT_TOOL_PRESET") or "").strip().lower() in PRESET_OFF:
        return options
    if options.get("CONNECT_TOOL_PORT") or (environ.get("CONNECT_TOOL_PORT") or "").strip():
        return options
    from studios_gateway.studio.presets.setup import free_port

    return {**options, "CONNECT_TOOL_PORT": str(free_port())}


def run(settings: Any, command: list[str], environ: dict[str, str],
        launcher: Any = None) -> int:
    from twisted.internet import reactor

    from studios_gateway import reactor_loop
    from studios_gateway.studio import points_back
    from studios_gateway.studio.client import ConnectClient
    from studios_gateway.studio.entrypoint import (
        ToolChild,
        child_environment,
        install_orphan_reaping,
        install_signal_forwarding,
        resolve_argv,
    )
    from studios_gateway.studio.presets.launcher import routed_prefix
    from studios_gateway.studio.presets.probe import http_status
    from studios_gateway.studio.ssh import StudioSSH

    log = Logger(namespace="studios_gateway.studio.main")

    status = {"code": 0}
    refused: list[str] = []  # the gateway's final refusal, once there is one
    child: ToolChild | None = None

    def finish(code: int) -> None:
        # A tool stopped because the gateway refused the studio for good exits as we
        # made it; the container's status says why it ended.
        status["code"] = EXIT_REFUSED if refused else code
        if client.running:
            client.stopService()
        if reactor.running:
            reactor.stop()

    def fatal(message: str) -> None:
        print(f"studios-connect: {message}", file=sys.stderr, flush=True)
        refused.append(message)
        if child is None:
            finish(EXIT_REFUSED)
            return
        # Nobody can reach the tool without the tunnel, and the client will not dial
        # again: stop the tool as a SIGTERM would, so the container ends instead of
        # running on unreachable.
        print("studios-connect: stopping the tool (the studio cannot be reached without "
              "its tunnel)", file=sys.stderr, flush=True)
        on_signal(signal.SIGTERM)

    # Reachable only through the tunnel, as the gateway; ssh and sftp start where the tool
    # works (docs/ssh.md): the preset's directory, else CONNECT_TOOL_WORKDIR, else ours.
    ssh = StudioSSH(reactor, cwd=launcher.launch.cwd if launcher is not None
                    else settings.tool_workdir or None)
    # A command of its own (no preset) is told its path prefix in CONNECT_TOOL_PATH_PREFIX.
    # Only the bind says what it is (/_studio/<id>/ in path mode), so unless the variable
    # is set, the tool starts at the first bind, as a preset's tool that needs it does.
    argv: list[str] = []
    waits_for_bind = launcher is None and bool(command) and not settings.tool_path_prefix
    started_prefix = {"prefix": settings.tool_path_prefix}
    said: set[str] = set()  # warnings said once per run
    checked: set[str] = set()  # prefixes a tool started elsewhere was checked under
    # A tool started elsewhere, only its port given: the gateway's own, by mistake?
    ask_port = (points_back.at_first_bind(reactor, settings, fatal)
                if launcher is None and not command else None)

    def start_child(prefix: str) -> None:
        nonlocal child
        started_prefix["prefix"] = prefix
        # CONNECT_TOOL_WORKDIR when given (it was ignored without a preset); else ours, the
        # image's WORKDIR, which a command of its own may name files relative to
        child = ToolChild(reactor, argv, child_environment(environ, settings.tool_port, prefix),
                          path=settings.tool_workdir or None)
        child.start()
        child.ended.addCallback(finish)

    def on_bind(reply: Any) -> None:
        ssh.on_bind(reply)
        if ask_port is not None:
            ask_port(reply)
        differs = given_prefix_differs(settings, reply)
        if differs and differs not in said:
            said.add(differs)
            log.warn("{warning}", warning=differs)  # (its prefixes may hold braces)
        if launcher is not None:
            launcher.on_bind(reply)
        elif waits_for_bind:
            prefix = routed_prefix(reply) or "/"
            if child is None:
                start_child(prefix)
                # nothing waited for its port before the dial
                client.watch_tool(lambda: check_prefix(http_status(reactor),
                                                       settings.tool_port, prefix))
            elif prefix != started_prefix["prefix"]:
                log.warn("the gateway now routes this studio under {new} but the tool was "
                         "started under {old}; restart the studio to follow", new=prefix,
                         old=started_prefix["prefix"])
        elif not command and settings.tool == "generic":
            # A tool started elsewhere (only its port given) is told no prefix: in path
            # mode one that serves at the root gave browsers its 404 pages without a word.
            prefix = routed_prefix(reply) or "/"
            if prefix not in checked:
                checked.add(prefix)
                check_prefix(http_status(reactor), settings.tool_port, prefix, told=False)

    client = ConnectClient(settings, reactor, on_fatal=fatal, ssh_target=ssh.ssh_target,
                           on_bind=on_bind,
                           tool_ready=launcher.ready if launcher is not None else None,
                           bind_first=(launcher is not None and launcher.bind_first)
                           or waits_for_bind)
    if launcher is not None:
        def started(tool: ToolChild) -> ToolChild:
            nonlocal child
            child = tool
            tool.ended.addCallback(finish)
            return tool

        launcher.child_started.addCallback(started)
    elif command:
        try:
            argv = resolve_argv(command, environ.get("PATH", os.defpath))
        except FileNotFoundError as e:
            print(f"studios-connect: {e}", file=sys.stderr)
            return 127

    def on_signal(signum: int) -> None:
        if launcher is not None and child is not None:
            launcher.terminate(signum)
        elif child is not None:
            child.terminate(signum)
        else:
            finish(0)

    def startup() -> None:
        install_signal_forwarding(reactor, on_signal)
        install_orphan_reaping(reactor)  # PID 1 of a container inherits every orphan
        if launcher is not None:
            if not launcher.bind_first:
                launcher.start()
        elif waits_for_bind:
            log.info("the tool starts once the gateway has said the path it is served under "
                     "(CONNECT_TOOL_PATH_PREFIX; set it to start the tool at once)")
        elif command:
            start_child(settings.tool_path_prefix)
        client.startService()

    reactor.callWhenRunning(startup)
    reactor_loop.install(reactor)  # the lean poll and main loop (before run)
    # Twisted's handlers are needed for SIGCHLD (the tool's exit); startup() then replaces
    # its SIGTERM/SIGINT handlers with ours.
    reactor.run()
    return status["code"]


def given_prefix_differs(settings: Any, reply: Any) -> str | None:
    """The warning for a CONNECT_TOOL_PATH_PREFIX other than the one the gateway routes a
    generic tool under (it passes that path on unchanged), or None. Set to / in path mode,
    it started the tool at once under /, and browsers got the tool's 404 pages without a
    word in the log."""
    from studios_gateway.studio.presets.launcher import routed_prefix

    given = settings.tool_path_prefix
    routed = routed_prefix(reply)
    if not given or settings.tool != "generic" or routed is None or routed == given:
        return None
    return (f"CONNECT_TOOL_PATH_PREFIX is {given} but the gateway routes this studio under "
            f"{routed} ({reply.routing} mode) and passes that path on unchanged, so the tool "
            f"gets requests under {routed}; unset CONNECT_TOOL_PATH_PREFIX to be told the "
            f"gateway's")


def check_prefix(fetch: Any, port: int, prefix: str, told: bool = True) -> Any:
    """A command of its own told a path prefix (path mode) that answers 404 there but not
    at ``/`` serves at the root and ignores the prefix: browsers got its 404 page and the
    log said nothing. One warning then. `fetch` GETs a URL and fires with the status
    (presets/probe.py's http_status); fires once it has looked. `told`: False for a tool
    started elsewhere, which studios-connect did not tell its prefix."""
    from twisted.internet import defer

    if prefix == "/":
        return defer.succeed(None)
    where = ("CONNECT_TOOL_PATH_PREFIX ({prefix})" if told else
             "{prefix}, the path the gateway passes on in path mode (the tool was started "
             "elsewhere, so studios-connect could not tell it)")

    def say(results: list[tuple[bool, Any]]) -> None:
        (under_ok, under), (root_ok, root) = results
        if under_ok and root_ok and under == 404 and root != 404:
            Logger(namespace="studios_gateway.studio.main").warn(
                "the tool answers 404 at {prefix} but {root} at /: it seems to serve at the "
                "root and ignore its path prefix, so browsers get its 404 page. It must serve "
                "under " + where + "; in subdomain mode it would be served at /",
                prefix=prefix, root=root)

    return defer.DeferredList([fetch(f"http://127.0.0.1:{port}{prefix}"),
                               fetch(f"http://127.0.0.1:{port}/")],
                              consumeErrors=True).addCallback(say)


def console() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console()
