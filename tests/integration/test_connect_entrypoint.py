"""Entry-point mode of `studios-connect` with real processes: `studios-connect -- CMD`."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from studios_gateway.registry.base import new_token
from studios_gateway.studio.entrypoint import ToolChild
from tests.support.gateway import BIN, REPO, GatewayEnv, GatewayProcess, base_env, routing_env
from tests.support.ports import free_port

pytestmark = pytest.mark.slow


def connect(tool: str, more_env: dict[str, str] | None = None, **kw: Any
            ) -> subprocess.Popen[str]:
    """studios-connect for a gateway nobody runs (it keeps retrying), with `tool` as child."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    env.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
                "CONNECT_STRING": f"studios-connect://abcd1234:{new_token()}@127.0.0.1:"
                                  f"{free_port()}/",
                "CONNECT_TOOL_PORT": "5555", "CONNECT_TOOL_PATH_PREFIX": "/_studio/abcd1234/",
                **(more_env or {})})
    return subprocess.Popen([str(BIN / "studios-connect"), "--", sys.executable, "-c",
                             textwrap.dedent(tool)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_the_tool_gets_its_port_and_prefix_and_we_exit_with_its_status() -> None:
    proc = connect("""
        import os, sys
        print(os.environ["CONNECT_TOOL_PORT"], os.environ["CONNECT_TOOL_PATH_PREFIX"],
              "CONNECT_STRING" in os.environ)
        sys.exit(3)
    """)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    assert out.split() == ["5555", "/_studio/abcd1234/", "False"]  # the token stays with us
    # a tool that ends by itself ends the container: said at warn (it was at info)
    assert "#warn] the tool exited by itself with status 3; studios-connect ends with it" \
        in err, err


def test_a_misspelt_variable_is_one_warning_at_the_start() -> None:
    """CONNECT_TOOL_PERSET=off was ignored without a word."""
    proc = connect("print('ran')", {"CONNECT_TOOL_PERSET": "off"})
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out.strip() == "ran", err
    warned = [line for line in err.splitlines() if "#warn]" in line]
    assert warned[0].endswith("#warn] CONNECT_TOOL_PERSET is not a setting of studios-connect "
                              "and is ignored; did you mean CONNECT_TOOL_PRESET?"), err
    assert "CONNECT_TOOL_PERSET" not in "".join(warned[1:])  # said once


def test_a_command_of_its_own_runs_in_connect_tool_workdir(tmp_path: Any) -> None:
    """CONNECT_TOOL_WORKDIR was used by the presets only: a command of its own (or any
    command with CONNECT_TOOL_PRESET=off) ran where studios-connect was started."""
    proc = connect("import os; print(os.getcwd())", {"CONNECT_TOOL_WORKDIR": str(tmp_path)},
                   cwd="/")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out.strip() == str(tmp_path), err
    proc = connect("print('ran')", {"CONNECT_TOOL_WORKDIR": str(tmp_path / "missing")})
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "ran" not in out, (out, err)
    assert err == f"studios-connect: the tool's working directory {tmp_path / 'missing'} does " \
                  "not exist (CONNECT_TOOL_WORKDIR)\n"


def test_a_tool_started_elsewhere_with_a_missing_workdir_exits_2_at_once(tmp_path: Any) -> None:
    """Only a command of its own was refused a CONNECT_TOOL_WORKDIR that is not there: with
    only a port given the client dialled, and ssh and sftp were to start in it; twistd
    studios-connect too (78 there, a setting that cannot work)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    env.update({"PYTHONPATH": str(REPO), "CONNECT_TOOL_PORT": "5555",
                "CONNECT_STRING": f"studios-connect://abcd1234:{new_token()}@127.0.0.1:"
                                  f"{free_port()}/",
                "CONNECT_TOOL_WORKDIR": str(tmp_path / "missing")})
    line = (f"studios-connect: the tool's working directory {tmp_path / 'missing'} does not "
            "exist (CONNECT_TOOL_WORKDIR)\n")
    for argv, status in (([str(BIN / "studios-connect")], 2),
                         ([str(BIN / "twistd"), "-n", "studios-connect"], 78)):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30,
                              cwd=tmp_path)
        assert (done.returncode, done.stderr) == (status, line), (argv, done.stderr)


# A tool that says "ready", reports the SIGTERM it is stopped with and exits 7 then;
# with `listen`, it first listens on its port (the client dials the gateway once it
# accepts).
def stoppable_tool(listen: bool = False) -> str:
    return textwrap.dedent(f"""
        import os, signal, socket, sys
        def stop(signum, frame):
            print("tool got SIGTERM", flush=True)
            sys.exit(7)
        signal.signal(signal.SIGTERM, stop)
        if {listen}:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", int(os.environ["CONNECT_TOOL_PORT"])))
            s.listen()
        print("ready", flush=True)
        while True:
            s.accept()[0].close() if {listen} else signal.pause()
    """)


def test_sigterm_is_passed_to_the_tool() -> None:
    proc = connect(stoppable_tool())
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"  # the event: the tool is up
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "tool got SIGTERM" in out
    assert proc.returncode == 7, err


def _gateway(tmp: Path, env: GatewayEnv) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp, env)
    try:
        gw.wait_healthy()
        yield gw
    finally:
        gw.stop()


# One gateway per routing mode for the module: each test makes a session of its own and
# reads only what its studios-connect says, never the gateway's log or state.
@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("gateway")
    yield from _gateway(tmp, base_env(tmp))


@pytest.fixture(scope="module")
def path_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("path-gateway")
    yield from _gateway(tmp, routing_env(tmp, "path"))


def _session(gw: GatewayProcess) -> dict[str, Any]:
    import json

    status, body, _ = gw.request("/api/sessions", method="POST", body={"owner": "alice"})
    assert status == 201, body
    return dict(json.loads(body))


def _studio(connect_string: str, **env: str) -> subprocess.Popen[str]:
    """studios-connect with a listening stoppable_tool as its child, for a real gateway."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    full.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
                 "CONNECT_STRING": connect_string, "CONNECT_TOOL_PORT": str(free_port()),
                 **env})
    # A session of its own: the test can stop studios-connect and its tool together.
    return subprocess.Popen([str(BIN / "studios-connect"), "--", sys.executable, "-c",
                             stoppable_tool(listen=True)], env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _kill(proc: subprocess.Popen[str]) -> None:
    """studios-connect and the tool it runs (its process group, which the test made)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def _ended(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """What studios-connect wrote, once it has exited on its own (within 30s)."""
    try:
        return proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # it ran on with its tool: the defect
        _kill(proc)
        raise


def _wait_bound(gw: GatewayProcess, sid: str) -> None:
    """Until the admin API shows the session's tunnel (the event), for up to 30s."""
    import json
    import time

    deadline = time.monotonic() + 30
    while True:
        status, body, _ = gw.request(f"/api/sessions/{sid}")
        if status == 200 and json.loads(body).get("connected"):
            return
        assert time.monotonic() < deadline, gw.output()[-2000:]
        time.sleep(0.1)


def test_a_wrong_token_stops_the_tool_and_exits_2(gateway: GatewayProcess) -> None:
    """A final refusal used to leave the tool running and studios-connect with it: a
    container that never ended, serving nobody."""
    created = _session(gateway)
    bad = created["connect_string"].replace(created["token"], "x" * len(created["token"]))
    proc = _studio(bad, CONNECT_TOOL_PATH_PREFIX="/")  # the prefix given: the tool starts at once
    out, err = _ended(proc)
    assert "tool got SIGTERM" in out, (out, err)
    assert proc.returncode == 2, err
    assert "the gateway refused the bind: bad_token" in err
    assert "stopping the tool (the studio cannot be reached without its tunnel)" in err


def test_without_a_prefix_a_wrong_token_exits_2_before_the_tool_starts(
        gateway: GatewayProcess) -> None:
    created = _session(gateway)
    bad = created["connect_string"].replace(created["token"], "x" * len(created["token"]))
    proc = _studio(bad)
    out, err = _ended(proc)
    assert "ready" not in out and proc.returncode == 2, (out, err)
    assert "the gateway refused the bind: bad_token" in err


def _studio_env(connect_string: str) -> dict[str, str]:
    """studios-connect's environment for a real gateway's session, with a free tool port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    env.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
                "CONNECT_STRING": connect_string, "CONNECT_TOOL_PORT": str(free_port())})
    return env


def test_a_command_is_told_the_path_prefix_the_gateway_routes_it_under(
        path_gateway: GatewayProcess) -> None:
    """In path mode a command of its own got CONNECT_TOOL_PATH_PREFIX='' (it was started
    before the bind said the prefix) and served at / what browsers ask under
    /_studio/<id>/."""
    created = _session(path_gateway)
    env = _studio_env(created["connect_string"])
    proc = subprocess.run([str(BIN / "studios-connect"), "--", sys.executable, "-c",
                           "import os; print(repr(os.environ['CONNECT_TOOL_PATH_PREFIX']))"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.stdout.strip() == repr(f"/_studio/{created['id']}/"), proc.stderr
    assert proc.returncode == 0, proc.stderr


def test_a_command_started_at_the_bind_is_watched_until_it_accepts(
        gateway: GatewayProcess) -> None:
    """Nothing waited for the port of a command started at the bind: a tool on the wrong
    port showed browsers the 504 page for ever and the log never named the port it must
    use (tests/unit/test_client_tool.py has the 30s notice); now the log also says when the
    tool accepts."""
    import threading

    created = _session(gateway)
    proc = _studio(created["connect_string"])  # no prefix given: started at the bind
    watchdog = threading.Timer(30, _kill, [proc])  # the line never came: end the wait
    watchdog.start()
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().strip() == "ready"
        lines = iter(proc.stderr.readline, "")
        said = next((line for line in lines if "tool is accepting connections" in line), "")
    finally:
        watchdog.cancel()
        _kill(proc)
    assert re.search(r"tool is accepting connections on port [0-9]+ \([0-9]+s after it "
                     r"started\)", said), said


# A web app that serves at / whatever CONNECT_TOOL_PATH_PREFIX says (404 elsewhere)
ROOT_ONLY_APP = textwrap.dedent("""
    import os
    from http.server import BaseHTTPRequestHandler, HTTPServer
    class Page(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/" else 404)
            self.end_headers()
        def log_message(self, *args):
            pass
    HTTPServer(("127.0.0.1", int(os.environ["CONNECT_TOOL_PORT"])), Page).serve_forever()
""")


def test_a_command_served_outside_its_routed_prefix_is_one_warning(
        path_gateway: GatewayProcess) -> None:
    """In path mode browsers got the app's own 404 pages, and the log said nothing: an app
    that ignores CONNECT_TOOL_PATH_PREFIX, and one given CONNECT_TOOL_PATH_PREFIX=/."""
    said = []
    for given in ({}, {"CONNECT_TOOL_PATH_PREFIX": "/"}):
        created = _session(path_gateway)
        said.append((f"/_studio/{created['id']}/",
                     _first_warning(created["connect_string"], given)))
    (prefix, ignored), (routed, given_root) = said
    assert ignored.rstrip().endswith(
        f"the tool answers 404 at {prefix} but 200 at /: it seems to serve at the root and "
        f"ignore its path prefix, so browsers get its 404 page. It must serve under "
        f"CONNECT_TOOL_PATH_PREFIX ({prefix}); in subdomain mode it would be served at /"), \
        ignored
    assert given_root.rstrip().endswith(
        f"CONNECT_TOOL_PATH_PREFIX is / but the gateway routes this studio under {routed} "
        f"(path mode) and passes that path on unchanged, so the tool gets requests under "
        f"{routed}; unset CONNECT_TOOL_PATH_PREFIX to be told the gateway's"), given_root


def test_a_tool_started_elsewhere_served_outside_its_prefix_is_one_warning(
        path_gateway: GatewayProcess) -> None:
    """studios-connect given only the port of a tool already running (python3 -m
    http.server, say) in path mode: browsers got the tool's 404 pages under
    /_studio/<id>/ and the log said nothing, as for a command of its own before."""
    port = str(free_port())
    app = subprocess.Popen([sys.executable, "-c", ROOT_ONLY_APP],
                           env={**os.environ, "CONNECT_TOOL_PORT": port})
    try:
        created = _session(path_gateway)
        said = _first_warning(created["connect_string"], {"CONNECT_TOOL_PORT": port},
                              command=[])
    finally:
        app.kill()
        app.wait()
    prefix = f"/_studio/{created['id']}/"
    assert said.rstrip().endswith(
        f"the tool answers 404 at {prefix} but 200 at /: it seems to serve at the root and "
        f"ignore its path prefix, so browsers get its 404 page. It must serve under "
        f"{prefix}, the path the gateway passes on in path mode (the tool was started "
        "elsewhere, so studios-connect could not tell it); in subdomain mode it would be "
        "served at /"), said


def _first_warning(connect_string: str, more_env: dict[str, str],
                   command: list[str] | None = None) -> str:
    """The first warning of studios-connect running ROOT_ONLY_APP, or `command` ([]: none,
    the tool is started elsewhere) ("" if none in 30s)."""
    import threading

    env = {**_studio_env(connect_string), **more_env}
    command = ["--", sys.executable, "-c", ROOT_ONLY_APP] if command is None else command
    proc = subprocess.Popen([str(BIN / "studios-connect"), *command], env=env,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    watchdog = threading.Timer(30, _kill, [proc])  # the line never came: end the wait
    watchdog.start()
    try:
        assert proc.stderr is not None
        return next((line for line in iter(proc.stderr.readline, "") if "#warn]" in line), "")
    finally:
        watchdog.cancel()
        _kill(proc)


def test_a_deleted_session_stops_the_tool_and_exits_2(gateway: GatewayProcess) -> None:
    created = _session(gateway)
    proc = _studio(created["connect_string"], CONNECT_UNKNOWN_SESSION_WAIT="0")
    try:
        _wait_bound(gateway, created["id"])
        status, body, _ = gateway.request(f"/api/sessions/{created['id']}", method="DELETE")
        assert status in (200, 204), body
    except BaseException:
        _kill(proc)
        raise
    out, err = _ended(proc)
    assert "tool got SIGTERM" in out, (out, err)
    assert proc.returncode == 2, err
    assert "unknown_session" in err


def test_missing_command_is_a_clear_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    env.update({"PYTHONPATH": str(REPO), "CONNECT_STRING":
                f"studios-connect://abcd1234:{new_token()}@127.0.0.1:{free_port()}/",
                "CONNECT_TOOL_PORT": "5555"})
    r = subprocess.run([str(BIN / "studios-connect"), "--", "no-such-tool-anywhere"], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 127
    assert "command not found on PATH: no-such-tool-anywhere" in r.stderr


class KillAfterGrace(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_a_tool_that_ignores_sigterm_is_killed_after_the_grace(self) -> Any:
        script = ("import signal, sys, time\n"
                  "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                  "print('ready', flush=True)\n"
                  "time.sleep(60)\n")
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        child = ToolChild(reactor, [sys.executable, "-c", script], dict(os.environ), grace=0.5,
                          child_fds={0: 0, 1: write, 2: 2})
        child.start()
        os.close(write)
        with os.fdopen(os.dup(read)) as pipe:
            assert pipe.readline().strip() == "ready"  # the event: SIGTERM is ignored now
        status = yield child.terminate(signal.SIGTERM)
        self.assertEqual(status, 128 + signal.SIGKILL)


# Makes the command it runs a child subreaper (PR_SET_CHILD_SUBREAPER, kept across exec):
# orphans of its descendants come to it, as every orphan in a container comes to PID 1.
AS_SUBREAPER = ("import ctypes, os, sys; "
                "assert ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0; "
                "os.execv(sys.argv[1], sys.argv[1:])")


def _children(pid: int) -> dict[int, str]:
    """pid -> state letter of each child of `pid` ('Z': a zombie nobody reaped)."""
    out = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            for child in f.read().split():
                try:
                    with open(f"/proc/{child}/stat") as stat:
                        out[int(child)] = stat.read().rpartition(")")[2].split()[0]
                except FileNotFoundError:
                    pass  # reaped meanwhile
    return out


def test_orphans_are_reaped_and_the_tool_keeps_its_status() -> None:
    """As PID 1, studios-connect inherits every orphan of the studio; they were never
    reaped and stayed zombies for the studio's life."""
    import time

    tool = ("(true &); (true &); (true &); exec " + sys.executable + " -c '"
            + stoppable_tool().replace("'", "'\"'\"'") + "'")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    env.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
                "CONNECT_STRING": f"studios-connect://abcd1234:{new_token()}@127.0.0.1:"
                                  f"{free_port()}/", "CONNECT_TOOL_PORT": str(free_port()),
                "CONNECT_TOOL_PATH_PREFIX": "/"})  # the tool starts at once, no gateway
    proc = subprocess.Popen([sys.executable, "-c", AS_SUBREAPER, str(BIN / "studios-connect"),
                             "--", "/bin/sh", "-c", tool], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"  # the orphans were made before
        deadline = time.monotonic() + 10
        while len(states := _children(proc.pid)) > 1:  # until the tool alone is left
            assert time.monotonic() < deadline, f"children left (Z: a zombie): {states}"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert "tool got SIGTERM" in out
    assert proc.returncode == 7, err


def test_twistd_studios_connect_exits_2_on_a_final_refusal(gateway: GatewayProcess) -> None:
    """The systemd unit runs `twistd studios-connect`: it exited 0 after a wrong token,
    so the unit looked cleanly stopped."""
    created = _session(gateway)
    bad = created["connect_string"].replace(created["token"], "x" * len(created["token"]))
    tool = socket.create_server(("127.0.0.1", 0))  # a tool run by others: it waits for it
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    env.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "CONNECT_STRING": bad,
                "CONNECT_TOOL_PORT": str(tool.getsockname()[1])})
    with tool:
        proc = subprocess.Popen([str(BIN / "twistd"), "--nodaemon", "--pidfile=",
                                 "studios-connect"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        out, _ = _ended(proc)
    assert proc.returncode == 2, out
    assert "the gateway refused the bind: bad_token" in out
