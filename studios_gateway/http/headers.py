"""Plain decisions about request heads and header lists, testable without a reactor.

* :func:`check_head` looks at the raw bytes of a request head before llhttp
  parses it and refuses the shapes used for request smuggling that a parser
  might accept or normalise (obs-fold, repeated Content-Length, Content-Length
  with Transfer-Encoding, codings other than ``chunked``, missing or repeated
  Host), and enforces the line and header limits; :func:`read_head` is the same
  pass returning what it read (the request line, the fields, the framing).
* :func:`request_headers` / :func:`response_headers` build the header lists the
  proxy forwards: hop-by-hop headers out, ``X-Forwarded-*`` and
  ``X-Connect-Sub`` in.
* :func:`tool_set_cookies` keeps a tool's ``Set-Cookie`` headers to its own
  studio: no ``Domain`` (host-only), none named like the gateway's cookies; and a
  tool's ``Clear-Site-Data`` never reaches the browser.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

__all__ = [
    "FieldsTuple",
    "HeadProblem",
    "Headers",
    "MARK_HEADER",
    "SESSION_HEADER",
    "SUBJECT_HEADER",
    "check_head",
    "client_response_headers",
    "connection_options",
    "connection_tokens",
    "field_value_ok",
    "is_trusted",
    "read_head",
    "request_headers",
    "CLEAR_SITE_DATA",
    "response_headers",
    "tool_set_cookie",
    "tool_set_cookies",
]

Headers = list[tuple[bytes, bytes]]
SUBJECT_HEADER = b"X-Connect-Sub"
#: The session a request was sent to the tool for (added by Exchange.tool_head; a request
#: that comes back with it, and its mark, looped: studios_gateway.http.loop).
SESSION_HEADER = b"X-Connect-Session"
#: The session's mark (http.loop.Marks), which only the gateway can make.
MARK_HEADER = b"X-Connect-Mark"

_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade",
})
#: What a proxy in front sets for the server behind it; from a peer not trusted as one,
#: dropped (the three the gateway sets itself are replaced). Tools read them to build
#: their own links (X-Forwarded-Port, X-Scheme: tornado's xheaders) or, some frameworks,
#: to choose the path they serve (X-Original-URL, X-Rewrite-URL).
_FORWARDING = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                         b"x-real-ip", b"forwarded", b"x-forwarded-port",
                         b"x-forwarded-server", b"x-forwarded-scheme", b"x-forwarded-ssl",
                         b"x-scheme", b"x-original-url", b"x-rewrite-url"})
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([^ ]+) HTTP/1\.([01])")
_DIGITS = re.compile(rb"[0-9]{1,18}")
# RFC 9110 field-value: visible characters (and obs-text), inner spaces and tabs only.
_FIELD_VALUE = re.compile(rb"(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?")


@dataclass(frozen=True)
class HeadProblem:
    status: int
    reason: str


_NO_OPTIONS: frozenset[bytes] = frozenset()
# Bytes a field line may hold after its name passed _TOKEN: the value's (no NUL, VT, FF;
# the head has no bare CR or LF by then).
_FIELD_BYTES = bytes(b for b in range(256) if b not in b"\x00\x0b\x0c")
_CL, _TE, _HOST, _CONN, _UPG, _XFF, _OTHER = range(7)
_SPECIAL = {b"content-length": _CL, b"transfer-encoding": _TE, b"host": _HOST,
            b"connection": _CONN, b"upgrade": _UPG, b"x-forwarded-for": _XFF}
# Field names seen before that are tokens, as sent, with what read_head makes of them:
# browsers send the same few dozen names on every request, so most lines need one dict
# look-up instead of the token regex, a lower() and a look-up. Bounded: once full, other
# names are checked every time (nothing is evicted, nothing a client sends can grow it).
_KNOWN_NAMES: dict[bytes, int] = {}
_KNOWN_NAMES_MAX = 512
# Field lines seen lately that passed read_head's per-line checks (their values' bytes
# and ends included), with what it read of them ((name, value), kind): a browser sends
# the same User-Agent, Accept-*, sec-ch-* and Cookie lines on every request. Bounded by
# count and length; once full, the oldest goes (a client sending new lines only makes
# every line a miss). The lines hold cookies: secrets the process holds anyway (see
# auth.cookies' caches).
_SEEN_LINES: dict[bytes, tuple[tuple[bytes, bytes], int]] = {}
_SEEN_LINES_MAX = 1024
_SEEN_LINES_LONGEST = 1024


def check_head(head: bytes, *, max_request_line: int, max_header_count: int
               ) -> HeadProblem | None:
    """Problems with a complete request head (ending in CRLF CRLF), or None."""
    got = read_head(head, max_request_line, max_header_count)
    return got if isinstance(got, HeadProblem) else None


#: What :func:`read_head` found in a head it did not refuse (before llhttp's look), as a
#: plain tuple (the parser makes its own object of it):
#: - method, target;
#: - minor: b"0" or b"1" (HTTP/1.x);
#: - headers: raw names; values as llhttp gives them (leading spaces and tabs removed);
#: - values_ok: every value has only field-value bytes and no trailing space or tab;
#: - connection: connection_tokens(headers); host: the Host header's value;
#: - content_length: its digits, when there is one;
#: - chunked: a Transfer-Encoding (which can only be "chunked");
#: - upgrade: an Upgrade header; forwarded: an X-Forwarded-For header (client_address
#:   reads it).
FieldsTuple = tuple[bytes, bytes, bytes, Headers, bool, frozenset[bytes], bytes, bytes | None,
                    bool, bool, bool]


def read_head(head: bytes, max_request_line: int, max_header_count: int
              ) -> HeadProblem | FieldsTuple:
    """:func:`check_head`'s verdict on `head`, and when it has none, the head's request
    line and fields (:data:`FieldsTuple`) read in the same single pass over its lines."""
    if b"\r\n\r\n" != head[-4:]:
        return HeadProblem(400, "incomplete head")
    text = head[:-4]
    lines = text.split(b"\r\n")
    # No line holds a CR or LF: every CR and every LF is one of the separators'.
    if not (text.count(b"\r") == text.count(b"\n") == len(lines) - 1):
        return HeadProblem(400, "bare CR or LF")
    request_line = lines[0]
    if len(request_line) > max_request_line:
        return HeadProblem(414, "request line too long")
    if len(lines) - 1 > max_header_count:
        return HeadProblem(431, "too many header fields")
    m = _REQUEST_LINE.fullmatch(request_line)
    if m is None:
        return HeadProblem(400, "malformed request line")
    headers: Headers = []
    append = headers.append
    known = _KNOWN_NAMES.get
    n_cl = n_te = n_host = 0
    content_length = transfer_encoding = None
    host = b""
    connection = _NO_OPTIONS
    upgrade = forwarded = False
    # A value with trailing whitespace or a byte no field value has (NUL, VT, FF): the
    # head is refused (values_ok), after read_head's other checks, as llhttp's.
    bad_value = False
    seen = _SEEN_LINES.get
    for line in lines[1:]:
        hit = seen(line)
        if hit is None:
            name, colon, value = line.partition(b":")
            kind = known(name)
            if kind is None or not colon:  # (a known name is a token: no space or tab first)
                if line[:1] in (b" ", b"\t"):
                    return HeadProblem(400, "obsolete line folding")
                if not colon or not _TOKEN.fullmatch(name):
                    return HeadProblem(400, "malformed header field")
                kind = _SPECIAL.get(name.lower(), _OTHER)
                if len(_KNOWN_NAMES) < _KNOWN_NAMES_MAX:
                    _KNOWN_NAMES[name] = kind
            value = value.lstrip(b" \t")
            hit = ((name, value), kind)
            if value[-1:] in (b" ", b"\t") or line.translate(None, _FIELD_BYTES):
                # (not remembered: its head is refused, values_ok)
                bad_value = True
            elif len(line) <= _SEEN_LINES_LONGEST:
                if len(_SEEN_LINES) >= _SEEN_LINES_MAX:
                    del _SEEN_LINES[next(iter(_SEEN_LINES))]
                _SEEN_LINES[line] = hit
        field, kind = hit
        append(field)
        if kind == _OTHER:
            continue
        value = field[1]
        if kind == _CL:
            n_cl += 1
            content_length = value.rstrip(b" \t")
        elif kind == _TE:
            n_te += 1
            transfer_encoding = value.rstrip(b" \t")
        elif kind == _HOST:
            n_host += 1
            host = value
        elif kind == _CONN:
            connection = connection | connection_options(value)
        elif kind == _UPG:
            upgrade = True
        else:
            forwarded = True
    if n_cl > 1:
        return HeadProblem(400, "repeated Content-Length")
    if n_te > 1:
        return HeadProblem(400, "repeated Transfer-Encoding")
    if content_length is not None and transfer_encoding is not None:
        return HeadProblem(400, "Content-Length with Transfer-Encoding")
    if content_length is not None and not _DIGITS.fullmatch(content_length):
        return HeadProblem(400, "malformed Content-Length")
    method, target, minor = m.groups()
    if transfer_encoding is not None:
        if minor == b"0":
            return HeadProblem(400, "Transfer-Encoding in HTTP/1.0")
        if transfer_encoding.lower() != b"chunked":
            return HeadProblem(400, "unsupported Transfer-Encoding")
    if n_host != 1:
        return HeadProblem(400, "missing or repeated Host")
    values_ok = not bad_value  # (the lines remembered have neither)
    return (method, target, minor, headers, values_ok, connection, host, content_length,
            transfer_encoding is not None, upgrade, forwarded)


def field_value_ok(value: bytes) -> bool:
    """Whether `value` may be sent as a header value as it is (no CR, LF, NUL, no
    leading or trailing whitespace)."""
    return _FIELD_VALUE.fullmatch(value) is not None


# connection_options' answers for the short values seen before ("keep-alive", "close",
# "Upgrade" and a few more are nearly all there is). Bounded (count and length): once
# full, other values are split each time.
_OPTIONS: dict[bytes, frozenset[bytes]] = {}
_OPTIONS_MAX = 256
_OPTIONS_LONGEST = 64


def connection_options(value: bytes) -> frozenset[bytes]:
    """The lower-cased options one Connection header's value names."""
    options = _OPTIONS.get(value)
    if options is None:
        options = frozenset(t.strip().lower() for t in value.split(b",") if t.strip())
        if len(_OPTIONS) < _OPTIONS_MAX and len(value) <= _OPTIONS_LONGEST:
            _OPTIONS[value] = options
    return options


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """The lower-cased options named in every Connection header."""
    out: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            out |= connection_options(value)
    return out


