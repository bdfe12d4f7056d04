"""The bind handshake codec, client settings, connect strings and backoff."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from studios_gateway.config import ConfigError
from studios_gateway.management.sessions import (
    RequestError,
    connect_string,
    session_url,
    validate_create,
)
from studios_gateway.studio.client import BACKOFF_MAX, GOAWAY_SPREAD, Backoff
from studios_gateway.studio.settings import load_client_settings
from studios_gateway.tunnel.server import REBIND_WITHIN
from studios_gateway.wire.bind import (
    MAX_LINE,
    BindError,
    BindReply,
    BindRequest,
    LineBuffer,
    parse_reply,
    parse_request,
)
from studios_gateway.wire.tools import TOOLS

session_ids = st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True)
tokens = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
                 min_size=16, max_size=64)


@given(session_ids, tokens, st.sampled_from(TOOLS), st.integers(1, 65535),
       st.from_regex(r"[0-9]{1,2}\.[0-9]{1,2}(\.[0-9]{1,2})?", fullmatch=True))
def test_bind_request_round_trips(sid, token, tool, port, version) -> None:
    req = BindRequest(sid, token, version, tool, port)
    line = req.encode()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_request(line[:-1]) == req
    assert token not in repr(req)


@given(st.binary(max_size=300))
def test_junk_binds_are_refused_as_malformed(data: bytes) -> None:
    try:
        parse_request(data)
    except BindError as e:
        assert e.code == "malformed" and not e.retry
    # a valid request from random bytes is possible only in theory; never another exception


@pytest.mark.parametrize("body", [
    {}, {"session": "UPPER", "token": "x" * 20, "connect_version": "0.12", "tool": "generic",
         "tool_port": 1},
    {"session": "abc", "token": "short", "connect_version": "0.12", "tool": "generic",
     "tool_port": 1},
    {"session": "abc", "token": "x" * 20, "connect_version": "0.12", "tool": "emacs",
     "tool_port": 1},
    {"session": "abc", "token": "x" * 20, "connect_version": "0.12", "tool": "generic",
     "tool_port": 0},
    {"session": "abc", "token": "x" * 20, "connect_version": "0.12", "tool": "generic",
     "tool_port": True},
    [1, 2],
])
def test_invalid_bind_fields(body) -> None:
    with pytest.raises(BindError) as e:
        parse_request(json.dumps(body).encode())
    assert e.value.code == "malformed"


def test_line_buffer_bounds_and_splits() -> None:
    buf = LineBuffer()
    assert buf.feed(b'{"a":') is None
    assert buf.feed(b'1}\nrest') == (b'{"a":1}', b"rest")
    with pytest.raises(BindError):
        LineBuffer().feed(b"x" * (MAX_LINE + 1))


@given(st.sampled_from(["bad_token", "store_unavailable", "incompatible_version", "draining"]),
       st.text(max_size=100))
def test_refusals_round_trip_with_retry_flag(code, reason) -> None:
    reply = BindReply.refusal(BindError(code, reason))
    parsed = parse_reply(reply.encode()[:-1])
    assert parsed.code == code and parsed.reason == reason[:500]
    assert parsed.retry == (code in ("store_unavailable", "draining"))


def test_client_settings_from_connect_string() -> None:
    pin = "sha256:" + "ab" * 32
    conn = connect_string("abc123", "t" * 43, "gw.example.com", 7070, pin)
    s = load_client_settings({"CONNECT_STRING": conn, "CONNECT_TOOL_PORT": "8888"})
    assert s.session_id == "abc123" and s.token == "t" * 43 and s.tool_port == 8888
    assert s.gateways[0].host == "gw.example.com" and s.gateways[0].port == 7070
    assert s.gateways[0].pin == pin
    assert "t" * 43 not in repr(s)


def test_client_settings_from_variables_and_several_gateways() -> None:
    s = load_client_settings({"CONNECT_GATEWAY_URL": "a:1,tls://b:2", "CONNECT_SESSION_ID": "s1",
                              "CONNECT_SESSION_TOKEN": "k" * 20, "CONNECT_TOOL_PORT": "80",
                              "CONNECT_TOOL": "JupyterLab",
                              "CONNECT_TOOL_PATH_PREFIX": "/_studio/s1/"})
    assert [str(g) for g in s.gateways] == ["a:1", "b:2"]
    assert s.tool == "jupyterlab" and s.tool_path_prefix == "/_studio/s1/"


def test_a_cluster_list_takes_the_connect_strings_pin_where_it_has_none() -> None:
    """docs/cluster.md: the nodes share the tunnel certificate, so one pin fits every node;
    an address with its own pin keeps it, and without a pinned connect string none is
    made up (the chain check then applies)."""
    pin, other = "sha256:" + "ab" * 32, "sha256:" + "cd" * 32
    conn = f"studios-connect://abc123:{'t' * 43}@gw1:7070/?pin={pin}"
    s = load_client_settings({
        "CONNECT_STRING": conn, "CONNECT_TOOL_PORT": "8888",
        "CONNECT_GATEWAY_URL": f"gw1:7070,tls://gw2:7070?pin={other},"
                               "wss://gw3/_connect/tunnel"})
    assert [(g.host, g.pin) for g in s.gateways] == [("gw1", pin), ("gw2", other), ("gw3", pin)]
    s = load_client_settings({"CONNECT_GATEWAY_URL": "gw1:7070,gw2:7070",
                              "CONNECT_SESSION_ID": "s1", "CONNECT_SESSION_TOKEN": "k" * 20,
                              "CONNECT_TOOL_PORT": "80"})
    assert [g.pin for g in s.gateways] == [None, None]


@pytest.mark.parametrize("env,name", [
    ({}, "CONNECT_GATEWAY_URL"),
    ({"CONNECT_GATEWAY_URL": "a:1"}, "CONNECT_SESSION_ID"),
    ({"CONNECT_GATEWAY_URL": "a:1", "CONNECT_SESSION_ID": "s"}, "CONNECT_SESSION_TOKEN"),
    ({"CONNECT_GATEWAY_URL": "a:1", "CONNECT_SESSION_ID": "s", "CONNECT_SESSION_TOKEN": "k" * 20},
     "CONNECT_TOOL_PORT"),
    ({"CONNECT_GATEWAY_URL": "a:1", "CONNECT_SESSION_ID": "s", "CONNECT_SESSION_TOKEN": "k" * 20,
      "CONNECT_TOOL_PORT": "http"}, "CONNECT_TOOL_PORT"),
    ({"CONNECT_GATEWAY_URL": "a:b", "CONNECT_SESSION_ID": "s"}, "CONNECT_GATEWAY_URL"),
    ({"CONNECT_GATEWAY_URL": "a:1?pin=md5:00", "CONNECT_SESSION_ID": "s"}, "CONNECT_GATEWAY_URL"),
])
def test_client_settings_errors_name_the_variable(env, name) -> None:
    with pytest.raises(ConfigError) as e:
        load_client_settings(env)
    assert e.value.name == name


# A connect string gone wrong in the ways people paste them: cut short, without its host,
# the id:token pair alone, a bad port or pin, junk around it.
_BROKEN_CONNECT_STRINGS = [
    "studios-connect://abcd1234:{t}@gw", "studios-connect://abcd1234:{t}", "abcd1234:{t}",
    "{t}", "studios-connect://{t}@gw:x/", "studios-connect://abcd1234:{t}@gw:99999/",
    "http://abcd1234:{t}@gw:7070/", "studios-connect://abcd1234:{t}@gw:7070/?pin=sha256:zz",
    "studios-connect://abcd1234:{t}@:7070/", "'studios-connect://abcd1234:{t}@gw:7070/'",
    "studios-connect://abcd1234:{t}#@gw:7070/", "studios-connect://abcd1234:{t}/@gw:7070",
]


@given(st.sampled_from(_BROKEN_CONNECT_STRINGS),
       st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
               min_size=13, max_size=61).map(lambda t: "tK9" + t),  # in no message by chance
       st.sampled_from(["CONNECT_STRING", "CONNECT_GATEWAY_URL"]))
def test_a_broken_connect_string_never_shows_its_token(form: str, token: str,
                                                      name: str) -> None:
    """'abcd1234:<token>' (no scheme, no host) was quoted whole in the error line."""
    env = {name: form.format(t=token), "CONNECT_SESSION_ID": "abcd1234",
           "CONNECT_SESSION_TOKEN": "k" * 20, "CONNECT_TOOL_PORT": "8888"}
    try:
        load_client_settings(env)
    except ConfigError as e:
        assert token not in str(e), str(e)


# ("gw:x" is redacted: it cannot be told from "<id>:<token>".)
@pytest.mark.parametrize("address", ["gw.example.com:70700", "[::1]:99999",
                                     "ftp://gw.example.com", "gw.example.com"])
def test_an_address_without_a_token_is_still_quoted(address: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_client_settings({"CONNECT_GATEWAY_URL": address})
    assert repr(address) in str(e.value)


def test_backoff_one_quick_retry_one_full_jitter_wait_then_a_steady_period() -> None:
    b = Backoff(base=0.5, cap=8, rng=lambda: 1.0)
    assert [b.next_delay() for _ in range(4)] == [0.5, 8, 7.2, 7.2]
    b.reset()
    assert b.next_delay() == 0.5
    # Full jitter: anywhere from 0 to the ceiling, not its upper half; then the period,
    # shortened by at most a tenth.
    draws = iter([0.0, 0.25, 0.5, 0.0])
    low = Backoff(base=0.5, cap=8, rng=lambda: next(draws))
    assert [low.next_delay() for _ in range(4)] == [0.0, 2.0, 7.6, 8.0]


def test_after_a_goaway_spread_the_attempts_keep_its_phase() -> None:
    b = Backoff(rng=lambda: 0.5)
    b.next_delay()
    assert b.spread(8.0) == 4.0
    assert b.next_delay() == 8 * (1 - 0.1 * 0.5)  # no quick retry: the period


@pytest.mark.parametrize("paced", [False, True])
def test_a_restarted_nodes_studios_come_back_evenly_whenever_it_is_ready(paced: bool) -> None:
    """1,000 studios lose their node at 0 (GoAway); it is ready again at R: their first
    attempts from R on fall evenly over the period, at any R (the doubling ceiling put
    most into the first seconds: 5x the mean per 100 ms when R was 2-5 s). The same when
    the node said at bind that it paces its GoAways (the studios first try within
    REBIND_WITHIN, all refused by the node that is down)."""
    rng = random.Random(7)
    for ready in (0.5, 1.0, 2.0, 3.0, 5.0, 9.0, 20.0):
        firsts = []
        for _ in range(1000):
            b = Backoff(rng=rng.random)
            t = b.soon(REBIND_WITHIN) if paced else b.spread(GOAWAY_SPREAD)
            while t < ready:
                t += b.next_delay()
            firsts.append(t - ready)
        assert max(firsts) <= BACKOFF_MAX
        seconds = [0] * 8
        for t in firsts:
            seconds[min(7, int(t))] += 1
        assert max(seconds) <= 1.6 * 1000 / 8, (ready, seconds)


def test_the_bind_says_paced_goaways_both_ways_and_ignores_nonsense() -> None:
    """A client says it rebinds soon after a paced GoAway; a gateway that paces says within
    how long. Either message without it (older ends) means the clients' own spread."""
    req = BindRequest("s1", "t" * 20, "0.12.0", "generic", 8080, paced_go_away=True)
    assert parse_request(req.encode().strip()).paced_go_away
    older = BindRequest("s1", "t" * 20, "0.12.0", "generic", 8080)
    assert "paced_go_away" not in json.loads(older.encode())
    assert not parse_request(older.encode().strip()).paced_go_away
    assert not parse_request(older.encode().strip()[:-1] + b', "paced_go_away": 1}'
                             ).paced_go_away  # true only
    line = BindReply(ok=True, tunnel_id="t", rebind_within=0.25).encode()
    assert parse_reply(line.strip()).rebind_within == 0.25
    assert "rebind_within" not in json.loads(BindReply(ok=True, tunnel_id="t").encode())
    for bad in ("0", "-1", '"0.25"', "true", "1e9", "null"):
        reply = parse_reply(b'{"ok": true, "tunnel_id": "t", "rebind_within": '
                            + bad.encode() + b"}")
        assert reply.ok and reply.rebind_within == 0.0, bad


