"""Tool presets: the command lines they build, their probes and their start order (no processes)."""

from __future__ import annotations

import json
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from studios_gateway.studio.entrypoint import GROUP_LEADER
from studios_gateway.studio.presets import PRESETS, preset_for
from studios_gateway.studio.presets.base import (
    Installed,
    Place,
    Preset,
    PresetError,
    given,
    inspect_tool,
    port_in,
)
from studios_gateway.studio.presets.jupyterlab import ANNOUNCEMENTS
from studios_gateway.studio.presets.launcher import PresetLauncher, describe, routed_prefix
from studios_gateway.studio.presets.probe import PROBE_INTERVAL, Readiness
from studios_gateway.studio.presets.xpra import free_display
from studios_gateway.wire.bind import BindReply

PATH = Place(port=8888, prefix="/_studio/abcd1234/", workdir="/home/al", user="al")
SUB = Place(port=8888, prefix="/", workdir="/home/al", user="al", display=100)


def knows_all(preset: Preset, version: str = "1.2.3") -> Installed:
    """An installed tool whose help lists every flag the preset may add."""
    names = [f.names[0] for p in (PATH, Place(1, root=True)) for f in preset.flags(p)]
    return Installed(version, "\n".join(names))


def build(tool: str, command: list[str] | None = None, place: Place = PATH) -> Any:
    preset = PRESETS[tool]
    return preset.build(command or [], place, knows_all(preset))


def test_every_tool_but_generic_has_a_preset_named_as_the_tool_table_does() -> None:
    assert set(PRESETS) == {"jupyterlab", "ride", "vscode", "xpra"}
    assert preset_for("generic") is None


