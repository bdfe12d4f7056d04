"""Studio image tags and Connect versions: parsing, formatting and compatibility.

An image tag is ``<TOOL_VERSION>-[u<N>-]<MAJOR>.<MINOR>[.<PATCH>]`` (seed 000):
``4.2.5-0.8``, ``4.2.5-u1-0.8.4``, ``2025.04.1-0.12``, ``6.2.0-r2-1-0.12``. The
tool's own version may contain dashes, so a tag is read from the right: the
last dash-separated part is the Connect version, the one before it is the
update flag if it looks like ``u<N>``, and everything before is the tool's.

Connect's minor version is the breaking unit (for ``0.x`` as for later majors):
a gateway speaks to clients of its own major and of its own minor or one of the
two before it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

__all__ = [
    "CONNECT_PROTOCOL_VERSION",
    "SUPPORTED_MINORS",
    "ConnectVersion",
    "ImageTag",
    "IncompatibleVersion",
    "InvalidConnectVersion",
    "InvalidImageTag",
    "VersionError",
    "check_client_compatible",
    "is_client_compatible",
    "parse_connect_version",
    "parse_image_tag",
    "parse_update",
    "published_tags",
    "supported_versions",
]

#: How many minors a gateway accepts: its own and the ones before it.
SUPPORTED_MINORS = 3
#: Longest tag a container registry accepts (OCI distribution spec).
MAX_TAG_LENGTH = 128

_NUMBER = r"(?:0|[1-9][0-9]*)"
_CONNECT = re.compile(rf"({_NUMBER})\.({_NUMBER})(?:\.({_NUMBER}))?")
_UPDATE = re.compile(r"u([1-9][0-9]*)")
_TOOL_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._]*")
_MAX_NUMBER = 10**9


class VersionError(ValueError):
    """A version or tag was refused; the message says why."""


class InvalidConnectVersion(VersionError):
    """Not a Connect version ``MAJOR.MINOR[.PATCH]``."""


class InvalidImageTag(VersionError):
    """Not an image tag ``<TOOL_VERSION>-[u<N>-]<MAJOR>.<MINOR>[.<PATCH>]``."""


class IncompatibleVersion(VersionError):
    """A client's Connect version this gateway does not speak."""

    def __init__(self, message: str, client: ConnectVersion, server: ConnectVersion):
        super().__init__(message)
        self.client = client
        self.server = server


@total_ordering
@dataclass(frozen=True, eq=True)
class ConnectVersion:
    """A Connect version. ``patch`` is None when the text left it out (``0.8``)."""

    major: int
    minor: int
    patch: int | None = None

    def __post_init__(self) -> None:
        for name in ("major", "minor", "patch"):
            value = getattr(self, name)
            if value is None and name == "patch":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or \
                    not 0 <= value < _MAX_NUMBER:
                raise InvalidConnectVersion(
                    f"Connect version {name} must be a whole number from 0 to {_MAX_NUMBER - 1},"
                    f" not {value!r}")

    @property
    def key(self) -> tuple[int, int, int]:
        """The version for ordering: a missing patch counts as 0."""
        return (self.major, self.minor, self.patch or 0)

    @property
    def series(self) -> str:
        """``MAJOR.MINOR``, the breaking unit."""
        return f"{self.major}.{self.minor}"

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, ConnectVersion):
            return NotImplemented
        return self.key < other.key

    def __str__(self) -> str:
        return self.series if self.patch is None else f"{self.series}.{self.patch}"


@dataclass(frozen=True)
class ImageTag:
    """A studio image tag: the tool's version, the optional update flag, Connect's version."""

    tool_version: str
    update: int | None
    connect: ConnectVersion

    def __post_init__(self) -> None:
        _check_tool_version(self.tool_version, str(self.tool_version))
        if self.update is not None and (
                not isinstance(self.update, int) or isinstance(self.update, bool)
                or not 1 <= self.update < _MAX_NUMBER):
            raise InvalidImageTag(f"update version must be a whole number from 1, "
                                  f"not {self.update!r}")
        if not isinstance(self.connect, ConnectVersion):
            raise InvalidImageTag(f"connect must be a ConnectVersion, not {self.connect!r}")
        if len(str(self)) > MAX_TAG_LENGTH:
            raise InvalidImageTag(f"image tag is longer than {MAX_TAG_LENGTH} characters")

    def __str__(self) -> str:
        update = "" if self.update is None else f"u{self.update}-"
        return f"{self.tool_version}-{update}{self.connect}"


def parse_connect_version(text: str) -> ConnectVersion:
    """``MAJOR.MINOR[.PATCH]`` (``0.12``, ``0.8.4``) as a ConnectVersion."""
    if not isinstance(text, str):
        raise InvalidConnectVersion(f"a Connect version is text, not {type(text).__name__}")
    m = _CONNECT.fullmatch(text)
    if m is None:
        raise InvalidConnectVersion(
            f"{text!r} is not a Connect version: expected MAJOR.MINOR or MAJOR.MINOR.PATCH, "
            "whole numbers without leading zeros, such as 0.12 or 0.8.4")
    major, minor, patch = m.groups()
    return ConnectVersion(int(major), int(minor), None if patch is None else int(patch))