def test_the_bind_says_it_knows_replaced_goaways_and_how_often_and_ignores_nonsense() -> None:
    req = BindRequest("s1", "t" * 20, "0.12.0", "generic", 8080, replaced_go_away=True,
                      replaced=2)
    got = parse_request(req.encode().strip())
    assert got.replaced_go_away and got.replaced == 2 and not got.if_free
    waiting = BindRequest("s1", "t" * 20, "0.12.0", "generic", 8080, if_free=True)
    assert parse_request(waiting.encode().strip()).if_free
    older = BindRequest("s1", "t" * 20, "0.12.0", "generic", 8080)
    assert not {"replaced_go_away", "replaced", "if_free"} & set(json.loads(older.encode()))
    assert not parse_request(older.encode().strip()[:-1] + b', "if_free": 1}').if_free
    for bad in ("-1", '"2"', "true", "1e9", "null", "2.5", "100000"):
        line = older.encode().strip()[:-1] + b', "replaced": ' + bad.encode() + b"}"
        assert parse_request(line).replaced == 0, bad  # a hint: never refused for it


def test_bind_reply_carries_the_gateways_keepalive_and_ignores_nonsense() -> None:
    line = BindReply(ok=True, tunnel_id="t", ping_interval=2, ping_timeout=5).encode()
    assert json.loads(line)["ping_timeout"] == 5
    reply = parse_reply(line.strip())
    assert (reply.ping_interval, reply.ping_timeout) == (2.0, 5.0)
    assert "ping_interval" not in json.loads(BindReply(ok=True, tunnel_id="t").encode())
    for bad in ('"ping_interval": 5, "ping_timeout": 2', '"ping_interval": 0, "ping_timeout": 2',
                '"ping_interval": "2", "ping_timeout": 5', '"ping_interval": true, '
                '"ping_timeout": 5', '"ping_interval": 2, "ping_timeout": 1e9',
                '"ping_interval": 2'):
        reply = parse_reply(b'{"ok": true, "tunnel_id": "t", ' + bad.encode() + b"}")
        assert reply.ok and (reply.ping_interval, reply.ping_timeout) == (0.0, 0.0), bad


