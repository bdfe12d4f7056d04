"""Plain decisions of the SSH proxy: login names, connection counting, refusals.

No reactor, no transport: each piece is tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from studios_gateway.wire.ids import SESSION_ID

__all__ = ["LoginName", "Refused", "ConnectionLimiter", "parse_login", "USAGE"]

USAGE = "log in as <user>@<session-id>, for example: ssh alice@abcd1234@gateway -p 2222"
MAX_LOGIN = 512


class Refused(Exception):
    """The login is refused; `message` is what the user reads."""

    def __init__(self, message: str, *, kind: str = "refused"):
        super().__init__(message)
        self.message = message
        self.kind = kind


@dataclass(frozen=True)
class LoginName:
    user: str
    session_id: str

    def __str__(self) -> str:
        return f"{self.user}@{self.session_id}"


def parse_login(name: bytes | str) -> LoginName:
    """``<user>@<session-id>`` -> LoginName. The user may itself contain '@' (an email
    address); the session id is what follows the last '@'. Raises Refused(kind="usage")."""
    if isinstance(name, bytes):
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused("the login name is not UTF-8; " + USAGE, kind="usage") from None
    else:
        text = name
    if len(text) > MAX_LOGIN:
        raise Refused("the login name is too long; " + USAGE, kind="usage")
    user, sep, session_id = text.rpartition("@")
    if not sep or not user or not session_id:
        raise Refused("no session in the login name; " + USAGE, kind="usage")
    if not SESSION_ID.fullmatch(session_id):
        raise Refused(f"{session_id!r} is not a session id (lowercase letters, digits and "
                      "'-'); " + USAGE, kind="usage")
    if any(c.isspace() or ord(c) < 32 or c == "/" for c in user):
        raise Refused("the user name may not contain spaces, control characters or '/'; "
                      + USAGE, kind="usage")
    return LoginName(user, session_id)


class ConnectionLimiter:
    """Counts live connections; refuses beyond `limit`."""

    def __init__(self, limit: int):
        self.limit = limit
        self.live = 0
        self.refused = 0

    def acquire(self) -> bool:
        if self.live >= self.limit:
            self.refused += 1
            return False
        self.live += 1
        return True

    def release(self) -> None:
        if self.live > 0:
            self.live -= 1
