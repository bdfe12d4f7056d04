"""Signed cookies: codec round trips, tampering, expiry, scope, headers, the key file."""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from studios_gateway.auth.cookies import (
    LOGIN_SCOPE,
    CookieCodec,
    Signer,
    clear_cookie_header,
    cookie_name,
    cookie_values,
    set_cookie_header,
)
from studios_gateway.auth.files import StorageError, load_or_create_key

KEY = b"k" * 32
texts = st.text(min_size=1, max_size=60).filter(lambda s: "\x00" not in s)


def codec(clock: Clock | None = None, key: bytes = KEY) -> tuple[CookieCodec, Clock]:
    clock = clock or Clock()
    clock.advance(1_700_000_000)
    return CookieCodec(Signer(key), clock), clock


def test_round_trip_and_scope():
    c, clock = codec()
    value = c.issue("alice", "abc", "login1", 3600)
    got = c.verify(value, "abc")
    assert got is not None
    assert (got.subject, got.scope, got.login_id) == ("alice", "abc", "login1")
    assert got.expires_at == got.issued_at + 3600
    # The same cookie copied to another studio opens nothing.
    assert c.verify(value, "abd") is None
    assert c.verify(value, LOGIN_SCOPE) is None


def test_expiry_on_the_clock():
    c, clock = codec()
    value = c.issue("alice", "abc", "l", 60)
    clock.advance(59)
    assert c.verify(value, "abc") is not None
    clock.advance(1)
    assert c.verify(value, "abc") is None


def test_issued_in_the_future_is_refused():
    c, clock = codec()
    value = c.issue("alice", "abc", "l", 7200)
    clock.advance(-3600)
    assert c.verify(value, "abc") is None


def test_other_key_and_other_purpose_refused():
    c, _ = codec()
    value = c.issue("alice", "abc", "l", 60)
    other, _ = codec(key=b"x" * 32)
    assert other.verify(value, "abc") is None
    signer = Signer(KEY)
    token = signer.sign("login-link/1", {"v": 1, "sub": "alice", "scp": "abc", "iat": 0,
                                         "exp": 9e18, "lid": "l"})
    assert c.verify(token, "abc") is None


def test_short_key_refused():
    with pytest.raises(ValueError):
        Signer(b"short")


@given(sub=texts, scope=texts, lid=texts, ttl=st.integers(1, 10**8))
def test_codec_round_trips(sub, scope, lid, ttl):
    c, _ = codec()
    got = c.verify(c.issue(sub, scope, lid, ttl), scope)
    assert got is not None and (got.subject, got.scope, got.login_id) == (sub, scope, lid)


@given(data=st.data())
def test_mangled_cookies_are_refused(data):
    c, _ = codec()
    value = c.issue("alice", "abc", "login", 3600)
    i = data.draw(st.integers(0, len(value) - 1))
    replacement = data.draw(st.characters(codec="ascii").filter(lambda ch: ch != value[i]))
    mangled = value[:i] + replacement + value[i + 1:]
    assert c.verify(mangled, "abc") is None


@given(junk=st.text(max_size=300))
def test_junk_is_refused(junk):
    c, _ = codec()
    assert c.verify(junk, "abc") is None


def test_non_canonical_base64_refused():
    c, _ = codec()
    value = c.issue("alice", "abc", "l", 60)
    body, mac = value.split(".")
    # The MAC's last character carries 2 unused bits: flipping them must not verify.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    i = alphabet.index(mac[-1])
    for j in range(i - i % 4, i - i % 4 + 4):
        if j != i:
            assert c.verify(f"{body}.{mac[:-1]}{alphabet[j]}", "abc") is None


def test_truncated_and_extended_refused():
    c, _ = codec()
    value = c.issue("alice", "abc", "l", 60)
    for bad in (value[:-1], value + "A", value.split(".")[0], "." + value, value + ".x", ""):
        assert c.verify(bad, "abc") is None