def test_session_urls() -> None:
    assert session_url("ab12", "https://connect.example.com", "connect.example.com", False) \
        == "https://ab12.connect.example.com/"
    assert session_url("ab12", "http://localhost:8080", "localhost", False) \
        == "http://ab12.localhost:8080/"
    assert session_url("ab12", "https://connect.example.com", "x", True) \
        == "https://connect.example.com/_studio/ab12/"


@pytest.mark.parametrize("body", [
    [], {"owner": ""}, {"owner": "a b"}, {"owner": "a", "tool": "emacs"},
    {"owner": "a", "id": "UP"}, {"owner": "a", "ssh_enabled": "yes"},
    {"owner": "a", "allowed_users": "bob"}, {"owner": "a", "extra": 1},
])
def test_create_validation(body) -> None:
    with pytest.raises(RequestError):
        validate_create(body)


def test_create_defaults() -> None:
    f = validate_create({"owner": "alice", "workspace_id": 42, "allowed_users": ["b", "b"]})
    assert f == {"id": None, "workspace_id": "42", "tool": "generic", "owner": "alice",
                 "allowed_users": ("b",), "ssh_enabled": False, "image": None,
                 "tool_version": None, "update_version": None, "connect_version": None}


@pytest.mark.parametrize("prefix,ok", [("/", True), ("/_studio/abcd1234/", True),
                                       ("/lab", False), ("_studio/", False), ("/a b/", False)])
