"""The connect client's settings: a connect string and/or CONNECT_* variables.

Sources, highest first: command-line options, the environment, the connect
string (``studios-connect://<id>:<token>@host:port/?pin=sha256:...``, from
``--connect`` or CONNECT_STRING), defaults. CONNECT_GATEWAY_URL may list
several gateways, comma-separated (``host:port`` or ``tls://host:port?pin=...``);
the client tries them in turn. CONNECT_CLIENT_VERSION overrides the Connect
version the client announces (to check a gateway's compatibility window).
CONNECT_TOOL names the tool (ours or the Platform's spelling); with a preset
(``--tool``), CONNECT_TOOL_WORKDIR is the tool's working directory (default
$HOME) and CONNECT_TOOL_PRESET=off runs a command exactly as given.
CONNECT_UNKNOWN_SESSION_WAIT (a duration, default 5m; 0 = give up at once) is how
long the client keeps trying while the gateway says it does not know the session
(a gateway restarting from its saved sessions, a registry being restored) before
it gives up. CONNECT_TOOL_RESTART_WAIT (a duration, default 10s; 0 = not at all) is
how long a request waits for a tool that refuses connections (restarting) before
the browser gets the "not answering" page.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qs, unquote, urlsplit

from twisted.logger import Logger

from studios_gateway.config import BY_NAME, CLIENT_VARIABLES, REDACTED, ConfigError, did_you_mean
from studios_gateway.durations import EXPECTED, parse_duration
from studios_gateway.versions import CONNECT_PROTOCOL_VERSION
from studios_gateway.wire import tools
from studios_gateway.wire.carrier import PROXY_VARIABLES, proxy_setting
from studios_gateway.wire.ids import SESSION_ID, SESSION_ID_RULE

CLIENT_LEVELS = ("trace", "debug", "info", "warn", "error", "fatal")
#: The spellings of CONNECT_TOOL_PRESET=off
PRESET_OFF = ("off", "false", "0", "no")
#: How long a client keeps trying while the gateway answers unknown_session (seconds).
UNKNOWN_SESSION_WAIT = 300.0
#: How long a stream waits for a tool that refuses connections, as one that restarts does
#: for a moment (seconds). A tool refusing for longer than this is down: then one attempt.
TOOL_RESTART_WAIT = 10.0


@dataclass(frozen=True)
class Gateway:
    host: str
    port: int
    pin: str | None = None
    carrier: str = "tls"  # "tls": the tunnel port; "ws"/"wss": a WebSocket to the HTTP(S) port
    path: str = ""  # the WebSocket's path

    def __str__(self) -> str:
        if self.carrier == "tls":
            return f"{self.host}:{self.port}"
        return f"{self.carrier}://{self.host}:{self.port}{self.path}"


@dataclass(frozen=True)
class ClientSettings:
    gateways: tuple[Gateway, ...]
    session_id: str
    token: str = field(repr=False)
    tool_port: int
    tool: str = "generic"
    tool_path_prefix: str = ""
    log_level: str = "info"
    connect_version: str = str(CONNECT_PROTOCOL_VERSION)
    tool_host: str = "127.0.0.1"
    tool_workdir: str = ""  # "" = the studio's home ($HOME)
    preset: bool = True  # a tool's preset may add to a command (CONNECT_TOOL_PRESET)
    tool_version: str = ""  # found by the preset; sent in the bind
    unknown_session_wait: float = UNKNOWN_SESSION_WAIT  # CONNECT_UNKNOWN_SESSION_WAIT
    tool_restart_wait: float = TOOL_RESTART_WAIT  # CONNECT_TOOL_RESTART_WAIT
    #: HTTPS_PROXY and NO_PROXY as the environment gave them (the tunnel goes through the
    #: proxy with CONNECT); out of the repr, as the token is: a proxy's password in it
    proxy_environ: tuple[tuple[str, str], ...] = field(default=(), repr=False)


def shown_address(text: str) -> str:
    """A gateway address or connect string as an error message may quote it: the token
    (what follows the session id, up to the ``@``) redacted, and the whole text when it
    has no ``@`` to tell where the token ends (``<id>:<token>`` pasted alone, a string
    cut short)."""
    scheme, sep, rest = text.strip().partition("://")
    if not sep:
        scheme, rest = "", scheme
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    userinfo, at, host = rest[:end].rpartition("@")
    if not at:
        return text if _PLAIN_ADDRESS.fullmatch(rest[:end]) else REDACTED
    session = userinfo.partition(":")[0] if ":" in userinfo else ""
    return f"{scheme}{sep}{session + ':' if session else ''}{REDACTED}@{host}{rest[end:]}"


#: An address with nothing secret in it: host:port, [v6]:port, or a dotted host name (a
#: token, URL-safe base64, has no dot).
_PLAIN_ADDRESS = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_]+):[0-9]{1,6}"
                            r"|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+|\[[0-9A-Fa-f:.]+\]")


def _parse_gateway(text: str, name: str) -> tuple[Gateway, str | None, str | None]:
    """One gateway address; returns it and any session id/token the URL carried."""
    s = text.strip()
    if "://" not in s:
        s = "tls://" + s
    expected = ("host:port, tls://host:port, ws(s)://host[:port]/_connect/tunnel or a connect "
                "string")
    shown = shown_address(text)  # never the token, in any error
    if any(c.isspace() for c in s):
        # (a connect string copied with the line after it: the error quoted its first 80
        # characters and asked for a pin, which looked right). Only what comes before the
        # break is quoted: what was copied after it may be another studio's connect
        # string, or another secret, which shown_address does not know to redact.
        first = text.split()[0]
        raise ConfigError(name, shown_address(first),
                          f"{expected}, on one line with no spaces (this one holds a line "
                          f"break or a space, then {len(text.strip()) - len(first)} more "
                          "characters, not quoted: was more copied?)")
    try:
        parts = urlsplit(s)
        port = parts.port or {"ws": 80, "wss": 443}.get(parts.scheme)
    except ValueError:
        raise ConfigError(name, shown, expected) from None
    if parts.scheme not in ("tls", "studios-connect", "ws", "wss") or not parts.hostname \
            or not port:
        raise ConfigError(name, shown, expected)
    pins = parse_qs(parts.query).get("pin", [])
    pin = pins[0] if pins else None
    if pin is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", pin):
        raise ConfigError(name, shown, "pin=sha256:<64 lowercase hex digits>")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if parts.scheme in ("ws", "wss"):
        return Gateway(parts.hostname, port, pin, parts.scheme, parts.path or "/_connect/tunnel"
                       ), user, password
    return Gateway(parts.hostname, port, pin), user, password


_CLIENT_NAMES = sorted(CLIENT_VARIABLES)
#: The gateway's variables that a studio's image sets meaning the client's
#: (CONNECT_TUNNEL_URL, "the address of the connect server" in the operators' table, is
#: the proxy's; set in a studio for the client it was ignored without a word)
_GATEWAYS_NOT_OURS = {"CONNECT_LOG_LEVEL": "CONNECT_CLIENT_LOG_LEVEL",
                      "CONNECT_TUNNEL_URL": "CONNECT_GATEWAY_URL (or CONNECT_STRING)"}


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One sentence for each CONNECT_* name in `environ` (in any letter case) that neither
    studios-connect nor the gateway reads, with the client's variable it looks like, if
    any: a misspelt name (CONNECT_TOOL_PERSET=off) was ignored without a word, and a
    misspelt CONNECT_STRING was refused as a missing CONNECT_GATEWAY_URL."""
    out = []
    for name in sorted(environ):
        if name in _GATEWAYS_NOT_OURS:
            out.append(f"{name} is the gateway's setting, not studios-connect's; "
                       f"studios-connect reads {_GATEWAYS_NOT_OURS[name]}")
            continue
        if name in CLIENT_VARIABLES or name in BY_NAME:
            continue
        upper = name.upper()
        if upper.startswith("CONNECT_"):  # the words after CONNECT_, which all ours share
            hint = did_you_mean(upper, _CLIENT_NAMES, cutoff=0.75, prefix="CONNECT_")
        else:  # any other name only when it is one slip away from ours (CONECT_STRING)
            hint = did_you_mean(upper, _CLIENT_NAMES, cutoff=0.9)
            if not hint:
                continue
        out.append(f"{name} is not a setting of studios-connect and is ignored{hint}")
    return out


