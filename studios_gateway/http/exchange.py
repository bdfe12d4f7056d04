"""The proxy's HTTP/1.1 logic without transports: request heads, exchanges, the tool's side.

Nothing here writes to a socket, arms a timer or waits for a Deferred. Each call
takes bytes or decisions and returns bytes to send and what happened; the
protocol (:mod:`studios_gateway.http.proxy`) does the I/O, the timers and the
dispatch. So every framing decision can be driven and checked by hand:

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

import h11

from studios_gateway.auth.login import GATEWAY_COOKIES, RequestInfo, strip_auth_cookies
from studios_gateway.http import pages
from studios_gateway.http.headers import (
    check_head,
    connection_tokens,
    request_headers,
    response_headers,
    tool_set_cookies,
)
from studios_gateway.http.routing import Route, absolute_to_origin
from studios_gateway.http.toolroute import ToolRoute

__all__ = ["Answer", "Exchange", "HeadReader", "HeadRefused", "Limits", "NotForwardable",
           "Step", "ToolCodec", "raw_response"]

_BARE_LF = re.compile(rb"(?<!\r)\n")


@dataclass(frozen=True)
class Limits:
    max_request_line: int = 8 * 1024  # 414
    max_header_bytes: int = 64 * 1024  # 431 (request line and fields together)
    max_header_count: int = 100  # 431
    header_timeout: float = 30.0  # 408: from the first byte (or the connection) to a full head
    idle_timeout: float = 75.0  # a keep-alive connection with no request is closed
    max_connections: int = 10_000  # 503 beyond this many client connections
    max_body: int | None = None  # 413; None = unlimited
    connect_timeout: float = 30.0  # 504 when the tool's connection is not up in time
    response_timeout: float = 300.0  # 504 when no response head this long after the request


def raw_response(page: pages.Page) -> bytes:
    """A complete response with Connection: close, for errors before there is a request."""
    lines = [b"HTTP/1.1 %d %s" % (page.status, page.reason)]
    lines += [k + b": " + v for k, v in page.headers]
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + page.body


@dataclass(frozen=True)
class HeadRefused:
    status: int
    why: str


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


class HeadReader:
    """A client's bytes before the next request head."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data

    def reset(self, data: bytes) -> None:
        self.buf = bytearray(data)

    def take(self) -> Exchange | HeadRefused | None:
        """The next request (and whatever followed its head), a refusal, or None: more
        bytes are needed. Empty lines before a request are dropped."""
        buf = self.buf
        while buf[:2] == b"\r\n":
            del buf[:2]
        if not buf:
            return None
        lim = self.limits
        end = buf.find(b"\r\n\r\n")
        line_end = buf.find(b"\r\n")
        if line_end > lim.max_request_line or (line_end == -1 and len(buf) > lim.max_request_line):
            return HeadRefused(414, "request line too long")
        if (end + 4 if end != -1 else len(buf)) > lim.max_header_bytes:
            return HeadRefused(431, "request head too large")
        if _BARE_LF.search(buf, 0, end + 4 if end != -1 else len(buf)):
            return HeadRefused(400, "bare LF")
        if end == -1:
            return None
        head, rest = bytes(buf[: end + 4]), bytes(buf[end + 4 :])
        buf.clear()
        problem = check_head(head, max_request_line=lim.max_request_line,
                             max_header_count=lim.max_header_count)
        if problem is not None:
            return HeadRefused(problem.status, problem.reason)
        h = h11.Connection(h11.SERVER, max_incomplete_event_size=lim.max_header_bytes + 1024)
        h.receive_data(head)
        try:
            event = h.next_event()
        except h11.RemoteProtocolError as e:
            return HeadRefused(400, str(e))
        if not isinstance(event, h11.Request):
            return HeadRefused(400, "no request")
        if rest:
            h.receive_data(rest)
        return Exchange(event, h, lim)


class ToolCodec:
    """HTTP/1.1 towards one tool connection; it outlives exchanges while pooled."""

    def __init__(self, max_head: int):
        self.h = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head)

    def receive(self, data: bytes) -> None:
        self.h.receive_data(data)

    def closed(self) -> None:
        """The tool closed the connection (a close-delimited body ends here)."""
        self.h.receive_data(b"")

    def idle(self) -> bool:
        """Both sides finished their messages: the connection may serve another request."""
        return self.h.our_state is h11.DONE and self.h.their_state is h11.DONE

    def next_cycle(self) -> None:
        self.h.start_next_cycle()


