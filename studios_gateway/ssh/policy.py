"""Plain decisions of the SSH proxy: login names (and who logged in), connection
counting, refusals, how much of a peer's words is shown.

No reactor, no transport: each piece is tested on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from studios_gateway.shown import shown
from studios_gateway.wire.ids import SESSION_ID

__all__ = ["Identity", "LoginName", "Refused", "ConnectionLimiter", "MaxStartups",
           "StartupLimiter", "parse_login", "shown_name", "MAX_STUDIO_WORDS", "USAGE"]

USAGE = "log in as <user>@<session-id>, for example: ssh alice@abcd1234@gateway -p 2222"
MAX_LOGIN = 512
#: A login name as given is shown (logged) with at most this many characters.
MAX_SHOWN = 80
#: At most this many characters of a peer's own words (an SSH DISCONNECT's description)
#: are shown in a log line.
MAX_STUDIO_WORDS = 200


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


@dataclass(frozen=True)
class Identity:
    """Who logged in: the login name and the key that was accepted."""

    login: LoginName
    key_fingerprint: str
    key_blob: bytes = b""


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


def shown_name(name: bytes | str) -> str:
    """A login name as the client gave it, safe for a log line (:func:`shown`, at most
    MAX_SHOWN characters)."""
    return shown(name, MAX_SHOWN)


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


@dataclass(frozen=True)
class MaxStartups:
    """OpenSSH's MaxStartups for connections not yet logged in: below `start` every new
    one is accepted; from `start` on a new one is refused with probability `rate`%,
    rising linearly to 100% at `full`."""

    start: int
    rate: int
    full: int

    @classmethod
    def parse(cls, text: str) -> MaxStartups:
        """``start:rate:full`` (10:30:100), or one number N (a hard cap: N:100:N)."""
        parts = text.strip().split(":")
        try:
            if len(parts) == 1:
                n = int(parts[0])
                value = cls(n, 100, n)
            elif len(parts) == 3:
                value = cls(*(int(p) for p in parts))
            else:
                raise ValueError
        except ValueError:
            raise ValueError("start:rate:full (such as 10:30:100) or one number") from None
        if not (1 <= value.start <= value.full and 0 <= value.rate <= 100):
            raise ValueError("start:rate:full with 1 <= start <= full and rate from 0 to 100")
        return value

    def __str__(self) -> str:
        return f"{self.start}:{self.rate}:{self.full}"

    def drop_chance(self, pending: int) -> float:
        """Probability that a new connection is refused while `pending` are logging in."""
        if pending < self.start:
            return 0.0
        if pending >= self.full:
            return 1.0
        span = self.full - self.start
        return (self.rate + (100 - self.rate) * (pending - self.start) / span) / 100


class StartupLimiter(ConnectionLimiter):
    """Counts connections that have not logged in (`live`); `acquire` admits a new one
    by MaxStartups. `random` returns a float in [0, 1) (random.random; fixed in tests)."""

    def __init__(self, policy: MaxStartups, random: Callable[[], float]):
        super().__init__(policy.full)
        self.policy = policy
        self._random = random

    def acquire(self) -> bool:
        chance = self.policy.drop_chance(self.live)
        if chance > 0 and self._random() < chance:
            self.refused += 1
            return False
        self.live += 1
        return True
