"""The configuration contract: the seed's names and defaults, precedence, validation."""

from __future__ import annotations

import base64
import ipaddress
import os
import socket
import string
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from studios_gateway.config import (
    BY_NAME,
    REDACTED,
    VARIABLES,
    ConfigError,
    ConfigErrors,
    redact_password,
)
from studios_gateway.config_loading import load_config, read_env_file
from studios_gateway.config_values import format_size
from studios_gateway.durations import (
    MAX_SECONDS,
    format_duration,
    format_setting,
    parse_duration,
)

# The seed's Connect table (002), transcribed: name -> documented default (None: no default).
SEED_TABLE = {
    "CONNECT_REDIS_ADDRESS": "redis:6379",
    "CONNECT_REDIS_USER": None,
    "CONNECT_REDIS_PASSWORD": None,
    "CONNECT_REDIS_DB": "0",
    "CONNECT_REDIS_PREFIX": "connect:session",
    "CONNECT_REDIS_TLS_ENABLE": "false",
    "CONNECT_REDIS_TLS_SKIP_VERIFY": "false",
    "CONNECT_REDIS_TLS_KEY_FILE": None,
    "CONNECT_REDIS_TLS_CERT_FILE": None,
    "CONNECT_LISTENER_PORT": "7777",
    "CONNECT_TUNNEL_PORT": "7070",
    "CONNECT_MANAGEMENT_PORT": None,
    "CONNECT_MANAGEMENT_AUTH_KEY": None,
    "CONNECT_HOST_DOMAIN": None,
    "CONNECT_HTTP_PORT": "80",
    "CONNECT_PROXY_URL": None,
    "CONNECT_TUNNEL_URL": None,
    "PLATFORM_URL": None,
    "CONNECT_STORAGE_ROOT": "/data",
    "CONNECT_LOG_LEVEL": "INFO",
    "CONNECT_CLIENT_NAME": "tower-connect-proxy-client",
    "CONNECT_GRANT_TYPE": "authorization_code",
    "CONNECT_OIDC_CLIENT_REGISTRATION_TOKEN": None,
    "LOCAL_CACHE_TTL": "2m",
    "CONNECT_SSH_ENABLED": "false",
    "CONNECT_SSH_ADDR": ":2222",
    "CONNECT_SSH_KEY_PATH": None,
    "CONNECT_SSH_KEY_VALUE_BASE64": None,
    "CONNECT_SSH_MAX_CONNECTIONS": "2000",
    "CONNECT_SSH_MAX_CONN_CHANNELS": "30",
    "CONNECT_SSH_HANDSHAKE_TIMEOUT": "1m",
}

# What each documented default means once parsed.
PARSED_DEFAULTS = {
    "CONNECT_REDIS_ADDRESS": ("redis", 6379),
    "CONNECT_REDIS_DB": 0,
    "CONNECT_REDIS_PREFIX": "connect:session",
    "CONNECT_REDIS_TLS_ENABLE": False,
    "CONNECT_REDIS_TLS_SKIP_VERIFY": False,
    "CONNECT_LISTENER_PORT": 7777,
    "CONNECT_TUNNEL_PORT": 7070,
    "CONNECT_HTTP_PORT": 80,
    "CONNECT_STORAGE_ROOT": "/data",
    "CONNECT_LOG_LEVEL": "info",
    "CONNECT_CLIENT_NAME": "tower-connect-proxy-client",
    "CONNECT_GRANT_TYPE": "authorization_code",
    "LOCAL_CACHE_TTL": 120.0,
    "CONNECT_SSH_ENABLED": False,
    "CONNECT_SSH_ADDR": ("", 2222),
    "CONNECT_SSH_MAX_CONNECTIONS": 2000,
    "CONNECT_SSH_MAX_CONN_CHANNELS": 30,
    "CONNECT_SSH_HANDSHAKE_TIMEOUT": 60.0,
}


def test_every_seed_variable_is_known() -> None:
    assert set(SEED_TABLE) <= set(BY_NAME)
    assert {v.name for v in VARIABLES if v.seed} == set(SEED_TABLE)


@pytest.mark.parametrize("name", sorted(SEED_TABLE))
def test_seed_default_is_the_documented_one(name: str) -> None:
    var = BY_NAME[name]
    assert var.default == SEED_TABLE[name]
    cfg = load_config(environ={})
    assert cfg.sources[name] == "default"
    value = getattr(cfg, var.attr)
    if name in PARSED_DEFAULTS:
        assert value == PARSED_DEFAULTS[name]
    else:
        assert value is None


def test_redis_address_unset_means_memory_set_means_redis() -> None:
    assert load_config(environ={}).redis_enabled is False
    cfg = load_config(environ={"CONNECT_REDIS_ADDRESS": "10.1.2.3:6380"})
    assert cfg.redis_enabled and cfg.redis_address == ("10.1.2.3", 6380)
    empty = load_config(environ={"CONNECT_REDIS_ADDRESS": ""})
    assert empty.redis_enabled and empty.redis_address == ("redis", 6379)


def test_precedence_option_env_file_default(tmp_path) -> None:
    env_file = tmp_path / "gw.env"
    env_file.write_text("# comment\nCONNECT_HTTP_PORT=8001\nCONNECT_TUNNEL_PORT=8002\n"
                        "export CONNECT_LISTENER_PORT='8003'\n")
    cfg = load_config(options={"CONNECT_HTTP_PORT": "9001"},
                      environ={"CONNECT_HTTP_PORT": "9101", "CONNECT_TUNNEL_PORT": "9102"},
                      env_file=str(env_file))
    assert cfg.http_port == 9001 and cfg.sources["CONNECT_HTTP_PORT"] == "option"
    assert cfg.tunnel_port == 9102 and cfg.sources["CONNECT_TUNNEL_PORT"] == "environment"
    assert cfg.listener_port == 8003 and cfg.sources["CONNECT_LISTENER_PORT"] == "env file"
    assert cfg.sources["CONNECT_SSH_ADDR"] == "default"


def test_env_file_errors_name_the_line(tmp_path) -> None:
    bad = tmp_path / "bad.env"
    bad.write_text("CONNECT_HTTP_PORT=1\nthis is not a setting\n")
    with pytest.raises(ConfigError, match=r"bad.env:2"):
        load_config(environ={}, env_file=str(bad))
    with pytest.raises(ConfigError, match="--env-file"):
        load_config(environ={}, env_file=str(tmp_path / "missing.env"))


def test_misspelled_value_names_the_variable() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(environ={"CONNECT_SSH_MAX_CONNECTIONS": "many"})
    assert str(e.value).startswith("CONNECT_SSH_MAX_CONNECTIONS='many': expected")


def test_misspelled_name_is_reported_with_a_suggestion() -> None:
    cfg = load_config(environ={"CONNECT_SSH_MAX_CONECTIONS": "5", "CONNECT_TOOL_PORT": "8888"})
    assert any("did you mean CONNECT_SSH_MAX_CONNECTIONS" in w for w in cfg.warnings)
    assert not any("CONNECT_TOOL_PORT" in w for w in cfg.warnings)


