"""The studios-gateway command line: arguments as people type them."""

from __future__ import annotations

import pytest

from studios_gateway.cli import build_parser

URL = "http://127.0.0.1:9901"


@pytest.mark.parametrize("argv", [
    ["sessions", "--url", URL, "list"],
    ["sessions", "list", "--url", URL],
    ["sessions", "list", "--json", f"--url={URL}"],
    ["sessions", "show", "--url", URL, "abc"],
    ["sessions", "delete", "abc", "--url", URL],
    ["sessions", "create", "--owner", "alice", "--url", URL],
    ["sessions", "users", "abc", "bob", "--url", URL],
])
def test_the_management_url_goes_before_or_after_the_action(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).url == URL


def test_without_url_it_is_unset_and_the_later_one_wins() -> None:
    assert build_parser().parse_args(["sessions", "list"]).url is None
    args = build_parser().parse_args(["sessions", "--url", "http://a", "list", "--url", URL])
    assert args.url == URL
