"""What the HTTPS port answers a request sent to it in plain HTTP (wire/plain_http.py reads
it): a ``301`` to the same address over https:// for a ``GET`` or ``HEAD`` to a host the
gateway serves (what a typed or followed ``http://`` link sends), else ``400 Bad Request``
in words. A redirect names only hosts and paths the gateway would serve anyway, never
whatever a scanner writes in its Host header. The request was already sent in clear, so a
redirect reveals nothing more; the gateway's cookies are ``Secure`` and never sent with it.

The head is read by the proxy's own parser (:func:`studios_gateway.http.h1.parse_request_head`:
its checks, then llhttp's), with the proxy's limits: a head the HTTP port would refuse is
refused here too.
"""

from __future__ import annotations

from collections.abc import Callable

from studios_gateway.config import default_of
from studios_gateway.http.h1 import RequestHead, parse_request_head

__all__ = ["PlainHTTP"]

_BAD_REQUEST = (b"This port speaks HTTPS only, and the request was sent in plain HTTP.\n"
                b"Open the same address with https:// instead of http://.\n")


def _response(status: bytes, body: bytes, head_only: bool, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\n" + extra
            + b"Content-Type: text/plain; charset=utf-8\r\n"
            b"X-Content-Type-Options: nosniff\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n"
            b"Connection: close\r\n\r\n" + (b"" if head_only else body))


def _visible(text: bytes) -> bool:
    """Only printable ASCII without spaces (a Host value)."""
    return bool(text) and all(0x21 <= c <= 0x7E for c in text)


class PlainHTTP:
    """What the HTTPS listener answers a plain-HTTP request with.

    ``https_url(host_header, target)``: the https:// URL of that Host header value and
    origin-form target when the gateway serves that host, else None (the HTTP proxy's
    routing decides; see studios_gateway.http.component). The limits are the HTTP
    port's (CONNECT_HTTP_MAX_REQUEST_LINE, CONNECT_HTTP_MAX_HEADERS)."""

    def __init__(self, https_url: Callable[[str, str], str | None], *,
                 max_request_line: int = default_of("http_max_request_line"),
                 max_header_count: int = default_of("http_max_headers")):
        self._https_url = https_url
        self._max_request_line = max_request_line
        self._max_header_count = max_header_count

    def answer(self, head: bytes, cut: bool = False) -> bytes | None:
        """The response to a plain request whose first bytes are ``head``; None while
        more is needed to decide. ``cut``: no more will be read (``head`` is all)."""
        head_only = head.startswith(b"HEAD ")
        if b"\n" in head and not head.startswith((b"GET /", b"HEAD /")):
            return self.bad(head_only)  # its first line says already: no redirect
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if cut or b"\n\n" in head or b"\n\r\n" in head:
                # Ended by bare line feeds, which the parser refuses: no CRLF CRLF will
                # come, and the client waits for an answer.
                return self.bad(head_only)
            return None
        request = parse_request_head(head[:end + 4], self._max_request_line,
                                     self._max_header_count)
        if not isinstance(request, RequestHead):
            return self.bad(head_only)
        url = self._redirect(request)
        if url is None:
            return self.bad(head_only)
        location = url.encode("ascii")
        return _response(b"301 Moved Permanently",
                         b"This port speaks HTTPS only. The same address over HTTPS:\n"
                         + location + b"\n", head_only, b"Location: " + location + b"\r\n")

    def _redirect(self, request: RequestHead) -> str | None:
        """The https:// URL for `request` (a GET or HEAD in origin form: answer() saw its
        first line; one Host: the parser's check) when the gateway serves its Host; None
        for anything else."""
        if not _visible(request.host):
            return None
        return self._https_url(request.host.decode("ascii"), request.target.decode("ascii"))

    @staticmethod
    def bad(head_only: bool) -> bytes:
        return _response(b"400 Bad Request", _BAD_REQUEST, head_only)