# What request_headers drops besides hop-by-hop headers: the length (the framing is
# re-added), the subject, session and mark headers and the forwarding headers (a trusted
# proxy's X-Forwarded-For/-Proto/-Host are read first).
_OURS_TRUSTED = frozenset({b"content-length", SUBJECT_HEADER.lower(), SESSION_HEADER.lower(),
                           MARK_HEADER.lower(),
                           b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
_OURS_UNTRUSTED = frozenset({b"content-length", SUBJECT_HEADER.lower(),
                             SESSION_HEADER.lower(), MARK_HEADER.lower()}) | _FORWARDING
# What _without_hop_by_hop drops when Connection names nothing else (keep-alive, close,
# upgrade: nearly every message), by keep_upgrade.
_USUAL_DROP = {False: _HOP_BY_HOP, True: _HOP_BY_HOP - {b"upgrade"}}


def _hop_by_hop_names(headers: Sequence[tuple[bytes, bytes]], keep_upgrade: bool,
                      named: AbstractSet[bytes] | None = None) -> frozenset[bytes] | set[bytes]:
    """The (lower-case) names that must not cross this hop: the hop-by-hop set and
    what Connection names (never Host), less Upgrade when it is kept. `named`: the
    Connection options when the caller has them (connection_tokens(headers))."""
    if named is None:
        named = connection_tokens(headers)
    if named <= _HOP_BY_HOP:
        return _USUAL_DROP[keep_upgrade]
    drop = set(_HOP_BY_HOP | named) - ({b"upgrade"} if keep_upgrade else set())
    drop.discard(b"host")
    return drop


def _without_hop_by_hop(headers: Sequence[tuple[bytes, bytes]], keep_upgrade: bool) -> Headers:
    drop = _hop_by_hop_names(headers, keep_upgrade)
    return [(n, v) for n, v in headers if n.lower() not in drop]


def is_trusted(peer: str | None, cidrs: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
               ) -> bool:
    if peer is None or not cidrs:
        return False
    try:
        addr = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in cidrs)


def client_address(headers: Sequence[tuple[bytes, bytes]], peer: str | None,
                   trusted: bool) -> str:
    """Who the client is: the peer, or for a trusted proxy the address it says it
    forwarded for (the last X-Forwarded-For entry)."""
    if trusted:
        chain = b",".join(v for n, v in headers if n.lower() == b"x-forwarded-for")
        last = chain.rsplit(b",", 1)[-1].strip()
        if last and field_value_ok(last) and len(last) <= 64:
            return last.decode("ascii", "replace")
    return peer or ""


# The (lower-case) names request_headers may add after the client's headers.
_ADDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                    SUBJECT_HEADER.lower(), b"connection", b"content-length",
                    b"transfer-encoding"})