def test_secrets_never_in_repr_describe_or_errors() -> None:
    secret = "s3cr3t-Value-42"
    key_b64 = base64.b64encode(b"-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n").decode()
    cfg = load_config(environ={
        "CONNECT_REDIS_ADDRESS": "r:1", "CONNECT_REDIS_PASSWORD": secret,
        "CONNECT_MANAGEMENT_AUTH_KEY": secret, "CONNECT_OIDC_CLIENT_REGISTRATION_TOKEN": secret,
        "CONNECT_SSH_KEY_VALUE_BASE64": key_b64})
    text = repr(cfg) + str(cfg.describe())
    assert secret not in text and key_b64 not in text
    assert REDACTED in str(cfg.describe())
    with pytest.raises(ConfigError) as e:
        load_config(environ={"CONNECT_SSH_KEY_VALUE_BASE64": "not base64 " + secret})
    assert secret not in str(e.value)


@pytest.mark.parametrize("text, shown", [
    ("redis://user:hunter2@r:6379", "redis://user:<redacted>@r:6379"),
    ("rediss://:hunter2@r", "rediss://:<redacted>@r"),
    ("https://u:p@ss:w@h.example/a@b?c", "https://u:<redacted>@h.example/a@b?c"),
    ("user:hunter2@r:6379", "user:<redacted>@r:6379"),
    ("https://user@h.example", "https://user@h.example"),
    ("redis:6379", "redis:6379"), ("/a/b:c@d", "/a/b:c@d"),
    # A password holding "#", "?" or "/" (not percent-encoded) was shown in full: the
    # authority seemed to end inside it, before any "@".
    ("http://user:pa#ss@proxy:3128", "http://user:<redacted>@proxy:3128"),
    ("redis://:p/ss@r:6379", "redis://:<redacted>@r:6379"),
    ("user:p?ss@r", "user:<redacted>@r"),
])
def test_a_urls_password_is_redacted(text: str, shown: str) -> None:
    assert redact_password(text) == shown


URL_VALUED = ["CONNECT_REDIS_ADDRESS", "PLATFORM_URL", "CONNECT_PROXY_URL",
              "CONNECT_OIDC_ISSUER_URL", "CONNECT_TUNNEL_URL", "CONNECT_ADVERTISE_ADDRESS"]


@pytest.mark.parametrize("name", URL_VALUED)
@pytest.mark.parametrize("value", ["redis://user:hunter2@r:6379", "https://u:hunter2@h.example",
                                   "https://u:hunter2@h.example:99999", "u:hunter2@h:1"])
def test_a_urls_password_is_never_shown(name: str, value: str) -> None:
    """Not in an error (with the other errors of the same run), nor in check-config's list."""
    with pytest.raises(ConfigError) as e:
        load_config(environ={name: value, "CONNECT_HTTP_PORT": "x"})
    assert "hunter2" not in str(e.value)
    try:
        cfg = load_config(environ={name: value})
    except ConfigError as e:
        assert "hunter2" not in str(e)
    else:
        assert "hunter2" not in str(cfg.describe())


def test_contradictions_stop_the_start(tmp_path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="CONNECT_TLS_KEY_FILE"):
        load_config(environ={"CONNECT_TLS_CERT_FILE": str(cert)})
    with pytest.raises(ConfigError, match="CONNECT_TUNNEL_PORT"):
        load_config(environ={"CONNECT_HTTP_PORT": "7070"})
    with pytest.raises(ConfigError, match="CONNECT_REDIS_PASSWORD"):
        load_config(environ={"CONNECT_REDIS_USER": "gw"})
    with pytest.raises(ConfigError, match="CONNECT_TUNNEL_PING_TIMEOUT"):
        load_config(environ={"CONNECT_TUNNEL_PING_TIMEOUT": "5s"})


