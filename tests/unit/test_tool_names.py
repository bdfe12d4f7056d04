"""Tool names as the Platform spells them: accepted wherever a tool is named, shown canonically."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from studios_gateway.cli import build_parser
from studios_gateway.config import ConfigError
from studios_gateway.management.api import make_api
from studios_gateway.management.sessions import Sessions
from studios_gateway.registry.memory import MemoryStore
from studios_gateway.studio.settings import load_client_settings
from studios_gateway.wire import tools
from studios_gateway.wire.bind import BindError, BindRequest, parse_request
from tests.unit.test_api_sessions import call

PLATFORM_NAMES = {"jupyter": "jupyterlab", "rstudio": "ride", "vscode": "vscode",
                  "xpra": "xpra", "code-server": "vscode"}
spellings = st.sampled_from(sorted(tools.TOOL_NAMES))


def api() -> Any:
    sessions = Sessions(MemoryStore(Clock()), clock=Clock())
    return make_api(sessions, lambda new: {"id": new.record.id, "tool": new.record.tool})


@pytest.mark.parametrize("platform,ours", sorted(PLATFORM_NAMES.items()))
def test_admin_api_accepts_platform_names_and_stores_the_canonical_one(platform, ours) -> None:
    a = api()
    status, created = call(a, "POST", "/api/sessions",
                           {"id": "s1", "owner": "alice", "tool": platform})
    assert status == 201 and created["tool"] == ours
    assert call(a, "GET", "/api/sessions/s1")[1]["tool"] == ours
    assert [s["tool"] for s in call(a, "GET", "/api/sessions")[1]["sessions"]] == [ours]


def test_admin_api_refusal_lists_every_accepted_name() -> None:
    status, body = call(api(), "POST", "/api/sessions", {"owner": "alice", "tool": "emacs"})
    assert status == 400
    for name in tools.TOOL_NAMES:
        assert name in body["error"]
    assert call(api(), "POST", "/api/sessions", {"owner": "alice", "tool": 7})[0] == 400


@given(spellings, st.sampled_from([str.lower, str.upper, str.title]))
def test_bind_accepts_any_spelling_and_reads_it_canonically(name, case) -> None:
    line = BindRequest("s1", "t" * 20, "0.12.0", case(name), 8888).encode()
    req = parse_request(line[:-1])
    assert req.tool == tools.canonical(name) and req.tool in tools.TOOLS


def test_bind_refusal_lists_the_accepted_names() -> None:
    with pytest.raises(BindError) as e:
        parse_request(BindRequest("s1", "t" * 20, "0.12.0", "emacs", 1).encode()[:-1])
    assert e.value.code == "malformed" and "jupyterlab (or jupyter)" in e.value.reason
    assert "ride (or rstudio)" in e.value.reason


@pytest.mark.parametrize("platform,ours", sorted(PLATFORM_NAMES.items()))
def test_connect_client_setting_accepts_platform_names(platform, ours) -> None:
    env = {"CONNECT_GATEWAY_URL": "gw:7070", "CONNECT_SESSION_ID": "s1",
           "CONNECT_SESSION_TOKEN": "k" * 20, "CONNECT_TOOL_PORT": "80",
           "CONNECT_TOOL": platform.upper()}
    assert load_client_settings(env).tool == ours


def test_connect_client_setting_refusal_names_the_variable_and_the_names() -> None:
    env = {"CONNECT_GATEWAY_URL": "gw:7070", "CONNECT_SESSION_ID": "s1",
           "CONNECT_SESSION_TOKEN": "k" * 20, "CONNECT_TOOL_PORT": "80", "CONNECT_TOOL": "emacs"}
    with pytest.raises(ConfigError) as e:
        load_client_settings(env)
    assert e.value.name == "CONNECT_TOOL" and "rstudio" in str(e.value)


def test_cli_help_names_every_accepted_tool(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sessions", "create", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "jupyterlab (or jupyter)" in out and "ride (or rstudio)" in out
