"""Login and authorization: OIDC relying party, signed cookies, per-request decisions.

The HTTP proxy mounts :class:`Auth` (``handle`` for ``/_connect/*``,
``authorize_request`` per request); the SSH server asks
``Auth.authorizer.check(session_id, user)`` and registers live channels with
``Auth.authorizer.track``.
"""

from studios_gateway.auth.authorizer import Authorizer, Decision, PlatformAccess, Revocation
from studios_gateway.auth.login import (
    SUBJECT_HEADER,
    Auth,
    Identity,
    Response,
    strip_auth_cookies,
)
from studios_gateway.auth.oidc import ConfigurationError, OIDCError
from studios_gateway.auth.settings import AuthSettings

__all__ = [
    "SUBJECT_HEADER",
    "Auth",
    "AuthSettings",
    "Authorizer",
    "ConfigurationError",
    "Decision",
    "Identity",
    "OIDCError",
    "PlatformAccess",
    "Response",
    "Revocation",
    "strip_auth_cookies",
]