_NOTHING: frozenset[bytes] = frozenset()
# request_headers' subjects seen before, as checked header values (the same users come
# back request after request). Bounded: once full, others are checked every time.
_SUBJECTS: dict[str, bytes] = {}
_SUBJECTS_MAX = 1024


def request_headers(headers: Sequence[tuple[bytes, bytes]], peer: str | None,
                    trusted: bool, scheme: str, subject: str, upgrade: bool,
                    framing: tuple[bytes, bytes] | None,
                    connection: AbstractSet[bytes] | None = None,
                    drop: frozenset[bytes] = _NOTHING, host_first: bool = False,
                    cookie: Callable[[bytes], bytes | None] | None = None) -> Headers:
    """The header list to send the tool.

    ``framing`` is the body framing to forward (``(b"Content-Length", n)`` or
    ``(b"Transfer-Encoding", b"chunked")``); ``upgrade`` keeps ``Upgrade`` and
    sends ``Connection: upgrade``. From an untrusted peer every client-sent
    forwarding header is dropped and replaced; from a trusted one the peer is
    appended to ``X-Forwarded-For`` and its Proto/Host are kept. A subject that
    is no valid header value (CR, LF, NUL, ...) raises ValueError.

    For the tool's request head in the same pass: ``connection`` the Connection
    options when the caller read them already; ``drop`` more lower-case names that
    must not reach the tool (the tool route's), whoever set them; ``host_first``
    puts Host before the other headers; ``cookie`` what a Cookie header's value becomes
    (None: the header goes), e.g. the login's cookies taken out.
    """
    sub_value = _SUBJECTS.get(subject)
    if sub_value is None:
        sub_value = subject.encode("utf-8")
        if not field_value_ok(sub_value):
            raise ValueError("the subject cannot be sent in a header")
        if len(_SUBJECTS) < _SUBJECTS_MAX:
            _SUBJECTS[subject] = sub_value
    # One pass, each name lower-cased once: hop-by-hop headers and those Connection
    # names go (_hop_by_hop_names); then Content-Length, ours and the
    # forwarding headers, a trusted proxy's values kept aside first.
    hop = _hop_by_hop_names(headers, upgrade, connection)
    ours = _OURS_TRUSTED if trusted else _OURS_UNTRUSTED
    out: Headers = []
    hosts: Headers = []
    host: bytes | None = None
    prior_for: list[bytes] = []
    kept_proto = kept_host = None
    for n, v in headers:
        name = n.lower()
        if name in hop or name in drop:
            continue
        if name == b"host":
            if host is None:
                host = v
            if host_first:
                hosts.append((n, v))
                continue
        elif name == b"cookie":
            if cookie is not None:
                kept = cookie(v)
                if kept is None:
                    continue
                v = kept
        elif name in ours or (b"_" in name and name.replace(b"_", b"-") in ours):
            # (X_Connect_Sub too: a WSGI or CGI tool reads it as HTTP_X_CONNECT_SUB, the
            # same as ours, often the client's first; a trusted proxy's as its own: gone)
            if trusted and b"_" not in name:
                if name == b"x-forwarded-for":
                    prior_for.append(v.strip())
                elif name == b"x-forwarded-proto" and kept_proto is None:
                    kept_proto = v
                elif name == b"x-forwarded-host" and kept_host is None:
                    kept_host = v
            continue
        out.append((n, v))
    added: Headers = []
    chain = [v for v in prior_for if v] if prior_for else []
    if peer is not None:
        chain.append(peer.encode("ascii", "replace"))
    if chain:
        added.append((b"X-Forwarded-For", b", ".join(chain)))
    added.append((b"X-Forwarded-Proto", kept_proto or scheme.encode("ascii")))
    added.append((b"X-Forwarded-Host", kept_host or host or b""))
    added.append((SUBJECT_HEADER, sub_value))
    if upgrade:
        added.append((b"Connection", b"upgrade"))
    if framing is not None:
        added.append(framing)
    if not drop.isdisjoint(_ADDED):
        added = [(n, v) for n, v in added if n.lower() not in drop]
    if hosts:
        hosts += out
        hosts += added
        return hosts
    out += added
    return out