def test_set_cookie_attributes():
    name, value = set_cookie_header("__Host-connect_session", "v", path="/", max_age=60,
                                    secure=True)
    assert name == b"Set-Cookie"
    parts = value.decode().split("; ")
    assert parts[0] == "__Host-connect_session=v"
    assert {"Path=/", "Max-Age=60", "HttpOnly", "SameSite=Lax", "Secure",
            "Priority=High"} <= set(parts)
    assert not any(p.lower().startswith("domain") for p in parts)  # host-only
    _, plain = set_cookie_header("connect_session", "v", path="/_studio/a/", max_age=5,
                                 secure=False)
    assert "Secure" not in plain.decode() and "Path=/_studio/a/" in plain.decode()
    _, cleared = clear_cookie_header("connect_session", path="/", secure=False)
    assert b"Max-Age=0" in cleared


def test_cookie_name_prefix():
    assert cookie_name(secure=True, host_only_root=True) == "__Host-connect_session"
    assert cookie_name(secure=False, host_only_root=True) == "connect_session"
    assert cookie_name(secure=True, host_only_root=False) == "connect_session"


def test_cookie_values_finds_every_copy():
    headers = [(b"Cookie", b"a=1; connect_session=one; b=2"), (b"cookie", b"connect_session=two"),
               (b"X", b"connect_session=no")]
    assert cookie_values(headers, "connect_session") == ["one", "two"]


def test_key_file_created_once_0600(tmp_path):
    path = tmp_path / "sub" / "auth-signing.key"
    key = load_or_create_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_key(path) == key
    path.write_bytes(b"short")
    with pytest.raises(StorageError):
        load_or_create_key(path)


class CountingSigner(Signer):
    def __init__(self, key: bytes):
        super().__init__(key)
        self.checks = 0

    def verify(self, purpose, token):
        self.checks += 1
        return super().verify(purpose, token)


def counting_codec(**kw) -> tuple[CookieCodec, CountingSigner, Clock]:
    clock = Clock()
    clock.advance(1_700_000_000)
    signer = CountingSigner(KEY)
    return CookieCodec(signer, clock, **kw), signer, clock


def test_a_verified_cookie_is_remembered_for_a_while_expiry_still_checked():
    c, signer, clock = counting_codec(verified_ttl=30)
    value = c.issue("alice", "abc", "l", 100)
    for _ in range(3):
        assert c.verify(value, "abc") is not None
    assert signer.checks == 1
    assert c.verify(value, "abd") is None  # another scope is its own check, and fails
    clock.advance(31)
    assert c.verify(value, "abc") is not None
    assert signer.checks == 3  # remembered no longer than the TTL
    clock.advance(69)
    assert c.verify(value, "abc") is None  # expired while remembered


def test_bad_cookies_are_never_remembered_and_the_memory_is_bounded():
    c, signer, _ = counting_codec(verified_max=2)
    value = c.issue("alice", "abc", "l", 100)
    tampered = value[:-2] + ("AA" if value[-2:] != "AA" else "BB")
    for _ in range(3):
        assert c.verify(tampered, "abc") is None
    assert signer.checks == 3
    values = [c.issue(f"u{i}", "abc", "l", 100) for i in range(3)]
    for v in values:
        assert c.verify(v, "abc") is not None
    assert len(c._verified) == 2
    before = signer.checks
    assert c.verify(values[0], "abc") is not None  # the oldest was let go
    assert signer.checks == before + 1


def test_a_remembered_cookie_issued_in_the_future_is_refused():
    c, _, clock = counting_codec()
    value = c.issue("alice", "abc", "l", 7200)
    assert c.verify(value, "abc") is not None
    clock.advance(-3600)
    assert c.verify(value, "abc") is None


def test_the_memory_lets_cookies_go_when_their_time_is_over():
    # Each login's cookies were remembered until verified_max newer ones pushed them out,
    # also once their browser had logged out and never sent them again (soak53: the
    # gateway's SessionCookie objects grew by ~25 a minute under login churn).
    c, _, clock = counting_codec(verified_ttl=30)
    for i in range(100):
        assert c.verify(c.issue(f"u{i}", "abc", "l", 3600), "abc") is not None
        clock.advance(1)
    assert len(c._verified) == 30  # the last 30 seconds' only
    kept = c.issue("bob", "abc", "l", 3600)
    assert c.verify(kept, "abc") is not None
    clock.advance(29)
    assert c.verify(c.issue("carol", "abc", "l", 3600), "abc") is not None
    assert len(c._verified) == 2  # bob's and carol's: the loop's are over
    clock.advance(1)
    assert c.verify(kept, "abc") is not None  # checked again, remembered again
    assert len(c._verified) == 2
