"""studios-connect's settings as both entry points start with them: what is refused before
anything starts, and what two settings that contradict each other give."""

from __future__ import annotations

from pathlib import Path

import pytest

from studios_gateway.config import ConfigError
from studios_gateway.studio.main import choose_port
from studios_gateway.studio.settings import SettingsRefused, load_at_start, load_client_settings

TOKEN = "t" * 24
ENV = {"CONNECT_GATEWAY_URL": "127.0.0.1:7070", "CONNECT_SESSION_ID": "abcd1234",
       "CONNECT_SESSION_TOKEN": TOKEN, "CONNECT_TOOL_PORT": "8888"}


def test_a_workdir_that_does_not_exist_is_refused_at_the_start(tmp_path: Path) -> None:
    """Only a command of its own was refused one: a tool started elsewhere (only its port
    given) and twistd studios-connect started, ssh and sftp to begin nowhere."""
    settings, _ = load_at_start({**ENV, "CONNECT_TOOL_WORKDIR": str(tmp_path)})
    assert settings.tool_workdir == str(tmp_path)
    with pytest.raises(SettingsRefused) as e:
        load_at_start({**ENV, "CONNECT_TOOL_WORKDIR": str(tmp_path / "missing")})
    assert str(e.value) == (f"the tool's working directory {tmp_path / 'missing'} does not "
                            "exist (CONNECT_TOOL_WORKDIR)")


def test_a_session_id_other_than_the_connect_strings_is_refused() -> None:
    """The connect string's token is its session's: another CONNECT_SESSION_ID beside it
    dialled and was refused by the gateway as a wrong token, with no word of the id."""
    env = {"CONNECT_STRING": f"studios-connect://abcd1234:{TOKEN}@127.0.0.1:7070/",
           "CONNECT_TOOL_PORT": "8888"}
    with pytest.raises(ConfigError) as e:
        load_client_settings({**env, "CONNECT_SESSION_ID": "other99"})
    assert str(e.value) == ("CONNECT_SESSION_ID='other99': expected the connect string's "
                            "session abcd1234 (its token is that session's), or "
                            "CONNECT_SESSION_TOKEN set too")
    assert TOKEN not in str(e.value)
    same = load_client_settings({**env, "CONNECT_SESSION_ID": "abcd1234"})
    assert same.session_id == "abcd1234"
    both = load_client_settings({**env, "CONNECT_SESSION_ID": "other99",
                                 "CONNECT_SESSION_TOKEN": "u" * 24})
    assert (both.session_id, both.token) == ("other99", "u" * 24)


def test_no_port_is_chosen_for_a_tool_whose_preset_is_off() -> None:
    """With CONNECT_TOOL_PRESET=off no preset starts the tool: a port chosen for it was one
    nothing listened on, and the client waited without end instead of refusing."""
    options: dict[str, str | None] = {"CONNECT_TOOL": "jupyterlab"}
    assert choose_port({}, options, [])["CONNECT_TOOL_PORT"]  # the preset starts it there
    env = {**ENV, "CONNECT_TOOL_PRESET": "off"}
    del env["CONNECT_TOOL_PORT"]
    assert "CONNECT_TOOL_PORT" not in choose_port(env, options, [])
    with pytest.raises(SettingsRefused) as e:
        load_at_start(env, choose_port(env, options, []))
    assert str(e.value).startswith("CONNECT_TOOL_PORT (not set): expected the port")


def test_the_help_gives_every_exit_status_the_docs_give() -> None:
    """--help said 2 only for the gateway's refusal: a wrong setting (2) and a command that
    is not installed (127), in docs/studios.md's table, were not in it."""
    from studios_gateway.studio.main import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "2 when the gateway refuses the studio for good" in text
    assert "or when a setting is wrong (one line names it, before anything starts)" in text
    assert "127 when the command is not installed" in text


def test_a_bad_session_id_or_token_is_refused_saying_what_one_looks_like() -> None:
    """'expected the session id the gateway gave' did not say why BAD_ID was not one (a
    pasted id in capitals, say), nor the token's refusal why a cut-short one was wrong."""
    with pytest.raises(ConfigError) as e:
        load_client_settings({**ENV, "CONNECT_SESSION_ID": "BAD_ID"})
    assert str(e.value) == ("CONNECT_SESSION_ID='BAD_ID': expected the session id the gateway "
                            "gave (1-63 lowercase letters, digits or '-', not starting with "
                            "'-')")
    with pytest.raises(ConfigError) as e:
        load_client_settings({**ENV, "CONNECT_SESSION_TOKEN": "short-secret"})
    assert "short-secret" not in str(e.value)
    assert str(e.value).endswith("expected the session's connect token (16 to 512 characters)")


def test_the_gateways_tunnel_url_set_in_a_studio_names_the_clients_variable() -> None:
    """CONNECT_TUNNEL_URL (the operators' table: the address of the connect server) is the
    gateway's; set in a studio for the client it was ignored without a word, and the
    refusal of the missing CONNECT_GATEWAY_URL did not say why."""
    env = {k: v for k, v in ENV.items() if k != "CONNECT_GATEWAY_URL"}
    with pytest.raises(SettingsRefused) as e:
        load_at_start({**env, "CONNECT_TUNNEL_URL": "gw:7070"})
    assert str(e.value) == ("CONNECT_GATEWAY_URL (not set): expected the gateway's tunnel "
                            "address (or a CONNECT_STRING); CONNECT_TUNNEL_URL is the "
                            "gateway's setting, not studios-connect's; studios-connect reads "
                            "CONNECT_GATEWAY_URL (or CONNECT_STRING)")


def test_a_command_without_the_double_dash_says_where_it_goes(
        capsys: pytest.CaptureFixture[str]) -> None:
    """An image's CMD ["jupyter", "lab"] (no "--") after the entry point's studios-connect
    --tool jupyterlab exited 2 with only argparse's 'unrecognized arguments' (builder50)."""
    from studios_gateway.studio.main import main

    with pytest.raises(SystemExit) as e:
        main(["--tool", "jupyterlab", "jupyter", "lab", "--ServerApp.terminals_enabled=False"],
             {})
    assert e.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert ("unrecognized arguments: jupyter lab --ServerApp.terminals_enabled=False; a command "
            "goes after '--': studios-connect [options] -- jupyter lab "
            "--ServerApp.terminals_enabled=False (in a Containerfile: CMD [\"--\", \"jupyter\", "
            "\"lab\", \"--ServerApp.terminals_enabled=False\"])") in err
    with pytest.raises(SystemExit) as e:  # an option it does not know stays argparse's word
        main(["--tool", "jupyterlab", "--no-such-option"], {})
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().endswith(
        "error: unrecognized arguments: --no-such-option")
