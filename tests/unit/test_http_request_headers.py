"""request_headers in one pass says what its earlier filter-after-filter form said, for
any header list, peer, trust, subject and upgrade (hypothesis)."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from studios_gateway.http.headers import (
    _FORWARDING,
    SUBJECT_HEADER,
    Headers,
    _without_hop_by_hop,
    field_value_ok,
    request_headers,
)
from tests.support.examples import examples


def reference_request_headers(headers: Sequence[tuple[bytes, bytes]], *, peer: str | None,
                              trusted: bool, scheme: str, subject: str, upgrade: bool,
                              framing: tuple[bytes, bytes] | None) -> Headers:
    """request_headers as it was written before its one-pass form (filter after filter)."""
    out = [(n, v) for n, v in _without_hop_by_hop(headers, keep_upgrade=upgrade)
           if n.lower() != b"content-length"]
    host = next((v for n, v in out if n.lower() == b"host"), b"")
    sub = SUBJECT_HEADER.lower()
    prior_for = [v.strip() for n, v in out if n.lower() == b"x-forwarded-for"] if trusted else []
    kept_proto = kept_host = None
    if trusted:
        kept_proto = next((v for n, v in out if n.lower() == b"x-forwarded-proto"), None)
        kept_host = next((v for n, v in out if n.lower() == b"x-forwarded-host"), None)
        out = [(n, v) for n, v in out
               if n.lower() not in (sub, b"x-forwarded-for", b"x-forwarded-proto",
                                    b"x-forwarded-host")]
    else:
        out = [(n, v) for n, v in out if n.lower() != sub and n.lower() not in _FORWARDING]
    chain = [v for v in prior_for if v] + ([peer.encode("ascii", "replace")]
                                            if peer is not None else [])
    sub_value = subject.encode("utf-8")
    if not field_value_ok(sub_value):
        raise ValueError("the subject cannot be sent in a header")
    return (out + [(b"X-Forwarded-For", b", ".join(chain))] * bool(chain)
            + [(b"X-Forwarded-Proto", kept_proto or scheme.encode("ascii")),
               (b"X-Forwarded-Host", kept_host or host), (SUBJECT_HEADER, sub_value)]
            + [(b"Connection", b"upgrade")] * upgrade + ([framing] if framing else []))


_NAMES = st.sampled_from([b"Host", b"host", b"Connection", b"Upgrade", b"Keep-Alive",
                          b"Content-Length", b"X-Forwarded-For", b"x-forwarded-for",
                          b"X-Forwarded-Proto", b"X-Forwarded-Host", b"X-Real-IP",
                          b"Forwarded", b"X-Connect-Sub", b"Cookie", b"Accept", b"TE",
                          b"X-Forwarded-Port", b"x-original-url", b"X-Scheme",
                          b"X-Custom", b"Proxy-Connection"])
_VALUES = st.sampled_from([b"", b"a", b" 1.2.3.4 ", b"close", b"upgrade", b"x-custom",
                           b"keep-alive, X-Forwarded-For", b"accept, cookie", b"host",
                           b"https", b"h.example"])
_HEADERS = st.lists(st.tuples(_NAMES, _VALUES), max_size=10)


@settings(max_examples=examples(3000))
@given(_HEADERS, st.sampled_from([None, "10.0.0.9", "::1"]), st.booleans(), st.booleans(),
       st.sampled_from(["alice", "", "b\r\nad"]),
       st.sampled_from([None, (b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")]))
def test_one_pass_is_the_filters(headers: Headers, peer: str | None, trusted: bool,
                                 upgrade: bool, subject: str,
                                 framing: tuple[bytes, bytes] | None) -> None:
    kw = dict(peer=peer, trusted=trusted, scheme="http", subject=subject, upgrade=upgrade,
              framing=framing)
    try:
        expected: Headers | str = reference_request_headers(headers, **kw)  # type: ignore[arg-type]
    except ValueError as e:
        expected = str(e)
    try:
        got: Headers | str = request_headers(headers, **kw)  # type: ignore[arg-type]
    except ValueError as e:
        got = str(e)
    assert got == expected
