"""`studios-gateway demo` as a newcomer runs it: one process, a printed link, a browser."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.chromium import Chromium, chromium_path
from tests.support.gateway import BIN, REPO
from tests.support.ports import free_port
from tests.support.studio import _stop as stop_process
from tests.support.web import Browser
from tests.support.websocket import WebSocket

LINK = re.compile(r"(http://localhost:\d+/_connect/link\?token=\S+)")


class Demo:
    def __init__(self, tmp_path: Path, *args: str, http_port: int = 0,
                 sigint_ignored: bool = False):
        """`sigint_ignored`: started as after `&` in a script (SIGINT ignored)."""
        self.http_port = http_port or free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
        env.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
        self.proc = subprocess.Popen(
            [str(BIN / "studios-gateway"), "demo", "--http-port", str(self.http_port),
             "--storage-root", str(tmp_path / "demo"), *args],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
            if sigint_ignored else None)
        self.lines: list[str] = []
        self._seen = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 120) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                for line in self.lines:
                    if m := pattern.search(line):
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"the demo printed no {pattern.pattern!r}:\n"
                                         + "".join(self.lines))
                self._seen.wait(min(left, 1.0))

    def stop(self) -> int:
        """SIGTERM (the demo treats it as Ctrl-C and stops its children), by pid."""
        stop_process(self.proc, timeout=60)
        return self.proc.returncode


@pytest.mark.slow
def test_demo_link_opens_the_studio_and_its_websocket(tmp_path: Path) -> None:
    demo = Demo(tmp_path, "--builtin-tool")
    try:
        link = demo.wait_for(LINK).group(1)
        browser = Browser()
        page = browser.use_login_link(link)
        assert page.status == 200, page.text[:300]
        assert "Demo studio" in page.text and "demo" in page.text
        studio = urlsplit(page.url)
        info = browser.get(f"{studio.scheme}://{studio.netloc}/api/info").json()
        assert info["cwd"] == str(tmp_path / "demo" / "studio")  # its own, not the demo's
        assert studio.hostname and studio.hostname.endswith(".localhost")
        cookie = browser._cookie_header(studio.hostname, "/ws")
        assert cookie
        ws = WebSocket(demo.http_port, studio.netloc, "/ws", {"Cookie": cookie})
        ws.send_text("hello through the tunnel")
        assert ws.recv_text() == "hello through the tunnel"
        ws.close()
    finally:
        assert demo.stop() == 0, "".join(demo.lines)[-3000:]
    said = "".join(demo.lines)
    assert "stopping" in said
    assert "cannot reach gateway" not in said and "HostnameAddress" not in said
    # The gateway's two warnings a demo always gets are said to be expected, first.
    warned = [line for line in demo.lines if "#warn]" in line]
    assert len(warned) == 2 and "self-signed" in warned[0] + warned[1], warned
    assert said.index("are expected in a demo") < said.index("#warn]")


SESSION_LINE = re.compile(r"^==> session ([0-9a-f]{8}) (created|kept from the last run)")
ADMIN_LINE = re.compile(r"Admin API: (\S+)  \(Authorization: Bearer (\S+)\)")


@pytest.mark.slow
def test_the_demo_run_again_keeps_its_session_and_a_page_left_open_comes_back(
        tmp_path: Path) -> None:
    """Stopped and run again with the same storage root, the demo keeps the last run's
    session: the login of a page left open on it works again once the studio is back (a
    new link too), and no unreachable session is left behind. Before, each run made a new
    session: the page left open got 503 "studio not connected" for good."""
    first = Demo(tmp_path, "--builtin-tool")
    try:
        browser = Browser()
        page = browser.use_login_link(first.wait_for(LINK).group(1))
        assert page.status == 200 and "Demo studio" in page.text, page.text[:300]
        sid, how = first.wait_for(SESSION_LINE).groups()
        assert how == "created"
    finally:
        assert first.stop() == 0, "".join(first.lines)[-3000:]
    again = Demo(tmp_path, "--builtin-tool", http_port=first.http_port)
    try:
        link = again.wait_for(LINK).group(1)
        assert again.wait_for(SESSION_LINE).groups() == (sid, "kept from the last run")
        left_open = browser.get(page.url)  # the first run's login, as the open page has it
        assert left_open.status == 200 and "Demo studio" in left_open.text, left_open.text[:300]
        fresh = Browser().use_login_link(link)
        assert fresh.status == 200 and "Demo studio" in fresh.text, fresh.text[:300]
        assert fresh.url == page.url
        api, key = again.wait_for(ADMIN_LINE).groups()
        listing = urllib.request.Request(api, headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(listing, timeout=10) as resp:
            assert [s["id"] for s in json.loads(resp.read())["sessions"]] == [sid]
    finally:
        assert again.stop() == 0, "".join(again.lines)[-3000:]


SESSIONS_LINE = re.compile(r"^  Its sessions: (.+)$")
STATUS_LINE = re.compile(r"^  Its status: +(.+)$")


@pytest.mark.slow
def test_the_printed_sessions_and_status_commands_work_and_ctrl_c_stops_it(
        tmp_path: Path) -> None:
    """The demo prints `studios-gateway sessions`/`status` commands for its own management
    port and key (an env file in the storage root, its owner's alone); they list its
    session and say it is ready. Started where SIGINT is ignored (a script's `&`), Ctrl-C
    still stops it. Before, a newcomer had to make up --url and the key from the admin
    URL, and SIGINT did nothing."""
    demo = Demo(tmp_path, "--builtin-tool", sigint_ignored=True)
    try:
        demo.wait_for(LINK)
        sid = demo.wait_for(SESSION_LINE).group(1)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
        env["PYTHONPATH"] = str(REPO)
        listed = subprocess.run(shlex.split(demo.wait_for(SESSIONS_LINE).group(1)), env=env,
                                capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.startswith(sid) and "connected" in listed.stdout, listed.stdout
        status = subprocess.run(shlex.split(demo.wait_for(STATUS_LINE).group(1)), env=env,
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and status.stdout.startswith("ready"), status.stdout
        assert (tmp_path / "demo" / "demo.env").stat().st_mode & 0o777 == 0o600
        demo.proc.send_signal(signal.SIGINT)
        assert demo.proc.wait(timeout=60) == 0
    finally:
        assert demo.stop() == 0, "".join(demo.lines)[-3000:]
    assert "stopping" in "".join(demo.lines)


SSH_LINE = re.compile(r"^  (ssh -p \d+ .+)$")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH's client is not installed")
def test_demo_ssh_prints_the_command_that_runs_in_the_studio(tmp_path: Path) -> None:
    """`demo --ssh --ssh-key K.pub`: the command it prints, run by the real OpenSSH client
    with that key and nothing else (no agent, no config, BatchMode: an unknown host key
    fails rather than asks), runs in the studio's directory and returns its output."""
    key = tmp_path / "throwaway"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True)
    demo = Demo(tmp_path, "--builtin-tool", "--ssh", "--ssh-port", str(free_port()),
                "--ssh-key", f"{key}.pub")
    try:
        ssh, *args = shlex.split(demo.wait_for(SSH_LINE).group(1))
        assert ["-i", str(key)] == args[args.index("-i"):args.index("-i") + 2]
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        env["HOME"] = str(tmp_path)  # not the person's ~/.ssh
        ran = subprocess.run([ssh, "-F", "/dev/null", "-o", "BatchMode=yes", *args,
                              "pwd; echo $((6 * 7))"], env=env, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.splitlines() == [str(tmp_path / "demo" / "studio"), "42"]
        assert not (tmp_path / ".ssh" / "known_hosts").exists()  # the demo's file did
    finally:
        assert demo.stop() == 0, "".join(demo.lines)[-3000:]
    said = "".join(demo.lines)
    assert "registered for demo" in said and "SSH: demo@" in said


CODE_SERVER_PATH = os.pathsep.join([os.environ.get("PATH", ""), os.environ.get(
    "CODE_SERVER_PREFIX", "/opt/code-server") + "/bin"])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("code-server", path=CODE_SERVER_PATH) is None,
                    reason="code-server is not installed (scripts/install-studio-tools "
                           "code-server)")
def test_demo_tool_vscode_in_path_mode_serves_code_server(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """`demo --tool vscode --path-routing`: code-server through its preset, its workbench
    page under /_studio/<id>/ after the login link."""
    monkeypatch.setenv("PATH", CODE_SERVER_PATH)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    demo = Demo(tmp_path, "--tool", "vscode", "--path-routing")
    try:
        link = demo.wait_for(LINK, timeout=180).group(1)
        page = Browser().use_login_link(link)
        assert page.status == 200, page.text[:300]
        assert urlsplit(page.url).path.startswith("/_studio/")
        assert "vscode-workbench" in page.text or "workbench" in page.text, page.text[:500]
    finally:
        assert demo.stop() == 0, "".join(demo.lines)[-3000:]
    assert "starting the studio (vscode)" in "".join(demo.lines)


@pytest.mark.slow
@pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed")
@pytest.mark.parametrize("mode", [(), ("--path-routing",)], ids=["subdomain", "path"])
def test_the_login_link_and_the_studios_websocket_in_chromium(tmp_path: Path,
                                                              mode: tuple[str, ...]) -> None:
    """As a person: the link in a real browser, its "Open studio" button, the studio's
    page and its WebSocket. A browser's own headers decide here (the form's post carries
    Sec-Fetch-Site and, under the page's no-referrer policy, Origin: null; the
    handshake carries the page's Origin), which the Python clients above do not send."""
    demo = Demo(tmp_path, "--builtin-tool", *mode)
    browser = Chromium(tmp_path)
    try:
        link = demo.wait_for(LINK).group(1)
        browser.call("Page.navigate", url=link)
        browser.wait_for("!!document.querySelector('form button')")
        browser.evaluate("document.querySelector('form button').click()")
        browser.wait_for("document.title == 'Demo studio'")
        browser.wait_for("document.getElementById('state').textContent == 'connected'")
        assert browser.evaluate("document.getElementById('who').textContent") == "demo"
    finally:
        browser.stop()
        assert demo.stop() == 0, "".join(demo.lines)[-3000:]
