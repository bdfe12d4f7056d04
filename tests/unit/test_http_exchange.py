"""The proxy's HTTP logic without transports, reactor or Deferreds: bytes in, bytes out."""

from __future__ import annotations

from studios_gateway.http.exchange import (
    Exchange,
    HeadReader,
    HeadRefused,
    Limits,
    Step,
    ToolCodec,
)
from studios_gateway.http.routing import Router

GET = b"GET /lab?x=1 HTTP/1.1\r\nHost: abc.studios.test\r\nCookie: a=b\r\n\r\n"
ROUTER = Router("studios.test", "studios.test")


def started(raw: bytes) -> Exchange:
    reader = HeadReader(Limits())
    reader.feed(raw)
    ex = reader.take()
    assert isinstance(ex, Exchange)
    assert ex.begin("http", "192.0.2.7", 5555) is None
    route = ROUTER.route(ex.host, ex.target)
    ex.route = route  # type: ignore[assignment]
    ex.subject = "alice"
    return ex


def test_a_get_round_trip_in_bytes() -> None:
    ex = started(GET)
    assert (ex.host, ex.target, ex.upgrade) == ("abc.studios.test", "/lab?x=1", False)
    assert ex.info is not None and ex.info.path == "/lab" and ex.info.query == "x=1"
    tool = ToolCodec(1 << 16)
    head = ex.tool_head(tool, peer="192.0.2.7", trusted=False, scheme="http")
    assert head.startswith(b"GET /lab?x=1 HTTP/1.1\r\n")
    assert b"X-Connect-Sub: alice\r\n" in head and b"X-Forwarded-For: 192.0.2.7\r\n" in head
    body, step = ex.pump_request(tool)
    assert (body, step) == (b"", Step.COMPLETE) and ex.request_done
    tool.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nhi")
    out, step, _ = ex.pump_response(tool)
    assert step is Step.COMPLETE and ex.response_started
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nhi")
    assert b"keep-alive" not in out.lower()  # hop-by-hop
    assert ex.reusable(tool) and ex.leftover() == b""


