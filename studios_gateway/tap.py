"""The `twistd studios-gateway` plugin: options and makeService."""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from studios_gateway.config import VARIABLES, Config, ConfigError
from studios_gateway.config_loading import load_config


class Options(usage.Options):
    """Every configuration variable is also an option: CONNECT_HTTP_PORT is --http-port."""

    synopsis = "[options]"
    longdesc = ("Runs the studios gateway: tunnel listener, HTTP proxy, SSH proxy and management "
                "endpoints in one process. Options override environment variables, which "
                "override the --env-file, which overrides the defaults.")
    optParameters = [
        ["env-file", None, None, "Read variables from this file (NAME=value lines)."],
        *[[v.option, None, None, f"{v.name}: {v.doc}"] for v in VARIABLES],
    ]

    def variable_options(self) -> dict[str, str | None]:
        return {v.name: self[v.option] for v in VARIABLES}


def makeService(options: Options) -> IService:
    from studios_gateway.component import (
        EX_CONFIG,
        StartError,
        fail_start,
        remember_twistd,
        say_to_operator,
    )
    from studios_gateway.service import make_service

    remember_twistd(options)  # (without -n, a start that fails after the fork says so)

    def read_config() -> Config:
        """The settings as at start: options, environment, env file (SIGHUP re-reads them)."""
        return load_config(options.variable_options(), environ=os.environ,
                           env_file=options["env-file"])

    try:
        config = read_config()
    except ConfigError as e:  # every invalid variable, one line each, as check-config
        *others, last = e.errors
        for warning in e.warnings:  # a misspelt name, often the errors' cause
            say_to_operator(f"warning: {warning}", priority=4)
        for error in others:
            say_to_operator(str(error))
        fail_start(str(last), EX_CONFIG)
    try:
        service: Any = make_service(config, environ=os.environ, reload=read_config)
    except StartError as e:  # a file or key the settings name cannot be used
        fail_start(str(e), EX_CONFIG)
    if writes_to_journal(options):
        # Under systemd: each line with its priority (journalctl -p warning), and no time
        # stamp of its own beside the journal's.
        from studios_gateway import logs

        service.log_observer = logs.journal_observer(sys.stdout)
    return service


def writes_to_journal(options: Options) -> bool:
    """Standard output is the journal's stream systemd gave (JOURNAL_STREAM), twistd
    runs in the foreground (-n: a daemon's standard output is /dev/null from its fork
    on, where the whole log went) and was not told where else to log (--logfile,
    --syslog, --logger)."""
    from studios_gateway import systemd

    twistd = getattr(options, "parent", None) or {}
    if not twistd.get("nodaemon"):
        return False
    if any(twistd.get(name) for name in ("logfile", "syslog", "logger")):
        return False
    try:
        return systemd.writes_to_journal(os.environ, sys.stdout.fileno())
    except (OSError, ValueError):  # (a standard output without a descriptor)
        return False