def response_headers(headers: Sequence[tuple[bytes, bytes]], *, upgrade: bool) -> Headers:
    """The tool's response headers without hop-by-hop ones. Framing is re-added by h11
    from the forwarded ``Content-Length`` or as ``chunked``; for a 101 the ``Upgrade``
    header stays and ``Connection: upgrade`` is sent."""
    out = _without_hop_by_hop(headers, keep_upgrade=upgrade)
    if upgrade:
        out.append((b"Connection", b"upgrade"))
    return out


def client_response_headers(headers: Sequence[tuple[bytes, bytes]], reserved: frozenset[str],
                            secure: bool = False) -> tuple[Headers, list[bytes], bool]:
    """A tool's final response headers for the client in one pass: what
    ``tool_set_cookies(response_headers(headers, upgrade=False), reserved, secure)`` gives,
    the lower-case names of that list (for the framing) and whether a cookie changed."""
    # The usual case in one pass: Connection names only hop-by-hop headers (keep-alive,
    # close), so the names dropped are the hop-by-hop set; else a second pass without
    # what Connection names too.
    got = _response_pass(headers, reserved, _HOP_BY_HOP, True, secure)
    if got is None:
        got = _response_pass(headers, reserved, _hop_by_hop_names(headers, False), False,
                             secure)
        assert got is not None
    return got


