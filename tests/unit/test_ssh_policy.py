"""SSH login names and the connection limiter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from studios_gateway.ssh.policy import ConnectionLimiter, LoginName, Refused, parse_login

session_ids = st.from_regex(r"[a-z0-9][a-z0-9-]{0,62}", fullmatch=True)
users = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp"),
                              blacklist_characters="/\t\n\r\x0b\x0c\x85"),
                min_size=1, max_size=60)


@given(users, session_ids)
def test_round_trip(user: str, sid: str) -> None:
    login = parse_login(f"{user}@{sid}".encode())
    assert login == LoginName(user, sid)
    assert str(login) == f"{user}@{sid}"


@given(st.binary(max_size=80))
def test_never_crashes(raw: bytes) -> None:
    try:
        login = parse_login(raw)
    except Refused as e:
        assert e.kind == "usage" and "<user>@<session-id>" in e.message
    else:
        assert login.user and login.session_id


def test_email_users_keep_their_at() -> None:
    assert parse_login(b"alice@example.com@abcd") == LoginName("alice@example.com", "abcd")


@pytest.mark.parametrize("name", [b"alice", b"@abcd", b"alice@", b"alice@ABCD", b"al ice@abcd",
                                  b"alice@ab_cd", b"a/b@abcd", b"\xff@abcd", b"a" * 600 + b"@x"])
def test_refused_with_usage(name: bytes) -> None:
    with pytest.raises(Refused) as e:
        parse_login(name)
    assert e.value.kind == "usage"


@given(st.lists(st.booleans(), max_size=200), st.integers(1, 20))
def test_limiter_never_exceeds(ops: list[bool], limit: int) -> None:
    lim = ConnectionLimiter(limit)
    held = 0
    for acquire in ops:
        if acquire:
            if lim.acquire():
                held += 1
        elif held:
            lim.release()
            held -= 1
        assert 0 <= lim.live == held <= limit
