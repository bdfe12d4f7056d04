"""Entry-point mode of `studios-connect` with real processes: `studios-connect -- CMD`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from studios_gateway.registry.base import new_token
from studios_gateway.studio.entrypoint import ToolChild
from tests.support.gateway import BIN, REPO
from tests.support.ports import free_port

pytestmark = pytest.mark.slow


def connect(tool: str, **kw: Any) -> subprocess.Popen[str]:
    """studios-connect for a gateway nobody runs (it keeps retrying), with `tool` as child."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    env.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
                "CONNECT_STRING": f"studios-connect://abcd1234:{new_token()}@127.0.0.1:"
                                  f"{free_port()}/",
                "CONNECT_TOOL_PORT": "5555", "CONNECT_TOOL_PATH_PREFIX": "/_studio/abcd1234/"})
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


def test_sigterm_is_passed_to_the_tool() -> None:
    proc = connect("""
        import signal, sys
        def stop(signum, frame):
            print("tool got SIGTERM", flush=True)
            sys.exit(7)
        signal.signal(signal.SIGTERM, stop)
        print("ready", flush=True)
        while True:
            signal.pause()
    """)
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
