"""A real tool behind a real gateway, started only through its preset: `studios-connect --tool X`.

One twistd gateway in the routing mode asked for, one session for the tool,
one `studios-connect --tool X` with no command (the preset starts the tool,
learning its prefix from the bind reply: the test sets no prefix), and a
logged-in cookie jar. Screenshots go to the test's tmp dir; when
STUDIOS_SHOTS_DIR is set, a copy goes there too (to look at by hand).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.integration.test_tunnel_process import KEY
from tests.support.chromium import Chromium
from tests.support.gateway import GatewayProcess, base_env
from tests.support.ports import free_port
from tests.support.studio import Connect
from tests.support.web import Browser

#: The connect client's line once the tool answers: its preset's readiness probe passed,
#: or (a command of one's own, tool "generic") its port accepts connections.
TOOL_READY = re.compile(r"presets\.probe\.Readiness#info\] .+ is ready \("
                        r"|\] tool is accepting connections on port ")


@dataclass
class ToolStudio:
    tool: str
    mode: str
    tmp: Path
    home: Path  # the studio's home: the tool's working directory
    http_port: int
    base: str  # the studio's URL, ending in /
    browser: Browser
    client: Connect
    gateway: GatewayProcess

    @property
    def host(self) -> str:
        return urlsplit(self.base).netloc

    @property
    def prefix(self) -> str:
        return urlsplit(self.base).path

    @property
    def session_id(self) -> str:
        """The studio's session id: the last part of its prefix (path mode) or the first
        of its host name (subdomain mode)."""
        return self.prefix.strip("/").split("/")[-1] if self.mode == "path" \
            else self.host.split(".")[0]

    def url(self, path: str = "") -> str:
        return self.base + path

    def cookie(self, path: str = "") -> str:
        value = self.browser._cookie_header(urlsplit(self.base).hostname or "", self.prefix + path)
        assert value
        return value

    def chromium(self, where: Path | None = None) -> Chromium:
        """Headless Chromium holding this studio's login cookies; its profile and log in
        `where` (default: the studio's tmp dir, which holds one), for a studio that
        several tests share."""
        browser = Chromium(where or self.tmp)
        self._give_cookies(browser)
        return browser

    def log_in_again(self, browser: Chromium) -> None:
        """A new login (a new login link used), its cookies given to `browser` too: with a
        short CONNECT_LOGIN_TTL, the login a page opens on then starts with the page, not
        with the studio's start and Chromium's."""
        status, body, _ = self.gateway.request(f"/api/sessions/{self.session_id}/login-links",
                                               method="POST", body={"user": "alice"})
        assert status in (200, 201), body
        page = self.browser.use_login_link(json.loads(body)["login_link"])
        assert page.status in (200, 302), (page.status, page.text[:300])
        self._give_cookies(browser)

    def open_within_a_login(self, browser: Chromium, path: str, loaded: str, ttl: float,
                            tries: int = 3) -> float:
        """Open the studio's `path` in `browser` on a new login (CONNECT_LOGIN_TTL `ttl`)
        and wait until `loaded` (JavaScript: the tool's page has made every request of
        its start) is true; the seconds of that login left then. A page whose start ran
        past its login's end is not the one a test of that end means (its own requests
        were refused too): on a loaded machine (a load of 8 on two CPUs) VS Code's window
        took 9 to over 10 s of a 12 s login. Such a try is made again on a new login, the
        next load warm (the browser's cache); after `tries` of them, AssertionError."""
        for _ in range(tries):
            made = time.monotonic()  # (before the login: its end is no earlier than this)
            self.log_in_again(browser)
            browser.call("Page.navigate", url=self.url(path))
            try:
                browser.wait_for(loaded, timeout=max(0.1, made + ttl - time.monotonic()))
            except AssertionError:
                continue
            left = made + ttl - time.monotonic()
            if left > 0:
                return left
        raise AssertionError(f"{self.url(path)}: not loaded within a {ttl:g} s login "
                             f"in {tries} tries")

    def _give_cookies(self, browser: Chromium) -> None:
        host = urlsplit(self.base).hostname
        for name, (value, path) in self.browser.cookies[host].items():
            browser.call("Network.setCookie", name=name, value=value, domain=host, path=path)

    def screenshot(self, browser: Chromium, name: str) -> bytes:
        """The page as PNG, saved as <tmp>/<name>-<mode>.png (and copied to
        $STUDIOS_SHOTS_DIR/<tool>-<mode>.png when that is set)."""
        path = self.tmp / f"{name}-{self.mode}.png"
        png = browser.screenshot(path)
        shots = os.environ.get("STUDIOS_SHOTS_DIR")
        if shots:
            Path(shots).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(shots) / f"{self.tool}-{self.mode}.png")
        return png