class SettingsRefused(Exception):
    """The connect client cannot start with its settings: the one line to print."""


def load_at_start(environ: Mapping[str, str], options: Mapping[str, str | None] | None = None
                  ) -> tuple[ClientSettings, list[str]]:
    """The settings, as both entry points (studios-connect, twistd studios-connect) start
    with them, and :func:`unknown_variables`' sentences, which each warns with
    :func:`warn_unknown` once its logging is up. Refused settings raise SettingsRefused:
    the ConfigError's line and those sentences after it, in one line (a setting refused
    as missing is often one set under a misspelt name)."""
    unknown = unknown_variables(environ)
    try:
        settings = load_client_settings(environ, options)
    except ConfigError as e:
        raise SettingsRefused("; ".join([str(e), *unknown])) from e
    # (checked here, not by the parser: it reads the file system). Only a command of its
    # own was refused one; a tool started elsewhere, and twistd studios-connect, started
    # with ssh and sftp to begin in a directory that is not there.
    if settings.tool_workdir and not os.path.isdir(settings.tool_workdir):
        raise SettingsRefused(f"the tool's working directory {settings.tool_workdir} does "
                              "not exist (CONNECT_TOOL_WORKDIR)")
    return settings, unknown


def warn_unknown(sentences: Iterable[str], log: Logger) -> None:
    """Each of :func:`load_at_start`'s sentences, one warning each (given as a field, not
    as the format: a name may hold braces)."""
    for sentence in sentences:
        log.warn("{sentence}", sentence=sentence)


