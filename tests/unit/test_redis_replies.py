"""Redis's replies are read with hiredis: every reply in a read is handled in that read;
and commands are packed by it, the bytes txredisapi would write (registry/redis_link.py,
reply_parser_missing and _Packs; docs/decisions/redis-store.md)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import txredisapi
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from studios_gateway.registry import redis_link
from studios_gateway.registry.redis import RedisStore


def commands() -> tuple[Any, StringTransport]:
    p = redis_link._Commands(charset="utf-8", convertNumbers=False)
    p.factory = SimpleNamespace(link=SimpleNamespace(heard=0.0, transport_made=lambda p: None,
                                                     owner=SimpleNamespace(clock=Clock())))
    t = StringTransport()
    p.makeConnection(t)  # (BaseRedisProtocol.connectionMade would AUTH/SELECT: not here)
    return p, t


def results(ds: list[Deferred[Any]]) -> list[Any]:
    out: list[Any] = []
    for d in ds:
        d.addBoth(out.append)
    return out


def test_this_install_reads_replies_in_c() -> None:
    assert redis_link.reply_parser_missing() is None  # hiredis is a dependency (setup.cfg)
    assert issubclass(redis_link._Commands, txredisapi.HiredisProtocol)
    assert issubclass(redis_link._Subscriber, txredisapi.HiredisProtocol)


def test_a_read_of_many_replies_answers_them_all_in_that_read() -> None:
    p, t = commands()
    n = 500
    got = results([p.execute_command("GET", f"k{i}") for i in range(n)])
    assert t.value().count(b"GET") == n
    value = "v" * 600
    p.dataReceived(b"".join(b"$%d\r\n%s\r\n" % (len(value) + len(str(i)), (value + str(i))
                                                .encode()) for i in range(n)))
    # txredisapi's own reader answered one here and the rest one reactor turn each
    assert got == [value + str(i) for i in range(n)]


def test_replies_split_anywhere_are_read_the_same() -> None:
    p, _ = commands()
    got = results([p.execute_command("GET", "a"), p.execute_command("INCR", "n"),
                   p.execute_command("GET", "none"), p.execute_command("EVAL", "s", 0),
                   p.execute_command("PING")])
    wire = b"$3\r\nabc\r\n:42\r\n$-1\r\n*2\r\n$1\r\nx\r\n:7\r\n+PONG\r\n"
    for i in range(len(wire)):
        p.dataReceived(wire[i:i + 1])
    assert got == ["abc", 42, None, ["x", 7], "PONG"]


def test_an_error_reply_fails_its_command_only() -> None:
    p, _ = commands()
    got = results([p.execute_command("GET", "a"), p.execute_command("NOPE"),
                   p.execute_command("GET", "b")])
    p.dataReceived(b"$1\r\n1\r\n-ERR unknown command 'NOPE'\r\n$1\r\n2\r\n")
    assert got[0] == "1" and got[2] == "2"
    assert got[1].check(txredisapi.ResponseError)
    assert "unknown command 'NOPE'" in str(got[1].value)


def test_a_malformed_reply_is_a_protocol_error_not_a_crash() -> None:
    """Something that is not Redis answers (an HTTP server at CONNECT_REDIS_ADDRESS): the
    link is told why and the connection dropped. txredisapi let the parser's error out of
    dataReceived, and Twisted logged it as an "Unhandled Error" traceback, at each retry
    (two a few seconds apart, for as long as the address was wrong)."""
    p, t = commands()
    said: list[str] = []
    p.factory.link.not_redis = said.append
    got = results([p.execute_command("GET", "a")])
    p.dataReceived(b"HTTP/1.0 400 Bad request\r\n")
    assert said == ['Protocol error, got "H" as reply type byte']
    assert t.disconnecting or getattr(t, "disconnected", False)
    assert got == []  # never answered with garbage; the link's loss fails it


def test_a_set_up_that_met_no_redis_says_so_in_one_line() -> None:
    store = RedisStore("10.0.0.9:6379", clock=Clock(), timeout=2.0)
    link = store._commands
    link.not_redis('Protocol error, got "H" as reply type byte')
    link.transport_lost(Failure(error.ConnectionAborted()))  # (the abort that followed)
    link.handshake_failed("Redis error: could not set dbid=0: Lost connection")
    assert link.last_error == (
        'not Redis: what answers at 10.0.0.9:6379 sent no Redis reply (Protocol error, got '
        '"H" as reply type byte); check that CONNECT_REDIS_ADDRESS is a Redis server\'s, '
        "with CONNECT_REDIS_TLS_ENABLE as that port expects")


def test_an_install_without_hiredis_is_told(monkeypatch: Any) -> None:
    monkeypatch.setattr(txredisapi, "RedisProtocol", txredisapi.BaseRedisProtocol)
    problem = redis_link.reply_parser_missing()
    assert problem is not None and "pip install hiredis" in problem


_ARG = st.one_of(st.text(), st.binary(), st.integers(min_value=-(2**70), max_value=2**70),
                 st.floats(allow_nan=False, allow_infinity=False), st.booleans())


@settings(max_examples=300, deadline=None)
@given(st.lists(_ARG, min_size=1, max_size=6))
def test_commands_are_the_bytes_txredisapi_would_write(args: list[Any]) -> None:
    p, _ = commands()
    assert redis_link._pack is not None  # (hiredis: a dependency)
    assert p._build_command(*args) == txredisapi.BaseRedisProtocol._build_command(p, *args)


def test_text_that_cannot_be_encoded_is_refused_as_txredisapi_refuses_it() -> None:
    p, t = commands()
    with pytest.raises(txredisapi.InvalidData):
        p.execute_command("SET", "k", "\ud800")
    assert t.value() == b""  # nothing written


def test_text_bytes_and_ints_are_packed_in_c(monkeypatch: Any) -> None:
    p, _ = commands()

    def python_way(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("txredisapi's _build_command was used")

    monkeypatch.setattr(txredisapi.BaseRedisProtocol, "_build_command", python_way)
    assert p._build_command("SET", "ключ", b"\x00v", 10) == (
        b"*4\r\n$3\r\nSET\r\n$8\r\n" + "ключ".encode() + b"\r\n$2\r\n\x00v\r\n$2\r\n10\r\n")


def test_ints_beyond_64_bits_go_txredisapis_way(monkeypatch: Any) -> None:
    p, _ = commands()
    packed: list[Any] = []
    monkeypatch.setattr(redis_link, "_pack", lambda args: packed.append(args) or b"")
    assert p._build_command("SET", "k", 2**64) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$20\r\n" \
        + str(2**64).encode() + b"\r\n"
    with pytest.raises(ValueError):  # (hiredis 3.5 crashed the process on this one)
        p._build_command("SET", "k", 10**5000)
    assert packed == []
    p._build_command("SET", "k", 2**64 - 1, -(2**63))
    assert packed == [("SET", "k", 2**64 - 1, -(2**63))]
