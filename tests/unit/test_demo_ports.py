"""studios-gateway demo picks its own ports distinct from each other and from those given."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from studios_gateway.demo import run


def test_the_picked_ports_are_distinct_free_and_not_taken() -> None:
    ports = run._free_ports(3, {18080})
    assert len(set(ports)) == 3 and 18080 not in ports
    for port in ports:  # free: each can be bound
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_the_kernel_hands_out_twice_or_a_taken_one_is_skipped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel may give the same free port to two sockets asked one after the other
    (a demo failed on it: its SSH listener got the tunnel's port)."""
    handed = iter([52757, 52757, 18080, 40001, 40002])

    class Socket:
        def __init__(self) -> None:
            self.port = next(handed)

        def bind(self, address: Any) -> None:
            pass

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

        def close(self) -> None:
            pass

    monkeypatch.setattr(run.socket, "socket", Socket)
    assert run._free_ports(3, {18080}) == [52757, 40001, 40002]


def test_a_tool_that_is_not_installed_is_said_before_anything_starts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run.shutil, "which", lambda name, path=None: None)
    for tool, program in (("vscode", "code-server"), ("xpra", "xpra"), ("ride", "rserver"),
                          ("jupyterlab", "jupyter")):
        with pytest.raises(SystemExit) as raised:
            run.tool_command(40000, "/", False, tool)
        said = str(raised.value)
        assert f"--tool {tool} needs {program}, which is not on PATH" in said, said
        assert "install" in said
    # auto and builtin fall back to the built-in page
    assert run.tool_command(40000, "/", False, "auto")[0] == "generic"
    assert run.tool_command(40000, "/", True, "vscode")[0] == "generic"


def test_an_installed_preset_tool_is_started_by_its_preset(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run.shutil, "which", lambda name, path=None: f"/usr/bin/{name}")
    assert run.tool_command(40000, "/", False, "xpra") == ("xpra", ["--tool", "xpra"])
    assert run.tool_command(40000, "/", False, "vscode") == ("vscode", ["--tool", "vscode"])


def test_a_port_in_use_is_said_with_the_option_that_changes_it() -> None:
    """8080 taken by another program: the gateway's start-up log said `cannot listen for
    the HTTP proxy (CONNECT_HTTP_PORT) on 127.0.0.1:8080: Address already in use`, a
    variable the demo sets itself, and the demo only `the gateway exited (1)`."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as raised:
            run.main(["--http-port", str(port), "--storage-root", "/nonexistent/never-made"])
        said = str(raised.value)
        assert said.startswith(f"studios-gateway demo: port {port} (--http-port) is in use "
                               "by another program on 127.0.0.1; choose another with "
                               "--http-port, for example --http-port "), said
        suggested = int(said.rsplit(" ", 1)[1])
        assert suggested > port and run._bindable(suggested)
        with pytest.raises(SystemExit) as raised:
            run.main(["--tunnel-port", str(port), "--http-port", "0"])
        assert f"port {port} (--tunnel-port) is in use" in str(raised.value)


def test_the_last_runs_session_is_read_only_when_it_is_one_of_ours(tmp_path: Path) -> None:
    from studios_gateway.demo.run import SESSION_FILE, previous_session

    assert previous_session(tmp_path) is None  # no file: the first run
    (tmp_path / SESSION_FILE).write_text("b8c36660\n")
    assert previous_session(tmp_path) == "b8c36660"
    for other in ("../../etc", "B8C36660", "b8c3666", "", "\xff"):
        (tmp_path / SESSION_FILE).write_text(other, encoding="latin-1")
        assert previous_session(tmp_path) is None, other


def test_the_env_file_replaces_what_is_at_its_path_and_writes_through_nothing(
        tmp_path: Path) -> None:
    """demo.env (the management key) was opened at its path, following a symlink planted
    there: the key went into the file it named, and that file was made 0600."""
    from studios_gateway.demo.run import ENV_FILE, write_env_file

    other = tmp_path / "other"
    other.write_text("someone's\n")
    other.chmod(0o644)
    (tmp_path / ENV_FILE).symlink_to(other)
    path = write_env_file(tmp_path, 8081, "k" * 32)
    assert other.read_text() == "someone's\n" and other.stat().st_mode & 0o777 == 0o644
    assert not path.is_symlink() and path.stat().st_mode & 0o777 == 0o600
    assert path.read_text() == ("CONNECT_BIND_ADDRESS=127.0.0.1\nCONNECT_MANAGEMENT_PORT=8081\n"
                                f"CONNECT_MANAGEMENT_AUTH_KEY={'k' * 32}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [ENV_FILE, "other"]

