"""The compiled lane: the parts of the proxy's per-request work done in one C call.

Today one part, the way back (``_answer.c``): a tool's answer whose head is read in one
piece (a status line, plain field lines, a Content-Length body, all of it or its
start) becomes the browser's bytes in one call instead of llhttp's callbacks, the
header pass and the framer; the rest of its body is counted and passed on as it comes
(``Exchange.lane_more``). It takes only a strict subset of responses and returns None for the rest,
which take the Python way with every one of its verdicts; what it takes gives the
same bytes as the Python way (tests/unit/test_answer_lane.py holds them against each
other). docs/decisions/compiled-lane.md has the measurements.

The extension is optional: an install without a C compiler has none, and
``CONNECT_COMPILED_LANE=false`` turns it off; both take the Python way for every answer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from studios_gateway import compiled

__all__ = ["Answer", "available", "load", "missing", "stale"]

# answer(data) -> (bytes for the browser, status, body bytes still to come) | None
Answer = Callable[[bytes], "tuple[bytes, int, int] | None"]

_module: Any
try:
    import studios_gateway.http._answer as _module
except ImportError:  # built without a C compiler: the Python way only
    _module = None
_answer: Answer | None = _module.answer if _module is not None else None


def stale() -> bool:
    """The extension was built from another version of ``_answer.c`` than the one beside
    it (in a source tree after an edit: rebuild with ``python setup.py build_ext
    --inplace``). An install ships no source: never stale."""
    return compiled.stale(_module, Path(__file__).with_name("_answer.c"))


def available() -> bool:
    """The extension was built and loads."""
    return _answer is not None


def missing(enabled: bool) -> str | None:
    """What to tell the operator when the lane is `enabled` but this install has none
    (check-config prints it, the gateway logs it at start); None: nothing to say."""
    if not enabled or available():
        return None
    return ("CONNECT_COMPILED_LANE is true, but this install was built without its C "
            "extension (no C compiler or Python headers): every answer takes the Python way")


def load(enabled: bool) -> Answer | None:
    """The way back in C when it is `enabled` and built; None: the Python way."""
    return _answer if enabled else None
