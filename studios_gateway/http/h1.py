"""HTTP/1.1 messages for the proxy's hot path: llhttp (httptools) parses, we frame.

* :func:`parse_request_head` reads a complete request head in one pass
  (:func:`~studios_gateway.http.headers.read_head`'s smuggling and limit checks),
  has llhttp check it in C, and makes the field checks h11 made (target
  characters, field values);
* :class:`RequestBody` reads the body that follows (none, Content-Length or
  chunked: h11 decodes, llhttp checks too) and keeps the bytes after it for the
  next request;
* :class:`ResponseReader` reads the tool's responses (llhttp), one exchange at a time;
* :class:`ResponseFramer` writes responses for the client: status line, headers
  and the body framing h11 would choose (Content-Length kept, chunked for a body
  of unknown length to an HTTP/1.1 client, close-delimited to HTTP/1.0, none for
  HEAD, 204 and 304; ``Connection: close`` when the connection will not be kept).

docs/decisions/http-parser.md says why llhttp, and what is still h11's (chunked
request bodies, the rare path).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11
import httptools

from studios_gateway.http.headers import HeadProblem, read_head

__all__ = ["FIELD_LINE", "MAX_RESPONSE_FIELDS", "BodyError", "ChunkCheck", "HeadMemo",
           "RequestBody", "RequestHead", "ResponseFramer", "ResponseHead", "ResponseReader",
           "parse_request_head"]

Headers = list[tuple[bytes, bytes]]
_TARGET = re.compile(rb"[\x21-\x7e]+")
# h11's field-value (RFC 9110 with obs-text): no NUL, no whitespace but inner spaces/tabs,
# i.e. rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?"; _value_ok checks it with C-level calls
# (that regex took ~2 us for a long cookie). The bytes a value may hold:
_VALUE_BYTES = bytes(b for b in range(256) if b not in b"\x00\n\r\x0b\x0c")
# A reason phrase's bytes (RFC 9112: HTAB, SP, VCHAR, obs-text): no other control byte.
_REASON_BYTES = bytes(b for b in range(256) if b in (0x09, 0x20) or 0x21 <= b != 0x7F)


def _value_ok(value: bytes) -> bool:
    """Whether `value` is a field value: only allowed bytes, no space or tab at either end."""
    return not value.translate(None, _VALUE_BYTES) and (
        not value or (value[0] not in (0x20, 0x09) and value[-1] not in (0x20, 0x09)))
_NO_BODY_STATUS = (204, 304)
#: What a reason phrase with a control byte in it is replaced with.
_STANDARD_REASONS = {int(s): s.phrase.encode("ascii") for s in HTTPStatus}
#: The most fields one response head may have (the compiled lane takes at most 64).
MAX_RESPONSE_FIELDS = 1000
# A (name, value) pair as its field line (mapped over a header list: no Python frame).
FIELD_LINE = b": ".join


class BodyError(Exception):
    """A malformed body (a bad chunk; a tool's bad response); its text says why in words."""


# What a chunked body's refusal says: h11's and llhttp's own texts are not shown (h11's
# hold Python reprs of the bytes, such as "illegal chunk header: bytearray(b'zz\r\n')").
BAD_SIZE_LINE = "bad chunk size line"
SIZE_TOO_LARGE = "chunk size too large (more than 16 hex digits)"
NO_CRLF_AFTER_DATA = "chunk data not followed by CRLF"
BAD_TRAILER = "bad trailer section"
TOO_LONG = "chunk size line or trailer section too long"


def _h11_chunk_problem(message: str) -> str:
    """What h11's refusal of a chunked body (its `message`) says in our words."""
    if message.startswith("illegal chunk header"):
        return BAD_SIZE_LINE
    if message.startswith("malformed chunk footer"):
        return NO_CRLF_AFTER_DATA
    if message.startswith("Receive buffer too long"):
        return TOO_LONG
    return BAD_TRAILER  # (the rest of h11's refusals in a body: its trailer's lines)


def _llhttp_chunk_problem(message: str) -> str:
    """What llhttp's refusal of a chunked body (its `message`) says in our words."""
    if message == "Chunk size overflow":
        return SIZE_TOO_LARGE
    if "chunk size" in message or "chunk extension" in message:
        return BAD_SIZE_LINE
    if "chunk data" in message:
        return NO_CRLF_AFTER_DATA
    return BAD_TRAILER


class _BodyEnd(Exception):
    """Raised in llhttp's callback at the end of the body: it stops there."""


class ChunkCheck:
    """llhttp's verdict on a chunked request body, alongside h11's decoding of it.

    h11 decodes chunked bodies (it says where the body ends, which llhttp cannot), but
    takes chunk sizes of up to 20 hex digits: ``ffffffffffffffffffff`` (2^80) would make
    the rest of the connection body. llhttp refuses a size that does not fit in 64 bits
    (more than 16 hex digits after leading zeros; the largest is 2^64-1), and is stricter
    than h11 elsewhere too (no spaces after a size, extensions as RFC 9112 has them). A
    body is taken only when both accept it. ``feed`` the body's bytes before h11 reads
    them; ``problem`` is then why llhttp refused them (our words), or None.
    """

    __slots__ = ("_parser", "done", "problem")
    # What llhttp is told of the request: the body's grammar does not depend on the rest
    # of the head (which llhttp checked already), and no Upgrade stops it at the head.
    _HEAD = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"

    def __init__(self) -> None:
        self.done = False  # llhttp read the whole body
        self.problem: str | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._parser.feed_data(self._HEAD)

    def on_message_complete(self) -> None:
        self.done = True
        raise _BodyEnd()  # what follows is the next request's: not llhttp's to read here

    def feed(self, data: bytes) -> None:
        if self.done or self.problem is not None:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if not self.done:
                raise
        except httptools.HttpParserError as e:
            self.problem = _llhttp_chunk_problem(str(e))


@dataclass
class RequestHead:
    method: bytes
    target: bytes
    version: bytes  # b"1.0" or b"1.1"
    headers: Headers  # as received: raw names, values without surrounding whitespace
    keep_alive: bool  # no "Connection: close" and HTTP/1.1
    upgrade_offered: bool  # an Upgrade header (what lets the tool answer 101)
    content_length: int | None
    chunked: bool
    host: bytes = b""  # the Host header's value
    connection: frozenset[bytes] = frozenset()  # the options Connection names (lower case)
    forwarded: bool = False  # an X-Forwarded-For header (the client's address may be in it)


class _Validate:
    """An llhttp protocol with no callbacks: the parser only says whether it accepts."""

    __slots__ = ()


_VALIDATE = _Validate()


def _llhttp_refusal(head: bytes) -> str | None:
    """Why llhttp refuses the complete request head `head` (its error), or None."""
    try:
        httptools.HttpRequestParser(_VALIDATE).feed_data(head)
    except httptools.HttpParserUpgrade:
        pass  # the head is complete; what follows is not parsed here
    except httptools.HttpParserError as e:
        return str(e)
    return None


def parse_request_head(head: bytes, max_request_line: int, max_header_count: int
                       ) -> RequestHead | HeadProblem:
    """The request in `head` (complete, ending in CRLF CRLF), or why it is refused: first
    :func:`~studios_gateway.http.headers.read_head`'s checks (whose single pass over the
    lines also reads the fields), then llhttp's (in C, without a call back into Python),
    then the field checks h11 made (target characters, field values)."""
    fields = read_head(head, max_request_line, max_header_count)  # (positional)
    if isinstance(fields, HeadProblem):
        return fields
    refusal = _llhttp_refusal(head)
    if refusal is not None:
        return HeadProblem(400, f"malformed request ({refusal})")
    (method, target, minor, headers, values_ok, connection, host, cl, chunked, upgrade,
     forwarded) = fields
    if not _TARGET.fullmatch(target):
        return HeadProblem(400, "malformed request target")
    if not values_ok:
        return HeadProblem(400, "malformed header value")
    version = b"1.1" if minor == b"1" else b"1.0"
    return RequestHead(method, target, version, headers,
                       version == b"1.1" and b"close" not in connection,
                       upgrade, None if cl is None else int(cl), chunked, host, connection,
                       forwarded)


class HeadMemo:
    """A client connection's last accepted request head, for a next one that repeats it.

    A browser or a script on a kept-alive connection sends the same field lines again
    and again (the same Host, Cookie, User-Agent, Accept, Referer...) with a new target.
    When a head's field lines (everything after its request line) are byte for byte
    those of the head remembered here, and its method and version are the same, every
    check :func:`parse_request_head` makes of the fields has the same verdict, and what
    it reads of them is the same: only the request line is looked at again (its length
    and target characters, as :func:`~studios_gateway.http.headers.read_head` and
    :func:`parse_request_head` do). llhttp checks the whole head again unless both the
    remembered target and the new one are in origin form (``/`` and visible characters):
    llhttp accepts every visible character anywhere in such a target, whatever the
    method, version and fields (tests/unit/test_http_head_memo.py holds llhttp to it), so
    its verdict is the remembered head's, which it accepted. The tool's
    head lines made from the same fields (``tool_key`` / ``tool_lines``, filled by
    :meth:`~studios_gateway.http.exchange.Exchange.tool_head`) are kept here too.
    """

    __slots__ = ("fields", "method_sp", "tail", "request", "origin", "tool_key",
                 "tool_lines")

    def __init__(self, head: bytes, request: RequestHead):
        line_end = head.find(b"\r\n")
        #: the head from the CRLF that ends its request line to its end (CRLF CRLF)
        self.fields = head[line_end:]
        self.method_sp = request.method + b" "
        self.tail = b" HTTP/" + request.version
        self.request = request
        #: the remembered target is in origin form (llhttp's verdict then carries over)
        self.origin = request.target[:1] == b"/"
        self.tool_key: tuple[Any, ...] | None = None
        self.tool_lines = b""

    def parse(self, head: bytes, max_request_line: int) -> RequestHead | None:
        """`head` read as :func:`parse_request_head` reads it when it repeats the
        remembered fields, method and version; None otherwise, or when llhttp or a
        check refuses it (the full parse then says why)."""
        fields = self.fields
        line_end = len(head) - len(fields)
        if (line_end > max_request_line or not head.endswith(fields)
                or head.find(b"\r\n") != line_end):
            return None
        method_sp, tail = self.method_sp, self.tail
        if not (head.startswith(method_sp) and head.endswith(tail, 0, line_end)):
            return None
        target = head[len(method_sp):line_end - len(tail)]
        # (a target of visible characters: no space, so the request line is method SP
        # target SP version, as read_head's pattern wants)
        if not _TARGET.fullmatch(target):
            return None
        if not (self.origin and target[:1] == b"/") and _llhttp_refusal(head) is not None:
            return None
        r = self.request
        return RequestHead(r.method, target, r.version, r.headers, r.keep_alive,
                           r.upgrade_offered, r.content_length, r.chunked, r.host,
                           r.connection, r.forwarded)


class RequestBody:
    """The body of one request and the client's bytes after it.

    Content-Length bodies are counted here; chunked ones (rare from browsers) are
    decoded by h11, as before llhttp took the heads, and checked by llhttp too
    (:class:`ChunkCheck`: sizes of at most 16 hex digits).
    """

    def __init__(self, head_bytes: bytes, head: RequestHead, max_head: int):
        self._remaining = 0 if head.chunked else (head.content_length or 0)
        self._chunked: h11.Connection | None = None
        self._check: ChunkCheck | None = None
        # The bytes not read yet: a read's own bytes object while it is the only one (a
        # streamed body's usual case: passed on without a copy), else a bytearray.
        self._buf: bytes | bytearray = b""
        self.done = not head.chunked and self._remaining == 0
        if head.chunked:
            self._chunked = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
            self._chunked.receive_data(head_bytes)
            event = self._chunked.next_event()
            assert isinstance(event, h11.Request)
            self._check = ChunkCheck()

    def feed(self, data: bytes) -> None:
        if self._chunked is not None:
            if not data:
                return  # (b"" would tell h11 the client closed)
            if self._check is not None and not self.done:
                self._check.feed(data)
            self._chunked.receive_data(data)
        elif not self._buf and type(data) is bytes:
            self._buf = data
        else:
            if type(self._buf) is bytes:
                self._buf = bytearray(self._buf)
            self._buf += data

    def read(self) -> bytes:
        """The body bytes available now (BodyError for a malformed one); `done` once the
        whole body was read."""
        if self._chunked is not None:
            check = self._check
            if check is not None and check.problem is not None and not self.done:
                raise BodyError(check.problem)
            out = []
            while not self.done:
                try:
                    event = self._chunked.next_event()
                except h11.RemoteProtocolError as e:
                    raise BodyError(_h11_chunk_problem(str(e))) from None
                if isinstance(event, h11.Data):
                    out.append(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self.done = True
                else:
                    break
            return b"".join(out)
        n = self._remaining
        if not n or not self._buf:
            return b""
        buf = self._buf
        if len(buf) <= n:
            chunk = buf if type(buf) is bytes else bytes(buf)
            self._buf = b""
        else:
            chunk = bytes(buf[:n])
            self._buf = buf[n:]
        self._remaining = n - len(chunk)
        self.done = self._remaining == 0
        return chunk

    def leftover(self) -> bytes:
        """The bytes after the body (the next request's), once `done`."""
        if self._chunked is not None:
            return bytes(self._chunked.trailing_data[0])
        return bytes(self._buf)


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: bytes
    headers: Headers


class ResponseReader:
    """The tool's side of one connection: its response to each request, as events.

    ``feed`` returns a list of events: a :class:`ResponseHead` (1xx ones included),
    body ``bytes``, and ``None`` at the end of the response. A 101 ends the list; the
    bytes after its head are in ``switched_rest``. BodyError for a malformed response.
    """

    def __init__(self, max_head: int):
        self.max_head = max_head
        self._parser: Any = None
        self._events: list[Any] = []
        self._headers: Headers = []
        self._final_headers: Headers = []
        self._reason = b""
        self._head_bytes = bytearray()  # this exchange's bytes of heads not read whole yet
        self._heads = 0  # the heads read whole at the start of _head_bytes
        self.informational = 0  # 1xx heads of this exchange read (and let go of)
        # The bytes read since the body's last piece (a chunk's size line, the trailer
        # section): at most max_head of them (MAX_BODY_GAP's reason); None: a piece came.
        self._gap: int | None = 0
        self._head_only = False
        self._until_close = False
        self.keep_alive = False
        self.started = False  # a final response head was read
        self.done = False  # the whole response was read
        self.extra = False  # the tool sent more than the response: not reusable
        self.switched_rest: bytes | None = None

    def expect(self, method: bytes) -> None:
        """A request went out: read its response (`method` decides whether it has a body).

        The parser of the last response reads this one too when that response ended as
        llhttp ends a kept-alive message (no HEAD's head-only stop, no 101, nothing after
        it): llhttp is then back where a new message starts, as on a fresh parser
        (making one is ~0.3 us a request)."""
        if self._parser is None or self._head_only or not self.reusable() \
                or self.switched_rest is not None:
            self._parser = httptools.HttpResponseParser(self)
        self._head_only = method == b"HEAD"
        self._head_bytes = bytearray()
        self._heads = 0
        self.informational = 0
        self._gap = 0
        self._until_close = False
        self.keep_alive = False
        self.started = self.done = self.extra = False
        self.switched_rest = None

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.done:
            self.extra = True  # the tool says more than the response
        self._headers = []
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.started:  # (after the final head: a trailer field, never passed on)
            # A head that comes whole in one read is not measured by its bytes (a Data
            # frame may hold megabytes, as the compiled lane takes them), but its fields
            # are counted: 6 MiB of 'a:b' lines were 1.26 million fields, ~120 MB.
            if len(self._headers) >= MAX_RESPONSE_FIELDS:
                raise BodyError(f"response head with more than {MAX_RESPONSE_FIELDS} fields")
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.done:
            return
        status = self._parser.get_status_code()
        if not 100 <= status <= 599:
            # (llhttp reads any three digits: a 0 was passed on as a 1xx head, framing
            # fields and all, which the browser took as a final answer)
            raise BodyError(f"status {status} is not an HTTP status (100-599)")
        self._heads += 1
        reason = self._reason
        if reason.translate(None, _REASON_BYTES):
            # (a control byte, which llhttp lets through, would go on to the browser)
            reason = _STANDARD_REASONS.get(status, b"")
        self._events.append(ResponseHead(status, reason, self._headers))
        if status == 101:
            raise _Switched()
        if status >= 200:
            self.started = True
            self.keep_alive = self._parser.should_keep_alive()
            if self._head_only:
                raise _HeadOnly()
            # Whether the body ends with the connection: its headers are looked at only
            # if the tool closes before the end (closed()).
            self._until_close = status not in _NO_BODY_STATUS
            self._final_headers = self._headers

    def on_body(self, body: bytes) -> None:
        self._gap = None
        if not self.done:
            self._events.append(body)

    def on_message_complete(self) -> None:
        if self.started and not self.done:
            self.keep_alive = self.keep_alive and self._parser.should_keep_alive()
            self.done = True
            self._events.append(None)

    def feed(self, data: bytes) -> list[Any]:
        if self.done or self._parser is None:
            if data:
                self.extra = True
            return []
        if not self.started:
            self._head_bytes += data
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.switched_rest = self._after_heads()
            self.done = True
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, _Switched):
                self.switched_rest = self._after_heads()
                self.done = True
            elif isinstance(cause, _HeadOnly):
                self.extra = bool(self._after_heads())
                self.done = True
                self._events.append(None)
            elif isinstance(cause, BodyError):
                raise cause from None
            elif not self.done:
                raise BodyError(str(e)) from None
            else:
                self.extra = True
        except httptools.HttpParserError as e:
            if not self.done:
                raise BodyError(str(e)) from None
            self.extra = True
        events, self._events = self._events, []
        if self.started:
            self._head_bytes = bytearray()
            if self.done:
                pass
            elif self._gap is None:
                self._gap = 0
            else:
                # Nothing of the body in this read: a chunk's size line or the trailer
                # section going on (before, trailer fields were kept without bound: 26 MB
                # of them grew the gateway by 390 MB).
                self._gap += len(data)
                if self._gap > self.max_head:
                    raise BodyError("response chunk size line or trailer section too long")
        elif not self.done:
            if self._heads:  # 1xx heads read whole: only the next head's bytes are kept
                del self._head_bytes[:len(self._head_bytes) - len(self._after_heads())]
                self.informational += self._heads
                self._heads = 0
            # (before, 1xx heads were kept, and a head after one was never measured: a
            # tool's endless head grew the gateway without bound)
            if len(self._head_bytes) > self.max_head:
                raise BodyError("response head too large")
        return events

    def _after_heads(self) -> bytes:
        """The bytes after the last head read (1xx heads have no body)."""
        raw = bytes(self._head_bytes)
        end = -4
        for _ in range(self._heads):
            end = raw.find(b"\r\n\r\n", end + 4)
        return raw[end + 4:]

    def reusable(self) -> bool:
        return self.done and self.keep_alive and not self.extra

    def untouched(self) -> bool:
        """Nothing of the expected response has been read yet."""
        return not self._head_bytes and not self.informational and not self.started \
            and not self.done and self._parser is not None

    def read_whole(self) -> None:
        """The compiled lane read the whole response (kept alive, nothing after it): as
        if llhttp had, whose parser stays where the next response starts."""
        self.started = self.done = self.keep_alive = True

    def closed(self) -> list[Any]:
        """The tool closed: a body delimited by the close ends here."""
        if self.started and not self.done and self._until_close and not any(
                n.lower() in (b"content-length", b"transfer-encoding")
                for n, _ in self._final_headers):
            self.done = True
            self.keep_alive = False
            return [None]
        return []


class _Switched(Exception):
    pass


class _HeadOnly(Exception):
    pass


class ResponseFramer:
    """Responses for one client request, framed as h11 would frame them."""

    def __init__(self, request: RequestHead):
        self.request = request
        self.keep_alive = request.keep_alive
        self._mode = "none"  # "length", "chunked", "close", "none"
        self.done = False

    def head(self, status: int, reason: bytes, headers: Headers,
             lower: list[bytes] | None = None) -> bytes:
        """A final response head; the body framing follows from the headers (`lower`:
        their names in lower case, when the caller has them)."""
        req = self.request
        if lower is None:
            lower = [n.lower() for n, _ in headers]
        if status in _NO_BODY_STATUS or req.method == b"HEAD":
            # HEAD answers with the GET framing headers but no body; 204/304 have none
            mode = "none"
            if status not in _NO_BODY_STATUS and (b"transfer-encoding" in lower
                                                  or b"content-length" not in lower):
                headers = self._unknown_length(headers, lower)
        elif b"transfer-encoding" in lower or b"content-length" not in lower:
            headers = self._unknown_length(headers, lower)
            mode = "chunked" if req.version == b"1.1" else "close"
        else:
            mode = "length"
        if b"connection" in lower:
            for n, v in headers:
                if n.lower() == b"connection" and b"close" in v.lower():
                    self.keep_alive = False
        if not self.keep_alive:
            headers = [(n, v) for n, v in headers if n.lower() != b"connection"]
            headers.append((b"Connection", b"close"))
        self._mode = mode
        return _head(status, reason, headers)

    def _unknown_length(self, headers: Headers, lower: list[bytes]) -> Headers:
        headers = [(n, v) for n, v in headers
                   if n.lower() not in (b"content-length", b"transfer-encoding")]
        if self.request.version == b"1.1":
            headers.append((b"Transfer-Encoding", b"chunked"))
        elif self.request.method != b"HEAD":
            self.keep_alive = False
        return headers

    def informational(self, status: int, reason: bytes, headers: Headers) -> bytes:
        return _head(status, reason, headers)

    def data(self, data: bytes) -> bytes:
        mode = self._mode
        if mode == "chunked":
            return b"%x\r\n%s\r\n" % (len(data), data) if data else b""
        if mode == "none":
            return b""
        return data

    def end(self) -> bytes:
        self.done = True
        if self._mode == "chunked":
            return b"0\r\n\r\n"
        if self._mode == "close":
            self.keep_alive = False
        return b""


def _head(status: int, reason: bytes, headers: Headers) -> bytes:
    if not headers:
        return b"HTTP/1.1 %d %s\r\n\r\n" % (status, reason)
    return b"HTTP/1.1 %d %s\r\n%s\r\n\r\n" % (
        status, reason, b"\r\n".join(map(FIELD_LINE, headers)))