@pytest.mark.parametrize("env, message", [
    ({"CONNECT_SSH_ENABLED": "true", "CONNECT_SSH_ADDR": ":7070"},
     "CONNECT_SSH_ADDR=':7070': expected a port not already used by CONNECT_TUNNEL_PORT"),
    ({"CONNECT_HTTP_MAX_REQUEST_LINE": "100KiB"},
     "CONNECT_HTTP_MAX_REQUEST_LINE='100KiB': expected at least 256 bytes and at most "
     "CONNECT_HTTP_MAX_HEADER_SIZE (64KiB)"),
    ({"CONNECT_TUNNEL_PING_TIMEOUT": "5s"},
     "CONNECT_TUNNEL_PING_TIMEOUT='5s': expected a duration longer than "
     "CONNECT_TUNNEL_PING_INTERVAL (10s)"),
    ({"CONNECT_QUOTA_WINDOW": "10"}, "CONNECT_QUOTA_WINDOW='10': expected a duration of at "
                                     "least 12s"),
    ({"CONNECT_TUNNEL_WINDOW_SIZE": "100KiB"},
     "CONNECT_TUNNEL_WINDOW_SIZE='100KiB': expected a size from 256KiB to 1GiB (in bytes, "
     "or with KiB, MiB or GiB); 256KiB is the yamux initial window"),
    ({"CONNECT_SSH_MAX_CONNECTIONS": " many "}, "CONNECT_SSH_MAX_CONNECTIONS=' many ': "
                                                "expected a whole number from 1 to 1000000"),
])
def test_errors_quote_the_value_as_given(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(environ=env)
    assert str(e.value) == message


def test_every_invalid_variable_is_reported_at_once() -> None:
    with pytest.raises(ConfigErrors) as e:
        load_config(environ={"CONNECT_HTTP_PORT": "abc", "CONNECT_TUNNEL_PORT": "xyz",
                             "CONNECT_LOG_LEVEL": "verbose"})
    assert [(x.name, x.value) for x in e.value.errors] == [
        ("CONNECT_TUNNEL_PORT", "xyz"), ("CONNECT_HTTP_PORT", "abc"),
        ("CONNECT_LOG_LEVEL", "verbose")]
    assert str(e.value) == "; ".join(str(x) for x in e.value.errors)  # one line
    with pytest.raises(ConfigErrors) as e:  # every contradiction too, once the values parse
        load_config(environ={"CONNECT_HTTP_PORT": "7777", "CONNECT_QUOTA_WINDOW": "1s"})
    assert [x.name for x in e.value.errors] == ["CONNECT_QUOTA_WINDOW",
                                                "CONNECT_LISTENER_PORT"]
    with pytest.raises(ConfigError) as one:
        load_config(environ={"CONNECT_HTTP_PORT": "abc"})
    assert one.value.errors == (one.value,)


def test_check_config_lists_every_invalid_variable(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from studios_gateway.cli import main

    for k in [k for k in os.environ if k.startswith(("CONNECT_", "TOWER_"))]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("CONNECT_HTTP_PORT", "abc")
    monkeypatch.setenv("CONNECT_TUNNEL_PORT", "xyz")
    assert main(["check-config", "-q"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "studios-gateway: CONNECT_TUNNEL_PORT='xyz': expected a whole number from 1 to 65535",
        "studios-gateway: CONNECT_HTTP_PORT='abc': expected a whole number from 1 to 65535"]


def test_the_start_names_every_invalid_variable(monkeypatch: pytest.MonkeyPatch,
                                                 capfd: pytest.CaptureFixture[str]) -> None:
    from studios_gateway.tap import Options, makeService

    for k in [k for k in os.environ if k.startswith(("CONNECT_", "TOWER_"))]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("CONNECT_TUNNEL_PORT", "xyz")
    options = Options()
    options.parseOptions(["--http-port", "abc"])
    with pytest.raises(SystemExit) as stopped:
        makeService(options)
    assert stopped.value.code == 78  # EX_CONFIG: the units do not restart it for this
    assert capfd.readouterr().err.splitlines() == [
        "studios-gateway: CONNECT_TUNNEL_PORT='xyz': expected a whole number from 1 to 65535",
        "studios-gateway: --http-port (CONNECT_HTTP_PORT)='abc': expected a whole number "
        "from 1 to 65535"]


def test_a_misspelt_name_is_said_with_the_errors_it_causes(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capfd: pytest.CaptureFixture[str]) -> None:
    """CONNECT_TLS_KEYFILE=... in the env file: check-config and the start said only
    "CONNECT_TLS_KEY_FILE (not set): expected set together with its pair"; the warning
    that names the misspelt line (and the right name) was printed only when the
    configuration was valid, so never when it was the cause."""
    from studios_gateway.cli import main
    from studios_gateway.tap import Options, makeService

    for k in [k for k in os.environ if k.startswith(("CONNECT_", "TOWER_"))]:
        monkeypatch.delenv(k)
    env = tmp_path / "gateway.env"
    for name in ("gw.pem", "gw.key"):
        (tmp_path / name).write_text("-")
    env.write_text(f"CONNECT_TLS_CERT_FILE={tmp_path}/gw.pem\n"
                   f"CONNECT_TLS_KEYFILE={tmp_path}/gw.key\n")
    hint = ("warning: CONNECT_TLS_KEYFILE in the env file is not a setting of the gateway and "
            "is ignored; did you mean CONNECT_TLS_KEY_FILE?")
    error = ("CONNECT_TLS_KEY_FILE (not set): expected set together with its pair "
             "(certificate and key)")
    assert main(["check-config", "-q", "--env-file", str(env)]) == 2
    assert capfd.readouterr().err.splitlines() == [hint, f"studios-gateway: {error}"]
    options = Options()
    options.parseOptions(["--env-file", str(env)])
    with pytest.raises(SystemExit) as stopped:
        makeService(options)
    assert stopped.value.code == 78
    assert capfd.readouterr().err.splitlines() == [f"studios-gateway: {hint}",
                                                   f"studios-gateway: {error}"]
    with pytest.raises(ConfigError) as bad:  # a value that does not parse: the same
        load_config(environ={"CONNECT_HTTP_PORT": "x", "CONNECT_HTP_PORT": "8080"})
    assert [w for w in bad.value.warnings if "did you mean CONNECT_HTTP_PORT" in w]


def test_check_config_shows_defaults_as_the_readme_writes_them() -> None:
    shown = {name: value for name, value, _ in load_config(environ={}).describe()}
    for var in VARIABLES:
        if var.default is not None and var.name != "CONNECT_REDIS_ADDRESS":
            assert shown[var.name] == var.default


def test_check_config_shows_what_unset_derived_variables_come_to() -> None:
    # cluster.md: "check-config prints every one of these values"; it printed
    # "(not set)" for the node id and advertised address the node actually uses.
    rows = {n: v for n, v, _ in load_config(environ={
        "CONNECT_REDIS_ADDRESS": "127.0.0.1:6379", "CONNECT_BIND_ADDRESS": "10.0.0.5",
        "CONNECT_HTTP_PORT": "8080", "CONNECT_TUNNEL_PORT": "7071",
        "PLATFORM_URL": "https://platform.example"}).describe()}
    assert rows["CONNECT_ADVERTISE_ADDRESS"] == "(not set: 10.0.0.5:7777)"
    assert rows["CONNECT_NODE_ID"] == f"(not set: {socket.gethostname()}-7071)"
    assert rows["CONNECT_PROXY_URL"] == "(not set: http://localhost:8080)"
    assert rows["CONNECT_STUDIOS_DOMAIN"] == "(not set: localhost)"
    assert rows["CONNECT_TUNNEL_URL"] == "(not set: localhost:7071)"
    assert rows["CONNECT_OIDC_ISSUER_URL"] == "(not set: https://platform.example)"
    single = {n: v for n, v, _ in load_config(environ={}).describe()}
    assert single["CONNECT_ADVERTISE_ADDRESS"] == "(not set)"  # no peers without Redis
    assert single["CONNECT_OIDC_ISSUER_URL"] == "(not set)"
    given = {n: v for n, v, _ in load_config(environ={
        "CONNECT_NODE_ID": "gw-1", "PLATFORM_URL": "https://u:pw@platform.example"}
    ).describe()}
    assert given["CONNECT_NODE_ID"] == "gw-1"
    assert "pw" not in given["CONNECT_OIDC_ISSUER_URL"]


@pytest.mark.parametrize("name, given, shown", [
    ("CONNECT_HTTP_IDLE_TIMEOUT", "75", "75s"), ("CONNECT_QUOTA_WINDOW", "1d", "24h"),
    ("CONNECT_LOGIN_TTL", "90m", "90m"), ("CONNECT_TUNNEL_WINDOW_SIZE", "6291456", "6MiB"),
    ("CONNECT_HTTP_MAX_BODY", "1000", "1000"), ("CONNECT_QUOTA_USER_BYTES", "2g", "2GiB"),
])
def test_check_config_shows_values_in_the_tables_forms(name: str, given: str,
                                                       shown: str) -> None:
    rows = {n: v for n, v, _ in load_config(environ={name: given}).describe()}
    assert rows[name] == shown


def test_a_bad_option_is_named_as_typed() -> None:
    # `twistd studios-gateway --http-port abc` said "CONNECT_HTTP_PORT='abc': ...", a name
    # not on the command line; a bad value from the environment keeps its variable's name.
    with pytest.raises(ConfigError) as e:
        load_config(options={"CONNECT_HTTP_PORT": "abc"}, environ={})
    assert str(e.value) == ("--http-port (CONNECT_HTTP_PORT)='abc': expected a whole number "
                            "from 1 to 65535")
    assert e.value.name == "CONNECT_HTTP_PORT"
    with pytest.raises(ConfigError) as e:
        load_config(environ={"CONNECT_HTTP_PORT": "abc"})
    assert str(e.value).startswith("CONNECT_HTTP_PORT='abc'")


def test_unknown_option_is_refused() -> None:
    with pytest.raises(ConfigError, match="CONNECT_NOPE"):
        load_config(options={"CONNECT_NOPE": "1"}, environ={})


# --- durations ----------------------------------------------------------------

units = st.sampled_from([("h", 3600), ("m", 60), ("s", 1), ("ms", 0.001)])


@given(st.lists(st.tuples(units, st.integers(0, 10_000)), min_size=1, max_size=4,
                unique_by=lambda t: t[0][0]))
def test_duration_sums_its_parts(parts) -> None:
    text = "".join(f"{n}{u}" for (u, _), n in parts)
    expected = sum(n * size for (_, size), n in parts)
    if expected > MAX_SECONDS:  # more than a year: refused, not summed
        with pytest.raises(ValueError):
            parse_duration(text)
    else:
        assert parse_duration(text) == pytest.approx(expected)


@given(st.integers(0, 10**9))
def test_duration_format_round_trips(ms: int) -> None:
    seconds = ms / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@given(st.integers(0, 10**9))
def test_duration_setting_form_round_trips(ms: int) -> None:
    text = format_setting(ms / 1000)
    assert parse_duration(text) == pytest.approx(ms / 1000)
    assert sum(c.isalpha() for c in text) <= 2  # one unit


@given(st.integers(0, 2**40))
def test_size_form_round_trips(n: int) -> None:
    from studios_gateway.config_values import size

    assert size(format_size(n)) == n


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("2m", 120), ("1h", 3600),
                                          ("1h30m", 5400), ("250ms", 0.25), ("45", 45)])
def test_duration_examples(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@given(st.text(max_size=12))
def test_duration_junk_is_refused_cleanly(text: str) -> None:
    try:
        value = parse_duration(text)
    except ValueError as e:
        assert "duration" in str(e)
    else:
        assert value >= 0
        assert any(c.isdigit() for c in text)


@pytest.mark.parametrize("text", ["", "m", "1x", "-1s", "1m1m", "1.5", "h1", "1 h"])
def test_duration_refusals(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


# --- workspace allow-list ------------------------------------------------------

ws_ids = st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=12)


@given(ws_ids)
def test_allow_list_unset_allows_all(ws: str) -> None:
    assert load_config(environ={}).workspace_allowed(ws)


@given(st.one_of(st.none(), ws_ids))
def test_allow_list_empty_allows_none(ws) -> None:
    assert not load_config(environ={"TOWER_DATA_STUDIO_ALLOWED_WORKSPACES": ""}
                           ).workspace_allowed(ws)


@given(st.lists(ws_ids, min_size=1, max_size=5), ws_ids)
def test_allow_list_allows_exactly_the_listed(listed, other) -> None:
    raw = " , ".join(listed)
    cfg = load_config(environ={"TOWER_DATA_STUDIO_ALLOWED_WORKSPACES": raw})
    for ws in listed:
        assert cfg.workspace_allowed(ws)
    assert cfg.workspace_allowed(other) == (other in listed)
    assert not cfg.workspace_allowed(None)


# --- every variable's validation -----------------------------------------------

PORT_VARS = ["CONNECT_LISTENER_PORT", "CONNECT_TUNNEL_PORT", "CONNECT_MANAGEMENT_PORT",
             "CONNECT_HTTP_PORT"]
INT_VARS = {"CONNECT_SSH_MAX_CONNECTIONS": (1, 1_000_000),
            "CONNECT_SSH_MAX_CONN_CHANNELS": (1, 10_000), "CONNECT_REDIS_DB": (0, 65535)}
BOOL_VARS = ["CONNECT_REDIS_TLS_ENABLE", "CONNECT_REDIS_TLS_SKIP_VERIFY", "CONNECT_SSH_ENABLED",
             "TOWER_DATA_STUDIO_ENABLE_PATH_ROUTING", "CONNECT_REUSE_PORT",
             "CONNECT_COMPILED_LANE"]
DURATION_VARS = ["LOCAL_CACHE_TTL", "CONNECT_SSH_HANDSHAKE_TIMEOUT", "CONNECT_SHUTDOWN_GRACE"]
FILE_VARS = ["CONNECT_REDIS_TLS_KEY_FILE", "CONNECT_REDIS_TLS_CERT_FILE", "CONNECT_SSH_KEY_PATH",
             "CONNECT_TLS_CERT_FILE", "CONNECT_TLS_KEY_FILE", "CONNECT_REDIS_TLS_CA_FILE"]
URL_VARS = ["PLATFORM_URL"]


def _expect_error(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(environ={name: value})
    assert e.value.name == name
    assert str(e.value).startswith(name)


def _distinct_ports(name: str, port: int) -> dict[str, str]:
    # Keep the other listeners off `port` so only the variable under test matters.
    env = {name: str(port)}
    for other, spare in zip([p for p in PORT_VARS if p != name], (1, 2, 3), strict=False):
        if str(port) == BY_NAME[other].default or other == "CONNECT_MANAGEMENT_PORT":
            env[other] = str(spare if spare != port else 4)
    return env


@given(st.sampled_from(PORT_VARS), st.integers(1, 65535))
def test_ports_accept_the_valid_range(name: str, port: int) -> None:
    cfg = load_config(environ=_distinct_ports(name, port))
    assert getattr(cfg, BY_NAME[name].attr) == port


@given(st.sampled_from(PORT_VARS), st.one_of(st.integers(max_value=0).map(str),
                                             st.integers(min_value=65536).map(str),
                                             st.text(string.ascii_letters, min_size=1)))
def test_ports_refuse_everything_else(name: str, value: str) -> None:
    _expect_error(name, value)


@given(st.sampled_from(sorted(INT_VARS)), st.integers(-10, 2_000_000))
def test_bounded_integers(name: str, n: int) -> None:
    lo, hi = INT_VARS[name]
    if lo <= n <= hi:
        assert getattr(load_config(environ={name: str(n)}), BY_NAME[name].attr) == n
    else:
        _expect_error(name, str(n))


@given(st.sampled_from(BOOL_VARS), st.sampled_from(["true", "TRUE", "1", "yes", "on", "false",
                                                     "False", "0", "no", "off"]))
def test_booleans_accept_common_spellings(name: str, text: str) -> None:
    value = getattr(load_config(environ={name: text}), BY_NAME[name].attr)
    assert value == (text.lower() in ("true", "1", "yes", "on"))


@given(st.sampled_from(BOOL_VARS), st.text(string.ascii_letters, min_size=1, max_size=6))
def test_booleans_refuse_misspellings(name: str, text: str) -> None:
    assume(text.lower() not in ("true", "false", "yes", "no", "on", "off"))
    _expect_error(name, text)


@pytest.mark.parametrize("name", BOOL_VARS)
def test_booleans_say_every_spelling_they_take(name: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(environ={name: "maybe"})
    assert str(e.value) == (f"{name}='maybe': expected true or false (also yes or no, on or "
                            "off, 1 or 0)")


def test_boolean_defaults_are_written_as_check_config_shows_them() -> None:
    """The README table and check-config agree: every switch defaults to true or false."""
    shown = {name: value for name, value, _ in load_config(environ={}).describe()}
    for name in BOOL_VARS:
        assert BY_NAME[name].default in ("true", "false")
        assert shown[name] == BY_NAME[name].default


def test_path_routing_empty_means_false() -> None:
    assert load_config(environ={"TOWER_DATA_STUDIO_ENABLE_PATH_ROUTING": ""}).path_routing is False


@pytest.mark.parametrize("name", DURATION_VARS)
@pytest.mark.parametrize("value", ["soon", "1y", "-5s", "m2"])
def test_durations_refuse_junk(name: str, value: str) -> None:
    _expect_error(name, value)


@pytest.mark.parametrize("name", FILE_VARS)
def test_files_must_exist(name: str, tmp_path) -> None:
    _expect_error(name, str(tmp_path / "nope.pem"))


@pytest.mark.parametrize("name", URL_VARS)
@pytest.mark.parametrize("value", ["ftp://x", "platform", "http://", "https://x:99999"])
def test_urls_are_checked(name: str, value: str) -> None:
    _expect_error(name, value)


@pytest.mark.parametrize("value", ["https://connect.example.com/sub", "connect.example.com/gw/",
                                   "https://connect.example.com?x=1",
                                   "https://connect.example.com#top"])
def test_a_proxy_url_with_a_path_is_refused(value: str) -> None:
    # It was taken, and every login link, redirect and studio URL it made (under the path)
    # answered 404: the gateway serves from the root of its host.
    with pytest.raises(ConfigError) as e:
        load_config(environ={"CONNECT_PROXY_URL": value})
    assert "without a path" in str(e.value) and "CONNECT_PROXY_URL" in str(e.value)
    assert load_config(environ={"CONNECT_PROXY_URL": "https://connect.example.com/"}
                       ).effective_proxy_url == "https://connect.example.com"


@pytest.mark.parametrize("value", ["https://user:hunter2@connect.example.com",
                                   "https://user@connect.example.com",
                                   "ops:hunter2@connect.example.com:8443"])
def test_a_proxy_url_with_a_user_or_password_is_refused(value: str) -> None:
    # It was taken, and every redirect to the login and every login link began with it:
    # the password went to any browser that asked for a studio.
    with pytest.raises(ConfigError) as e:
        load_config(environ={"CONNECT_PROXY_URL": value})
    assert len(e.value.errors) == 1
    line = str(e.value.errors[0])
    assert line.startswith("CONNECT_PROXY_URL=") and "without a user or password" in line
    assert "hunter2" not in line


def test_proxy_url_accepts_a_bare_domain() -> None:
    cfg = load_config(environ={"CONNECT_PROXY_URL": "connect.example.com"})
    assert cfg.proxy_host == "connect.example.com"
    assert cfg.effective_studios_domain == "connect.example.com"
    assert cfg.effective_tunnel_url == ("connect.example.com", 7070)


@pytest.mark.parametrize("name,value", [
    ("CONNECT_SSH_ADDR", "2222"), ("CONNECT_SSH_ADDR", "host:"),
    ("CONNECT_REDIS_ADDRESS", "redis:port"), ("CONNECT_REDIS_ADDRESS", "a b:1"),
    ("CONNECT_TUNNEL_URL", "nohostport"), ("CONNECT_HOST_DOMAIN", "-bad-.example"),
    ("CONNECT_LOG_LEVEL", "loud"), ("CONNECT_GRANT_TYPE", "client_credentials"),
    ("CONNECT_TRUSTED_PROXY_CIDRS", "10.0.0.0/33"), ("CONNECT_REDIS_PREFIX", " "),
    ("TOWER_DATA_STUDIO_ALLOWED_WORKSPACES", "a b"), ("CONNECT_TUNNEL_WINDOW_SIZE", "lots"),
    ("CONNECT_SSH_KEY_VALUE_BASE64", "%%%"), ("CONNECT_NODE_ID", "no spaces"),
    ("CONNECT_CLIENT_NAME", ""),
])
def test_other_validations(name: str, value: str) -> None:
    _expect_error(name, value)


@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 32)),
                min_size=1, max_size=4))
