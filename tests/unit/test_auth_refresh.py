"""LoginRefresher on a Clock: which refused refreshes end a login and which are tried
again."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from studios_gateway.auth.oidc import ClientRefused, LoginFailed, OIDCError, TokenSet
from studios_gateway.auth.refresh import LoginRefresher


class Issuer:
    """A relying party whose refreshes all fail with `error`; counts them."""

    def __init__(self, error: Exception):
        self.error, self.asked = error, 0

    def refresh(self, tokens: TokenSet) -> Any:
        self.asked += 1
        return defer.fail(self.error)


class Logins:
    def __init__(self) -> None:
        self.ended: list[str] = []

    def logout(self, login_id: str) -> None:
        self.ended.append(login_id)

    def is_logged_out(self, login_id: str) -> bool:
        return login_id in self.ended


@pytest.mark.parametrize(("error", "ends"), [
    (LoginFailed("the token refresh was refused (HTTP 400: invalid_grant)"), True),
    # The issuer refuses the gateway's own client (a secret changed there): the operator's
    # to fix; it says nothing of the person's login. Before, every login ended at its
    # next refresh, everyone's WebSockets closed.
    (ClientRefused("the token refresh was refused (HTTP 401: invalid_client): ..."), False),
    (OIDCError("the token refresh at https://idp/token got no answer within 10s"), False),
])
def test_only_the_issuers_refusal_of_the_login_ends_it(error: Exception, ends: bool) -> None:
    clock, issuer, logins = Clock(), Issuer(error), Logins()
    refresher = LoginRefresher(issuer, logins, reactor=clock)  # type: ignore[arg-type]
    tokens = TokenSet(access_token="a", id_token=None, refresh_token="r", expires_at=300.0)
    refresher.begin("login-1", tokens, login_expires=3600.0)
    clock.advance(240)  # a fifth of the lifetime (at most a minute) before it expires
    assert issuer.asked == 1
    assert logins.ended == (["login-1"] if ends else [])
    clock.advance(30)
    assert issuer.asked == (1 if ends else 2)  # kept: tried again 30 s later
    refresher.stop()


def test_refreshes_that_keep_failing_are_a_line_a_minute_not_one_per_login() -> None:
    """A refused client lasts until the operator puts it right: each login's refresh
    was a warning of its own every 30 s (200 logins: ~7 lines a second, for hours)."""
    from twisted.logger import LogLevel, capturedLogs, formatEvent

    clock = Clock()
    issuer = Issuer(ClientRefused("the token refresh was refused (HTTP 401: invalid_client)"))
    refresher = LoginRefresher(issuer, Logins(), reactor=clock)  # type: ignore[arg-type]
    tokens = TokenSet(access_token="a", id_token=None, refresh_token="r", expires_at=300.0)
    with capturedLogs() as events:
        for n in range(200):
            refresher.begin(f"login-{n}", tokens, login_expires=3600.0)
        clock.advance(240)
        for _ in range(4):
            clock.advance(30)
    said = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.warn]
    assert issuer.asked == 1000  # (each login is still tried every 30 s)
    assert 2 <= len(said) <= 3, said
    assert "invalid_client" in said[0] and said[-1].endswith("more like it in the last 60s)")
    refresher.stop()
