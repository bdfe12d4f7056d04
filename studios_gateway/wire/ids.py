"""The session id: one grammar for every part that reads one (bind, registry, routing,
SSH user names, the admin API, the studio's settings).

A DNS label, since it is also the studio's subdomain: 1 to 63 lowercase letters,
digits or '-', not starting with '-'.
"""

import re
from typing import TypeGuard

SESSION_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
SESSION_ID_RULE = "1-63 lowercase letters, digits or '-', not starting with '-'"


def is_session_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and SESSION_ID.fullmatch(value) is not None