def test_trusted_cidrs_parse(nets) -> None:
    text = ",".join(f"10.{a}.{b}.0/{p}" for a, b, p in nets)
    cfg = load_config(environ={"CONNECT_TRUSTED_PROXY_CIDRS": text})
    assert cfg.trusted_proxy_cidrs == tuple(
        ipaddress.ip_network(f"10.{a}.{b}.0/{p}", strict=False) for a, b, p in nets)


def test_every_variable_is_validated_or_free_text() -> None:
    """No variable silently accepts anything unless it is free text by nature."""
    free_text = {"CONNECT_REDIS_USER", "CONNECT_REDIS_PASSWORD", "CONNECT_MANAGEMENT_AUTH_KEY",
                 "CONNECT_OIDC_CLIENT_REGISTRATION_TOKEN", "CONNECT_STORAGE_ROOT",
                 "CONNECT_CLIENT_NAME", "CONNECT_OIDC_CLIENT_SECRET", "CONNECT_OIDC_SCOPES"}
    for var in VARIABLES:
        with pytest.raises(ConfigError) as e:
            load_config(environ={var.name: "\x00not valid\x00"})
        assert e.value.name == var.name
        if var.name not in free_text:
            with pytest.raises(ConfigError):
                load_config(environ={var.name: "not valid"})


