"""The value parsers of the settings: each takes a variable's text as given and returns its
value, or raises ValueError with what is expected (config.ConfigError adds the variable's
name and the value). Sizes are written back by format_size; durations come from
studios_gateway.durations.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from studios_gateway.durations import EXPECTED as DURATION_EXPECTED
from studios_gateway.durations import parse_duration

BOOL_EXPECTED = "true or false (also yes or no, on or off, 1 or 0)"


def boolean(text: str) -> bool:
    s = text.strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError(BOOL_EXPECTED)


def boolean_empty_false(text: str) -> bool:
    return False if text.strip() == "" else boolean(text)


def whole(digits: str) -> int | None:
    """A run of decimal digits as a number; None when it is longer than any setting could
    use (Python refuses to convert more than 4300 digits, with a message of its own)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 30 else None


def int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        s = text.strip()
        n = whole(s) if re.fullmatch(r"[0-9]+", s) else None
        if n is None or not lo <= n <= hi:
            raise ValueError(f"a whole number from {lo} to {hi}")
        return n

    return parse


port = int_range(1, 65535)


def optional_port(text: str) -> int | None:
    return None if text.strip() == "" else port(text)


SIZE_EXPECTED = "a size in bytes such as 262144, 256KiB, 6MiB or 1GiB"
#: Every parser of a size (describe() writes their values in KiB/MiB/GiB).
SIZE_PARSERS: list[Callable[[str], int]] = []


def size(text: str) -> int:
    """Bytes, with an optional binary suffix: 6MiB, 256KiB, 1GiB, 4096."""
    m = re.fullmatch(r"([0-9]+)\s*(|b|k|kib|m|mib|g|gib)", text.strip().lower())
    n = whole(m.group(1)) if m else None
    if m is None or n is None:
        raise ValueError(SIZE_EXPECTED)
    mult = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1 << 20, "mib": 1 << 20,
            "g": 1 << 30, "gib": 1 << 30}[m.group(2)]
    return n * mult


SIZE_PARSERS.append(size)


def size_range(lo: int, hi: int | None = None, why: str = "") -> Callable[[str], int]:
    """A size from `lo` to `hi` bytes (no upper bound when None); `why` follows the range
    in the message."""
    if hi is None:
        bounds = "greater than zero" if lo == 1 else f"of at least {format_size(lo)}"
    elif lo == 1:
        bounds = f"at most {format_size(hi)}"
    else:
        bounds = f"from {format_size(lo)} to {format_size(hi)}"
    expected = f"a size {bounds} (in bytes, or with KiB, MiB or GiB){why}"

    def parse(text: str) -> int:
        try:
            n = size(text)
        except ValueError:
            raise ValueError(expected) from None
        if n < lo or (hi is not None and n > hi):
            raise ValueError(expected)
        return n

    SIZE_PARSERS.append(parse)  # shown in KiB/MiB/GiB by describe()
    return parse


def format_size(n: int) -> str:
    """Bytes as the settings table writes them: in GiB, MiB or KiB when exact, else bytes."""
    for unit, step in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n and n % step == 0:
            return f"{n // step}{unit}"
    return str(n)


def duration(text: str) -> float:
    return parse_duration(text)


def positive_duration(text: str) -> float:
    d = parse_duration(text)
    if d <= 0:
        raise ValueError(DURATION_EXPECTED + ", greater than zero")
    return d


def duration_range(lo: float, hi: float) -> Callable[[str], float]:
    """A duration from `lo` to `hi` seconds (both included)."""
    def parse(text: str) -> float:
        d = parse_duration(text)
        if not lo <= d <= hi:
            # (not DURATION_EXPECTED's examples: "such as 90s" of a range that ends at 60s)
            raise ValueError(f"a duration from {lo:g}s to {hi:g}s (units ms, s, m, h)")
        return d

    return parse


def address(text: str) -> tuple[str, int]:
    """``:2222``, ``0.0.0.0:2222``, ``[::1]:2222`` -> (host, port); empty host = all."""
    s = text.strip()
    m = re.fullmatch(r"(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.\-_]*)):([0-9]+)", s)
    if not m:
        raise ValueError("an address such as :2222, 0.0.0.0:2222 or [::1]:2222")
    host = m.group(1) or m.group(2) or ""
    return host, port(m.group(3))


def redis_address(text: str) -> tuple[str, int]:
    s = text.strip()
    if "@" in s:
        raise ValueError("host:port of the Redis server, such as redis:6379 (the user and "
                         "password go in CONNECT_REDIS_USER and CONNECT_REDIS_PASSWORD)")
    m = re.fullmatch(
        r"(?:redis(s)?://)?(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.\-_]+))(?::([0-9]+))?", s)
    if not m:
        raise ValueError("host:port of the Redis server, such as redis:6379")
    host = m.group(2) or m.group(3)
    try:
        number = port(m.group(4)) if m.group(4) else 6379
    except ValueError:
        raise ValueError("host:port of the Redis server, such as redis:6379") from None
    return host, number


def host_port(text: str) -> tuple[str, int]:
    s = text.strip()
    m = re.fullmatch(r"(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.\-_]+)):([0-9]+)", s)
    if not m:
        raise ValueError("host:port, such as connect.example.com:7070")
    return (m.group(1) or m.group(2)), port(m.group(3))