def parse_image_tag(text: str) -> ImageTag:
    """A studio image tag (``4.2.5-u1-0.8.4``) as an ImageTag; InvalidImageTag says why not."""
    if not isinstance(text, str):
        raise InvalidImageTag(f"an image tag is text, not {type(text).__name__}")
    if not text:
        raise InvalidImageTag("the image tag is empty")
    if len(text) > MAX_TAG_LENGTH:
        raise InvalidImageTag(f"image tag is longer than {MAX_TAG_LENGTH} characters")
    parts = text.split("-")
    if len(parts) < 2:
        raise InvalidImageTag(
            f"{text!r} is not an image tag: expected <TOOL_VERSION>-[u<N>-]<CONNECT_VERSION>, "
            "such as 4.2.5-0.8 or 4.2.5-u1-0.8.4")
    try:
        connect = parse_connect_version(parts[-1])
    except InvalidConnectVersion as e:
        raise InvalidImageTag(f"{text!r}: the part after the last '-' must be the Connect "
                              f"version: {e}") from None
    update: int | None = None
    rest = parts[:-1]
    m = _UPDATE.fullmatch(rest[-1])
    if m is not None:
        update = int(m.group(1))
        rest = rest[:-1]
    elif re.fullmatch(r"[uU][0-9]*", rest[-1]):  # U1 became part of the tool version
        raise InvalidImageTag(f"{text!r}: the update version must be u<N> (a lowercase u) "
                              f"with N a whole number from 1 without leading zeros, not "
                              f"{rest[-1]!r}")
    if not rest:
        raise InvalidImageTag(f"{text!r}: the tool version before the Connect version is "
                              "missing")
    tool = "-".join(rest)
    _check_tool_version(tool, text)
    return ImageTag(tool, update, connect)


def parse_update(text: str) -> int:
    """An update flag ``u<N>`` (``u1``) as N; InvalidImageTag says why not."""
    m = _UPDATE.fullmatch(text) if isinstance(text, str) else None
    if m is None or int(m.group(1)) >= _MAX_NUMBER:
        raise InvalidImageTag(f"the update version must be u<N> with N a whole number from 1 "
                              f"without leading zeros, such as u1, not {text!r}")
    return int(m.group(1))


def published_tags(tool_version: str, update: int | None,
                   connect: ConnectVersion) -> tuple[ImageTag, ImageTag]:
    """The two tags an image is pushed with (seed 000): ``<TOOL>-[u<N>-]<MAJOR>.<MINOR>``,
    the one the Platform shows, and ``...<MAJOR>.<MINOR>.<PATCH>`` (a missing patch is 0)."""
    series = ConnectVersion(connect.major, connect.minor)
    full = ConnectVersion(connect.major, connect.minor, connect.patch or 0)
    return ImageTag(tool_version, update, series), ImageTag(tool_version, update, full)


def _check_tool_version(tool: object, text: str) -> None:
    if not isinstance(tool, str) or not tool:
        raise InvalidImageTag(f"{text!r}: the tool version is missing")
    for part in tool.split("-"):
        if not _TOOL_PART.fullmatch(part):
            raise InvalidImageTag(
                f"{text!r}: the tool version {tool!r} must be parts of letters, digits, '.' "
                "and '_' joined by single '-', each part starting with a letter or digit")
    if re.fullmatch(r"[uU][0-9]*", tool.split("-")[-1]):
        raise InvalidImageTag(f"{text!r}: the tool version {tool!r} ends in an update flag; "
                              "put the update in its own field")
    if not any(c.isdigit() for c in tool):
        raise InvalidImageTag(f"{text!r}: the tool version {tool!r} has no digits")


# Compatibility ---------------------------------------------------------------

#: The Connect protocol version this gateway speaks.
CONNECT_PROTOCOL_VERSION = ConnectVersion(0, 12, 0)


def supported_versions(server: ConnectVersion = CONNECT_PROTOCOL_VERSION) -> tuple[str, ...]:
    """The ``MAJOR.MINOR`` series a gateway at `server` accepts, oldest first."""
    low = max(0, server.minor - (SUPPORTED_MINORS - 1))
    return tuple(f"{server.major}.{minor}" for minor in range(low, server.minor + 1))


def _describe(series: tuple[str, ...]) -> str:
    if len(series) == 1:
        return series[0]
    return ", ".join(series[:-1]) + " and " + series[-1]


def check_client_compatible(client: ConnectVersion,
                            server: ConnectVersion = CONNECT_PROTOCOL_VERSION) -> None:
    """Return if a client at `client` may bind to a gateway at `server`; else raise
    IncompatibleVersion with a message the client can print as it is."""
    supported = supported_versions(server)
    ok = client.major == server.major and \
        server.minor - (SUPPORTED_MINORS - 1) <= client.minor <= server.minor
    if ok:
        return
    if client.major == server.major and client.minor > server.minor:
        why = "it is newer than this gateway; upgrade the gateway"
    elif client.key < server.key:
        why = "it is too old; use a studio image with a newer Connect version"
    else:
        why = "its major version differs from this gateway's"
    raise IncompatibleVersion(
        f"Connect {client} is not supported by this gateway (Connect {server}): {why}. "
        f"This gateway supports Connect {_describe(supported)}.", client, server)


def is_client_compatible(client: ConnectVersion,
                         server: ConnectVersion = CONNECT_PROTOCOL_VERSION) -> bool:
    try:
        check_client_compatible(client, server)
    except IncompatibleVersion:
        return False
    return True
