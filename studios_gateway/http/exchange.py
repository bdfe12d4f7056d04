"""The proxy's HTTP/1.1 logic without transports: request heads, exchanges, the tool's side.

llhttp (httptools, through :mod:`studios_gateway.http.h1`) parses both sides'
heads and the tool's bodies. Nothing here writes to a socket, arms a timer or
waits for a Deferred. Each call takes bytes or decisions and returns bytes to
send and what happened; the protocol (:mod:`studios_gateway.http.proxy`) does
the I/O, the timers and the dispatch. So every framing decision can be driven and checked by hand:

* :class:`HeadReader` gathers a client's bytes until one request head is
  complete and refuses the shapes and sizes the proxy never forwards;
* :class:`Exchange` is one request/response on a client connection: the
  request's facts (host, target, upgrade), its body towards the tool, the
  tool's response towards the client, a page made here instead, and what is
  left for the next request;
* :class:`ToolCodec` is the client side of one (pooled) connection to a tool.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

from studios_gateway.auth.login import GATEWAY_COOKIES, strip_auth_cookie
from studios_gateway.config import default_of
from studios_gateway.http import pages
from studios_gateway.http.h1 import (
    FIELD_LINE,
    BodyError,
    HeadMemo,
    RequestBody,
    RequestHead,
    ResponseFramer,
    ResponseReader,
    parse_request_head,
)
from studios_gateway.http.headers import (
    MARK_HEADER,
    SESSION_HEADER,
    HeadProblem,
    client_response_headers,
    field_value_ok,
    request_headers,
    response_headers,
    tool_set_cookies,
)
from studios_gateway.http.loop import Marks
from studios_gateway.http.request import RequestInfo
from studios_gateway.http.routing import Route, absolute_to_origin
from studios_gateway.http.toolroute import ToolRoute
from studios_gateway.http.wsframes import offers_websocket_only

__all__ = ["Answer", "Exchange", "HeadReader", "HeadRefused", "Limits", "NotForwardable",
           "Step", "ToolCodec", "raw_response"]

_NONE: frozenset[bytes] = frozenset()
# The largest request head a connection remembers (HeadMemo) between its requests, in
# bytes and field lines: Chromium's heads into JupyterLab were 0.5-1.5 KiB with 12-20
# lines (bench.browser_heads). An idle connection then holds at most ~16 KiB more (the
# head's bytes, its parsed fields and the tool's lines; tracemalloc: 2.7 KiB for a
# 667-byte browser head, 16.5 KiB for a 4 KiB one).
_MEMO_LONGEST = 4096
_MEMO_MOST_FIELDS = 32


def _bare_lf(buf: bytes | bytearray, start: int, end: int) -> bool:
    """Whether buf[start:end] holds a LF that is not the end of a CRLF (the byte before
    `start` counts as the CR of a LF at `start`): every LF there is counted, then every
    CRLF whose LF is there. Two C-level counts; the regex with a lookbehind it replaces
    (``(?<!\\r)\\n``) took 5 us for a 250-byte head."""
    return buf.count(b"\n", start, end) != buf.count(b"\r\n", max(start - 1, 0), end)


@dataclass(frozen=True)
class Limits:
    # Defaults are the settings' (CONNECT_HTTP_*), read from config: one default each.
    max_request_line: int = default_of("http_max_request_line")  # 414
    # 431 (request line and fields together)
    max_header_bytes: int = default_of("http_max_header_size")
    max_header_count: int = default_of("http_max_headers")  # 431
    # 408: from the first byte (or the connection) to a full head
    header_timeout: float = default_of("http_header_timeout")
    idle_timeout: float = default_of("http_idle_timeout")  # an idle keep-alive is closed
    max_connections: int = default_of("http_max_connections")  # 503 beyond this many
    max_body: int | None = default_of("http_max_body")  # 413; None = unlimited
    # 504 when the tool's connection is not up in time
    connect_timeout: float = default_of("http_connect_timeout")
    # 504 when no response head this long after the request
    response_timeout: float = default_of("http_response_timeout")


def raw_response(page: pages.Page) -> bytes:
    """A complete response with Connection: close, for errors before there is a request."""
    lines = [b"HTTP/1.1 %d %s" % (page.status, page.reason)]
    lines += [k + b": " + v for k, v in page.headers]
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + page.body


@dataclass(frozen=True)
class HeadRefused:
    """Why a request (its head or its body) or a tool's response was refused (for the
    log line, the page and the access log); `method` and `path` the request's, for the
    access log, when its request line was read before its head was refused."""

    status: int
    why: str
    method: str = ""
    path: str = ""


# A request line as read_head takes it (method token, a target of visible characters,
# HTTP/1.x): what a refused head's access line names.
_REQUEST_LINE = re.compile(rb"([-!#$%&'*+.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP/1\.[01]")


def _refused(status: int, why: str, head: bytes | bytearray, line_end: int) -> HeadRefused:
    """A head refusal, with the method and path of its request line (the line before
    `line_end` in `head`) when that line was whole and well formed."""
    if line_end != -1:
        m = _REQUEST_LINE.fullmatch(head, 0, line_end)
        if m is not None:
            path = m.group(2).decode("ascii").split("?", 1)[0].split("#", 1)[0]
            return HeadRefused(status, why, m.group(1).decode("ascii"), path)
    return HeadRefused(status, why)


@dataclass(frozen=True)
class Answer:
    """A response made here (a page, a redirect, a refusal); ``close`` ends the connection."""

    page: Any  # has .status, .headers, .body
    close: bool = False


class NotForwardable(Exception):
    """The request cannot be written for the tool (a header h11 or we will not send)."""


class Step(enum.Enum):
    """What a pump of request or response bytes ended with."""

    NEED_DATA = "need-data"  # nothing more until more bytes come
    COMPLETE = "complete"  # the request was read whole / the response was sent whole
    REFUSED = "refused"  # the request body is refused (status and why on the exchange)
    CLOSED = "closed"  # the client half-closed while its body was read
    SWITCH = "switch"  # the tool answered 101
    BROKEN = "broken"  # the tool's response is malformed (why on the exchange)


# Step's members as module names, for the hot path: in Python 3.11 reading a member off
# its Enum class is a descriptor call (~40 ns), and a request takes a few.
NEED_DATA, COMPLETE, REFUSED = Step.NEED_DATA, Step.COMPLETE, Step.REFUSED
CLOSED, SWITCH, BROKEN = Step.CLOSED, Step.SWITCH, Step.BROKEN


class HeadReader:
    """A client's bytes before the next request head.

    Each byte is looked at a bounded number of times however the head arrives (one
    byte per read included): the searches resume where the last one stopped, going
    back only as far as a match could straddle (3 bytes for the blank line).
    """

    def __init__(self, limits: Limits):
        self.limits = limits
        self.buf = bytearray()
        self._scanned = 0  # bytes of buf already searched (no blank line, no bare LF there)
        self._line_end = -1  # where the request line ends, once seen
        self._memo: HeadMemo | None = None  # the last head read whole (HeadMemo)
        #: bytes examined by the searches, all told (tests hold this linear in the input)
        self.work = 0

    def feed(self, data: bytes) -> None:
        self.buf += data

    def reset(self, data: bytes) -> None:
        if data:
            self.buf = bytearray(data)
        else:
            self.buf.clear()
        self._forget()

    def _forget(self) -> None:
        self._scanned = 0
        self._line_end = -1

    def _scan(self) -> int:
        """Search what arrived since the last call: the blank line's offset or -1;
        sets _line_end when the request line's end is seen."""
        buf, start = self.buf, self._scanned
        if self._line_end == -1:
            from_ = max(0, start - 1)
            self._line_end = buf.find(b"\r\n", from_)
            self.work += (self._line_end + 2 if self._line_end != -1 else len(buf)) - from_
        from_ = max(0, start - 3)
        end = buf.find(b"\r\n\r\n", from_)
        self.work += (end + 4 if end != -1 else len(buf)) - from_
        return end

    def take(self) -> Exchange | HeadRefused | None:
        """The next request (and whatever followed its head), a refusal, or None: more
        bytes are needed. Empty lines before a request are dropped."""
        buf = self.buf
        if buf[:2] == b"\r\n":
            while buf[:2] == b"\r\n":
                del buf[:2]
            self._forget()  # offsets moved; what was searched is at most a lone CR
        if not buf:
            return None
        lim = self.limits
        end = self._scan()
        line_end = self._line_end
        if line_end > lim.max_request_line or (line_end == -1 and len(buf) > lim.max_request_line):
            return HeadRefused(414, "request line too long")
        if (end + 4 if end != -1 else len(buf)) > lim.max_header_bytes:
            return _refused(431, "request head too large", buf, line_end)
        limit = end + 4 if end != -1 else len(buf)
        # A bare LF's verdict needs only the byte before it, which is already here.
        self.work += max(0, limit - self._scanned)
        if _bare_lf(buf, self._scanned, limit):
            return _refused(400, "bare LF", buf, line_end)
        self._scanned = limit
        if end == -1:
            return None
        head, rest = bytes(buf[: end + 4]), bytes(buf[end + 4 :])
        buf.clear()
        self._forget()
        return self._exchange(head, rest)

    def take_read(self, data: bytes) -> Exchange | HeadRefused | None:
        """``feed(data)`` then ``take()``, without copying `data` into the buffer when it
        starts a head (nothing waits before it) and holds all of it: a keep-alive
        client's usual read. Anything else, refusals included, goes the general way."""
        if self.buf or data[:2] == b"\r\n":
            self.feed(data)
            return self.take()
        lim = self.limits
        end = data.find(b"\r\n\r\n")
        line_end = data.find(b"\r\n")
        if end == -1 or end + 4 > lim.max_header_bytes or line_end > lim.max_request_line:
            self.feed(data)
            return self.take()
        # No bare-LF search here: read_head refuses a head with a bare CR or LF, and a
        # refused head goes the general way, which says which refusal it is (take's).
        got = (self._exchange(data, b"") if end + 4 == len(data) else
               self._exchange(data[: end + 4], data[end + 4 :]))
        if type(got) is HeadRefused:
            self.feed(data)
            return self.take()
        # What take's searches would have examined: the request line, the blank line and
        # the bare-LF count, each from the start.
        self.work += line_end + 2 + 2 * (end + 4)
        return got

    def _exchange(self, head: bytes, rest: bytes) -> Exchange | HeadRefused:
        """The exchange of the complete request head `head`, `rest` the bytes after it."""
        lim = self.limits
        memo = self._memo
        request = memo.parse(head, lim.max_request_line) if memo is not None else None
        if request is None:
            got = parse_request_head(head, lim.max_request_line, lim.max_header_count)
            if isinstance(got, HeadProblem):
                return _refused(got.status, got.reason, head, head.find(b"\r\n"))
            request = got
            memo = (HeadMemo(head, request) if len(head) <= _MEMO_LONGEST
                    and len(request.headers) <= _MEMO_MOST_FIELDS else None)
            self._memo = memo
        body = RequestBody(head, request, lim.max_header_bytes + 1024)
        if rest:
            body.feed(rest)
        ex = Exchange(request, body, lim)
        ex.memo = memo
        return ex