def url(text: str) -> str:
    s = text.strip().rstrip("/")
    try:
        parts = urlsplit(s)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("an http:// or https:// URL")
    host = parts.hostname
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", host):
            raise ValueError("an http:// or https:// URL with a valid host name") from None
    return s


def proxy_url(text: str) -> str:
    """The seed calls it "the base domain name": accept a bare domain or a URL."""
    s = text.strip()
    if s and "://" not in s:
        s = "https://" + s
    checked = url(s)
    parts = urlsplit(checked)
    if parts.path or parts.query or parts.fragment:
        # Every link the gateway makes is this URL and its own paths: under a path they
        # all went to that path, which the gateway does not serve (404).
        raise ValueError("an http:// or https:// URL without a path, such as "
                         "https://connect.example.com (the gateway serves from the root of "
                         "its host)")
    if parts.username is not None or parts.password is not None:
        # Every link and redirect the gateway makes starts with this URL: a password in it
        # went to every browser that asked, in Location headers and login links.
        raise ValueError("an http:// or https:// URL without a user or password, such as "
                         "https://connect.example.com (it starts every link the gateway "
                         "hands out)")
    return checked


def domain(text: str) -> str:
    s = text.strip().lower().rstrip(".")
    label = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
    if not re.fullmatch(rf"{label}(?:\.{label})*", s):
        raise ValueError("a DNS domain such as connect.example.com")
    return s


def log_level(text: str) -> str:
    s = text.strip().lower()
    aliases = {"warning": "warn", "critical": "fatal"}
    s = aliases.get(s, s)
    if s not in ("trace", "debug", "info", "warn", "error", "fatal"):
        raise ValueError("one of trace, debug, info, warn, error, fatal")
    return s


def access_log(text: str) -> str:
    s = text.strip().lower()
    if s not in ("off", "text", "json"):
        raise ValueError("off, text or json")
    return s


def grant_type(text: str) -> str:
    if text.strip() != "authorization_code":
        raise ValueError("authorization_code (the only grant type the proxy implements)")
    return "authorization_code"


def cidrs(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    out = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError("comma-separated CIDRs such as 127.0.0.1/32,10.0.0.0/8") from None
    return tuple(out)


def workspaces(text: str) -> frozenset[str]:
    ids = [p.strip() for p in text.split(",")]
    ids = [p for p in ids if p]
    for i in ids:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", i):
            raise ValueError("a comma-separated list of workspace ids, such as 12345,67890")
    return frozenset(ids)


def node_id(text: str) -> str:
    s = text.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", s):
        raise ValueError("1 to 64 letters, digits, '.', '_' or '-'")
    return s


def printable(text: str) -> str:
    if re.search(r"[\x00-\x1f\x7f]", text):
        raise ValueError("printable text (no control characters)")
    return text


def nonempty(text: str) -> str:
    if not text.strip() or re.search(r"[\x00-\x1f\x7f]", text):
        raise ValueError("a non-empty value of printable text")
    return text.strip()


def key_prefix(text: str) -> str:
    if not re.fullmatch(r"[!-~]{1,128}", text.strip()):
        raise ValueError("1 to 128 printable characters without spaces, such as connect:session")
    return text.strip()


def token_text(text: str) -> str:
    if not re.fullmatch(r"[!-~]{1,512}", text.strip()):
        raise ValueError("printable characters without spaces")
    return text.strip()


def bind_address(text: str) -> str:
    s = text.strip().strip("[]")
    try:
        return str(ipaddress.ip_address(s))
    except ValueError:
        raise ValueError("an IP address to bind to, such as 0.0.0.0, 127.0.0.1 or ::") from None


def readable_file(text: str) -> str:
    p = Path(text.strip())
    try:
        readable = bool(text.strip()) and p.is_file() and os.access(p, os.R_OK)
    except (OSError, ValueError):  # a name too long for the system, a NUL byte
        readable = False
    if not readable:
        try:
            exists = bool(text.strip()) and p.is_file()
        except (OSError, ValueError):
            exists = False
        if exists:  # (check-config run by another user than the gateway's, most often)
            raise ValueError(f"the path of a file this user ({user_name()}) may read: it is "
                             "there, but not readable by this user")
        raise ValueError("the path of a readable file")
    return str(p)


def user_name() -> str:
    """The name of the user this process runs as (its uid's, not $USER's)."""
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def directory(text: str) -> str:
    s = text.strip()
    if not s or "\0" in s:
        raise ValueError("a directory path")
    return s


def pem_base64(text: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise ValueError("base64 of a PEM private key") from None
    if b"-----BEGIN" not in raw:
        raise ValueError("base64 of a PEM private key")
    return raw


def peer_secret(text: str) -> str:
    s = text.strip()
    if len(s) < 16 or re.search(r"[\x00-\x20\x7f]", s):
        raise ValueError("at least 16 printable characters without spaces (a long random "
                         "string, the same on every node)")
    return s


def advertise(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port`` or ``[v6]:port`` -> (host, port or None)."""
    s = text.strip()
    m = re.fullmatch(r"(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.\-_]+))(?::([0-9]+))?", s)
    if not m:
        raise ValueError("host or host:port that other nodes can dial, such as "
                         "gw-1.internal:7777")
    return (m.group(1) or m.group(2)), (port(m.group(3)) if m.group(3) else None)
