"""SIGHUP reload: what a running gateway takes from re-read settings.

Only what can change without dropping a connection: the log level, and the
TLS certificate and key (a renewed certificate is served to new connections;
open ones keep the old). Everything else needs a restart, and a reload that finds
such a setting changed says so (a warning naming it, old and new value). A reload
that fails changes nothing that failed and says why; the gateway runs on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from studios_gateway import logs
from studios_gateway.config import VARIABLES, Config, show_value

_log = Logger()


class ReloadError(Exception):
    """Some part of a reload failed; the message names each part and why."""


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """Server TLS whose certificate and key can be replaced while listening.

    `load(cert_path, key_path)` builds the options (it raises on a bad PEM);
    each new connection uses whatever was loaded last.
    """

    def __init__(self, cert_path: str | Path, key_path: str | Path,
                 load: Callable[[str | Path, str | Path], Any]) -> None:
        self._load = load
        self.cert_path, self.key_path = str(cert_path), str(key_path)
        self._current = load(cert_path, key_path)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection: SSL.Connection = self._current.serverConnectionForTLS(tlsProtocol)
        return connection

    def reload(self, cert_path: str | None = None, key_path: str | None = None) -> None:
        """Load the files again (or new ones); on error keep serving the old pair."""
        cert = cert_path or self.cert_path
        key = key_path or self.key_path
        try:
            options = self._load(cert, key)
        except Exception as e:
            raise ReloadError(f"certificate {cert}: cannot load it and its key ({e}); "
                              "still serving the previous one") from None
        self._current = options
        self.cert_path, self.key_path = cert, key


#: What a reload applies; every other variable takes a restart.
RELOADED = frozenset({"CONNECT_LOG_LEVEL", "CONNECT_TLS_CERT_FILE", "CONNECT_TLS_KEY_FILE"})


def needs_restart(running: Config, reread: Config) -> list[str]:
    """One line per variable that differs in `reread` but that a reload does not apply
    (a port, a limit, Redis...): the running gateway keeps its value. Secrets say only
    that they changed."""
    lines = []
    for var in VARIABLES:
        if var.name in RELOADED:
            continue
        old, new = getattr(running, var.attr), getattr(reread, var.attr)
        if old == new:
            continue
        before, after = show_value(var, old), show_value(var, new)
        if var.secret or before == after:  # (a URL whose password alone changed)
            lines.append(f"{var.name} changed")
        else:
            lines.append(f"{var.name} changed from {before} to {after}")
    return lines


def overridden(running: Config, reread: Config) -> list[str]:
    """One line per variable whose env-file line changed while an option or the
    environment (a unit's Environment= or EnvironmentFile= line, a drop-in) sets it: that
    wins over the file, so the change has no effect, at this reload or the next start."""
    lines = []
    for var in VARIABLES:
        source = reread.sources.get(var.name)
        if source not in ("option", "environment"):
            continue
        if running.env_file_values.get(var.name) == reread.env_file_values.get(var.name):
            continue
        shown = "" if var.secret else f" ({show_value(var, getattr(reread, var.attr))})"
        where = "the command line" if source == "option" else "the environment"
        lines.append(f"{var.name} changed in the env file, but {where} sets it{shown}, "
                     "which wins over the file")
    return lines


def apply_log_level(config: Config) -> None:
    # The line (info) is said while a level that shows it is in effect: before a level
    # that hides it (said after, a reload to `warn` was not confirmed at all), after
    # info or debug (a lower level is said at its own).
    hides_the_line = logs.LEVELS[config.log_level] > LogLevel.info
    if not hides_the_line:
        logs.set_level(config.log_level)
    # Not `log_level=`: Twisted sets that key on every event to the event's own level.
    _log.info("reload: log level {new_level}", new_level=config.log_level)
    if hides_the_line:
        logs.set_level(config.log_level)


def tls_reloader(creator: ReloadableServerTLS, port: str) -> Callable[[Config], None]:
    """A reload hook: the configured certificate files (or the same files again), for
    `port` (its name in the log line, as in 'the HTTPS proxy')."""

    def reload(config: Config) -> None:
        if config.tls_cert_file and config.tls_key_file:
            creator.reload(config.tls_cert_file, config.tls_key_file)
        else:  # the self-signed pair kept under CONNECT_STORAGE_ROOT
            creator.reload()
        _log.info("reload: certificate {path} for {port}", path=creator.cert_path, port=port)

    return reload


def run_hooks(hooks: list[Callable[[Config], Any]], config: Config) -> None:
    """Run every hook with the new config; raise ReloadError naming each that failed."""
    errors = []
    for hook in hooks:
        try:
            hook(config)
        except Exception as e:  # one part failing must not stop the others
            errors.append(str(e) or type(e).__name__)
    if errors:
        # Once each: the HTTPS and tunnel ports load the same files and fail alike.
        raise ReloadError("; ".join(dict.fromkeys(errors)))