@contextmanager
def tool_studio(tmp: Path, tool: str, mode: str, ready_path: str, *,
                extra_env: dict[str, str] | None = None,
                client_env: Callable[[dict[str, str], dict[str, Any]], dict[str, str]]
                | None = None, command: list[str] | None = None,
                gateway_env: dict[str, str] | None = None,
                timeout: float = 180) -> Iterator[ToolStudio]:
    """Gateway + `studios-connect --tool <tool> [-- command]`; yields once `ready_path` answers 200
    through the gateway (the tool is really serving, not just connected). `client_env`
    (the gateway's environment, the created session) adds to the client's environment;
    `gateway_env` to the gateway's (CONNECT_LOGIN_TTL=30s...)."""
    env = base_env(tmp, CONNECT_MANAGEMENT_AUTH_KEY=KEY,
                   TOWER_DATA_STUDIO_ENABLE_PATH_ROUTING=str(mode == "path").lower(),
                   **(gateway_env or {}))
    env["CONNECT_PROXY_URL"] = f"http://localhost:{env['CONNECT_HTTP_PORT']}"
    stoppers = []
    try:
        gw = GatewayProcess(tmp, env)
        stoppers.append(gw.stop)
        gw.wait_ready()
        http_port = int(env["CONNECT_HTTP_PORT"])  # (once up: a start may have picked it again)
        status, body, _ = gw.request("/api/sessions", method="POST",
                                     body={"owner": "alice", "tool": tool})
        assert status == 201, body
        created = json.loads(body)
        home = tmp / "home"
        home.mkdir()
        more = client_env(env, created) if client_env is not None else {}
        client = Connect(tmp, created["connect_string"], free_port(),
                         extra_env={"HOME": str(home), **(extra_env or {}), **more},
                         args=["--tool", tool, *(["--", *command] if command else [])],
                         name=f"connect-{tool}-{mode}")
        stoppers.append(client.stop)
        browser = Browser()
        deadline = time.monotonic() + timeout
        # Bound, and the tool answers (the client says so): the login below comes after the
        # tool's start, so that a short CONNECT_LOGIN_TTL is not spent on it (a request made
        # earlier is held until then: 3 s for JupyterLab, 12 s on a busy machine).
        while True:
            assert client.proc.poll() is None, f"studios-connect exited:\n{client.output()[-4000:]}"
            assert time.monotonic() < deadline, \
                f"{tool} did not connect:\n{client.output()[-4000:]}"
            status, body, _ = gw.request(f"/api/sessions/{created['id']}")
            if status == 200 and json.loads(body).get("connected") \
                    and TOOL_READY.search(client.output()):
                break
            time.sleep(0.2)
        page = browser.use_login_link(created["login_link"])
        assert page.status in (200, 302), (page.status, page.text[:300])
        base = created["url"].rstrip("/") + "/"
        if mode == "path":
            assert urlsplit(base).path == f"/_studio/{created['id']}/"
        else:
            assert urlsplit(base).hostname == f"{created['id']}.localhost"
        while True:  # the tool answers through the gateway (the preset's probe passed)
            got = browser.get(base + ready_path, follow=False)
            if got.status == 200:
                break
            assert client.proc.poll() is None, f"studios-connect exited:\n{client.output()[-4000:]}"
            assert time.monotonic() < deadline, \
                f"{base + ready_path}: {got.status}\n{client.output()[-4000:]}"
            time.sleep(0.5)
        yield ToolStudio(tool, mode, tmp, home, http_port, base, browser, client, gw)
    finally:
        for stop in reversed(stoppers):
            stop()
    left: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        left = survivors(home)
        if not left:
            break
        time.sleep(0.25)
    assert not left, f"processes of the {tool} studio outlived it: {left}"


def survivors(home: Path) -> list[str]:
    """Live processes started for this studio (their environment has HOME=<its home>)."""
    marker = f"HOME={home}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ")[:160]
                found.append(f"{proc.name}: {cmd.decode(errors='replace')}")
        except OSError:
            continue
    return found
