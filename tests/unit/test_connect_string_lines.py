"""A connect string copied with the line after it (or with a space) is refused saying so:
the error quoted its first 80 characters and asked for a pin, which looked right."""

from __future__ import annotations

import pytest

from studios_gateway.config import ConfigError
from studios_gateway.studio.settings import load_client_settings

TOKEN = "UUfgiFYwAAkrb6rwRkG2Vk8JZt0819UTFEMznkeDhlE"
STRING = (f"studios-connect://cbdc048b:{TOKEN}@gw.example:7070/?pin=sha256:"
          + "84efa3ce0c1f95752271daf2251bd45ce44f2a04a5abd7fcce090b873e207de6")


@pytest.mark.parametrize("extra", ["\nrun in the studio: ...", " and more"])
def test_a_connect_string_with_more_after_it_is_refused_saying_so(extra: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_client_settings({"CONNECT_STRING": STRING + extra, "CONNECT_TOOL_PORT": "8888"})
    said = str(raised.value)
    assert "on one line with no spaces (this one holds a line break or a space" in said
    assert TOKEN not in said


def test_a_connect_string_with_blanks_around_it_is_taken() -> None:
    settings = load_client_settings({"CONNECT_STRING": f"  {STRING}\n",
                                     "CONNECT_TOOL_PORT": "8888"})
    assert settings.session_id == "cbdc048b"


OTHER = "ZZfgiFYwAAkrb6rwRkG2Vk8JZt0819UTFEMznkeDhlZ"


@pytest.mark.parametrize("extra", [
    f"\nstudios-connect://aa11bb22:{OTHER}@gw.example:7070/",  # a second studio's string
    f"\n{OTHER}",  # a token pasted on the next line
    f" CONNECT_TOKEN={OTHER}"])
def test_what_was_copied_after_the_break_is_not_quoted(extra: str) -> None:
    """The refusal quotes the connect string up to its line break or space, its own token
    redacted, and nothing after it: what was copied with it (another studio's connect
    string, a token) was quoted up to 80 characters, unredacted."""
    for string in (STRING, STRING.partition("?")[0]):  # (with and without its pin)
        with pytest.raises(ConfigError) as raised:
            load_client_settings({"CONNECT_STRING": string + extra,
                                  "CONNECT_TOOL_PORT": "8888"})
        said = str(raised.value)
        assert OTHER[:8] not in said and TOKEN not in said, said
        assert "cbdc048b:<redacted>@gw.example:7070" in said, said
        assert f"then {len(extra.strip()) + 1} more characters, not quoted" in said, said