def _check_proxy(environ: Mapping[str, str]) -> None:
    """The HTTPS_PROXY (or https_proxy) that the tunnel reads names an HTTP proxy it can
    go through with CONNECT. One it could not use (no host, a bad port, a SOCKS proxy) was
    ignored without a word, and the tunnel went straight to the gateway instead. The one
    not read (https_proxy when HTTPS_PROXY is set) is not checked: it changes nothing."""
    setting = proxy_setting(environ)
    if setting is not None and setting.address is None:
        raise ConfigError(setting.name, setting.text, "http://host:port, an HTTP proxy that "
                          "the tunnel goes through with CONNECT (https://host:port for TLS "
                          "to the proxy; SOCKS is not supported)")


def _duration(get: Callable[[str], str | None], name: str, default: float) -> float:
    """The duration variable `name` in seconds (`default` when unset), or ConfigError."""
    text = (get(name) or "").strip()
    try:
        return parse_duration(text) if text else default
    except ValueError:
        raise ConfigError(name, text, EXPECTED) from None


def load_client_settings(environ: Mapping[str, str],
                         options: Mapping[str, str | None] | None = None) -> ClientSettings:
    """Build the settings or raise ConfigError naming the variable at fault."""
    opts = {k: v for k, v in (options or {}).items() if v is not None}

    def get(name: str) -> str | None:
        value = opts.get(name, environ.get(name))
        return value if value is None or value.strip() else None

    session_id = token = None
    gateways: list[Gateway] = []
    conn = get("CONNECT_STRING")
    if conn:
        gw, session_id, token = _parse_gateway(conn, "CONNECT_STRING")
        if not session_id or not token:
            raise ConfigError("CONNECT_STRING", "<connect string>",
                              "studios-connect://<session>:<token>@host:port/?pin=...",
                              secret=True)
        gateways.append(gw)
    url = get("CONNECT_GATEWAY_URL")
    if url:
        # An address without a pin of its own takes the connect string's: the nodes of a
        # cluster share the tunnel certificate (docs/cluster.md), and without the pin a
        # self-made certificate fails the chain check.
        pinned = gateways[0].pin if gateways else None
        gateways = [gw if gw.pin or not pinned else replace(gw, pin=pinned)
                    for gw in (_parse_gateway(part, "CONNECT_GATEWAY_URL")[0]
                               for part in url.split(",") if part.strip())]
    if not gateways:
        raise ConfigError("CONNECT_GATEWAY_URL", None,
                          "the gateway's tunnel address (or a CONNECT_STRING)")
    given_id = get("CONNECT_SESSION_ID")
    if given_id and session_id and given_id.strip() != session_id \
            and not get("CONNECT_SESSION_TOKEN"):
        # The connect string's token is its own session's: the gateway refused the bind
        # as a wrong token, after the dial, with no word of the other id.
        raise ConfigError("CONNECT_SESSION_ID", given_id,
                          f"the connect string's session {session_id} (its token is that "
                          "session's), or CONNECT_SESSION_TOKEN set too")
    session_id = given_id or session_id
    if not session_id or not SESSION_ID.fullmatch(session_id):
        raise ConfigError("CONNECT_SESSION_ID", session_id,
                          f"the session id the gateway gave ({SESSION_ID_RULE})")
    token = get("CONNECT_SESSION_TOKEN") or token
    if not token or not 16 <= len(token) <= 512:
        raise ConfigError("CONNECT_SESSION_TOKEN", token and "<redacted>",
                          "the session's connect token (16 to 512 characters)", secret=True)
    port_text = get("CONNECT_TOOL_PORT")
    if port_text is None or not re.fullmatch(r"[0-9]{1,5}", port_text.strip()) \
            or not 1 <= int(port_text) <= 65535:
        raise ConfigError("CONNECT_TOOL_PORT", port_text, "the port the tool listens on")
    tool_text = get("CONNECT_TOOL") or "generic"
    tool = tools.canonical(tool_text)
    if tool is None:
        raise ConfigError("CONNECT_TOOL", tool_text, f"one of {tools.accepted()}")
    workdir = (get("CONNECT_TOOL_WORKDIR") or "").strip()
    if workdir and not workdir.startswith("/"):
        raise ConfigError("CONNECT_TOOL_WORKDIR", workdir, "an absolute directory path")
    preset_given = get("CONNECT_TOOL_PRESET") or "on"
    preset_text = preset_given.strip().lower()
    if preset_text not in ("on", "true", "1", "yes", *PRESET_OFF):
        raise ConfigError("CONNECT_TOOL_PRESET", preset_given, "on or off")
    prefix = (get("CONNECT_TOOL_PATH_PREFIX") or "").strip()
    if prefix and not re.fullmatch(r"/|/[A-Za-z0-9_./-]*/", prefix):  # "/": served at the root
        raise ConfigError("CONNECT_TOOL_PATH_PREFIX", prefix,
                          "a path that starts and ends with /, such as / or /_studio/<id>/")
    level_given = get("CONNECT_CLIENT_LOG_LEVEL") or "info"
    level = level_given.strip().lower()
    level = {"warning": "warn"}.get(level, level)
    if level not in CLIENT_LEVELS:
        raise ConfigError("CONNECT_CLIENT_LOG_LEVEL", level_given,
                          f"one of {', '.join(CLIENT_LEVELS)}")
    version = (get("CONNECT_CLIENT_VERSION") or str(CONNECT_PROTOCOL_VERSION)).strip()
    if not re.fullmatch(r"[0-9]{1,4}\.[0-9]{1,4}(\.[0-9]{1,4})?", version):
        raise ConfigError("CONNECT_CLIENT_VERSION", version, "a version such as 0.12 or 0.12.1")
    wait = _duration(get, "CONNECT_UNKNOWN_SESSION_WAIT", UNKNOWN_SESSION_WAIT)
    restart_wait = _duration(get, "CONNECT_TOOL_RESTART_WAIT", TOOL_RESTART_WAIT)
    _check_proxy(environ)
    return ClientSettings(gateways=tuple(gateways), session_id=session_id, token=token,
                          unknown_session_wait=wait, tool_restart_wait=restart_wait,
                          proxy_environ=tuple((k, v) for k, v in environ.items() if k in (
                              *PROXY_VARIABLES, "NO_PROXY", "no_proxy")),
                          tool_port=int(port_text), tool=tool, tool_path_prefix=prefix,
                          log_level=level, connect_version=version, tool_workdir=workdir,
                          preset=preset_text not in PRESET_OFF)
