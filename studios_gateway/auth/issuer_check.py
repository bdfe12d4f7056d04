"""check-config --connect's look at the OpenID issuer: what a start asks it (discovery,
the keys), and whether its token endpoint accepts the gateway's client, without
registering anything or keeping anything.

A start that cannot reach the issuer goes on and asks again (logins answer 503 in the
meantime), so a mistyped issuer address showed only in the running gateway's log. Here it
is one line before the start, in the start's words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred

from studios_gateway.auth.oidc import (
    ClientUnconfirmed,
    ConfigurationError,
    OIDCError,
    OIDCSettings,
    RelyingParty,
)
from studios_gateway.auth.settings import AuthSettings

__all__ = ["IssuerCheck", "check_issuer"]


@dataclass
class IssuerCheck:
    """What the issuer answered: lines for the operator, and the problems a start would
    meet (empty: logins can work)."""

    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check_issuer(config: Any, reactor: Any) -> Deferred[IssuerCheck] | None:
    """Ask the configured issuer what a start would; None without one (login links)."""
    s = AuthSettings.from_config(config)
    if not s.issuer:
        return None
    rp = RelyingParty(OIDCSettings(
        issuer=s.issuer, redirect_uri=s.redirect_uri, storage_root=s.storage_root,
        post_logout_redirect_uri=s.post_logout_redirect_uri, client_name=s.client_name,
        registration_token=s.registration_token, client_id=s.client_id,
        client_secret=s.client_secret, scopes=s.scopes, timeout=s.timeout), reactor=reactor)

    async def ask() -> IssuerCheck:
        try:
            return await _ask(rp, s.issuer or "")
        finally:
            await _closed(rp)

    return Deferred.fromCoroutine(ask())


async def _closed(rp: RelyingParty) -> None:
    stopped = rp.stop()
    if stopped is not None:
        await stopped


async def _ask(rp: RelyingParty, issuer: str) -> IssuerCheck:
    found = IssuerCheck()
    try:
        meta = rp.metadata = await rp.discover()
    except ConfigurationError as e:
        found.problems.append(str(e))
        return found
    except OIDCError as e:
        found.problems.append(f"{e}: the gateway would start, and every login fail until the "
                              f"issuer answers (check PLATFORM_URL / CONNECT_OIDC_ISSUER_URL: "
                              f"{issuer})")
        return found
    found.notes.append(f"OpenID issuer {meta.issuer}: discovery answered")
    try:
        await rp.fetch_keys()
    except OIDCError as e:
        found.problems.append(str(e))
    else:
        found.notes.append(f"OpenID issuer {meta.issuer}: its JWKS has {rp.key_count} "
                           f"signing key(s)")
    try:
        rp.client = rp.stored_client()
    except ConfigurationError as e:
        found.problems.append(str(e))
        return found
    if rp.client is None:
        if not meta.registration_endpoint:
            found.problems.append(
                f"the issuer {meta.issuer} offers no dynamic client registration: set a "
                "static client (CONNECT_OIDC_CLIENT_ID and CONNECT_OIDC_CLIENT_SECRET)")
        else:
            found.notes.append(
                f"OpenID issuer {meta.issuer}: no client registered yet: the start "
                f"registers one at {meta.registration_endpoint} (the registration token is "
                "checked then)")
        return found
    try:
        status, text = await rp.try_authorize()
    except OIDCError as e:
        found.notes.append(f"warning: {e}")
    else:
        if status >= 400:
            # Heuristic: a warning, not a refusal (an issuer may refuse for other reasons).
            found.notes.append(
                f"warning: the issuer's authorization endpoint answered HTTP {status} to a "
                f"login for the client {rp.client.client_id} with the redirect URI "
                f"{rp.settings.redirect_uri}: is that address (CONNECT_PROXY_URL + "
                f"/_connect/callback) registered with the client at the issuer? ({text})")
    try:
        answer = await rp.try_client()
    except ClientUnconfirmed as e:
        found.notes.append(f"warning: {e}")
        return found
    except OIDCError as e:  # ClientRefused among them
        found.problems.append(str(e))
    else:
        found.notes.append(f"OpenID issuer {meta.issuer}: the client {rp.client.client_id} "
                           f"is accepted ({answer})")
    return found