def test_the_path_prefix_may_be_the_root(prefix: str, ok: bool) -> None:
    """'/' (what the gateway says in subdomain mode) was refused as a prefix."""
    env = {"CONNECT_GATEWAY_URL": "gw:7070", "CONNECT_SESSION_ID": "abcd1234",
           "CONNECT_SESSION_TOKEN": "k" * 20, "CONNECT_TOOL_PORT": "8888",
           "CONNECT_TOOL_PATH_PREFIX": prefix}
    if ok:
        assert load_client_settings(env).tool_path_prefix == prefix
    else:
        with pytest.raises(ConfigError, match="CONNECT_TOOL_PATH_PREFIX"):
            load_client_settings(env)


@pytest.mark.parametrize("name,value", [("CONNECT_TOOL_PRESET", "Maybe "),
                                        ("CONNECT_CLIENT_LOG_LEVEL", "VERBOSE")])
def test_client_errors_quote_the_value_as_given(name: str, value: str) -> None:
    """These two were quoted lower-cased and stripped, unlike every other setting."""
    env = {"CONNECT_GATEWAY_URL": "gw:7070", "CONNECT_SESSION_ID": "abcd1234",
           "CONNECT_SESSION_TOKEN": "k" * 20, "CONNECT_TOOL_PORT": "8888", name: value}
    with pytest.raises(ConfigError) as e:
        load_client_settings(env)
    assert str(e.value).startswith(f"{name}={value!r}: expected ")


def test_bind_reply_carries_the_gateways_retry_period_within_its_range() -> None:
    """retry_period (CONNECT_TUNNEL_RETRY_PERIOD) is taken from 1 to 60 s; anything else,
    or none (an older gateway), is not said: the client keeps its own."""
    line = BindReply(ok=True, tunnel_id="t", retry_period=2).encode()
    assert parse_reply(line.strip()).retry_period == 2.0
    assert "retry_period" not in json.loads(BindReply(ok=True, tunnel_id="t").encode())
    for bad in ("0", "0.5", "-1", '"2"', "true", "61", "null"):
        reply = parse_reply(b'{"ok": true, "tunnel_id": "t", "retry_period": '
                            + bad.encode() + b"}")
        assert reply.ok and reply.retry_period == 0.0, bad


def test_the_instance_is_a_hint_kept_when_readable() -> None:
    """A client's instance name round-trips; one the gateway cannot read is not said (a
    hint, as "replaced" is), never a refusal."""
    from studios_gateway.wire.bind import BindRequest, parse_request

    req = BindRequest("s1", "t" * 20, "0.12.0", "generic", 8080, instance="0123abcd4567ef89")
    assert parse_request(req.encode()).instance == "0123abcd4567ef89"
    for bad in ("short", "x" * 65, "has space!", 12345678, None, ["a" * 16]):
        line = req.encode().replace(b'"0123abcd4567ef89"', json.dumps(bad).encode())
        assert parse_request(line).instance == ""
