"""The bind handshake: the first message on a new tunnel, and the gateway's answer.

After TLS, the client sends one line of JSON (at most MAX_LINE bytes):
``{"session": id, "token": t, "connect_version": "0.12.0", "tool": "jupyterlab",
"tool_port": 8888}`` (``tool`` in any spelling :mod:`~studios_gateway.wire.tools`
accepts, the Platform's ``jupyter`` and ``rstudio`` too; it is read as its
canonical name). The gateway answers one line: ``{"ok": true, "tunnel_id": ...}``
or ``{"ok": false, "code": ..., "reason": ..., "retry": bool}``; after an ``ok``
both sides speak yamux on the same connection (the client is the yamux
client). A refusal says whether retrying can help (store unavailable,
draining) or not (bad token, incompatible version), and the client acts on it.

An ``ok`` from a gateway that runs the SSH proxy also carries ``"ssh_host_key":
"SHA256:..."``, the fingerprint of the key the gateway logs in to the studio's
SSH server with; the studio accepts no other. It also carries the gateway's
keepalive settings, ``"ping_interval"`` and ``"ping_timeout"`` (seconds), so
both ends declare a silent path dead within the same timeout. Either side
ignores fields it does not know, so older clients and gateways keep working
(without SSH; with the client's own keepalive defaults).

A client that rebinds soon after a GoAway when its gateway spaces out the GoAways of a
drain itself says ``"paced_go_away": true``; a gateway that does so for it answers
``"rebind_within": s`` (seconds: the client rebinds after a random part of them,
instead of its own GOAWAY_SPREAD of 0-8 s). Without both the client spreads its rebind
as before (docs/decisions/reconnect-backoff.md, "Paced GoAways").

A client that knows the GoAway of a tunnel taken over by a newer bind of its session
(wire/frames.py ``GO_AWAY_REPLACED``) says ``"replaced_go_away": true``; others get a
normal GoAway there, as before. Binding again after such GoAways, it says how many it got
lately (``"replaced": n``): two studios-connect on one session, which the gateway names.
Until it is bound again it asks to bind only while no other tunnel holds the session
(``"if_free": true``); a gateway that knows it refuses such a bind with ``held`` (try
again later) while one does, so the newer studio keeps the session and this one takes it
only once that one has stopped.

A client also names its process (``"instance"``: random, drawn once at its start): a new
tunnel of the same instance replacing one still held is that studio reconnecting before
its old connection was found dead (a network blip, a NAT that dropped it), not a second
studio on the session; the gateway neither names it as two studios nor tells its old
tunnel that another took it over. (A hint: one the gateway cannot read is not said.)

An ``ok`` also says ``"retry_period": s``, the gateway's CONNECT_TUNNEL_RETRY_PERIOD: the
period of the client's retries while it cannot reach the gateway (and the spread of its
rebind after a GoAway that no other node takes over), instead of its own 8 s.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from studios_gateway.wire import tools
from studios_gateway.wire.ids import SESSION_ID_RULE, is_session_id

MAX_LINE = 4096
SSH_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")

# Refusal codes, and whether the client should try again.
RETRYABLE = {"store_unavailable": True, "draining": True, "internal": True, "bind_timeout": True,
             "held": True,
             "bad_token": False, "unknown_session": False, "incompatible_version": False,
             "malformed": False, "tool_mismatch": False}


class BindError(Exception):
    """A refusal: code (one of RETRYABLE) and a reason a person can act on."""

    def __init__(self, code: str, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason

    @property
    def retry(self) -> bool:
        return RETRYABLE.get(self.code, False)


@dataclass(frozen=True)
class BindRequest:
    session_id: str
    token: str
    connect_version: str
    tool: str
    tool_port: int
    tool_version: str = ""  # the tool's own version as the studio found it; "" = unknown
    #: The client rebinds within the gateway's ``rebind_within`` after a GoAway (the
    #: gateway paces a drain's GoAways for it), when the gateway says one.
    paced_go_away: bool = False
    #: The client knows GO_AWAY_REPLACED (a newer bind of its session took its tunnel).
    replaced_go_away: bool = False
    #: How many GO_AWAY_REPLACED the client got lately (studio.client.REPLACED_MEMORY).
    replaced: int = 0
    #: Bind only while no other tunnel holds the session (refused ``held`` otherwise).
    if_free: bool = False
    #: The client process's name, drawn at its start ("" = not said): see the module's
    #: docstring.
    instance: str = ""

    def __repr__(self) -> str:  # never show the token
        return (f"BindRequest(session_id={self.session_id!r}, connect_version="
                f"{self.connect_version!r}, tool={self.tool!r}, tool_port={self.tool_port})")

    def encode(self) -> bytes:
        body: dict[str, Any] = {"session": self.session_id, "token": self.token,
                                "connect_version": self.connect_version, "tool": self.tool,
                                "tool_port": self.tool_port}
        if self.tool_version:
            body["tool_version"] = self.tool_version
        if self.paced_go_away:
            body["paced_go_away"] = True
        if self.replaced_go_away:
            body["replaced_go_away"] = True
        if self.replaced:
            body["replaced"] = self.replaced
        if self.if_free:
            body["if_free"] = True
        if self.instance:
            body["instance"] = self.instance
        return json.dumps(body).encode() + b"\n"


@dataclass(frozen=True)
class BindReply:
    ok: bool
    code: str = ""
    reason: str = ""
    retry: bool = False
    tunnel_id: str = ""
    ssh_host_key: str = ""  # fingerprint of the gateway's SSH key; "" = no SSH
    # How browsers reach this studio, so one image works behind either routing mode:
    # "subdomain" or "path", and the studio's public URL (its path is the prefix the
    # browser sees: "/" in subdomain mode, "/_studio/<id>/" in path mode). "" from a
    # gateway that does not say (older ones): the client then keeps its own settings.
    routing: str = ""
    public_url: str = ""
    # The gateway's keepalive (seconds); 0 = not said (an older gateway): the client
    # keeps its own defaults.
    ping_interval: float = 0.0
    ping_timeout: float = 0.0
    # Seconds within which the client rebinds after this gateway's GoAway (the gateway
    # paces its drain's GoAways); 0 = not said: the client spreads its rebind itself.
    rebind_within: float = 0.0
    # The session's mark (http.loop), which the client's question to its tool's port at
    # the bind carries (studio.points_back); "" = not said (an older gateway).
    loop_mark: str = ""
    # The period of the client's retries while it cannot reach this gateway (seconds);
    # 0 = not said (an older gateway): the client keeps its own (BACKOFF_MAX).
    retry_period: float = 0.0

    def encode(self) -> bytes:
        body: dict[str, Any] = {"ok": self.ok}
        if self.ok:
            body["tunnel_id"] = self.tunnel_id
            if self.ssh_host_key:
                body["ssh_host_key"] = self.ssh_host_key
            if self.routing:
                body["routing"] = self.routing
                body["public_url"] = self.public_url
            if self.ping_interval and self.ping_timeout:
                body["ping_interval"] = self.ping_interval
                body["ping_timeout"] = self.ping_timeout
            if self.rebind_within:
                body["rebind_within"] = self.rebind_within
            if self.loop_mark:
                body["loop_mark"] = self.loop_mark
            if self.retry_period:
                body["retry_period"] = self.retry_period
        else:
            body.update(code=self.code, reason=self.reason, retry=self.retry)
        return json.dumps(body).encode() + b"\n"

    @classmethod
    def refusal(cls, err: BindError) -> BindReply:
        return cls(ok=False, code=err.code, reason=err.reason, retry=err.retry)


def _load(line: bytes) -> dict[str, Any]:
    if len(line) > MAX_LINE:
        raise BindError("malformed", f"bind message longer than {MAX_LINE} bytes")
    try:
        data = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BindError("malformed", "bind message is not one line of JSON") from None
    if not isinstance(data, dict):
        raise BindError("malformed", "bind message is not a JSON object")
    return data


def parse_request(line: bytes) -> BindRequest:
    data = _load(line)
    sid, token = data.get("session"), data.get("token")
    version, tool, port = data.get("connect_version"), data.get("tool"), data.get("tool_port")
    if not is_session_id(sid):
        raise BindError("malformed", f"session must be {SESSION_ID_RULE}")
    if not isinstance(token, str) or not 16 <= len(token) <= 512:
        raise BindError("malformed", "token must be a string of 16 to 512 characters")
    if not isinstance(version, str) or len(version) > 32:
        raise BindError("malformed", "connect_version must be a version string")
    canonical_tool = tools.canonical(tool) if isinstance(tool, str) else None
    if canonical_tool is None:
        raise BindError("malformed", f"tool must be one of {tools.accepted()}")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise BindError("malformed", "tool_port must be a port number")
    tool_version = data.get("tool_version", "")
    if not isinstance(tool_version, str) or not TOOL_VERSION.fullmatch(tool_version):
        raise BindError("malformed", "tool_version must be up to 64 letters, digits, '.', '-', "
                                     "'+' or '_'")
    return BindRequest(sid, token, version, canonical_tool, port, tool_version,
                       paced_go_away=data.get("paced_go_away") is True,
                       replaced_go_away=data.get("replaced_go_away") is True,
                       replaced=_count(data.get("replaced")),
                       if_free=data.get("if_free") is True,
                       instance=_instance(data.get("instance")))


def _count(value: Any) -> int:
    """A small count a client says of itself; anything else is 0 (a hint, not refused)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10_000:
        return value
    return 0


