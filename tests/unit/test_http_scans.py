"""The head checks written with C-level byte calls say what the regexes they replaced said
(a bare LF: ``(?<!\\r)\\n``; a field value: h11's)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from studios_gateway.http.exchange import _bare_lf
from studios_gateway.http.h1 import _value_ok
from tests.support.examples import examples

BARE_LF = re.compile(rb"(?<!\r)\n")
VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")

_line_bytes = st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b" "]), max_size=16)


@settings(max_examples=examples(2000))
@given(_line_bytes.map(b"".join), st.data())
def test_bare_lf_is_the_lookbehind_regex(data: bytes, draw: st.DataObject) -> None:
    start = draw.draw(st.integers(0, len(data)))
    end = draw.draw(st.integers(start, len(data)))
    assert _bare_lf(bytearray(data), start, end) == bool(BARE_LF.search(data, start, end))


_value_bytes = st.lists(st.one_of(st.sampled_from([b" ", b"\t", b"a", b"\x00", b"\r", b"\n",
                                                   b"\x0b", b"\x0c", b"\x1c", b"\x80"]),
                                  st.binary(max_size=1)), max_size=10)


@settings(max_examples=examples(2000))
@given(_value_bytes.map(b"".join))
def test_value_ok_is_h11s_field_value(value: bytes) -> None:
    assert _value_ok(value) == bool(VALUE.fullmatch(value))
