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