INSTANCE = re.compile(r"[A-Za-z0-9_-]{8,64}")


def _instance(value: Any) -> str:
    """A client's instance name as sent, else "" (a hint, not refused: not said)."""
    return value if isinstance(value, str) and INSTANCE.fullmatch(value) else ""


ROUTINGS = ("subdomain", "path")
TOOL_VERSION = re.compile(r"[A-Za-z0-9._+-]{0,64}")


def _public_url_ok(url: str) -> bool:
    return (len(url) <= 2048 and url.startswith(("http://", "https://"))
            and url.endswith("/") and url.isprintable() and " " not in url)


MAX_PING_SECONDS = 3600.0


def _seconds(v: Any, longest: float) -> float:
    """`v` if it is a number of seconds above 0 and at most `longest`, else 0 (not said)."""
    ok = isinstance(v, int | float) and not isinstance(v, bool)
    return float(v) if ok and 0 < v <= longest else 0.0


def _keepalive(interval: Any, timeout: Any) -> tuple[float, float]:
    """The gateway's ping settings if both are sane numbers (0 < interval < timeout <=
    an hour), else (0, 0): the client keeps its own."""
    i, t = _seconds(interval, MAX_PING_SECONDS), _seconds(timeout, MAX_PING_SECONDS)
    return (i, t) if i and t and i < t else (0.0, 0.0)