class Exchange:
    """One request/response on a client connection (see the module's docstring)."""

    def __init__(self, request: h11.Request, h: h11.Connection, limits: Limits):
        self.request = request
        self.h = h  # server side, this cycle only
        self.limits = limits
        self.host = ""
        self.target = ""  # origin-form
        self.route: Route | None = None
        self.tool: ToolRoute | None = None  # how the studio's tool is presented (after lookup)
        self.info: RequestInfo | None = None
        self.subject = ""
        self.identity: Any = None  # what authorize returned (for tracking upgraded connections)
        self.upgrade = False
        self.up: Any = None  # the tool connection while attached (its .codec is a ToolCodec)
        self.pending: Any = None  # the Deferred being waited for, if any
        self.reused = False
        self.retried = False
        self.body_started = False
        self.body_bytes = 0
        self.client_done = False  # the whole request was read from the client
        self.request_done = False  # ... and sent to the tool
        self.response_started = False
        self.pipelined = 0
        self.problem: HeadRefused | None = None  # why the body was refused / the tool broke
        self.status: int | None = None  # the status sent to the client (for the access log)

    @property
    def session_id(self) -> str:
        return self.route.session_id if self.route is not None else ""

    # The request ----------------------------------------------------------------------------

    def begin(self, scheme: str, peer: str | None, peer_port: int) -> Answer | None:
        """Read the request's facts; an answer when it is refused at once."""
        req = self.request
        raw = list(req.headers.raw_items())
        host = next(v for k, v in raw if k.lower() == b"host").decode("latin-1")
        target = req.target.decode("latin-1")
        self.host = host
        if not target.startswith("/"):
            origin = absolute_to_origin(target, host)
            if origin is None:
                return Answer(pages.bad_request("This request target is not accepted."), True)
            target = origin
        self.target = target
        path, _, query = target.partition("?")
        self.info = RequestInfo(req.method.decode("ascii"), host, path, query,
                                headers=tuple(raw), scheme=scheme,
                                client=(peer, peer_port) if peer else None)
        tokens = connection_tokens(raw)
        self.upgrade = b"upgrade" in tokens and any(k.lower() == b"upgrade" for k, _ in raw)
        length = next((v for k, v in raw if k.lower() == b"content-length"), None)
        max_body = self.limits.max_body
        if max_body is not None and length is not None and int(length) > max_body:
            return Answer(pages.status_page(413, "The request body is too large."), True)
        return None

    def client_data(self, data: bytes) -> bool:
        """More client bytes while this exchange runs; True when too many wait behind a
        complete request (pipelined) and the client's reads should pause."""
        self.h.receive_data(data)
        if self.client_done:
            self.pipelined += len(data)
            return self.pipelined > self.limits.max_header_bytes
        return False

    def tool_head(self, codec: ToolCodec, *, peer: str | None, trusted: bool,
                  scheme: str) -> bytes:
        """The request head for the tool; NotForwardable when it cannot be sent."""
        assert self.route is not None
        req = self.request
        raw = strip_auth_cookies(req.headers.raw_items())
        framing = None
        for k, v in raw:
            lk = k.lower()
            if lk == b"content-length":
                framing = (b"Content-Length", v.strip())
            elif lk == b"transfer-encoding":
                framing = (b"Transfer-Encoding", b"chunked")
        try:
            headers = request_headers(
                raw, peer=peer, trusted=trusted,
                scheme=scheme, subject=self.subject, upgrade=self.upgrade, framing=framing)
            target = self.route.upstream_target
            if self.tool is not None:
                headers, target = self.tool.request_headers(headers), self.tool.target(target)
            # Every header value came from h11's parse of the client's request, from the
            # transport (the peer's address), from the session id (the tool route's) or
            # was checked by request_headers (the subject, ValueError): h11 need not
            # validate them again (`_parsed`; the method and target it still checks).
            return codec.h.send(h11.Request(method=req.method, target=target.encode(),
                                            headers=headers, _parsed=True)) or b""
        except (h11.LocalProtocolError, ValueError) as e:
            raise NotForwardable(str(e)) from None

    def pump_request(self, codec: ToolCodec) -> tuple[bytes, Step]:
        """The request body read so far, framed for the tool; COMPLETE includes its end."""
        lim = self.limits
        out: list[bytes] = []
        while True:
            event = self._next_event(self.h, 400, "malformed request body")
            if event is None:
                return b"".join(out), Step.REFUSED
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return b"".join(out), Step.NEED_DATA
            if isinstance(event, h11.Data):
                self.body_bytes += len(event.data)
                if lim.max_body is not None and self.body_bytes > lim.max_body:
                    self.problem = HeadRefused(413, "The request body is too large.")
                    return b"".join(out), Step.REFUSED
                self.body_started = True
                out.append(codec.h.send(h11.Data(data=event.data)) or b"")
            elif isinstance(event, h11.EndOfMessage):
                self.client_done = True
                out.append(self.end_request(codec))
                return b"".join(out), Step.COMPLETE
            elif isinstance(event, h11.ConnectionClosed):
                return b"".join(out), Step.CLOSED

    def _next_event(self, h: h11.Connection, status: int, what: str) -> Any:
        """h's next event; None (and the problem noted) when the peer broke the protocol."""
        try:
            return h.next_event()
        except h11.RemoteProtocolError as e:
            self.problem = HeadRefused(status, f"{what}: {e}")
            return None

    def end_request(self, codec: ToolCodec) -> bytes:
        """The end of the request for the tool (a retry sends it again after the head)."""
        self.request_done = True
        return codec.h.send(h11.EndOfMessage()) or b""

    # The response ---------------------------------------------------------------------------

    def pump_response(self, codec: ToolCodec) -> tuple[bytes, Step, Any]:
        """What the tool's bytes so far make for the client, and how it ended: SWITCH
        comes with the tool's 101 event (nothing of it in the bytes)."""
        out: list[bytes] = []
        while True:
            event = self._next_event(codec.h, 502, "bad response from the tool")
            if event is None:
                return b"".join(out), Step.BROKEN, None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return b"".join(out), Step.NEED_DATA, None
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    return b"".join(out), Step.SWITCH, event
                out.append(self.h.send(h11.InformationalResponse(
                    status_code=event.status_code, reason=event.reason,
                    headers=self._response_headers(event, upgrade=False)[0])))
            elif isinstance(event, h11.Response):
                self.response_started = True
                self.status = event.status_code
                headers, parsed = self._response_headers(event, upgrade=False)
                out.append(self.h.send(h11.Response(
                    status_code=event.status_code, reason=event.reason, headers=headers,
                    _parsed=parsed)))
            elif isinstance(event, h11.Data):
                out.append(self.h.send(h11.Data(data=event.data)))
            elif isinstance(event, h11.EndOfMessage):
                out.append(self.h.send(h11.EndOfMessage()))
                return b"".join(out), Step.COMPLETE, None
            elif isinstance(event, h11.ConnectionClosed):
                return b"".join(out), Step.NEED_DATA, None

    def _response_headers(self, event: Any, upgrade: bool
                          ) -> tuple[list[tuple[bytes, bytes]], bool]:
        """The headers for the client, and whether they are all as h11 parsed them from
        the tool (then h11 need not validate them again). The tool's cookies stay its
        own: no Domain, none named like the gateway's (every response passes here)."""
        headers, cookies_changed = tool_set_cookies(
            response_headers(event.headers.raw_items(), upgrade=upgrade), GATEWAY_COOKIES)
        if self.tool is not None and self.info is not None:
            headers, changed = self.tool.response_headers(headers, self.info.host, self.info.path)
            return headers, not (changed or cookies_changed)
        return headers, not cookies_changed

    def switch(self, codec: ToolCodec, event: Any) -> tuple[bytes, bytes, bytes] | None:
        """After the tool's 101: the head for the client, the tool's bytes after it, the
        client's bytes after its request; None when the client never asked to switch."""
        try:
            head = self.h.send(h11.InformationalResponse(
                status_code=101, reason=event.reason,
                headers=self._response_headers(event, upgrade=True)[0]))
        except h11.LocalProtocolError:
            self.problem = HeadRefused(502, "the tool switched protocols unasked")
            return None
        self.status = 101
        return head, codec.h.trailing_data[0], self.h.trailing_data[0]

    def reusable(self, codec: ToolCodec) -> bool:
        """After the response: the tool connection can go back to the pool."""
        return self.request_done and codec.idle()

    # Answers made here and the next request -------------------------------------------------

    def answer(self, answer: Any, close: bool = False) -> tuple[bytes | None, bool]:
        """The bytes of a response made here and whether the connection closes after it;
        None when it cannot be sent (the exchange's state does not allow it)."""
        complete = self.client_done
        while not complete:
            try:
                event = self.h.next_event()
            except h11.RemoteProtocolError:
                break
            if isinstance(event, h11.EndOfMessage):
                complete = True
            elif not isinstance(event, h11.Data):
                break
        headers = [(k, v) for k, v in answer.headers if k.lower() != b"connection"]
        if close or not complete:
            headers.append((b"Connection", b"close"))
        try:
            data = self.h.send(h11.Response(status_code=answer.status, headers=headers,
                                            reason=pages.reason_phrase(answer.status)))
            if answer.body and self.request.method != b"HEAD":
                data += self.h.send(h11.Data(data=answer.body))
            data += self.h.send(h11.EndOfMessage())
        except h11.LocalProtocolError as e:
            self.problem = HeadRefused(answer.status, str(e))
            return None, True
        self.status = answer.status
        return data, close or not complete

    def leftover(self) -> bytes | None:
        """After the response: the client's bytes for the next request, or None when the
        connection cannot carry another one."""
        h = self.h
        if h.our_state is not h11.DONE or h.their_state is not h11.DONE:
            return None
        data, closed = h.trailing_data
        return None if closed else data