def test_jupyterlab_with_no_command_gets_everything_it_needs_behind_the_gateway() -> None:
    launch = build("jupyterlab")
    assert launch.argv[:2] == ["jupyter", "lab"]
    for arg in ("--no-browser", "--ServerApp.ip=127.0.0.1", "--ServerApp.port=8888",
                "--ServerApp.port_retries=0", "--ServerApp.base_url=/_studio/abcd1234/",
                "--ServerApp.allow_remote_access=True", "--IdentityProvider.token=",
                "--PasswordIdentityProvider.hashed_password=",
                "--ServerApp.disable_check_xsrf=False", "--ServerApp.root_dir=/home/al",
                "--LabApp.news_url=None",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"):
        assert arg in launch.argv
    assert "--allow-root" not in launch.argv and launch.cwd == "/home/al"
    assert PRESETS["jupyterlab"].needs_prefix  # it binds first to learn the prefix
    assert PRESETS["jupyterlab"].probe_path(PATH) == "/_studio/abcd1234/api/status"
    root = PRESETS["jupyterlab"].build([], Place(8888, root=True), knows_all(PRESETS["jupyterlab"]))
    assert "--allow-root" in root.argv and "--ServerApp.base_url=/" in root.argv


def test_a_command_keeps_what_the_person_wrote_and_gets_only_what_is_missing() -> None:
    launch = build("jupyterlab", ["/opt/conda/bin/jupyter", "lab", "--port", "9999",
                                  "--notebook-dir=/data", "--IdentityProvider.token="])
    assert launch.port == 9999  # their port wins; the client follows it
    assert not any(a.startswith("--ServerApp.port=") for a in launch.argv)
    assert not any(a.startswith("--ServerApp.root_dir") for a in launch.argv)
    assert launch.argv.count("--IdentityProvider.token=") == 1
    assert "--ServerApp.base_url=/_studio/abcd1234/" in launch.added
    line = describe(PRESETS["jupyterlab"], launch, given=True, version="4.2.5")
    assert line.startswith("jupyterlab preset: added --no-browser ") and "\n" not in line
    assert "127.0.0.1:9999 only" in line and "JupyterLab 4.2.5" in line


def test_a_command_that_is_not_the_tool_is_run_as_given_and_says_so() -> None:
    launch = build("jupyterlab", ["start-my-lab.sh", "--fancy"])
    assert launch.foreign and launch.argv == ["start-my-lab.sh", "--fancy"]
    assert "adds nothing" in describe(PRESETS["jupyterlab"], launch, given=True)


def test_a_flag_the_installed_version_lacks_is_one_line_naming_tool_version_and_flag() -> None:
    preset = PRESETS["vscode"]
    help_text = knows_all(preset).help.replace("--disable-update-check", "")
    with pytest.raises(PresetError) as e:
        preset.build([], SUB, Installed("3.12.0", help_text))
    msg = str(e.value)
    assert "code-server (VS Code) 3.12.0" in msg and "--disable-update-check" in msg
    assert "\n" not in msg
    # ...but a person who gave the flag themselves is not stopped by the check
    launch = preset.build(["code-server", "--disable-update-check"], SUB,
                          Installed("3.12.0", help_text))
    assert launch.argv.count("--disable-update-check") == 1


def test_jupyterlab_news_and_update_check_are_off_where_the_version_has_them() -> None:
    """A comfort flag (optional) is left out, not a reason to refuse, on a JupyterLab that
    predates it (3.x has no news feed); a person's own value wins."""
    preset = PRESETS["jupyterlab"]
    old_help = "\n".join(line for line in knows_all(preset).help.splitlines()
                         if not line.startswith("--LabApp."))
    launch = preset.build([], PATH, Installed("3.4.8", old_help))
    assert not any(a.startswith("--LabApp.") for a in launch.argv)
    own = build("jupyterlab", ["jupyter", "lab", "--LabApp.news_url=https://news.example/"])
    assert "--LabApp.news_url=https://news.example/" in own.argv
    assert "--LabApp.news_url=None" not in own.argv


def test_code_server_binds_loopback_with_auth_off_and_no_base_path() -> None:
    launch = build("vscode", place=PATH)
    assert launch.argv == ["code-server", "/home/al", "--bind-addr=127.0.0.1:8888",
                           "--auth=none", "--disable-telemetry", "--disable-update-check",
                           "--disable-workspace-trust", "--ignore-last-opened"]
    assert not PRESETS["vscode"].needs_prefix  # the gateway strips the prefix
    assert PRESETS["vscode"].probe_path(PATH) == "/healthz"
    theirs = build("vscode", ["code-server", "--bind-addr", "127.0.0.1:7000", "/src"])
    assert theirs.port == 7000 and theirs.argv[-1] == "--ignore-last-opened"


def test_code_server_opens_the_studios_folder_not_the_one_it_last_opened() -> None:
    """Its data directory remembers a folder (another studio's, on the same home), which it
    would open instead of the one on its command line; a code-server that predates the
    option runs without it, and one given as -e is not added twice."""
    preset = PRESETS["vscode"]
    old_help = knows_all(preset).help.replace("--ignore-last-opened", "")
    assert "--ignore-last-opened" not in preset.build([], PATH, Installed("1.60.1", old_help)).argv
    own = build("vscode", ["code-server", "-e", "/src"])
    assert "--ignore-last-opened" not in own.argv and own.argv.count("-e") == 1


@pytest.mark.parametrize("command, added", [
    (["code-server"], False),
    (["code-server", "--extensions-dir", "/opt/ext"], False),  # an option's value
    (["code-server", "--disable-telemetry", "/src"], False),  # (in doubt: code-server's rule)
    (["code-server", "/src"], True),
    (["code-server", "--auth", "none", "/src"], True),
    (["code-server", "--user-data-dir=/d", "/src"], True),
])
def test_a_command_of_ones_own_without_a_folder_keeps_the_last_opened_one(
        command: list[str], added: bool) -> None:
    """Told --ignore-last-opened with no folder on its command line, code-server opens an
    empty window (GET / answered 200, where it redirected to ?folder=<the last one>): a
    command of the person's own that names no folder had its last folder reopened before
    the preset added the option, and an empty window after."""
    assert ("--ignore-last-opened" in build("vscode", command).argv) is added


def test_rstudio_gets_its_documented_flags_and_the_root_path_from_the_routing() -> None:
    launch = build("ride", place=PATH)
    assert launch.argv == ["rserver", "--server-daemonize=0", "--www-address=127.0.0.1",
                           "--www-port=8888", "--auth-none=1", "--server-user=al",
                           "--www-root-path=/_studio/abcd1234"]
    assert "--www-root-path=/" in build("ride", place=SUB).argv
    assert PRESETS["ride"].needs_prefix and 302 in PRESETS["ride"].probe_ok


def test_xpra_has_its_own_display_an_xterm_and_stops_with_xpra_stop() -> None:
    launch = build("xpra", place=SUB)
    assert launch.argv[:4] == ["xpra", "start", ":100",
                               "--start=xterm -xrm XTerm*selectToClipboard:true"]
    for arg in ("--bind-tcp=127.0.0.1:8888", "--html=on", "--daemon=no", "--tcp-auth=none"):
        assert arg in launch.argv
    assert launch.stop_argv == ["xpra", "stop", ":100"]
    wrapped = build("xpra", ["igv", "--batch", "x y"], place=SUB)
    assert wrapped.argv[:5] == ["xpra", "start", ":100", "--start-child=igv --batch 'x y'",
                                "--exit-with-children=yes"]
    assert wrapped.wrapped and not launch.wrapped
    line = describe(PRESETS["xpra"], wrapped, given=True)
    assert line.startswith("xpra preset: your command runs inside Xpra: `xpra start :100 ")
    theirs = build("xpra", ["xpra", "start", ":7", "--bind-tcp=127.0.0.1:6000"], place=SUB)
    assert theirs.port == 6000 and theirs.stop_argv == ["xpra", "stop", ":7"]
    assert ":100" not in theirs.argv


def test_free_display_skips_sockets_and_lock_files() -> None:
    taken = {"/tmp/.X11-unix/X100", "/tmp/.X101-lock"}
    assert free_display(taken.__contains__, first=100) == 102
    assert 100 <= free_display(lambda path: False) < 500


def test_given_and_port_in() -> None:
    assert given(["--port", "9"], ["--port"]) == "9"
    assert given(["--port=9"], ["--x", "--port"]) == "9"
    assert given(["--no-browser", "--x"], ["--no-browser"]) == ""
    assert given(["--portx=9"], ["--port"]) is None
    assert port_in("127.0.0.1:8080") == 8080 and port_in("8080") == 8080
    assert port_in("[::1]:70000") is None and port_in("host") is None


def test_inspect_tool_reads_the_version_and_refuses_a_tool_that_prints_none() -> None:
    calls: list[list[str]] = []

    def run(argv: Any, more_env: Any = None) -> str:
        calls.append(list(argv))
        return "4.100.3 3c0b449c6e6e37b44a8a7938c0d8a3049926a64c with Code 1.100.3\n" \
            if argv[-1] == "--version" else "--bind-addr --auth"

    got = inspect_tool(PRESETS["vscode"], ["/usr/bin/code-server"], run)
    assert got.version == "1.100.3" and "--auth" in got.help  # VS Code's, as tags name it
    assert PRESETS["vscode"].read_version("4.0.1\n") == "4.0.1"
    assert sorted(calls) == [["/usr/bin/code-server", "--help"],
                             ["/usr/bin/code-server", "--version"]]
    assert inspect_tool(PRESETS["xpra"], ["xpra", "start"],
                        lambda a, e: "xpra v3.1.3-r0\n").version == "3.1.3-r0"
    with pytest.raises(PresetError, match="did not print a version"):
        inspect_tool(PRESETS["ride"], ["rserver"], lambda a, e: "")


def test_inspect_tool_asks_for_the_version_and_the_help_at_once() -> None:
    """Each answer is the tool's own start-up (`jupyter lab --version`: 5.8 s on a slow
    machine); the studio dials only after both. A runner that waits until both commands
    are running passes only if they run at the same time."""
    both = threading.Barrier(2, timeout=10)

    def run(argv: Any, more_env: Any = None) -> str:
        both.wait()
        return "jupyter lab 4.6.6\n" if argv[-1] == "--version" else "--ServerApp.base_url"

    got = inspect_tool(PRESETS["jupyterlab"], ["jupyter", "lab"], run)
    assert got.version == "4.6.6" and "base_url" in got.help


def test_jupyterlab_is_asked_without_its_slowest_import_then_as_it_is_if_that_falls_short(
        ) -> None:
    """rfc3987-syntax compiles grammars at import (1.5 s of each answer) and changes
    neither: it is hidden from both questions. Hiding can only take options out of the
    help, so an answer that lacks one the preset adds (or has no version) is asked again
    with nothing hidden, and that answer decides."""
    preset = PRESETS["jupyterlab"]
    full = knows_all(preset, "4.6.6").help
    asked: list[str | None] = []

    def run(argv: Any, more_env: Any = None) -> str:
        hidden = (more_env or {}).get("PYTHONPATH")
        asked.append(hidden)
        if argv[-1] == "--version":
            return "4.6.6\n"
        return full if hidden is None else short

    def enough(installed: Installed) -> bool:
        return not preset.lacks([], PATH, installed)

    short = full  # everything listed with the module hidden: one round, hidden
    got = inspect_tool(preset, ["jupyter", "lab"], run, enough)
    assert got.help == full and len(asked) == 2 and all(asked)
    stand_in = Path(asked[0].split(":")[0], "rfc3987_syntax.py")  # type: ignore[union-attr]
    assert not stand_in.exists()  # removed once asked
    asked.clear()
    short = full.replace("--ServerApp.port_retries", "")  # a plugin failed without it, say
    got = inspect_tool(preset, ["jupyter", "lab"], run, enough)
    assert got.help == full and asked.count(None) == 2 and len(asked) == 4
    assert preset.lacks(["jupyter", "lab", "--ServerApp.port_retries=3"], PATH,
                        Installed("4.6.6", short)) == []  # the person's own value is enough


def test_hidden_modules_cannot_be_imported_by_the_tools_python(tmp_path: Path) -> None:
    from studios_gateway.studio.presets.base import hidden_modules, run_for_text
    with hidden_modules(["json"]) as more_env:
        out = run_for_text([sys.executable, "-c", "import json"], more_env)
    assert "ImportError: json is left out while studios-connect asks the tool" in out
    assert run_for_text([sys.executable, "-c", "import json; print('ok')"]) == "ok\n"


def test_readiness_polls_until_an_ok_status_not_an_open_port() -> None:
    clock = Clock()
    answers: list[Any] = [error.ConnectionRefusedError(), 503, 200]
    asked: list[str] = []

    def fetch(url: str) -> defer.Deferred[int]:
        asked.append(url)
        a = answers.pop(0)
        return defer.fail(a) if isinstance(a, Exception) else defer.succeed(a)

    probe = Readiness(clock, 8888, "/api/status", (200,), fetch)
    ready: list[Any] = []
    probe.start().addCallback(ready.append)
    assert not ready
    clock.advance(PROBE_INTERVAL)
    assert not ready and probe.last == "status 503"
    clock.advance(PROBE_INTERVAL)
    assert ready == [None] and asked == ["http://127.0.0.1:8888/api/status"] * 3
    clock.advance(10)
    assert not answers  # no more polling once ready


class FakeReactor(Clock):
    """A clock that records spawnProcess calls instead of running anything."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[dict[str, Any]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], env: Any = None,
                     path: Any = None, childFDs: Any = None, **kw: Any) -> Any:
        self.spawned.append({"protocol": protocol, "args": args, "env": env, "path": path})

        class Transport:
            pid = None

            def signalProcess(self, sig: Any) -> None:
                pass

        return Transport()


@pytest.fixture(autouse=True)
def private_files_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A launcher's private directory (made by tempfile) goes under the test's tmp_path:
    most tests here never end the tool, which is when the launcher removes it."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def launcher(tool: str, override: str = "") -> tuple[PresetLauncher, FakeReactor]:
    reactor = FakeReactor()
    preset = PRESETS[tool]
    never: Any = lambda url: defer.Deferred()  # noqa: E731 - the probe never answers here
    env = {"PATH": "/usr/bin:/bin", "CONNECT_SESSION_TOKEN": "secret-secret-secret",
           "HOME": "/home/al"}
    return PresetLauncher(reactor, preset, ["/bin/true"] if tool == "generic" else [],
                          SUB, knows_all(preset), env, prefix_override=override,
                          fetch=never), reactor


def reply(routing: str = "path", url: str = "http://gw.example/_studio/abcd1234/") -> BindReply:
    return BindReply(ok=True, tunnel_id="t", routing=routing, public_url=url)


def test_a_bind_first_tool_starts_at_the_first_bind_under_the_routed_prefix(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("studios_gateway.studio.presets.launcher.resolve_argv",
                        lambda argv, path: list(argv))
    lab, reactor = launcher("jupyterlab")
    assert lab.bind_first and not reactor.spawned
    lab.on_bind(reply())
    (spawned,) = reactor.spawned
    assert "--ServerApp.base_url=/_studio/abcd1234/" in spawned["args"]
    # in a process group of its own, so a signal reaches what the tool starts too
    assert spawned["args"][:4] == [sys.executable, "-c", GROUP_LEADER, "jupyter"]
    assert spawned["path"] == "/home/al"
    assert spawned["env"]["CONNECT_TOOL_PATH_PREFIX"] == "/_studio/abcd1234/"
    assert "CONNECT_SESSION_TOKEN" not in spawned["env"]
    lab.on_bind(reply())  # a rebind does not start a second tool
    assert len(reactor.spawned) == 1
    sub, reactor = launcher("jupyterlab")
    sub.on_bind(reply("subdomain", "http://abcd1234.gw.example/"))
    assert "--ServerApp.base_url=/" in reactor.spawned[0]["args"]
    old, reactor = launcher("jupyterlab")
    old.on_bind(BindReply(ok=True, tunnel_id="t"))  # an older gateway says nothing: "/"
    assert "--ServerApp.base_url=/" in reactor.spawned[0]["args"]
    forced, reactor = launcher("jupyterlab", override="/lab/")
    forced.on_bind(reply())
    assert "--ServerApp.base_url=/lab/" in reactor.spawned[0]["args"]


def test_routed_prefix_is_the_public_urls_path() -> None:
    assert routed_prefix(reply()) == "/_studio/abcd1234/"
    assert routed_prefix(reply("subdomain", "https://abcd1234.gw.example/")) == "/"
    assert routed_prefix(BindReply(ok=True)) is None


def test_xpra_stop_runs_before_the_tool_is_signalled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("studios_gateway.studio.presets.launcher.resolve_argv",
                        lambda argv, path: list(argv))
    xpra, reactor = launcher("xpra")
    child = xpra.start()
    signalled: list[Any] = []
    child.terminate = lambda sig=15: signalled.append(sig)  # type: ignore[method-assign]
    xpra.terminate(15)
    assert reactor.spawned[-1]["args"] == ["xpra", "stop", ":100"] and not signalled
    assert "CONNECT_SESSION_TOKEN" not in reactor.spawned[-1]["env"]  # (as the tool's)
    reactor.spawned[-1]["protocol"].processEnded(None)
    assert signalled == [15]


BASE_ENV = {"CONNECT_GATEWAY_URL": "gw:7070", "CONNECT_SESSION_ID": "abcd1234",
            "CONNECT_SESSION_TOKEN": "k" * 20}


def test_preset_settings_platform_names_workdir_and_the_off_switch() -> None:
    from studios_gateway.config import ConfigError
    from studios_gateway.studio.settings import load_client_settings

    s = load_client_settings({**BASE_ENV, "CONNECT_TOOL_PORT": "80", "CONNECT_TOOL": "rstudio",
                              "CONNECT_TOOL_WORKDIR": "/data", "CONNECT_TOOL_PRESET": "off"})
    assert (s.tool, s.tool_workdir, s.preset) == ("ride", "/data", False)
    for name, value in (("CONNECT_TOOL_WORKDIR", "data"), ("CONNECT_TOOL_PRESET", "maybe"),
                        ("CONNECT_TOOL", "emacs")):
        with pytest.raises(ConfigError) as e:
            load_client_settings({**BASE_ENV, "CONNECT_TOOL_PORT": "80", name: value})
        assert e.value.name == name


def test_a_preset_starts_the_tool_only_when_asked_on_the_command_line_or_given_a_command(
        ) -> None:
    from studios_gateway.studio.main import choose_port, uses_preset
    from studios_gateway.studio.settings import load_client_settings

    lab = load_client_settings({**BASE_ENV, "CONNECT_TOOL_PORT": "80",
                                "CONNECT_TOOL": "jupyter"})
    assert uses_preset(lab, [], tool_on_command_line=True)
    assert uses_preset(lab, ["jupyter", "lab"], tool_on_command_line=False)
    assert not uses_preset(lab, [], tool_on_command_line=False)  # a sidecar: tool elsewhere
    generic = load_client_settings({**BASE_ENV, "CONNECT_TOOL_PORT": "80"})
    assert not uses_preset(generic, ["my-app"], tool_on_command_line=True)
    # A preset's tool needs no port from the person: a free one is chosen.
    picked = choose_port({}, {"CONNECT_TOOL": "xpra"}, [])
    assert 1 <= int(picked["CONNECT_TOOL_PORT"] or 0) <= 65535
    assert choose_port({"CONNECT_TOOL_PORT": "7"}, {"CONNECT_TOOL": "xpra"}, []) == \
        {"CONNECT_TOOL": "xpra"}
    assert "CONNECT_TOOL_PORT" not in choose_port({}, {"CONNECT_TOOL": "generic"}, [])


def test_prepare_fails_before_anything_runs_and_binds_with_the_tools_port_and_version(
        tmp_path: Path) -> None:
    from studios_gateway.studio.presets.setup import prepare
    from studios_gateway.studio.settings import load_client_settings

    exe = tmp_path / "code-server"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}
    s = load_client_settings({**BASE_ENV, "CONNECT_TOOL_PORT": "80", "CONNECT_TOOL": "vscode"})
    help_text = ("--bind-addr --auth --disable-telemetry --disable-update-check "
                 "--disable-workspace-trust")
    run = lambda argv, more_env=None: "4.100.3 abc with Code 1.100.3" \
        if argv[-1] == "--version" else help_text  # noqa: E731
    settings, lab = prepare(s, ["code-server", "--bind-addr=127.0.0.1:9000"], env, run=run,
                            reactor=FakeReactor())
    assert (settings.tool_port, settings.tool_version) == (9000, "1.100.3")
    assert lab.launch.cwd == str(tmp_path) and not lab.bind_first
    with pytest.raises(PresetError, match=r"code-server \(VS Code\) 1.100.3 has no --auth option"):
        prepare(s, [], env, run=lambda argv, e: run(argv).replace("--auth", ""),
                reactor=FakeReactor())
    with pytest.raises(FileNotFoundError):
        prepare(s, [], {"PATH": str(tmp_path / "none"), "HOME": str(tmp_path)}, run=run,
                reactor=FakeReactor())
    with pytest.raises(PresetError, match="working directory"):
        prepare(s, [], {**env, "HOME": str(tmp_path / "gone")}, run=run, reactor=FakeReactor())


def test_the_probe_reads_only_the_status_line() -> None:
    from twisted.internet.testing import StringTransport

    from studios_gateway.studio.presets.probe import _StatusLine

    done: defer.Deferred[int] = defer.Deferred()
    got = outcome(done)
    proto = _StatusLine(b"GET /healthz HTTP/1.0\r\n\r\n", done)
    transport = StringTransport()
    proto.makeConnection(transport)
    assert transport.value() == b"GET /healthz HTTP/1.0\r\n\r\n"
    proto.dataReceived(b"HTTP/1.1 2")
    assert got == []
    proto.dataReceived(b"00 OK\r\nContent-Length: 2\r\n")
    assert got == [200] and transport.disconnecting
    bad: defer.Deferred[int] = defer.Deferred()
    failed = outcome(bad)
    other = _StatusLine(b"", bad)
    other.makeConnection(StringTransport())
    other.dataReceived(b"SSH-2.0-OpenSSH\r\n")
    assert failed[0].check(ValueError)


def outcome(d: defer.Deferred[Any]) -> list[Any]:
    got: list[Any] = []
    d.addBoth(got.append)
    return got


def test_openvscode_server_where_an_image_has_it_instead_of_code_server() -> None:
    from studios_gateway.studio.presets import pick
    from studios_gateway.studio.presets.vscode import OpenVSCode

    only_open = {"openvscode-server"}.__contains__
    assert isinstance(pick("vscode", [], only_open), OpenVSCode)
    assert pick("vscode", [], {"code-server", "openvscode-server"}.__contains__) \
        is PRESETS["vscode"]
    assert pick("vscode", [], lambda name: False) is PRESETS["vscode"]  # says code-server
    chosen = pick("vscode", ["/opt/ovs/bin/openvscode-server", "--port", "7000"], only_open)
    assert isinstance(chosen, OpenVSCode)
    assert pick("generic", [], only_open) is None
    assert chosen is not None
    launch = chosen.build(["/opt/ovs/bin/openvscode-server", "--port", "7000"], SUB,
                          knows_all(chosen))
    assert launch.port == 7000
    assert launch.argv[3:] == ["--host=127.0.0.1", "--without-connection-token",
                               "--telemetry-level=off", "--default-folder=/home/al"]
    assert not chosen.needs_prefix and chosen.tool == "vscode"


def test_xpra_leaves_out_the_systems_start_commands_unless_the_person_configured_xpra(
        tmp_path: Path) -> None:
    """Debian's `start = /etc/X11/Xsession true` would run next to the preset's --start:
    an xpra.conf read last (XPRA_USER_CONF_DIRS) empties that list."""
    xpra = PRESETS["xpra"]
    private = tmp_path / "private"
    private.mkdir()
    env = xpra.environment({"HOME": str(tmp_path)}, lambda: private)
    assert env == {"XPRA_USER_CONF_DIRS": str(private)}
    lines = [x for x in (private / "xpra.conf").read_text().splitlines()
             if not x.startswith("#")]
    assert lines == ["start ="]

    def unused() -> Path:
        raise AssertionError("no file is needed")

    assert xpra.environment({"HOME": str(tmp_path), "XPRA_USER_CONF_DIRS": "/mine"},
                            unused) == {}
    (tmp_path / ".xpra").mkdir()  # their own configuration, which the variable would hide
    assert xpra.environment({"HOME": str(tmp_path)}, unused) == {}
    assert PRESETS["jupyterlab"].environment({"HOME": str(tmp_path)}, unused) == {}


def test_jupyterlab_with_its_news_feed_off_does_not_ask_about_news(tmp_path: Path) -> None:
    """With --LabApp.news_url=None a Yes to "Would you like to get notified about official
    Jupyter news?" brings nothing: a page_config.json first on JUPYTER_CONFIG_PATH disables
    the plugin that asks; a JUPYTER_CONFIG_PATH of the person's own follows it."""
    lab = PRESETS["jupyterlab"]
    private = tmp_path / "private"
    private.mkdir()
    argv = ["jupyter", "lab", "--LabApp.news_url=None"]
    home = {"HOME": str(tmp_path)}  # (no page config of the person's: not the runner's)
    env = lab.environment({**home, "JUPYTER_CONFIG_PATH": "/theirs"}, lambda: private, argv)
    assert env == {"JUPYTER_CONFIG_PATH": f"{private}:/theirs"}
    config = json.loads((private / "labconfig" / "page_config.json").read_text())
    assert config == {"disabledExtensions": {ANNOUNCEMENTS: True}}
    assert lab.environment(home, lambda: private, argv) == {"JUPYTER_CONFIG_PATH": str(private)}

    def unused() -> Path:
        raise AssertionError("no file is needed")

    # the person's own news feed: their page asks, as JupyterLab does
    assert lab.environment({}, unused, ["jupyter", "lab", "--LabApp.news_url=https://x/"]) == {}
    built = lab.build([], Place(8888, "/"), knows_all(lab)).argv
    assert "--LabApp.news_url=None" in built  # the preset's own flag is what the check sees


@pytest.mark.parametrize("where", ["JUPYTER_CONFIG_DIR", "JUPYTER_CONFIG_PATH"])
def test_a_persons_own_choice_of_the_announcements_plugin_is_left_to_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """`jupyter labextension enable --level=user` of the plugin writes `false` for it in
    ~/.jupyter's page config. JUPYTER_CONFIG_PATH's directories come first on Jupyter's
    config path, so the preset's `true` there overrode it (docs/studios.md said it won):
    with a page config of theirs naming the plugin the preset adds none."""
    lab = PRESETS["jupyterlab"]
    theirs = tmp_path / "theirs"
    (theirs / "labconfig").mkdir(parents=True)
    (theirs / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {ANNOUNCEMENTS: False}}))
    environ = {"HOME": str(tmp_path), where: str(theirs)}
    private = tmp_path / "private"
    private.mkdir()
    added = lab.environment(environ, lambda: private, ["jupyter", "lab",
                                                       "--LabApp.news_url=None"])
    assert added == {}
    # What JupyterLab makes of it: the person's `false` is the page's.
    jupyterlab_server = pytest.importorskip("jupyterlab_server.config")
    for name, value in {**environ, **added}.items():
        monkeypatch.setenv(name, value)
    page = jupyterlab_server.get_static_page_config()
    assert page["disabledExtensions"][ANNOUNCEMENTS] is False
    # Their page config about other plugins only: the preset's is still added.
    (theirs / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/x-extension:y": True}}))
    assert "JUPYTER_CONFIG_PATH" in lab.environment(
        environ, lambda: private, ["jupyter", "lab", "--LabApp.news_url=None"])


def test_the_files_a_preset_gives_its_tool_are_removed_when_the_tool_ends(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("studios_gateway.studio.presets.launcher.resolve_argv",
                        lambda argv, path: list(argv))
    xpra, reactor = launcher("xpra")
    xpra.start()
    conf = Path(reactor.spawned[0]["env"]["XPRA_USER_CONF_DIRS"])
    assert (conf / "xpra.conf").read_text().endswith("start =\n")
    reactor.spawned[0]["protocol"].processEnded(Failure(error.ProcessDone(0)))
    assert not conf.exists()


def test_the_tool_is_asked_for_its_version_without_the_sessions_token(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The tool runs without CONNECT_SESSION_TOKEN and CONNECT_STRING (child_environment);
    its --version and --help runs had both, and what a tool imports to answer them (a
    person's packages, a JupyterLab server extension) ran with the session's token."""
    from studios_gateway.studio.presets.base import hidden_modules, run_for_text

    monkeypatch.setenv("CONNECT_SESSION_TOKEN", "t0ken")
    monkeypatch.setenv("CONNECT_STRING", "connect://s1:t0ken@gw.test")
    show = [sys.executable, "-c", "import os; print(sorted(k for k in os.environ "
            "if k in ('CONNECT_SESSION_TOKEN', 'CONNECT_STRING')))"]
    assert run_for_text(show) == "[]\n"
    with hidden_modules(["json"]) as more_env:
        assert run_for_text(show, more_env) == "[]\n"


def test_lacks_leaves_out_a_flag_whose_only_if_does_not_hold() -> None:
    """A flag added only to some commands (code-server's --ignore-last-opened, only with a
    folder to open) is not lacking from the help of a tool whose command the preset
    would not add it to: build left it out, lacks counted it (and an answer asked with
    modules hidden would have been asked again for it)."""
    preset = PRESETS["vscode"]
    old = Installed("1.80.0", knows_all(preset).help.replace("--ignore-last-opened", ""))
    assert preset.lacks([], SUB, old) == ["--ignore-last-opened"]  # its folder: added
    assert preset.lacks(["code-server", "/home/al/project"], SUB, old) == [
        "--ignore-last-opened"]
    no_folder = ["code-server", "--auth", "none"]
    assert preset.lacks(no_folder, SUB, old) == []
    assert "--ignore-last-opened" not in preset.build(no_folder, SUB, knows_all(preset)).argv
    assert preset.lacks(["sh", "-c", "true"], SUB, old) == []  # not the tool: adds nothing


FAKE_JUPYTER = """#!{python}
import os, sys
hidden = os.path.exists(os.path.join(
    (os.environ.get("PYTHONPATH") or "").split(os.pathsep)[0], "rfc3987_syntax.py"))
with open({log!r}, "a") as log:
    log.write(("hidden " if hidden else "whole ") + sys.argv[-1] + "\\n")
if sys.argv[-1] == "--version":
    print({version!r})
else:
    print({help!r})
"""


def fake_jupyter(tmp_path: Path, version: str, help_text: str) -> tuple[Path, Path]:
    """A `jupyter` that prints `version` and `help_text` and notes each question (with its
    modules hidden or whole) in a log: its path and the log's."""
    script, log = tmp_path / "jupyter", tmp_path / "asked.log"
    script.write_text(FAKE_JUPYTER.format(python=sys.executable, log=str(log),
                                          version=version, help=help_text))
    script.chmod(0o755)
    log.write_text("")
    return script, log


@pytest.mark.parametrize("version, asked_whole", [
    ("3.5.3", False),  # before the news feed: the version alone says why they are missing
    ("3.6.0", True),  # has them: missing from the answer, asked again with nothing hidden
    ("4.0.0-rc.1", True),
])
def test_a_jupyterlab_older_than_its_optional_flags_is_asked_once(
        tmp_path: Path, version: str, asked_whole: bool) -> None:
    """JupyterLab before 3.6 has no --LabApp.news_url nor check_for_updates_class. Its
    answer with rfc3987_syntax hidden lacked them, and it was asked again with nothing
    hidden (both its seconds-long start-ups once more) for an answer that could not list
    them either: a flag's `since` tells an answer short by hiding from one short by age."""
    from studios_gateway.studio.presets.base import run_for_text

    preset = PRESETS["jupyterlab"]
    old_help = "\n".join(line for line in knows_all(preset).help.splitlines()
                         if not line.startswith("--LabApp."))
    script, log = fake_jupyter(tmp_path, version, old_help)
    got = inspect_tool(preset, [str(script), "lab"], run_for_text,
                       lambda answer: not preset.lacks([], PATH, answer))
    asked = sorted(log.read_text().split("\n")[:-1])
    once = ["hidden --help-all", "hidden --version"]
    assert asked == (sorted(once + ["whole --help-all", "whole --version"]) if asked_whole
                     else once), asked
    launch = preset.build([], PATH, got)  # and the optional flags are left out as before
    assert not any(a.startswith("--LabApp.") for a in launch.argv)


def test_a_needed_flag_missing_from_an_old_versions_answer_is_still_asked_again(
        tmp_path: Path) -> None:
    """`since` speaks only for the flags that have it: an answer (with modules hidden)
    that lacks a needed option is asked again whatever the version."""
    from studios_gateway.studio.presets.base import run_for_text

    preset = PRESETS["jupyterlab"]
    short = "\n".join(line for line in knows_all(preset).help.splitlines()
                      if not line.startswith(("--LabApp.", "--ServerApp.port_retries")))
    script, log = fake_jupyter(tmp_path, "3.5.3", short)
    inspect_tool(preset, [str(script), "lab"], run_for_text,
                 lambda answer: not preset.lacks([], PATH, answer))
    assert sorted(log.read_text().split()) == sorted(
        ["hidden", "--help-all", "hidden", "--version", "whole", "--help-all", "whole",
         "--version"])