#: The longest ``rebind_within`` a client takes (a larger or unreadable one: not said).
MAX_REBIND_WITHIN = 60.0
#: The range of ``retry_period`` a client takes (CONNECT_TUNNEL_RETRY_PERIOD's; another or
#: an unreadable one: not said).
RETRY_PERIOD_RANGE = (1.0, 60.0)


def _retry_period(v: Any) -> float:
    """`v` if it is a number of seconds in RETRY_PERIOD_RANGE, else 0 (not said)."""
    lo, hi = RETRY_PERIOD_RANGE
    seconds = _seconds(v, hi)
    return seconds if seconds >= lo else 0.0


LOOP_MARK = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _mark(v: Any) -> str:
    """A loop mark as sent (base64url), else "" (not said)."""
    return v if isinstance(v, str) and LOOP_MARK.fullmatch(v) else ""


def parse_reply(line: bytes) -> BindReply:
    data = _load(line)
    if data.get("ok") is True:
        ssh = data.get("ssh_host_key")
        if not isinstance(ssh, str) or not SSH_FINGERPRINT.fullmatch(ssh):
            ssh = ""  # absent or unreadable: this gateway offers no SSH to us
        routing, url = data.get("routing"), data.get("public_url")
        if routing not in ROUTINGS or not isinstance(url, str) or not _public_url_ok(url):
            routing, url = "", ""  # absent or unreadable: the client keeps its own settings
        interval, timeout = _keepalive(data.get("ping_interval"), data.get("ping_timeout"))
        return BindReply(ok=True, tunnel_id=str(data.get("tunnel_id", "")), ssh_host_key=ssh,
                         routing=routing, public_url=url, ping_interval=interval,
                         ping_timeout=timeout, rebind_within=_seconds(
                             data.get("rebind_within"), MAX_REBIND_WITHIN),
                         loop_mark=_mark(data.get("loop_mark")),
                         retry_period=_retry_period(data.get("retry_period")))
    code = str(data.get("code", "internal"))
    return BindReply(ok=False, code=code, reason=str(data.get("reason", ""))[:500],
                     retry=bool(data.get("retry", RETRYABLE.get(code, False))))


class LineBuffer:
    """Collects bytes until the first newline; refuses lines over MAX_LINE."""

    def __init__(self, limit: int = MAX_LINE):
        self._buf = b""
        self._limit = limit

    def feed(self, data: bytes) -> tuple[bytes, bytes] | None:
        """(line, rest after it) once a line is complete; None while incomplete."""
        self._buf += data
        line, nl, rest = self._buf.partition(b"\n")
        if nl:
            if len(line) > self._limit:
                raise BindError("malformed", f"bind message longer than {self._limit} bytes")
            return line, rest
        if len(self._buf) > self._limit:
            raise BindError("malformed", f"bind message longer than {self._limit} bytes")
        return None