def test_readme_config_table_is_current() -> None:
    from pathlib import Path

    from studios_gateway.docgen import render

    readme = Path(__file__).resolve().parents[2] / "README.md"
    text = readme.read_text()
    assert render(text) == text, "run: python -m studios_gateway.docgen"


@pytest.mark.parametrize("env, url", [
    ({}, "http://localhost"),
    ({"CONNECT_HTTP_PORT": "8080"}, "http://localhost:8080"),
    ({"CONNECT_HTTP_PORT": "443"}, "http://localhost:443"),
    ({"CONNECT_PROXY_URL": "https://connect.example.com"}, "https://connect.example.com"),
])
def test_the_default_proxy_url_carries_the_http_port(env: dict, url: str) -> None:
    assert load_config(environ=env).effective_proxy_url == url


def test_the_default_proxy_url_is_https_on_a_certificate(tmp_path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    env = {"CONNECT_TLS_CERT_FILE": str(cert), "CONNECT_TLS_KEY_FILE": str(key)}
    assert load_config(environ={**env, "CONNECT_HTTP_PORT": "443"}
                       ).effective_proxy_url == "https://localhost"
    assert load_config(environ={**env, "CONNECT_HTTP_PORT": "8443"}
                       ).effective_proxy_url == "https://localhost:8443"


def test_every_platform_or_connect_variable_the_gateway_does_not_use_is_named() -> None:
    cfg = load_config(environ={"TOWER_SERVER_URL": "https://tower.example", "TOWER_FOO": "1",
                               "TOWER_DATA_STUDIO_X": "1", "CONNECT_NOPE": "1",
                               "CONNECT_TOOL_PORT": "8888", "HOME": "/root",
                               "TOWER_DATA_STUDIO_ENABLE_PATH_ROUTING": "false"})
    named = {w.split()[0]: w for w in cfg.warnings if "not a setting" in w}
    assert set(named) == {"TOWER_SERVER_URL", "TOWER_FOO", "TOWER_DATA_STUDIO_X",
                          "CONNECT_NOPE"}
    assert "is ignored; the gateway reads PLATFORM_URL" in named["TOWER_SERVER_URL"]
    assert all("not a setting of the gateway and is ignored" in w for w in named.values())


def test_a_short_management_key_is_warned_of_without_showing_it() -> None:
    # A 1-character bearer key guarding the admin API was taken without a word.
    warned = [w for w in load_config(environ={"CONNECT_MANAGEMENT_PORT": "9000",
                                              "CONNECT_MANAGEMENT_AUTH_KEY": "pw1"}).warnings
              if "CONNECT_MANAGEMENT_AUTH_KEY" in w]
    assert warned == ["CONNECT_MANAGEMENT_AUTH_KEY is short (3 characters): whoever can reach "
                      "the management port may guess it, and with it make sessions and login "
                      "links; use at least 16 random characters (openssl rand -hex 32)"]
    long_key = load_config(environ={"CONNECT_MANAGEMENT_PORT": "9000",
                                    "CONNECT_MANAGEMENT_AUTH_KEY": "k" * 16})
    assert not any("CONNECT_MANAGEMENT_AUTH_KEY" in w for w in long_key.warnings)


def test_an_http_proxy_url_with_a_certificate_is_warned_of(tmp_path) -> None:
    # Taken without a word: every login link, studio address and handoff code the gateway
    # handed out went out in plain HTTP first, to a port that speaks HTTPS, and a login
    # link's form posted there got 400.
    files = {"CONNECT_TLS_CERT_FILE": tmp_path / "cert.pem",
             "CONNECT_TLS_KEY_FILE": tmp_path / "key.pem"}
    for path in files.values():
        path.write_text("not read here\n")
    tls = {name: str(path) for name, path in files.items()}

    def warned(proxy_url: str | None, **more: str) -> list[str]:
        env = {**more, **({"CONNECT_PROXY_URL": proxy_url} if proxy_url else {})}
        return [w for w in load_config(environ=env).warnings if w.startswith(
            "CONNECT_PROXY_URL is http://")]

    assert len(warned("http://connect.example.com:8443", **tls)) == 1
    assert "Write CONNECT_PROXY_URL with https://" in warned("http://connect.example.com",
                                                              **tls)[0]
    assert warned("https://connect.example.com", **tls) == []
    assert warned(None, **tls) == []  # (unset, it is https:// with the certificate)
    assert warned("http://connect.example.com") == []  # no certificate: plain HTTP


def test_redis_tls_without_verification_is_warned_of(tmp_path) -> None:
    # CONNECT_REDIS_TLS_SKIP_VERIFY=true was taken without a word, the CA file silently unused.
    ca = tmp_path / "redis-ca.crt"
    ca.write_text("not read here\n")
    base = {"CONNECT_REDIS_ADDRESS": "redis:6380", "CONNECT_REDIS_TLS_ENABLE": "true",
            "CONNECT_PEER_SECRET": "p" * 32}
    skip = load_config(environ={**base, "CONNECT_REDIS_TLS_SKIP_VERIFY": "true",
                                "CONNECT_REDIS_TLS_CA_FILE": str(ca)})
    warned = [w for w in skip.warnings if "SKIP_VERIFY" in w]
    assert len(warned) == 1 and "CA_FILE is ignored" in warned[0]
    assert "connect token" in warned[0]
    assert not any("SKIP_VERIFY" in w for w in load_config(environ=base).warnings)


# --- bad values of every kind, for every variable ----------------------------------

_SUFFIXES = st.sampled_from(["", "s", "ms", "d", "h30m", "KiB", "GiB", "b", ":2222"])
#: What an operator's typing, a template gone wrong or a hostile file can put in a variable.
HOSTILE = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "-1", "0", "-5s", "1e9", "NaN", "inf", "0x10", "１２", "8GiB",
                     "1000GiB", "100000000d", "true\n", "redis:6379\x00"]),
    st.builds(lambda n, tail: "9" * n + tail, st.integers(15, 6000), _SUFFIXES),
)


