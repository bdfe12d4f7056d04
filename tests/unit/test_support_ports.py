"""The test support's port picking (tests/support/ports.py) and how a gateway's environment
moves to a port picked again (tests/support/gateway.py): no processes, real sockets."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import PORT_VARIABLES, base_env, move_port
from tests.support.ports import (
    HIGHEST,
    LOWEST,
    candidates,
    ephemeral_range,
    free_port,
    free_ports,
    runner_share,
)


@pytest.fixture
def taken() -> Iterator[int]:
    """A port another socket listens on for the test."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        yield int(s.getsockname()[1])


def test_the_ephemeral_range_is_read_from_the_kernels_file(tmp_path: Path) -> None:
    file = tmp_path / "ip_local_port_range"
    file.write_text("32768\t60999\n")
    assert ephemeral_range(file) == (32768, 60999)


@pytest.mark.parametrize("text", ["", "32768", "a b", "60999 32768", "0 100", "1 70000"])
def test_an_unreadable_range_is_unknown(tmp_path: Path, text: str) -> None:
    file = tmp_path / "ip_local_port_range"
    file.write_text(text)
    assert ephemeral_range(file) is None
    assert ephemeral_range(tmp_path / "missing") is None


def test_ports_are_picked_below_and_above_the_ephemeral_range() -> None:
    assert candidates((32768, 60999)) == [range(LOWEST, 32768), range(61000, HIGHEST + 1)]
    assert candidates((1024, 60999)) == [range(61000, HIGHEST + 1)]
    assert candidates((20000, HIGHEST)) == [range(LOWEST, 20000)]
    # Nothing outside it, or the range unknown: the kernel picks (as before).
    assert candidates((1024, HIGHEST)) == []
    assert candidates(None) == []


def test_two_runners_pick_from_shares_of_their_own() -> None:
    ranges = {index: candidates((32768, 60999), (index, 2)) for index in (0, 1)}
    ports = {index: {p for r in ranges[index] for p in r} for index in (0, 1)}
    assert not ports[0] & ports[1]
    assert ports[0] | ports[1] == {p for r in candidates((32768, 60999)) for p in r}
    assert all(p % 2 == 0 for p in ports[0]) and all(p % 2 == 1 for p in ports[1])
    picked = free_ports(10, ranges=ranges[1], rng=random.Random(3))
    assert all(p % 2 == 1 for p in picked)


@pytest.mark.parametrize(("environ", "share"), [
    ({"PYTEST_XDIST_WORKER": "gw1", "PYTEST_XDIST_WORKER_COUNT": "2"}, (1, 2)),
    ({"PYTEST_XDIST_WORKER": "gw0", "PYTEST_XDIST_WORKER_COUNT": "2"}, (0, 2)),
    ({"PYTEST_XDIST_WORKER": "gw0", "PYTEST_XDIST_WORKER_COUNT": "1"}, None),
    ({"PYTEST_XDIST_WORKER": "gw2", "PYTEST_XDIST_WORKER_COUNT": "2"}, None),
    ({"PYTEST_XDIST_WORKER": "master", "PYTEST_XDIST_WORKER_COUNT": "2"}, None),
    ({}, None),
])
def test_a_runners_share_is_read_from_xdists_variables(
        environ: dict[str, str], share: tuple[int, int] | None) -> None:
    assert runner_share(environ) == share


def test_free_ports_are_outside_the_kernels_range_different_and_bindable() -> None:
    known = ephemeral_range()
    ports = free_ports(20)
    assert len(set(ports)) == 20
    if known is not None and candidates(known):
        first, last = known
        assert not any(first <= p <= last for p in ports), (known, ports)
        assert all(LOWEST <= p <= HIGHEST for p in ports)
    for p in ports:  # nothing holds them once picked
        with socket.create_server(("127.0.0.1", p)):
            pass
    assert LOWEST <= free_port() <= HIGHEST or known is None


def test_a_taken_port_is_passed_over(taken: int) -> None:
    free = free_port()
    ranges = [range(taken, taken + 1), range(free, free + 1)]
    for seed in range(20):
        assert free_ports(1, ranges=ranges, rng=random.Random(seed)) == [free]


def test_the_kernel_picks_when_every_candidate_is_taken(taken: int) -> None:
    (port,) = free_ports(1, ranges=[range(taken, taken + 1)], rng=random.Random(0))
    assert port != taken
    assert len(set(free_ports(3, ranges=[]))) == 3


def test_base_env_says_which_ports_it_picked(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    assert set(env.picked) == set(PORT_VARIABLES)
    assert env["CONNECT_SSH_ADDR"] == f"127.0.0.1:{env.picked['CONNECT_SSH_ADDR']}"
    assert env["CONNECT_HTTP_PORT"] == str(env.picked["CONNECT_HTTP_PORT"])
    # A port the test gives is its own: never picked again.
    mine = base_env(tmp_path, CONNECT_HTTP_PORT="12345", CONNECT_SSH_ADDR="127.0.0.1:2222")
    assert set(mine.picked) == set(PORT_VARIABLES) - {"CONNECT_HTTP_PORT", "CONNECT_SSH_ADDR"}


def test_a_port_picked_again_is_moved_wherever_the_environment_names_it() -> None:
    env = {"CONNECT_HTTP_PORT": "23456", "CONNECT_PROXY_URL": "http://localhost:23456",
           "CONNECT_TUNNEL_URL": "127.0.0.1:23456/x", "CONNECT_SSH_ADDR": "127.0.0.1:23456",
           "LONGER": "localhost:234567", "SHORTER": "localhost:3456", "PATH": "/tmp/23456:/bin",
           "NUMBER": "123456"}
    move_port(env, 23456, 34567)
    assert env == {"CONNECT_HTTP_PORT": "34567", "CONNECT_PROXY_URL": "http://localhost:34567",
                   "CONNECT_TUNNEL_URL": "127.0.0.1:34567/x",
                   "CONNECT_SSH_ADDR": "127.0.0.1:34567", "LONGER": "localhost:234567",
                   "SHORTER": "localhost:3456", "PATH": "/tmp/23456:/bin", "NUMBER": "123456"}
