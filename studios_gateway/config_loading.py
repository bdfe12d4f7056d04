"""Loading the configuration: a Config from its sources, every value parsed, then the
checks across settings (contradictions refuse the start, doubts are warnings).

Sources, highest precedence first: twistd plugin options, the process
environment, an optional env file (``--env-file``, systemd
``EnvironmentFile=`` syntax), systemd's ``$STATE_DIRECTORY`` (for
CONNECT_STORAGE_ROOT only), the documented defaults.

Nothing else in the package reads ``os.environ``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from studios_gateway.auth.settings import same_origin
from studios_gateway.config import (
    BY_NAME,
    CLIENT_VARIABLES,
    REDACTED,
    VARIABLES,
    Config,
    ConfigError,
    did_you_mean,
    raise_all,
)

#: Platform-side variables people set for the gateway, and what the gateway reads instead.
PLATFORM_HINTS = {"TOWER_SERVER_URL": "PLATFORM_URL", "TOWER_API_URL": "PLATFORM_URL",
                  "TOWER_ACCESS_TOKEN": "CONNECT_MANAGEMENT_AUTH_KEY"}

#: Below this many characters CONNECT_MANAGEMENT_AUTH_KEY draws a warning (as short as
#: CONNECT_PEER_SECRET may be).
MANAGEMENT_KEY_MIN = 16


def read_env_file(path: str) -> dict[str, str]:
    """Parse a systemd EnvironmentFile-style file: KEY=VALUE, # comments, optional quotes.
    A malformed line raises ConfigError; several, a ConfigErrors naming each of them."""
    values, malformed = read_env_file_lines(path)
    raise_all(malformed)
    return values


def read_env_file_lines(path: str) -> tuple[dict[str, str], list[ConfigError]]:
    """The env file's values from its good lines, and an error for each malformed line
    (its line number, its name as written; all of them, not only the first). An
    unreadable file raises ConfigError."""
    out: dict[str, str] = {}
    malformed: list[ConfigError] = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError("--env-file", path, f"a readable env file ({e.strerror})") from None
    continued = 0  # the number of the line before, when it ends with a backslash
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        after, continued = continued, lineno if line.endswith("\\") else 0
        if not line or line.startswith(("#", ";")):
            continue
        line = line.removeprefix("export ").lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            # The name as written, not the rest: a line gone wrong can hold a secret
            # ('CONNECT_REDIS_PASSWORD: ...'). Not even that when it does not read as a
            # name: a line of a secret's own (a backslash-continued value, a pasted PEM
            # key) has no '=' either, and every malformed line is said.
            name = re.split(r"[=:\s]", line, maxsplit=1)[0]
            if _reads_as_a_name(name):
                shown = name + (" " + REDACTED if line[len(name):].strip() else "")
            else:
                shown = REDACTED
            # The line before ends with a backslash: the value was meant to go on here.
            # Without the word why, the value cut there (taken as it is) went unexplained.
            joined = (f"; line {after} ends with a backslash, but lines are not joined: "
                      "write that value on one line") if after == lineno - 1 else ""
            malformed.append(ConfigError(
                f"{path}:{lineno}", shown, "a line of the form NAME=value (the rest of the "
                f"line is not shown: it may hold a secret{joined})"))
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[key] = value
    return out, malformed


#: Names no warning calls unknown: the gateway's settings and studios-connect's (an env
#: file or environment may be shared by both).
_KNOWN = frozenset(BY_NAME) | CLIENT_VARIABLES
#: What a malformed line's first word must look like to be shown: a name in capitals
#: (``-`` for ``_`` too), as the gateway's settings are written. Mixed case or anything
#: else may be a secret's text (base64, a password) and is not shown.
_SHOWN_NAME = re.compile(r"[A-Z_][A-Z0-9_]*(?:-[A-Z0-9_]+)*")


def _reads_as_a_name(word: str) -> bool:
    """`word` (a malformed line's first) is a setting's name, or written as one."""
    return bool(_SHOWN_NAME.fullmatch(word)) or word.upper().replace("-", "_") in _KNOWN


def load_config(
    options: Mapping[str, str | None] | None = None,
    environ: Mapping[str, str] | None = None,
    env_file: str | None = None,
) -> Config:
    """Build the config. `options` maps variable names to values given on the command line.

    Raises ConfigError naming an invalid or contradictory setting; when there are several,
    a ConfigErrors with each of them (first every malformed line of the env file, then
    every value that does not parse; when all do, every contradiction between them: the
    env file's good lines are checked as if the malformed ones were not there).
    """
    options = {k: v for k, v in (options or {}).items() if v is not None}
    environ = dict(os.environ if environ is None else environ)
    file_values, malformed = read_env_file_lines(env_file) if env_file else ({}, [])
    warnings: list[str] = []

    for name in options:
        if name not in BY_NAME:
            raise ConfigError(name, options[name], "a known variable")
    for origin, names in (("environment", environ), ("env file", file_values)):
        warnings.extend(_unknown_warnings(origin, names))
    warnings.extend(_process_variables(file_values))

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    given: dict[str, str | None] = {}
    errors: list[ConfigError] = list(malformed)
    for var in VARIABLES:
        raw: str | None
        if var.name in options:
            raw, source = options[var.name], "option"
        elif var.name in environ:
            raw, source = environ[var.name], "environment"
        elif var.name in file_values:
            raw, source = file_values[var.name], "env file"
        elif var.name == "CONNECT_STORAGE_ROOT" and environ.get("STATE_DIRECTORY"):
            # systemd's StateDirectory= (the units'): below the env file, so that a
            # CONNECT_STORAGE_ROOT line there wins, as it did over the units' own value.
            raw, source = environ["STATE_DIRECTORY"].split(":")[0], "state directory"
        else:
            raw, source = var.default, "default"
        sources[var.name] = source
        given[var.name] = raw
        if var.name == "CONNECT_REDIS_ADDRESS":
            values["redis_enabled"] = source != "default"
            if raw is not None and raw.strip() == "":
                raw = var.default
        elif (raw is None or (raw.strip() == "" and var.default is None
                              and var.name != "TOWER_DATA_STUDIO_ALLOWED_WORKSPACES")):
            values[var.attr] = None
            continue
        try:
            values[var.attr] = var.parse(raw)  # type: ignore[arg-type]
        except ValueError as e:
            # A value typed as an option is named as typed (it said CONNECT_HTTP_PORT for
            # `twistd studios-gateway --http-port abc`), with its variable.
            given_as = f"--{var.option} ({var.name})" if source == "option" else None
            errors.append(ConfigError(var.name, given[var.name], str(e), secret=var.secret,
                                      given_as=given_as))
    try:
        if len(errors) > len(malformed):
            raise_all(errors)
        cfg = Config(**values, sources=sources, raw=given, warnings=(),
                     env_file_values={k: v for k, v in file_values.items() if k in BY_NAME})
        raise_all([*malformed, *_contradictions(cfg)])
    except ConfigError as e:
        # A misspelt name (CONNECT_TLS_KEYFILE) is often why a setting is missing or
        # contradicts another: its warning goes with the errors, not only with a start.
        e.warnings = tuple(warnings)
        raise
    warnings.extend(_doubts(cfg))
    return Config(**{f.name: getattr(cfg, f.name) for f in fields(Config)
                     if f.name != "warnings"}, warnings=tuple(warnings))


def _unknown_warnings(origin: str, names: Iterable[str]) -> list[str]:
    out = []
    for name in sorted(names):
        if not name.startswith(("CONNECT_", "TOWER_")) or name in _KNOWN:
            continue
        if name in PLATFORM_HINTS:
            hint = f"; the gateway reads {PLATFORM_HINTS[name]}"
        elif name.removeprefix("CONNECT_") in BY_NAME:  # (the seed's two without it)
            hint = f"; the gateway reads {name.removeprefix('CONNECT_')}, without CONNECT_"
        else:
            # Only the gateway's own settings, and only what follows the shared prefix:
            # a studios-connect variable (CONNECT_TOOL for CONNECT_IDLE) or a name
            # alike only in its CONNECT_ (CONNECT_REDIS_DB for CONNECT_STRINGS) was
            # offered before, neither of them what the gateway could use.
            prefix = "CONNECT_" if name.startswith("CONNECT_") else "TOWER_"
            hint = did_you_mean(name, [s for s in BY_NAME if s.startswith(prefix)],
                                prefix=prefix)
        out.append(f"{name} in the {origin} is not a setting of the gateway and is "
                   f"ignored{hint}")
    return out


def _process_variables(names: Iterable[str]) -> list[str]:
    """One line naming the env file's variables that are not the gateway's (HTTPS_PROXY,
    SSL_CERT_FILE, TZ...): systemd's EnvironmentFile= put them in the process's
    environment, but the units now give the file as --env-file, which yields settings
    only."""
    others = sorted(n for n in names
                    if n not in BY_NAME and not n.startswith(("CONNECT_", "TOWER_")))
    if not others:
        return []
    are = "is" if len(others) == 1 else "are"
    return [f"{', '.join(others)} in the env file {are} not a setting of the gateway and "
            f"{are} ignored: the gateway takes only its settings from the file, nothing for "
            "its process's environment (for that, an Environment= line: `systemctl edit "
            "studios-gateway`)"]


def _contradictions(cfg: Config) -> list[ConfigError]:
    """Every pair of settings that contradict each other; values quoted as given."""
    errors: list[ConfigError] = []

    def refuse(name: str, expected: str) -> None:
        errors.append(ConfigError(name, cfg.raw.get(name), expected,
                                  secret=BY_NAME[name].secret))

    def missing(name: str, expected: str) -> None:
        errors.append(ConfigError(name, None, expected))

    if bool(cfg.tls_cert_file) != bool(cfg.tls_key_file):
        missing("CONNECT_TLS_KEY_FILE" if cfg.tls_cert_file else "CONNECT_TLS_CERT_FILE",
                "set together with its pair (certificate and key)")
    if bool(cfg.redis_tls_cert_file) != bool(cfg.redis_tls_key_file):
        missing("CONNECT_REDIS_TLS_KEY_FILE" if cfg.redis_tls_cert_file
                else "CONNECT_REDIS_TLS_CERT_FILE",
                "set together with its pair (certificate and key)")
    if cfg.redis_user and not cfg.redis_password:
        missing("CONNECT_REDIS_PASSWORD", "a password whenever CONNECT_REDIS_USER is set")
    peer_tls = {"CONNECT_PEER_TLS_CERT_FILE": cfg.peer_tls_cert_file,
                "CONNECT_PEER_TLS_KEY_FILE": cfg.peer_tls_key_file,
                "CONNECT_PEER_TLS_CA_FILE": cfg.peer_tls_ca_file}
    if any(peer_tls.values()) and not all(peer_tls.values()):
        missing(next(name for name, value in peer_tls.items() if not value),
                "set together with the other CONNECT_PEER_TLS_* files (certificate, key "
                "and CA)")
    if cfg.tunnel_ping_timeout <= cfg.tunnel_ping_interval:
        refuse("CONNECT_TUNNEL_PING_TIMEOUT", "a duration longer than "
               f"CONNECT_TUNNEL_PING_INTERVAL ({cfg.raw.get('CONNECT_TUNNEL_PING_INTERVAL')})")
    if not 256 <= cfg.http_max_request_line <= cfg.http_max_header_size:
        refuse("CONNECT_HTTP_MAX_REQUEST_LINE", "at least 256 bytes and at most "
               f"CONNECT_HTTP_MAX_HEADER_SIZE ({cfg.raw.get('CONNECT_HTTP_MAX_HEADER_SIZE')})")
    if cfg.quota_window < 12:
        refuse("CONNECT_QUOTA_WINDOW", "a duration of at least 12s")
    ports = {"CONNECT_HTTP_PORT": cfg.http_port, "CONNECT_TUNNEL_PORT": cfg.tunnel_port,
             "CONNECT_LISTENER_PORT": cfg.listener_port}
    if cfg.management_port is not None:
        ports["CONNECT_MANAGEMENT_PORT"] = cfg.management_port
    if cfg.ssh_enabled:
        ports["CONNECT_SSH_ADDR"] = cfg.ssh_addr[1]
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if port in seen:
            refuse(name, f"a port not already used by {seen[port]}")
        else:
            seen[port] = name
    return errors


def _doubts(cfg: Config) -> list[str]:
    """Warnings for combinations that work but are probably not what was meant."""
    warnings: list[str] = []
    if cfg.redis_password is not None and not cfg.redis_enabled:
        warnings.append("CONNECT_REDIS_PASSWORD is set but CONNECT_REDIS_ADDRESS is not: "
                        "the registry is in memory and Redis is not used")
    if not cfg.redis_tls_enable and (cfg.redis_tls_skip_verify or cfg.redis_tls_cert_file):
        warnings.append("CONNECT_REDIS_TLS_* options are set but CONNECT_REDIS_TLS_ENABLE "
                        "is false: they have no effect")
    if cfg.redis_enabled and cfg.redis_tls_enable and cfg.redis_tls_skip_verify:
        ignored = " (CONNECT_REDIS_TLS_CA_FILE is ignored)" if cfg.redis_tls_ca_file else ""
        warnings.append("CONNECT_REDIS_TLS_SKIP_VERIFY is true: Redis's certificate is not "
                        f"checked{ignored}, so whoever can intercept the connection gets the "
                        "Redis password and every session's connect token; give "
                        "CONNECT_REDIS_TLS_CA_FILE the CA that signed it instead")
    if cfg.redis_enabled and not (cfg.peer_secret or cfg.peer_tls_cert_file):
        warnings.append("neither CONNECT_PEER_SECRET nor CONNECT_PEER_TLS_* is set: the peer "
                        "listener refuses every other gateway node, so a session bound to "
                        "another node is not reachable through this one")
    if cfg.allowed_workspaces == frozenset():
        warnings.append("TOWER_DATA_STUDIO_ALLOWED_WORKSPACES is empty: no workspace may use "
                        "studios")
    if cfg.management_port is not None and not cfg.management_auth_key:
        warnings.append("CONNECT_MANAGEMENT_AUTH_KEY is not set: the management port (and its "
                        "admin API) is open to anyone who can reach it; bind it to a private "
                        "interface or set a key")
    if cfg.management_auth_key and len(cfg.management_auth_key) < MANAGEMENT_KEY_MIN:
        # (Its length only: the key itself is never shown.)
        warnings.append(f"CONNECT_MANAGEMENT_AUTH_KEY is short ({len(cfg.management_auth_key)} "
                        f"characters): whoever can reach the management port may guess it, "
                        f"and with it make sessions and login links; use at least "
                        f"{MANAGEMENT_KEY_MIN} random characters (openssl rand -hex 32)")
    if not cfg.redis_enabled:
        warnings.append("CONNECT_REDIS_ADDRESS is not set: sessions are kept by this single "
                        "node (CONNECT_STORAGE_ROOT/sessions.json; set it to share sessions "
                        "between gateways)")
    if (cfg.platform_url and cfg.oidc_issuer_url
            and not same_origin(cfg.oidc_issuer_url, cfg.platform_url)):
        warnings.append("CONNECT_OIDC_ISSUER_URL is another provider than PLATFORM_URL: the "
                        "Platform's access and SSH key calls are made without the OpenID "
                        "client's id and secret (they belong to that provider and are not "
                        "sent to the Platform)")
    if cfg.tls_cert_file and (cfg.proxy_url or "").startswith("http://"):
        warnings.append("CONNECT_PROXY_URL is http:// but CONNECT_TLS_CERT_FILE is set, so "
                        "the HTTP port speaks HTTPS: every link the gateway hands out (login "
                        "links, studio addresses, its redirects, with their one-time codes) "
                        "goes out in clear first and reaches it only through its redirect to "
                        "https://, and a login link's form sent there is refused (400). Write "
                        "CONNECT_PROXY_URL with https://")
    if cfg.ssh_enabled and not (cfg.ssh_key_path or cfg.ssh_key_value):
        warnings.append("no SSH host key configured: one is generated under "
                        "CONNECT_STORAGE_ROOT and kept there; set CONNECT_SSH_KEY_PATH or "
                        "CONNECT_SSH_KEY_VALUE_BASE64 so that every node presents the same "
                        "key")
    return warnings