@given(st.sampled_from([v.name for v in VARIABLES]), HOSTILE)
def test_every_variable_refuses_bad_values_in_one_clear_line(name: str, value: str) -> None:
    """A bad value stops the start with one short line naming a variable (a traceback, a
    5000-digit echo or Python's own words were what huge numbers gave)."""
    try:
        cfg = load_config(environ={name: value})
    except ConfigError as e:
        message = str(e)
        assert "\n" not in message and len(message) < 400
        assert e.name in BY_NAME and message.startswith(e.name)
        assert "sys.set_int_max_str_digits" not in message
        if BY_NAME[name].secret and len(value.strip()) >= 8 and e.name == name:
            assert value.strip() not in message and REDACTED in message
    else:
        cfg.describe()  # check-config's table can show whatever was accepted


@pytest.mark.parametrize("name,value", [
    ("CONNECT_TUNNEL_WINDOW_SIZE", "8GiB"),  # was accepted; then every bind failed inside
    ("CONNECT_TUNNEL_WINDOW_SIZE", "2GiB"),
    ("CONNECT_TUNNEL_WINDOW_SIZE", "100KiB"),
    ("CONNECT_HTTP_MAX_HEADER_SIZE", "1000GiB"),
    ("CONNECT_HTTP_MAX_REQUEST_LINE", "2MiB"),
    ("CONNECT_QUOTA_SESSION_BANDWIDTH", "0"),  # was "no cap", unlike what the table says
    ("CONNECT_QUOTA_USER_BYTES", "0"),
    ("CONNECT_QUOTA_SESSION_BYTES", "0KiB"),
    ("CONNECT_SSH_ADDR", "foo bar:2222"),  # was accepted; the start failed on a DNS lookup
    ("LOCAL_CACHE_TTL", "366d"),
    ("CONNECT_LOGIN_TTL", "9" * 400 + "d"),  # was a traceback (OverflowError)
    ("CONNECT_SHUTDOWN_GRACE", "9" * 400),
])
def test_absurd_values_are_refused(name: str, value: str) -> None:
    _expect_error(name, value)