class ToolCodec:
    """HTTP/1.1 towards one tool connection; it outlives exchanges while pooled."""

    def __init__(self, max_head: int):
        self.reader = ResponseReader(max_head)
        self.events: list[Any] = []
        self.error: str | None = None

    def receive(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            self.events += self.reader.feed(data)
        except BodyError as e:
            self.error = str(e)

    def closed(self) -> None:
        """The tool closed the connection (a close-delimited body ends here)."""
        self.events += self.reader.closed()

    def idle(self) -> bool:
        """The last response was read whole and the tool keeps the connection open."""
        return self.error is None and self.reader.reusable()

    def next_cycle(self) -> None:
        self.events.clear()


class Exchange:
    """One request/response on a client connection (see the module's docstring)."""

    # The state every exchange starts in, as class attributes (immutable values): an
    # instance sets only what changes, so making one per request costs four assignments.
    host = ""
    target = ""  # origin-form
    route: Route | None = None
    tool: ToolRoute | None = None  # how the studio's tool is presented (after lookup)
    info: RequestInfo | None = None
    subject = ""
    identity: Any = None  # what authorize returned (for tracking upgraded connections)
    upgrade = False  # a WebSocket upgrade (offers_websocket_only): the one kind passed on
    upgrade_asked = False  # an upgrade of any kind asked for (Upgrade, Connection: upgrade)
    up: Any = None  # the tool connection while attached (its .codec is a ToolCodec)
    pending: Any = None  # the Deferred being waited for, if any
    reused = False
    retried = False
    body_started = False
    body_bytes = 0
    client_done = False  # the whole request was read from the client
    request_done = False  # ... and sent to the tool
    response_started = False
    head_sent = False  # a final response head went to the client
    pipelined = 0
    problem: HeadRefused | None = None  # why the body was refused / the tool broke
    status: int | None = None  # the status sent to the client (for the access log)
    memo: HeadMemo | None = None  # the connection's memo of this request's head
    lane_rest = 0  # body bytes still to come of an answer the compiled lane began
    https_outside = False  # the browser's HTTPS ends before the gateway (ProxyFactory's)

    def __init__(self, request: RequestHead, body: RequestBody, limits: Limits):
        self.request = request
        self.body = body
        self.framer = ResponseFramer(request)
        self.limits = limits

    @property
    def session_id(self) -> str:
        return self.route.session_id if self.route is not None else ""

    # The request ----------------------------------------------------------------------------

    def begin(self, scheme: str, peer: str | None, peer_port: int) -> Answer | None:
        """Read the request's facts; an answer when it is refused at once."""
        req = self.request
        raw = req.headers
        host = req.host.decode("latin-1")
        target = req.target.decode("latin-1")
        self.host = host
        if not target.startswith("/"):
            origin = absolute_to_origin(target, host)
            if origin is None:
                return Answer(pages.bad_request("This request target is not accepted."), True)
            target = origin
        self.target = target
        path, _, query = target.partition("?")
        self.info = RequestInfo(req.method.decode("ascii"), host, path, query, raw, scheme,
                                (peer, peer_port) if peer else None)
        if req.upgrade_offered and b"upgrade" in req.connection:
            # Any other protocol's Upgrade goes as a hop-by-hop field does: the tool
            # answers the plain request.
            self.upgrade_asked = True
            self.upgrade = offers_websocket_only(raw)
        max_body = self.limits.max_body
        if max_body is not None and req.content_length is not None \
                and req.content_length > max_body:
            return Answer(pages.status_page(413, "The request body is too large."), True)
        return None

    def client_data(self, data: bytes) -> bool:
        """More client bytes while this exchange runs; True when too many wait behind a
        complete request (pipelined) and the client's reads should pause."""
        self.body.feed(data)
        if self.client_done:
            self.pipelined += len(data)
            return self.pipelined > self.limits.max_header_bytes
        return False

    def tool_head(self, codec: ToolCodec, peer: str | None, trusted: bool,
                  scheme: str, marks: Marks | None = None) -> bytes:
        """The request head for the tool; NotForwardable when it cannot be sent. `marks`:
        the proxy's (http.loop), None: no mark (a request that comes back is then no loop).
        (The proxy passes its arguments by position: keywords cost a quarter of a
        microsecond.)"""
        route = self.route
        assert route is not None
        req = self.request
        tool = self.tool
        target = route.upstream_target if tool is None else tool.target(route.upstream_target)
        # The same fields as the connection's last request, for the same studio, subject,
        # tool route and client: the same header lines for the tool (HeadMemo).
        memo = self.memo
        key = (route.session_id, self.subject, tool, peer, trusted, scheme)
        if memo is not None and memo.tool_key == key:
            codec.reader.expect(req.method)
            return b"%s %s HTTP/1.1\r\n%s\r\n\r\n" % (req.method, target.encode(),
                                                       memo.tool_lines)
        raw = req.headers
        framing = None
        if req.chunked:
            framing = (b"Transfer-Encoding", b"chunked")
        elif req.content_length is not None:  # else there is no Content-Length to look for
            for k, v in raw:
                if k.lower() == b"content-length":
                    framing = (b"Content-Length", v.strip())
        try:
            # Host first; what the tool route sets is dropped from the client's headers
            # and appended (its ToolRoute.request_headers, in the same pass); the login's
            # cookies taken out of Cookie headers (strip_auth_cookies, in the same pass).
            # (positional, in its order: peer, trusted, scheme, subject, upgrade, framing,
            # connection, drop, host_first, cookie; keywords cost 0.25 us more per request)
            headers = request_headers(
                raw, peer, trusted, scheme, self.subject, self.upgrade, framing,
                req.connection, tool.drop if tool is not None else _NONE, True,
                strip_auth_cookie)
        except ValueError as e:
            raise NotForwardable(str(e)) from None
        if tool is not None:
            headers += tool.set_headers
        # (the mark a request that comes back to the gateway is known by: http.loop)
        headers.append((SESSION_HEADER, route.session_id.encode()))
        if marks is not None:
            headers.append((MARK_HEADER, marks.of(route.session_id)))
        # Every header value came from the client's checked head, from the transport
        # (the peer's address), from the session id (the tool route's, ours) or was checked
        # by request_headers (the subject).
        lines = b"\r\n".join(map(FIELD_LINE, headers))
        if memo is not None:
            memo.tool_key, memo.tool_lines = key, lines
        codec.reader.expect(req.method)
        return b"%s %s HTTP/1.1\r\n%s\r\n\r\n" % (req.method, target.encode(), lines)

    def pump_request(self, codec: ToolCodec) -> tuple[bytes, Step]:
        """The request body read so far, framed for the tool; COMPLETE includes its end."""
        try:
            data = self.body.read()
        except BodyError as e:
            self.problem = HeadRefused(400, f"malformed request body: {e}")
            return b"", REFUSED
        out = b""
        if data:
            self.body_bytes += len(data)
            max_body = self.limits.max_body
            if max_body is not None and self.body_bytes > max_body:
                self.problem = HeadRefused(413, "request body too large")
                return b"", REFUSED
            self.body_started = True
            out = b"%x\r\n%s\r\n" % (len(data), data) if self.request.chunked else data
        if self.body.done:
            self.client_done = True
            return out + self.end_request(codec), COMPLETE
        return out, NEED_DATA

    def end_request(self, codec: ToolCodec) -> bytes:
        """The end of the request for the tool (a retry sends it again after the head)."""
        self.request_done = True
        return b"0\r\n\r\n" if self.request.chunked else b""

    # The response ---------------------------------------------------------------------------

    def pump_response(self, codec: ToolCodec) -> tuple[bytes, Step, Any]:
        """What the tool's bytes so far make for the client, and how it ended: SWITCH
        comes with the tool's 101 head (nothing of it in the bytes)."""
        out: list[bytes] = []
        framer = self.framer
        events = codec.events
        while events:
            event = events.pop(0)
            if event is None:
                out.append(framer.end())
                return b"".join(out), COMPLETE, None
            if type(event) is bytes:
                out.append(framer.data(event))
            elif event.status == 101:
                return b"".join(out), SWITCH, event
            else:
                # The tool's cookies stay its own: no Domain, none named like the
                # gateway's (every response passes here).
                headers, names, changed = client_response_headers(
                    event.headers, GATEWAY_COOKIES, self._over_tls())
                try:
                    headers = self._tool_response_headers(headers, changed)
                except NotForwardable as e:
                    self.problem = HeadRefused(502, str(e))
                    return b"".join(out), BROKEN, None
                if event.status < 200:
                    # (none to an HTTP/1.0 client, which takes the first head for the
                    # answer: RFC 9110 15.2)
                    if self.request.version != b"1.0":
                        out.append(framer.informational(event.status, event.reason,
                                                        headers))
                    continue
                self.response_started = True
                self.status = event.status
                self.head_sent = True
                out.append(framer.head(event.status, event.reason, headers, names))
        if codec.error is not None:
            self.problem = HeadRefused(502, f"bad response from the tool: {codec.error}")
            return b"".join(out), BROKEN, None
        return b"".join(out), NEED_DATA, None

    def lane_answer(self, codec: ToolCodec, data: bytes, answer: Any) -> bytes | None:
        """The compiled lane's way back: when `data` starts the tool's answer in the
        strict form `answer` (studios_gateway.http.lane) takes, the client's bytes for
        it, the exchange and `codec` left as pump_response leaves them (after a
        complete response, or one whose body goes on: `lane_rest` bytes of it, for
        lane_more); None (nothing changed): feed `data` to `codec` the Python way. (The
        form has none of the fields path mode rewrites: both modes take the lane.)"""
        req = self.request
        if (not self.request_done or self.response_started or not self.framer.keep_alive
                or self.upgrade or req.method == b"HEAD" or codec.events
                or codec.error is not None or not codec.reader.untouched()):
            return None
        got = answer(data)
        if got is None:
            return None
        out, status, rest = got
        self.response_started = self.head_sent = True
        self.status = status
        if rest:
            self.lane_rest = rest
            codec.reader.started = True
        else:
            codec.reader.read_whole()
            self.framer.done = True
        return out

    def lane_more(self, codec: ToolCodec, data: bytes) -> tuple[bytes, bool]:
        """More of a body the lane answers (`lane_rest` > 0): the client's bytes (the
        tool's, up to the body's end) and whether the response is complete. Bytes past
        the body are the tool saying more than its answer: dropped, and the connection
        is not reused (as ResponseReader decides)."""
        rest = self.lane_rest
        n = len(data)
        if n < rest:
            self.lane_rest = rest - n
            return data, False
        self.lane_rest = 0
        reader = codec.reader
        reader.read_whole()
        if n > rest:
            reader.extra = True
            data = data[:rest]
        self.framer.done = True
        return data, True

    def _over_tls(self) -> bool:
        """The browser's connection is HTTPS (this gateway's own TLS, or a TLS terminator's
        before it): tool cookies get ``Secure``."""
        return self.https_outside or (self.info is not None and self.info.scheme == "https")

    def _tool_response_headers(self, headers: list[tuple[bytes, bytes]], changed: bool
                               ) -> list[tuple[bytes, bytes]]:
        """The headers for the client: `headers` (hop-by-hop ones gone, cookies kept to the
        tool; `changed` when one was rewritten) kept by the tool route under the studio's
        prefix in path mode (redirects, cookies). Rewritten values are checked
        (NotForwardable)."""
        if self.tool is not None and self.info is not None:
            headers, route_changed = self.tool.response_headers(headers, self.info.host,
                                                                self.info.path)
            changed = changed or route_changed
        if changed and not all(field_value_ok(v) for _, v in headers):
            raise NotForwardable("a rewritten response header is no valid field value")
        return headers

    def switch(self, codec: ToolCodec, event: Any) -> tuple[bytes, bytes, bytes] | None:
        """After the tool's 101: the head for the client, the tool's bytes after it, the
        client's bytes after its request; None when the client never asked to switch."""
        if not (self.upgrade and self.client_done) or self.head_sent:
            self.problem = HeadRefused(502, "the tool switched protocols unasked")
            return None
        try:
            headers, changed = tool_set_cookies(response_headers(event.headers, upgrade=True),
                                                GATEWAY_COOKIES, self._over_tls())
            headers = self._tool_response_headers(headers, changed)
        except NotForwardable as e:
            self.problem = HeadRefused(502, str(e))
            return None
        head = self.framer.informational(101, event.reason, headers)
        self.status = 101
        return head, codec.reader.switched_rest or b"", self.body.leftover()

    def reusable(self, codec: ToolCodec) -> bool:
        """After the response: the tool connection can go back to the pool."""
        return self.request_done and codec.idle()

    # Answers made here and the next request -------------------------------------------------

    def answer(self, answer: Any, close: bool = False) -> tuple[bytes | None, bool]:
        """The bytes of a response made here and whether the connection closes after it;
        None when it cannot be sent (a response head went out already)."""
        if self.head_sent:
            self.problem = HeadRefused(answer.status, "a response was sent already")
            return None, True
        body = self.body
        if not body.done:
            try:
                body.read()  # what the client sent of its body is dropped
            except BodyError:
                pass
        complete = body.done
        headers = [(k, v) for k, v in answer.headers if k.lower() != b"connection"]
        if close or not complete:
            headers.append((b"Connection", b"close"))
        framer = self.framer
        self.head_sent = True
        data = framer.head(answer.status, pages.reason_phrase(answer.status), headers)
        if answer.body and self.request.method != b"HEAD":
            data += framer.data(answer.body)
        data += framer.end()
        self.status = answer.status
        return data, close or not complete

    def leftover(self) -> bytes | None:
        """After the response: the client's bytes for the next request, or None when the
        connection cannot carry another one."""
        if not (self.framer.done and self.framer.keep_alive and self.body.done):
            return None
        return self.body.leftover()
