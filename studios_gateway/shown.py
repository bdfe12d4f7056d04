"""Text a client gave (a login name, a request target, an Origin header) made safe for a
log line or a page: one form for every part that shows such text."""

from __future__ import annotations

__all__ = ["shown"]


def _escaped(c: str) -> str:
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if c == "\\":
        return "\\\\"
    if c.isprintable() and not c.isspace():
        return c
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(value: bytes | str, most: int, *, words: bool = False) -> str:
    """`value` as the client gave it, safe for a log line: bytes that are not UTF-8,
    control and space characters as ``\\xNN`` / ``\\uNNNN``, at most `most` characters
    (then ``...``); ``''`` for an empty value. With `words` (a sentence that may carry a
    client's text, such as a refused login's reason) a plain space stays a space."""
    text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
    if words:
        out = " ".join("".join(map(_escaped, part)) for part in text[:most].split(" "))
    else:
        out = "".join(map(_escaped, text[:most]))
    if len(text) > most:
        out += "..."
    return out or "''"
