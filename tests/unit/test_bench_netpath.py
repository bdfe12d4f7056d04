"""bench.netpath's namespaces, made and removed, without root: its ``ip`` calls recorded."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from bench import netpath


class Ip:
    """``ip`` as netpath calls it, failing at the call whose arguments start with `fail`."""

    def __init__(self, fail: tuple[str, ...]) -> None:
        self.fail = fail
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, *args: str) -> None:
        self.calls.append(args)
        if args[:len(self.fail)] == self.fail:
            raise subprocess.CalledProcessError(1, ["ip", *args])

    def run(self, argv: list[str], **_: Any) -> None:
        self.calls.append(tuple(argv[1:]))


@pytest.mark.parametrize(("fail", "deleted"), [
    # no /dev/net/tun: the second namespace's device fails, both namespaces were made
    (("-n", "p-st", "tuntap"), [("netns", "del", "p-gw"), ("netns", "del", "p-st")]),
    (("-n", "p-gw", "tuntap"), [("netns", "del", "p-gw")]),
    # a namespace of that name there already (another run's): not deleted
    (("netns", "add", "p-gw"), []),
])
def test_a_path_that_cannot_be_made_leaves_no_namespace(
        monkeypatch: pytest.MonkeyPatch, fail: tuple[str, ...],
        deleted: list[tuple[str, ...]]) -> None:
    """A step of the making that failed left the namespaces made before it behind (the
    making was outside the cleanup), for every later run to trip over."""
    ip = Ip(fail)
    monkeypatch.setattr(netpath, "_ip", ip)
    monkeypatch.setattr(netpath.subprocess, "run", ip.run)
    with pytest.raises(subprocess.CalledProcessError):
        netpath.make("p")
    assert [c for c in ip.calls if c[:2] == ("netns", "del")] == deleted
