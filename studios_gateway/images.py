"""Studio images named by a full reference: what their tag and repository name tell.

A session may be created from an image reference such as
``registry.example/platform/data-studio-jupyter:4.2.5-u1-0.12.0`` (a digest,
``@sha256:...``, may follow the tag). The reference is read with the grammar
container registries use (``[host[:port]/]path[:tag][@digest]``, lowercase
path components); its tag must be a studio image tag (versions.py), which
gives the tool's version, its update flag and the Connect version the image's
client speaks. The repository's last path component may name the tool
(``data-studio-jupyter``, ``my-rstudio``, ``vscode``): any of its ``-``, ``_``
or ``.`` separated words that is a tool name (wire/tools.py) counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from studios_gateway import versions
from studios_gateway.versions import ConnectVersion, ImageTag, VersionError
from studios_gateway.wire.tools import canonical

__all__ = [
    "MAX_REFERENCE_LENGTH",
    "ImageReference",
    "InvalidImageReference",
    "StudioImage",
    "parse_image_reference",
    "studio_image",
    "tool_named_by",
]

#: Longest reference accepted: a 255-character name, a 128-character tag, a sha512 digest.
MAX_REFERENCE_LENGTH = 255 + 1 + 128 + 1 + 7 + 128
_MAX_NAME = 255

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                   r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGESTS = {"sha256": 64, "sha512": 128}
_SHAPE = "[registry[:port]/]repository:tag[@sha256:digest]"


class InvalidImageReference(VersionError):
    """Not an image reference (or one without a tag); the message says why."""


@dataclass(frozen=True)
class ImageReference:
    """A parsed reference; ``text`` is the reference exactly as given."""

    text: str
    registry: str | None
    repository: str  # the path after the registry: "platform/data-studio-jupyter"
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """The repository's last path component: ``data-studio-jupyter``."""
        return self.repository.rsplit("/", 1)[-1]


def parse_image_reference(text: str) -> ImageReference:
    """Read ``[registry[:port]/]repository[:tag][@algorithm:hex]``; InvalidImageReference
    says what is wrong."""
    if not isinstance(text, str):
        raise InvalidImageReference(f"an image reference is text, not {type(text).__name__}")
    if not text:
        raise InvalidImageReference("the image reference is empty")
    if len(text) > MAX_REFERENCE_LENGTH:
        raise InvalidImageReference(
            f"the image reference is longer than {MAX_REFERENCE_LENGTH} characters")
    if not text.isascii() or not text.isprintable() or any(c.isspace() for c in text):
        raise InvalidImageReference(f"{text!r}: an image reference has no spaces or "
                                    "non-ASCII characters")
    rest, at, digest_text = text.partition("@")
    digest = _digest(text, digest_text) if at else None
    registry: str | None = None
    first, slash, path = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"
                  or first != first.lower()):
        if not _HOST.fullmatch(first):
            raise InvalidImageReference(f"{text!r}: {first!r} is not a registry host[:port]")
        registry, rest = first, path
    name, colon, tag = _split_tag(rest)
    if colon and not _TAG.fullmatch(tag):
        raise InvalidImageReference(
            f"{text!r}: the tag {tag!r} must be 1-128 letters, digits, '_', '.' or '-', "
            "not starting with '.' or '-'")
    if not name:
        raise InvalidImageReference(f"{text!r}: the repository name is missing ({_SHAPE})")
    if len(name) + (len(registry) + 1 if registry else 0) > _MAX_NAME:
        raise InvalidImageReference(f"{text!r}: the name is longer than {_MAX_NAME} characters")
    for component in name.split("/"):
        if not _COMPONENT.fullmatch(component):
            raise InvalidImageReference(
                f"{text!r}: the repository path part {component!r} must be lowercase letters "
                "and digits, joined by '.', '_', '__' or dashes")
    return ImageReference(text, registry, name, tag if colon else None, digest)


def _split_tag(rest: str) -> tuple[str, bool, str]:
    """``path:tag`` -> (path, True, tag); a ':' inside the path (a port) is not a tag."""
    head, colon, tail = rest.rpartition(":")
    if not colon or "/" in tail:
        return rest, False, ""
    return head, True, tail


def _digest(text: str, digest: str) -> str:
    algorithm, colon, value = digest.partition(":")
    size = _DIGESTS.get(algorithm)
    if not colon or size is None:
        raise InvalidImageReference(
            f"{text!r}: the digest after '@' must be sha256:<64 hex digits> "
            "(or sha512:<128 hex digits>)")
    if len(value) != size or not re.fullmatch(r"[0-9a-f]+", value):
        raise InvalidImageReference(
            f"{text!r}: a {algorithm} digest is {size} lowercase hex digits")
    return digest


def tool_named_by(repository_name: str) -> str | None:
    """The canonical tool a repository's name names (``data-studio-jupyter`` ->
    ``jupyterlab``), or None when it names none; InvalidImageReference when it names
    several different ones."""
    words = re.split(r"[-_.]+", repository_name)
    candidates = [repository_name, *words,
                  *("-".join(pair) for pair in zip(words, words[1:], strict=False))]
    found = dict.fromkeys(t for t in map(canonical, candidates) if t and t != "generic")
    if len(found) > 1:
        raise InvalidImageReference(
            f"the repository name {repository_name!r} names several tools "
            f"({', '.join(found)}); say which with tool")
    return next(iter(found), None)


@dataclass(frozen=True)
class StudioImage:
    """What a session learns from its image."""

    reference: ImageReference
    tag: ImageTag

    @property
    def tool(self) -> str | None:
        """The canonical tool the repository name names; None: it names none.
        InvalidImageReference when it names several."""
        return tool_named_by(self.reference.name)

    @property
    def tool_version(self) -> str:
        return self.tag.tool_version

    @property
    def update_version(self) -> str | None:
        return None if self.tag.update is None else f"u{self.tag.update}"

    @property
    def connect_version(self) -> ConnectVersion:
        return self.tag.connect


def studio_image(text: str,
                 server: ConnectVersion = versions.CONNECT_PROTOCOL_VERSION) -> StudioImage:
    """Read a studio image reference and check that a gateway at `server` speaks its
    Connect version. Raises InvalidImageReference or InvalidImageTag (the reason) or
    IncompatibleVersion (naming the image's version, the gateway's and its window)."""
    ref = parse_image_reference(text)
    if ref.tag is None:
        raise InvalidImageReference(
            f"{text!r} has no tag; a studio image's tag gives its versions: "
            "<TOOL_VERSION>-[u<N>-]<CONNECT_VERSION>, such as 4.2.5-0.12 or 4.2.5-u1-0.12.0")
    try:
        tag = versions.parse_image_tag(ref.tag)
    except versions.InvalidImageTag as e:
        raise versions.InvalidImageTag(f"image {text!r}: {e}") from None
    try:
        versions.check_client_compatible(tag.connect, server)
    except versions.IncompatibleVersion as e:
        raise versions.IncompatibleVersion(f"image {text!r}: {e}", e.client, e.server) from None
    return StudioImage(ref, tag)
