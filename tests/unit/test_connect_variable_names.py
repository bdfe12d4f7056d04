"""studios-connect and CONNECT_* names it does not read: a misspelt name was ignored
without a word (CONNECT_TOOL_PERSET=off left the preset on), and a misspelt CONNECT_STRING
was refused as a missing CONNECT_GATEWAY_URL."""

from __future__ import annotations

import os

import pytest

from studios_gateway.studio.main import main
from studios_gateway.studio.settings import unknown_variables

TOKEN = "t" * 43


def test_names_nobody_reads_are_said_with_the_one_they_look_like() -> None:
    said = unknown_variables({
        "CONNECT_TOOL_PERSET": "off", "CONECT_STRING": "x", "connect_tool_port": "1",
        "CONNECT_SOMETHING_ELSE": "1", "CONNECT_LOG_LEVEL": "debug",
        # read by studios-connect or the gateway, or not ours at all: nothing to say
        "CONNECT_TOOL_PRESET": "off", "CONNECT_HTTP_PORT": "80", "HTTPS_PROXY": "x",
        "PATH": "/bin", "HOSTNAME": "studio", "CONTENT_TYPE": "x"})
    assert said == [
        "CONECT_STRING is not a setting of studios-connect and is ignored; did you mean "
        "CONNECT_STRING?",
        "CONNECT_LOG_LEVEL is the gateway's setting, not studios-connect's; studios-connect "
        "reads CONNECT_CLIENT_LOG_LEVEL",
        "CONNECT_SOMETHING_ELSE is not a setting of studios-connect and is ignored",
        "CONNECT_TOOL_PERSET is not a setting of studios-connect and is ignored; did you "
        "mean CONNECT_TOOL_PRESET?",
        "connect_tool_port is not a setting of studios-connect and is ignored; did you mean "
        "CONNECT_TOOL_PORT?"]


@pytest.mark.parametrize(("misspelt", "missing"), [
    ("CONECT_STRING", "CONNECT_GATEWAY_URL (not set)"),
    ("CONNECT_TOOL_PROT", "CONNECT_TOOL_PORT (not set)"),
])
def test_a_setting_refused_as_missing_names_its_misspelt_name_in_the_same_line(
        misspelt: str, missing: str, capsys: pytest.CaptureFixture[str]) -> None:
    environ = {"CONNECT_STRING": f"studios-connect://abcd1234:{TOKEN}@127.0.0.1:1/",
               "CONNECT_TOOL_PORT": "8888", "PATH": "/usr/bin:/bin"}
    right = misspelt.replace("CONECT", "CONNECT").replace("PROT", "PORT")
    environ[misspelt] = environ.pop(right)
    assert main([], environ) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"studios-connect: {missing}: expected "), err
    assert f"; {misspelt} is not a setting of studios-connect and is ignored; did you mean " \
           f"{right}?" in err
    assert TOKEN not in err


def test_twistd_studios_connect_says_the_misspelt_name_on_the_refusals_line(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    from studios_gateway.component import EX_CONFIG
    from studios_gateway.studio.tap import Options, makeService

    for name in [n for n in os.environ if n.upper().startswith("CONNECT")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CONECT_STRING", f"studios-connect://abcd1234:{TOKEN}@127.0.0.1:1/")
    monkeypatch.setenv("CONNECT_TOOL_PORT", "8888")
    options = Options()
    options.parseOptions([])
    with pytest.raises(SystemExit) as e:
        makeService(options)
    assert e.value.code == EX_CONFIG
    err = capfd.readouterr().err  # the real stderr: twistd sends sys.stderr to its log
    # named by the program refusing, as the studios-connect command's refusal is (the
    # line said "studios-gateway:" here, the gateway's start refusal being reused)
    assert err.startswith("studios-connect: "), err
    assert "CONNECT_GATEWAY_URL (not set)" in err and "; CONECT_STRING is not a setting of " \
        "studios-connect and is ignored; did you mean CONNECT_STRING?" in err, err
    assert TOKEN not in err


def test_a_name_with_braces_is_said_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each sentence was given to the logger as its format: a brace in a name (or in a
    # prefix, for the prefix warning) made the line "Unable to format event ...".
    from twisted.logger import LogLevel, capturedLogs, formatEvent

    from studios_gateway.studio.tap import Options, makeService

    for name in [n for n in os.environ if n.upper().startswith("CONNECT")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CONNECT_STRING", f"studios-connect://abcd1234:{TOKEN}@127.0.0.1:1/")
    monkeypatch.setenv("CONNECT_TOOL_PORT", "8888")
    monkeypatch.setenv("CONNECT_TOOL_{PORT}", "1")
    options = Options()
    options.parseOptions([])
    with capturedLogs() as events:
        makeService(options)
    said = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    assert said == ["CONNECT_TOOL_{PORT} is not a setting of studios-connect and is ignored; "
                    "did you mean CONNECT_TOOL_PORT?"], said