def test_pipelined_bytes_are_left_for_the_next_request() -> None:
    ex = started(GET + b"GET /two HTTP/1.1\r\n")
    tool = ToolCodec(1 << 16)
    ex.tool_head(tool, peer=None, trusted=False, scheme="http")
    assert ex.pump_request(tool)[1] is Step.COMPLETE
    tool.receive(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert ex.pump_response(tool)[1] is Step.COMPLETE
    assert ex.leftover() == b"GET /two HTTP/1.1\r\n"


def test_chunked_body_streams_and_a_bad_chunk_is_refused() -> None:
    ex = started(b"POST /up HTTP/1.1\r\nHost: abc.studios.test\r\nTransfer-Encoding: chunked"
                 b"\r\n\r\n5\r\nhello\r\n")
    tool = ToolCodec(1 << 16)
    ex.tool_head(tool, peer=None, trusted=False, scheme="http")
    assert ex.pump_request(tool) == (b"5\r\nhello\r\n", Step.NEED_DATA)
    ex.client_data(b"zz\r\n")
    data, step = ex.pump_request(tool)
    assert step is Step.REFUSED and data == b"" and ex.problem is not None
    assert ex.problem.status == 400


def test_body_over_the_limit_and_answers_made_here() -> None:
    reader = HeadReader(Limits(max_body=3))
    reader.feed(b"POST / HTTP/1.1\r\nHost: abc.studios.test\r\nContent-Length: 9\r\n\r\n")
    ex = reader.take()
    assert isinstance(ex, Exchange)
    refused = ex.begin("http", None, 0)
    assert refused is not None and refused.page.status == 413 and refused.close
    data, close = ex.answer(refused.page, refused.close)
    assert data is not None and data.startswith(b"HTTP/1.1 413 ") and close
    assert b"Connection: close\r\n" in data


def test_head_refusals_and_partial_heads() -> None:
    reader = HeadReader(Limits(max_request_line=40))
    reader.feed(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a")
    assert reader.take() is None and reader.buf.startswith(b"GET /")
    for raw, status in [(b"GET /" + b"a" * 50, 414), (b"GET / HTTP/1.1\nHost: a\n\n", 400),
                        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400)]:
        reader = HeadReader(Limits(max_request_line=40))
        reader.feed(raw)
        got = reader.take()
        assert isinstance(got, HeadRefused) and got.status == status, raw


def test_a_101_switches_and_hands_over_the_bytes_after_it() -> None:
    ex = started(b"GET /ws HTTP/1.1\r\nHost: abc.studios.test\r\nConnection: Upgrade\r\n"
                 b"Upgrade: websocket\r\n\r\n\x81\x00")
    assert ex.upgrade
    tool = ToolCodec(1 << 16)
    head = ex.tool_head(tool, peer=None, trusted=False, scheme="http")
    assert b"Connection: upgrade\r\n" in head
    ex.pump_request(tool)
    tool.receive(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\n\r\n\x82\x00")
    out, step, event = ex.pump_response(tool)
    assert step is Step.SWITCH and out == b""
    switched = ex.switch(tool, event)
    assert switched is not None
    head, up_rest, client_rest = switched
    assert head.startswith(b"HTTP/1.1 101 ") and up_rest == b"\x82\x00"
    assert client_rest == b"\x81\x00"


def answered(request: bytes, response: bytes | list[bytes]) -> tuple[Exchange, ToolCodec,
                                                                     bytes, Step]:
    ex = started(request)
    tool = ToolCodec(1 << 16)
    ex.tool_head(tool, peer=None, trusted=False, scheme="http")
    ex.pump_request(tool)
    out, step = b"", Step.NEED_DATA
    for piece in response if isinstance(response, list) else [response]:
        tool.receive(piece)
        data, step, _ = ex.pump_response(tool)
        out += data
    return ex, tool, out, step


def test_response_framing_follows_the_client_and_the_tool() -> None:
    # no length from the tool: chunked to an HTTP/1.1 client, close-delimited to 1.0
    ex, tool, out, step = answered(GET, b"HTTP/1.1 200 OK\r\n\r\nsome")
    assert step is Step.NEED_DATA
    assert out.endswith(b"Transfer-Encoding: chunked\r\n\r\n4\r\nsome\r\n")
    tool.closed()
    out, step, _ = ex.pump_response(tool)
    assert (out, step) == (b"0\r\n\r\n", Step.COMPLETE) and not ex.reusable(tool)
    assert ex.leftover() == b""
    old = GET.replace(b"HTTP/1.1", b"HTTP/1.0")
    ex, tool, out, _ = answered(old, b"HTTP/1.1 200 OK\r\n\r\nsome")
    assert b"Transfer-Encoding" not in out and out.endswith(b"Connection: close\r\n\r\nsome")
    # HEAD: the length header stays, no body; the connection is kept
    head = GET.replace(b"GET", b"HEAD")
    ex, tool, out, step = answered(head, b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")
    assert step is Step.COMPLETE and out.endswith(b"Content-Length: 9\r\n\r\n")
    assert ex.reusable(tool) and ex.leftover() == b""
    # 204 and a tool that closes: answered, the tool's connection not pooled
    ex, tool, out, step = answered(GET, b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
    assert step is Step.COMPLETE and out == b"HTTP/1.1 204 No Content\r\n\r\n"
    assert not ex.reusable(tool) and ex.leftover() == b""
    # the client asked to close
    closing = GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    ex, tool, out, _ = answered(closing, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    assert out.endswith(b"Connection: close\r\n\r\nhi") and ex.leftover() is None


def test_a_response_split_anywhere_and_informational_heads() -> None:
    raw = (b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
           b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    for cut in range(1, len(raw)):
        ex, tool, out, step = answered(GET, [raw[:cut], raw[cut:]])
        assert step is Step.COMPLETE, cut
        assert out.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"), cut
        assert out.endswith(b"\r\n\r\nhello") and ex.reusable(tool), cut


def test_a_tool_that_says_more_than_its_response_is_not_pooled() -> None:
    ex, tool, _, step = answered(GET, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
                                      b"HTTP/1.1 200 OK\r\n")
    assert step is Step.COMPLETE and not ex.reusable(tool)
    ex, tool, _, step = answered(GET, b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
    assert step is Step.BROKEN and ex.problem is not None and ex.problem.status == 502


def test_a_head_dribbled_one_byte_at_a_time_is_scanned_in_linear_work() -> None:
    """60 KiB of head, one byte per read: the searches look at each byte a few times,
    not once per read (that was ~1.8 G byte looks, quadratic)."""
    fields = b"".join(b"X-F%05d: %s\r\n" % (i, b"v" * 40) for i in range(1200))
    head = b"GET /x HTTP/1.1\r\nHost: a.studios.test\r\n" + fields + b"\r\n"
    assert len(head) > 60 * 1024
    reader = HeadReader(Limits(max_header_bytes=128 * 1024, max_header_count=2000))
    got = None
    for i in range(len(head)):
        reader.feed(head[i:i + 1])
        got = reader.take()
        if got is not None:
            break
    assert isinstance(got, Exchange), got
    assert i == len(head) - 1
    assert reader.work <= 8 * len(head), reader.work


def test_a_split_crlf_before_a_request_is_still_dropped() -> None:
    reader = HeadReader(Limits())
    for piece in (b"\r", b"\n", b"GET / HTTP/1.1\r\nHost: a.studios.test\r", b"\n\r", b"\n"):
        reader.feed(piece)
        got = reader.take()
    assert got is not None and got.request.target == b"/", got  # type: ignore[union-attr]