@pytest.mark.parametrize("name,value,parsed", [
    ("CONNECT_TUNNEL_WINDOW_SIZE", "1GiB", 1 << 30),
    ("CONNECT_TUNNEL_WINDOW_SIZE", "256KiB", 256 * 1024),
    ("CONNECT_HTTP_MAX_HEADER_SIZE", "1MiB", 1 << 20),
    ("CONNECT_QUOTA_SESSION_BANDWIDTH", "1", 1),
    ("CONNECT_QUOTA_USER_BYTES", "1024GiB", 1 << 40),
    ("LOCAL_CACHE_TTL", "365d", 365 * 86400.0),
    ("CONNECT_SSH_ADDR", "gw-1.internal:2222", ("gw-1.internal", 2222)),
])
def test_large_but_sane_values_are_taken(name: str, value: str, parsed: object) -> None:
    assert getattr(load_config(environ={name: value}), BY_NAME[name].attr) == parsed


def test_a_long_value_is_quoted_cut_with_its_length() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(environ={"CONNECT_HTTP_PORT": "7" * 5000})
    assert str(e.value) == ("CONNECT_HTTP_PORT=" + repr("7" * 80) + "... (5000 characters): "
                            "expected a whole number from 1 to 65535")


def test_every_client_variable_is_known_and_documented() -> None:
    """The connect client's variables: each one settings.py reads is known to check-config
    (not reported as a misspelling) and has a row in docs/studios.md's table (where
    CONNECT_UNKNOWN_SESSION_WAIT had none)."""
    import re
    from pathlib import Path

    from studios_gateway.config import CLIENT_VARIABLES
    from studios_gateway.studio import settings

    repo = Path(__file__).resolve().parents[2]
    read = set(re.findall(r'get\("(CONNECT_[A-Z_]+)"\)', Path(settings.__file__).read_text()))
    assert read <= CLIENT_VARIABLES
    docs = (repo / "docs" / "studios.md").read_text()
    table = docs[docs.index("## The connect client's settings"):]
    table = table[:table.index("\n## ")]
    documented = set(re.findall(r"^\| `(CONNECT_[A-Z_]+)`", table, re.M)) | set(
        re.findall(r"^\| `CONNECT_[A-Z_]+`, `(CONNECT_[A-Z_]+)`", table, re.M))
    assert CLIENT_VARIABLES <= documented, sorted(CLIENT_VARIABLES - documented)


@pytest.mark.parametrize("line,shown", [
    ("CONNECT_REDIS_PASSWORD: hunter2hunter2", "'CONNECT_REDIS_PASSWORD <redacted>'"),
    ("CONNECT-MANAGEMENT-AUTH-KEY=s3cr3tkey", "'CONNECT-MANAGEMENT-AUTH-KEY <redacted>'"),
    ("CONNECT_PEER_SECRET hunter2hunter2hunter2", "'CONNECT_PEER_SECRET <redacted>'"),
    ("JUSTANAME", "'JUSTANAME'"),
])
def test_a_malformed_env_file_line_is_named_not_quoted(tmp_path, line: str, shown: str) -> None:
    """A line that is not NAME=value was quoted whole, with the secret on it."""
    env_file = tmp_path / "gateway.env"
    env_file.write_text(f"CONNECT_HTTP_PORT=8080\n{line}\n")
    with pytest.raises(ConfigError) as e:
        load_config(environ={}, env_file=str(env_file))
    assert str(e.value) == (f"{env_file}:2={shown}: expected a line of the form NAME=value "
                            "(the rest of the line is not shown: it may hold a secret)")


def test_every_malformed_env_file_line_is_said_and_the_rest_still_checked(
        tmp_path: Path) -> None:
    """check-config and the start stopped at the first malformed line: a file with three
    took three runs to mend, and the values of the good lines went unchecked meanwhile."""
    env_file = tmp_path / "gateway.env"
    env_file.write_text("CONNECT_HTTP_PORT=8080\n"
                        "CONNECT_REDIS_PASSWORD: hunter2hunter2\n"
                        "# a comment\n"
                        "JUSTANAME\n"
                        "CONNECT_LOG_LEVEL=chatty\n"
                        "CONNECT-PEER-SECRET=s3cr3tkey\n")
    with pytest.raises(ConfigError) as e:
        load_config(environ={}, env_file=str(env_file))
    assert [err.name for err in e.value.errors] == [
        f"{env_file}:2", f"{env_file}:4", f"{env_file}:6", "CONNECT_LOG_LEVEL"]
    assert "hunter2" not in str(e.value) and "s3cr3t" not in str(e.value)
    # Only malformed lines: the good lines' values are used, and their contradictions said.
    env_file.write_text("CONNECT_TLS_CERT_FILE=/x.pem\nJUSTANAME\nALSO ONE\n")
    with pytest.raises(ConfigError) as e:
        load_config(environ={}, env_file=str(env_file))
    assert [err.name for err in e.value.errors] == [
        f"{env_file}:2", f"{env_file}:3", "CONNECT_TLS_CERT_FILE"]
    with pytest.raises(ConfigError) as e:  # (for the CLI's other commands: each line too)
        read_env_file(str(env_file))
    assert [err.name for err in e.value.errors] == [f"{env_file}:2", f"{env_file}:3"]


def test_a_malformed_line_that_is_a_secret_of_its_own_is_not_shown(tmp_path: Path) -> None:
    """Every malformed line is said, and a line's first word was shown whole: the second
    line of a backslash-continued secret, or each line of a key pasted in, was printed
    (check-config's output, the start's journal). Only a word written as a name is."""
    env_file = tmp_path / "gateway.env"
    env_file.write_text("\n".join((
        "CONNECT_PEER_SECRET=first-half-\\", "SECONDhalfOfTheSecret123",
        "CONNECT_TLS_KEY=\"-----BEGIN PRIVATE KEY-----",
        "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7",
        "q8ZzTlyP0aB9fXcVdE3kLmNoPqRsTuVwXyZ01234567890abcde", "hunter2hunter2",
        "-----END PRIVATE KEY-----\"", "connect_http_port 8080")))
    e = pytest.raises(ConfigError, load_config, environ={}, env_file=str(env_file))
    said = str(e.value)
    for secret in ("SECONDhalf", "MIIEvQ", "q8ZzTly", "hunter2"):
        assert secret not in said, said
    malformed = [err for err in e.value.errors if err.name.startswith(str(env_file))]
    assert [(err.name, err.value) for err in malformed] == [
        (f"{env_file}:2", "<redacted>"), (f"{env_file}:4", "<redacted>"),
        (f"{env_file}:5", "<redacted>"), (f"{env_file}:6", "<redacted>"),
        (f"{env_file}:7", "<redacted>"), (f"{env_file}:8", "connect_http_port <redacted>")]