def _response_pass(headers: Sequence[tuple[bytes, bytes]], reserved: frozenset[str],
                   drop: AbstractSet[bytes], check_connection: bool, secure: bool
                   ) -> tuple[Headers, list[bytes], bool] | None:
    """client_response_headers without the (lower-case) names in `drop`; None when
    `check_connection` and a Connection header names more than hop-by-hop headers."""
    out: Headers = []
    names: list[bytes] = []
    changed = False
    for name, value in headers:
        lname = name.lower()
        if lname in drop:
            if (check_connection and lname == b"connection"
                    and not connection_options(value) <= _HOP_BY_HOP):
                return None
            continue
        if lname == b"set-cookie":
            new = tool_set_cookie(value, reserved, secure)
            if new != value:
                changed = True
                if new is None:
                    continue
                value = new
        elif lname == CLEAR_SITE_DATA:
            continue
        out.append((name, value))
        names.append(lname)
    return out, names, changed


#: Never passed on from a tool: its "cookies" (or "*") makes a browser delete every cookie
#: of the site (the registrable domain): the proxy host's login and every other studio's,
#: HttpOnly ones too; in path mode every studio's storage is the one origin's.
CLEAR_SITE_DATA = b"clear-site-data"
#: Attributes a tool's Set-Cookie loses (lower case).
_TOOL_COOKIE_DROPPED = frozenset({b"domain", b"priority"})


def tool_set_cookie(value: bytes, reserved: frozenset[str], secure: bool = False
                    ) -> bytes | None:
    """A tool's Set-Cookie value as the browser may see it, or None to drop it.

    ``Domain`` attributes are removed, so the cookie is host-only: a studio's
    tool cannot set cookies for its parent domain (other studios, the proxy
    host); so are ``Priority`` attributes: the gateway's cookies are ``High``, and a
    browser that holds too many cookies for the site evicts lower ones first. A
    cookie whose name is one of ``reserved`` (the gateway's own, compared without
    case, as browsers compare the ``__Host-`` prefix) is dropped: a tool never
    plants or shadows the gateway's login. The name is the one a browser sends back
    in its Cookie header: up to the first ``=`` of the part before the first ``;``,
    trimmed; a cookie with an empty name (``=connect_session=x``, or a part without
    ``=``) is sent back as its value alone (RFC 6265bis 5.7.3), so its value's own
    name counts.
    With `secure` (the browser's connection is HTTPS) a cookie without the
    ``Secure`` attribute gets it: the tool sees plain HTTP and would not set it,
    and a browser sends a cookie without it over plain HTTP to the same host.
    """
    parts = value.split(b";")
    name, eq, rest = parts[0].partition(b"=")
    name = name.strip(b" \t")
    if not name:  # a nameless cookie: the browser sends "rest" (or the part) alone
        name = (rest if eq else parts[0]).partition(b"=")[0].strip(b" \t")
    if name.decode("latin-1").lower() in reserved:
        return None
    kept = [parts[0].strip(b" \t")]
    dropped = False
    flagged = not secure
    for attr in parts[1:]:
        attr_name = attr.partition(b"=")[0].strip(b" \t").lower()
        if attr_name in _TOOL_COOKIE_DROPPED:
            dropped = True
        else:
            flagged = flagged or attr_name == b"secure"
            kept.append(attr.strip(b" \t"))
    if not flagged:
        kept.append(b"Secure")
    return b"; ".join(a for a in kept if a) if dropped or not flagged else value


def tool_set_cookies(headers: Sequence[tuple[bytes, bytes]], reserved: frozenset[str],
                     secure: bool = False) -> tuple[Headers, bool]:
    """``headers`` with every Set-Cookie passed through :func:`tool_set_cookie`
    (``reserved`` lower-cased, `secure`), and whether anything changed."""
    out: Headers = []
    changed = False
    for name, value in headers:
        lname = name.lower()
        if lname == b"set-cookie":
            new = tool_set_cookie(value, reserved, secure)
            changed = changed or new != value
            if new is None:
                continue
            value = new
        elif lname == CLEAR_SITE_DATA:
            changed = True
            continue
        out.append((name, value))
    return out, changed
