"""An OpenID login's tokens kept fresh while the login lasts.

After a login through the issuer, the gateway refreshes the login's tokens shortly
before they expire, for as long as the gateway's own login lasts: a refresh the
issuer refuses (the person was logged out there, or lost their account) ends the
login on every node; one that fails for another reason (the issuer cannot be reached,
or refuses the gateway's own client: the operator's to fix, and no sign of the person's
login) is tried again in 30 s.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from studios_gateway.auth.authorizer import Authorizer
from studios_gateway.auth.oidc import ClientRefused, LoginFailed, RelyingParty, TokenSet
from studios_gateway.repeats import Repeats

__all__ = ["REFRESH_MIN_INTERVAL", "LoginRefresher"]

#: Refreshes of one login are at least this far apart (seconds).
REFRESH_MIN_INTERVAL = 1.0
#: A refresh that failed without the issuer refusing it is tried again this much later.
_RETRY_AFTER = 30.0


class LoginRefresher:
    """The timers that refresh each login's tokens (one per login id)."""

    _log = Logger()

    def __init__(self, rp: RelyingParty | None, authorizer: Authorizer, *, reactor: Any):
        self._rp = rp
        self._authorizer = authorizer
        self._reactor = reactor
        self._calls: dict[str, Any] = {}
        # Failed refreshes are said once a minute per kind, with a count: a refused client
        # or an issuer away fails every login's refresh, every 30 s, until it is put right.
        self._failures = Repeats(reactor)

    def begin(self, login_id: str, tokens: TokenSet, login_expires: float) -> None:
        """A login (new, or one going on in the same browser) got `tokens`: refresh them
        from now on in place of any earlier ones of that login."""
        stale = self._calls.pop(login_id, None)
        if stale is not None and stale.active():
            stale.cancel()
        self._keep_fresh(login_id, tokens, login_expires)

    def stop(self) -> None:
        """Cancel every pending refresh."""
        for call in self._calls.values():
            if call.active():
                call.cancel()
        self._calls.clear()

    def _keep_fresh(self, login_id: str, tokens: TokenSet, login_expires: float,
                    after: float | None = None) -> None:
        """While the login lasts, refresh its tokens before they expire (or `after` that
        many seconds); a refused refresh (the issuer ended the login) logs the user out
        everywhere."""
        if self._rp is None or not tokens.refresh_token or tokens.expires_at is None:
            return
        now = self._reactor.seconds()
        if after is None:
            lifetime = max(0.0, tokens.expires_at - now)
            # A fifth of the lifetime (at most a minute) before expiry; at most once a
            # second.
            after = max(REFRESH_MIN_INTERVAL, lifetime - min(60.0, lifetime / 5))
        at = now + after
        if at >= login_expires:
            self._calls.pop(login_id, None)
            return
        rp = self._rp

        def refresh() -> None:
            def ok(new: TokenSet) -> None:
                self._keep_fresh(login_id, new, login_expires)

            def failed(f: Any) -> None:
                self._calls.pop(login_id, None)
                if f.check(LoginFailed) and not f.check(ClientRefused):
                    self._log.info("the issuer refused to refresh a login: logging it out")
                    self._authorizer.logout(login_id)
                else:
                    unsaid = self._failures.due(type(f.value).__name__)
                    if unsaid is not None:
                        self._log.warn("refreshing a login failed: {why}{more}",
                                       why=str(f.value), more=self._failures.more(unsaid))
                    self._keep_fresh(login_id, tokens, login_expires, after=_RETRY_AFTER)

            if self._authorizer.is_logged_out(login_id):
                self._calls.pop(login_id, None)
                return
            rp.refresh(tokens).addCallbacks(ok, failed)

        self._calls[login_id] = self._reactor.callLater(at - now, refresh)