def test_the_state_directory_is_the_storage_root_below_the_env_file(tmp_path: Path) -> None:
    # The units give no CONNECT_STORAGE_ROOT of their own (it would win over gateway.env,
    # which the gateway reads itself): systemd's $STATE_DIRECTORY stands in below the file.
    state = {"STATE_DIRECTORY": "/var/lib/studios-gateway"}
    config = load_config(environ=state)
    assert (config.storage_root, config.sources["CONNECT_STORAGE_ROOT"]) == (
        "/var/lib/studios-gateway", "state directory")
    env_file = tmp_path / "gateway.env"
    env_file.write_text("CONNECT_STORAGE_ROOT=/srv/studios\n")
    config = load_config(environ=state, env_file=str(env_file))
    assert (config.storage_root, config.sources["CONNECT_STORAGE_ROOT"]) == (
        "/srv/studios", "env file")
    config = load_config(environ={**state, "CONNECT_STORAGE_ROOT": "/opt/x"},
                         env_file=str(env_file))
    assert config.storage_root == "/opt/x"
    assert load_config(environ={}).storage_root == "/data"
    # several StateDirectory= entries: the first
    assert load_config(environ={"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}).storage_root \
        == "/var/lib/a"


def test_the_env_file_s_other_variables_are_named_as_ignored(tmp_path: Path) -> None:
    # Under EnvironmentFile= they reached the process's environment (SSL_CERT_FILE for
    # OpenSSL, TZ); the units now give the file as --env-file, which yields settings only.
    env_file = tmp_path / "gateway.env"
    env_file.write_text("CONNECT_LOG_LEVEL=debug\nSSL_CERT_FILE=/etc/ca.pem\nTZ=UTC\n")
    warnings = load_config(environ={}, env_file=str(env_file)).warnings
    said = [w for w in warnings if "in the env file are not a setting" in w]
    assert said == ["SSL_CERT_FILE, TZ in the env file are not a setting of the gateway and "
                    "are ignored: the gateway takes only its settings from the file, nothing "
                    "for its process's environment (for that, an Environment= line: "
                    "`systemctl edit studios-gateway`)"]
    example = Path(__file__).resolve().parents[2] / "systemd" / "gateway.env.example"
    assert not any("env file" in w
                   for w in load_config(environ={}, env_file=str(example)).warnings)


def test_a_misspelt_name_is_offered_only_a_setting_of_the_gateway() -> None:
    """The hint names a gateway setting like the name after its CONNECT_, or none: not
    studios-connect's CONNECT_TOOL for CONNECT_IDLE (which the gateway would ignore too),
    nor CONNECT_REDIS_DB for CONNECT_STRINGS (alike only in the prefix)."""
    cfg = load_config(environ={"CONNECT_IDLE": "5", "CONNECT_STRINGS": "x",
                               "CONNECT_IDLE_TIMEOUT": "5s", "CONNECT_HTP_PORT": "81"})
    assert sorted(w for w in cfg.warnings if " is not a setting " in w) == [
        "CONNECT_HTP_PORT in the environment is not a setting of the gateway and is ignored; "
        "did you mean CONNECT_HTTP_PORT?",
        "CONNECT_IDLE in the environment is not a setting of the gateway and is ignored",
        "CONNECT_IDLE_TIMEOUT in the environment is not a setting of the gateway and is "
        "ignored; did you mean CONNECT_HTTP_IDLE_TIMEOUT?",
        "CONNECT_STRINGS in the environment is not a setting of the gateway and is ignored"]


def test_the_two_settings_without_connect_are_named_when_given_with_it() -> None:
    """LOCAL_CACHE_TTL and PLATFORM_URL are the seed's names; with CONNECT_ before them (as
    every other setting has) they were ignored with no hint."""
    cfg = load_config(environ={"CONNECT_LOCAL_CACHE_TTL": "5s",
                               "CONNECT_PLATFORM_URL": "https://platform.example"})
    assert sorted(w for w in cfg.warnings if " is not a setting " in w) == [
        "CONNECT_LOCAL_CACHE_TTL in the environment is not a setting of the gateway and is "
        "ignored; the gateway reads LOCAL_CACHE_TTL, without CONNECT_",
        "CONNECT_PLATFORM_URL in the environment is not a setting of the gateway and is "
        "ignored; the gateway reads PLATFORM_URL, without CONNECT_"]


def test_a_line_after_one_ending_with_a_backslash_says_that_lines_are_not_joined(
        tmp_path: Path) -> None:
    """The second half of a backslash-continued value was refused as any malformed line,
    with no word of the line before, whose value was taken cut (with its backslash)."""
    env_file = tmp_path / "gateway.env"
    env_file.write_text("CONNECT_PEER_SECRET=first-half-\\\nSECONDhalfOfTheSecret123\n"
                        "-----BEGIN PRIVATE KEY-----\n")
    e = pytest.raises(ConfigError, load_config, environ={}, env_file=str(env_file))
    malformed = [str(err) for err in e.value.errors if err.name.startswith(str(env_file))]
    assert malformed == [
        f"{env_file}:2='<redacted>': expected a line of the form NAME=value (the rest of the "
        "line is not shown: it may hold a secret; line 1 ends with a backslash, but lines "
        "are not joined: write that value on one line)",
        f"{env_file}:3='<redacted>': expected a line of the form NAME=value (the rest of the "
        "line is not shown: it may hold a secret)"]
    assert "SECONDhalf" not in str(e.value)


def test_a_file_there_but_not_readable_by_this_user_is_said_so(tmp_path, monkeypatch) -> None:
    """check-config run by an operator on a key only the gateway's user may read said
    'expected the path of a readable file', as for a missing one."""
    from studios_gateway import config_values

    there = tmp_path / "key.pem"
    there.write_text("x")
    assert config_values.readable_file(str(there)) == str(there)
    with pytest.raises(ValueError, match=r"^the path of a readable file$"):
        config_values.readable_file(str(tmp_path / "missing.pem"))
    monkeypatch.setattr(config_values.os, "access", lambda path, mode: False)
    with pytest.raises(ValueError, match=rf"this user \({config_values.user_name()}\) may read"):
        config_values.readable_file(str(there))


def test_the_tunnel_retry_period_is_from_1_to_60_seconds() -> None:
    """CONNECT_TUNNEL_RETRY_PERIOD (told to studios at bind): 8s unless set, a small
    install's shorter one taken, and none outside 1-60 s (a studio would not take it)."""
    assert load_config(environ={}).tunnel_retry_period == 8.0
    assert load_config(environ={"CONNECT_TUNNEL_RETRY_PERIOD": "2s"}).tunnel_retry_period == 2
    for bad in ("0", "500ms", "61s", "2 fortnights"):
        with pytest.raises(ConfigError, match="CONNECT_TUNNEL_RETRY_PERIOD"):
            load_config(environ={"CONNECT_TUNNEL_RETRY_PERIOD": bad})
    with pytest.raises(ConfigError) as e:  # (its words gave 90s as an example: review50c)
        load_config(environ={"CONNECT_TUNNEL_RETRY_PERIOD": "90s"})
    assert str(e.value) == ("CONNECT_TUNNEL_RETRY_PERIOD='90s': expected a duration from 1s "
                            "to 60s (units ms, s, m, h)"), str(e.value)
