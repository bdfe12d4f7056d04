"""Image tags and Connect versions: examples from the seeds, round trips, junk, compatibility."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from studios_gateway.versions import (
    CONNECT_PROTOCOL_VERSION,
    ConnectVersion,
    ImageTag,
    IncompatibleVersion,
    InvalidConnectVersion,
    InvalidImageTag,
    VersionError,
    check_client_compatible,
    is_client_compatible,
    parse_connect_version,
    parse_image_tag,
    supported_versions,
)


@pytest.mark.parametrize("text,tool,update,connect", [
    ("4.2.5-0.8", "4.2.5", None, ConnectVersion(0, 8)),
    ("4.2.3-0.8.4", "4.2.3", None, ConnectVersion(0, 8, 4)),
    ("4.2.5-u1-0.8.4", "4.2.5", 1, ConnectVersion(0, 8, 4)),
    ("2025.04.1-0.12", "2025.04.1", None, ConnectVersion(0, 12)),
    ("6.2.0-r2-1-0.12", "6.2.0-r2-1", None, ConnectVersion(0, 12)),
    ("1.93.1-u12-1.0.0", "1.93.1", 12, ConnectVersion(1, 0, 0)),
])
def test_seed_examples(text: str, tool: str, update: int | None, connect: ConnectVersion) -> None:
    tag = parse_image_tag(text)
    assert tag == ImageTag(tool, update, connect)
    assert str(tag) == text


@pytest.mark.parametrize("text,why", [
    ("", "empty"),
    ("4.2.5", "expected"),
    ("4.2.5-", "Connect version"),
    ("4.2.5-0", "Connect version"),
    ("4.2.5-0.08", "leading zeros"),
    ("4.2.5-0.8.4.1", "Connect version"),
    ("4.2.5-u0-0.8", "update version"),
    ("4.2.5-u-0.8", "update version"),
    ("4.2.5-U1-0.8", "a lowercase u"),  # was read as tool version 4.2.5-U1, no update
    ("-0.8", "tool version"),
    ("u1-0.8", "tool version before the Connect version is missing"),
    ("4.2.5--0.8", "tool version"),
    ("4.2.5-u1-u2-0.8", "update flag"),
    ("4.2 5-0.8", "tool version"),
    ("latest-0.8", "no digits"),
    ("x" * 130 + "1-0.8", "longer than"),
])
def test_rejects_with_reason(text: str, why: str) -> None:
    with pytest.raises(InvalidImageTag, match=why):
        parse_image_tag(text)


def test_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        parse_connect_version("v1")
    assert issubclass(IncompatibleVersion, VersionError)
    with pytest.raises(InvalidImageTag):
        ImageTag("1.0-u1", None, ConnectVersion(0, 8))
    with pytest.raises(InvalidConnectVersion):
        ConnectVersion(-1, 0)


# Property tests ---------------------------------------------------------------

numbers = st.integers(min_value=0, max_value=10**6)
connect_versions = st.builds(ConnectVersion, numbers, numbers,
                             st.none() | numbers)
tool_parts = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._]{0,8}", fullmatch=True)
tool_versions = st.lists(tool_parts, min_size=1, max_size=4).map("-".join).filter(
    # a last part shaped like an update flag (u, u0, u12) would be read as one
    lambda t: any(c.isdigit() for c in t) and not re.fullmatch(r"[uU][0-9]*",
                                                                t.split("-")[-1]))
updates = st.none() | st.integers(min_value=1, max_value=999)


@given(tool_versions, updates, connect_versions)
def test_tag_round_trip(tool: str, update: int | None, connect: ConnectVersion) -> None:
    tag = ImageTag(tool, update, connect)
    assert parse_image_tag(str(tag)) == tag


@given(connect_versions)
def test_connect_version_round_trip(v: ConnectVersion) -> None:
    assert parse_connect_version(str(v)) == v


@given(st.text(max_size=40))
def test_junk_is_refused_or_round_trips(text: str) -> None:
    try:
        tag = parse_image_tag(text)
    except InvalidImageTag as e:
        assert str(e)
    else:
        assert str(tag) == text


@given(st.text(alphabet="0123456789.-u", max_size=20))
def test_near_misses_never_crash(text: str) -> None:
    try:
        tag = parse_image_tag(text)
    except InvalidImageTag:
        return
    assert str(tag) == text


@given(st.text(max_size=20))
def test_connect_junk(text: str) -> None:
    try:
        v = parse_connect_version(text)
    except InvalidConnectVersion:
        return
    assert str(v) == text


# Compatibility ----------------------------------------------------------------

def test_own_version() -> None:
    assert CONNECT_PROTOCOL_VERSION == ConnectVersion(0, 12, 0)
    assert supported_versions() == ("0.10", "0.11", "0.12")
    check_client_compatible(ConnectVersion(0, 12, 7), CONNECT_PROTOCOL_VERSION)
    check_client_compatible(ConnectVersion(0, 10), CONNECT_PROTOCOL_VERSION)


@pytest.mark.parametrize("client,why", [
    (ConnectVersion(0, 9, 9), "too old"),
    (ConnectVersion(0, 13, 0), "newer than this gateway"),
    (ConnectVersion(1, 12, 0), "major"),
])
def test_refusal_says_what_is_supported(client: ConnectVersion, why: str) -> None:
    with pytest.raises(IncompatibleVersion, match=why) as info:
        check_client_compatible(client, CONNECT_PROTOCOL_VERSION)
    assert "supports Connect 0.10, 0.11 and 0.12" in str(info.value)
    assert str(client) in str(info.value)
    assert info.value.client == client


def test_window_at_the_start_of_a_major() -> None:
    assert supported_versions(ConnectVersion(1, 0)) == ("1.0",)
    assert supported_versions(ConnectVersion(1, 1)) == ("1.0", "1.1")
    with pytest.raises(IncompatibleVersion, match="supports Connect 1.0$|supports Connect 1.0\\."):
        check_client_compatible(ConnectVersion(0, 12), ConnectVersion(1, 0))


@given(connect_versions, connect_versions)
def test_compatibility_window(client: ConnectVersion, server: ConnectVersion) -> None:
    expected = client.major == server.major and 0 <= server.minor - client.minor <= 2
    assert is_client_compatible(client, server) is expected
    if not expected:
        with pytest.raises(IncompatibleVersion) as info:
            check_client_compatible(client, server)
        for series in supported_versions(server):
            assert series in str(info.value)


@given(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50), st.integers(0, 50))
def test_patch_never_matters(major: int, minor: int, p1: int, p2: int) -> None:
    server = ConnectVersion(major, minor + 2, p1)
    assert is_client_compatible(ConnectVersion(major, minor, p2), server)
    assert is_client_compatible(ConnectVersion(major, minor + 2, None), server)
