"""Real-process login for integration tests: the in-repo IdP as its own process, a gateway
that logs in against it, and a browser that fills the IdP's login form."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin

from tests.support.gateway import REPO, GatewayProcess, base_env
from tests.support.idp import DEFAULT_REGISTRATION_TOKEN, _Form
from tests.support.ports import IN_USE, START_ATTEMPTS, free_port, wait_for_port
from tests.support.redis_server import RedisServer
from tests.support.studio import Connect, Tool, _stop
from tests.support.waiting import wait_until
from tests.support.web import Browser, Reply

KEY = "login-test-key"
USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}


class IdPProcess:
    """`python -m tests.support.idp` on a free port of 127.0.0.1."""

    def __init__(self, tmp_path: Path, users: dict[str, str] = USERS, port: int | None = None,
                 token_ttl: int | None = None, sso: bool = False,
                 prompt_values: str | None = None, keep_login: bool = False):
        """`sso`: the provider remembers a signed-in browser (its next login asks
        nothing, unless the client sends prompt=login) until its logout (the
        end_session_endpoint). `prompt_values`: the prompt values its discovery document
        lists, comma-separated (default: login). `keep_login` (with `sso`): it ignores
        prompt=login where a browser is signed in, as some providers do."""
        args = []
        if token_ttl is not None:
            args += ["--token-ttl", str(token_ttl)]
        if sso:
            args.append("--sso")
        if keep_login:
            args.append("--keep-login")
        if prompt_values is not None:
            args += ["--prompt-values", prompt_values]
        for name, password in users.items():
            args += ["--user", f"{name}:{password}"]
        #: One line for each start whose picked port was taken (a `port` given is kept).
        self.retries: list[str] = []
        self.port = port or free_port()
        while True:
            self.issuer = f"http://127.0.0.1:{self.port}"
            start = len(self.retries) + 1
            self.log_path = tmp_path / ("idp.log" if start == 1 else f"idp-attempt{start}.log")
            self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.idp", "--port", str(self.port), *args],
                env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, stdout=self.log,
                stderr=subprocess.STDOUT)
            # Its line, not a connect: another process's listener on the port accepts too.
            wait_until(lambda: self.proc.poll() is not None
                       or f"test IdP at {self.issuer}" in self._output(),
                       f"the test IdP at {self.issuer} ({self.log_path})", timeout=20)
            if self.proc.poll() is None:
                return
            self.log.close()
            said = self._output()
            if port is not None or not IN_USE.search(said) or start >= START_ATTEMPTS:
                earlier = "".join(f"\n  {line}" for line in self.retries)
                raise RuntimeError(f"the test IdP exited with {self.proc.returncode} (start "
                                   f"{start} of {START_ATTEMPTS}):\n{said[-2000:]}{earlier}")
            self.retries.append(f"start {start} on port {self.port}: the port was in use")
            self.port = free_port()

    def _output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def set_access(self, session_id: str, user: str, allowed: bool) -> None:
        """What the Platform's access call answers from now on for (session, user)."""
        query = urlencode({"session": session_id, "user": user, "allowed": str(allowed).lower()})
        self._put(f"/test/access?{query}")

    def set_ssh_keys(self, user: str, keys: list[str]) -> None:
        """The keys the Platform's SSH key call lists for `user` from now on."""
        req = urllib.request.Request(f"{self.issuer}/test/ssh-keys?{urlencode({'user': user})}",
                                     data=json.dumps({"keys": keys}).encode(), method="PUT")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200

    def revoke(self, user: str) -> None:
        """The provider ends `user`'s logins: their refresh tokens stop working."""
        self._put(f"/test/revoke?{urlencode({'user': user})}")

    def counts(self) -> dict[str, int]:
        """The provider's call counters (GET /test/counts)."""
        with urllib.request.urlopen(f"{self.issuer}/test/counts", timeout=10) as resp:
            return json.loads(resp.read())

    def _put(self, path: str) -> None:
        req = urllib.request.Request(f"{self.issuer}{path}", method="PUT")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200

    def stop(self) -> None:
        _stop(self.proc)
        self.log.close()


class MockProviderProcess(IdPProcess):
    """oidc-provider-mock (an independent implementation, on authlib) as its own process,
    with registration and nonces required. Its login form asks only for a `sub`."""

    def __init__(self, tmp_path: Path):  # noqa: D107 - not the in-repo IdP's arguments
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp_path / "oidc-provider-mock.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-W", "ignore", "-m", "oidc_provider_mock", "--host",
             "127.0.0.1", "--port", str(self.port), "--require-registration", "true",
             "--require-nonce", "true"], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, proc=self.proc)


def login_at_idp(browser: Browser, url: str, user: str,
                 fields: dict[str, str] | None = None) -> Reply:
    """Open `url`; it must lead to the IdP's login form, which is filled (by default
    with the test IdP's user name and password) and sent as a browser does. Returns
    where the redirects after the login end."""
    form_page = browser.get(url)
    assert form_page.status == 200 and "<form" in form_page.text, \
        (form_page.status, form_page.url, form_page.text[:300])
    form = _Form()
    form.feed(form_page.text)
    fields = {**form.fields, **(fields or {"username": user, "password": USERS[user]})}
    return browser.request(urljoin(form_page.url, form.action or ""), method="POST",
                           body=urlencode(fields).encode(),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})


class Gateway:
    """A twistd gateway on free ports with the admin API, its studios and browsers."""

    def __init__(self, tmp_path: Path, ready: bool = True, public_url: str | None = None,
                 **env: str):
        """`public_url`: the CONNECT_PROXY_URL browsers use (nodes behind one load
        balancer share it); by default this gateway's own HTTP port."""
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.tmp_path = tmp_path
        self.env = base_env(tmp_path, CONNECT_MANAGEMENT_AUTH_KEY=KEY, **env)
        self.scheme = "https" if "CONNECT_TLS_CERT_FILE" in self.env else "http"
        self.domain = self.env.get("CONNECT_STUDIOS_DOMAIN", "localhost")
        self.env["CONNECT_PROXY_URL"] = (
            public_url or f"{self.scheme}://localhost:{self.env['CONNECT_HTTP_PORT']}")
        self.gw = GatewayProcess(tmp_path, self.env)
        self.parts: list[Any] = [self.gw]  # each has .proc and .stop()
        self.gw.wait_ready()
        # Once up (a start may have picked the port again):
        self.http_port = int(self.env["CONNECT_HTTP_PORT"])
        self.proxy = f"{self.scheme}://localhost:{self.http_port}"
        if ready:
            self.wait_ready()
        self.path_mode = self.env.get("TOWER_DATA_STUDIO_ENABLE_PATH_ROUTING") == "true"
        self.tools: dict[str, Tool] = {}  # by path prefix

    def restart(self) -> None:
        """Stop the gateway process and start it again with the same settings and storage
        (its sessions are loaded again from the storage root)."""
        self.gw.stop()
        self.parts.remove(self.gw)
        self.gw = GatewayProcess(self.tmp_path, self.env, name="gateway-again")
        self.parts.insert(0, self.gw)
        self.gw.wait_ready()
        self.wait_ready()

    def tool(self, prefix: str = "/") -> Tool:
        if prefix not in self.tools:
            self.tools[prefix] = Tool(self.tmp_path, prefix)
            self.parts.append(self.tools[prefix])
        return self.tools[prefix]

    def wait_ready(self, timeout: float = 20) -> None:
        """Poll /ready until every part (the login's registration too) says ok."""
        deadline = time.monotonic() + timeout
        while True:
            status, body, _ = self.gw.request("/ready")
            if status == 200:
                return
            assert time.monotonic() < deadline, (body, self.gw.output()[-2000:])
            time.sleep(0.05)

    def api(self, path: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
        status, raw, _ = self.gw.request(path, method=method, body=body)
        return status, json.loads(raw)

    def studio(self, client_env: dict[str, str] | None = None, **fields: Any
               ) -> dict[str, Any]:
        """Create a session (owner alice unless told) and connect a studio to it
        (studios-connect with `client_env` in its environment too)."""
        status, created = self.api("/api/sessions", "POST", {"owner": "alice", **fields})
        assert status == 201, created
        self.connect(created["id"], created["connect_string"], client_env)
        return created

    def connect(self, sid: str, connect_string: str,
                client_env: dict[str, str] | None = None) -> None:
        """Start studios-connect (and the demo tool) for a session; wait for its tunnel."""
        tool = self.tool(f"/_studio/{sid}/" if self.path_mode else "/")
        client = Connect(self.tmp_path, connect_string, tool.port, name=f"connect-{sid}",
                         extra_env=client_env)
        self.parts.append(client)
        deadline = time.monotonic() + 20
        while not self.api(f"/api/sessions/{sid}")[1].get("connected"):
            assert time.monotonic() < deadline, client.output()[-2000:]
            time.sleep(0.05)

    def url(self, sid: str, path: str = "/") -> str:
        if self.path_mode:
            return f"{self.proxy}/_studio/{sid}{path}"
        return f"{self.scheme}://{sid}.{self.domain}:{self.http_port}{path}"

    def stop(self) -> None:
        """SIGTERM to every process first (they stop in parallel), then wait for each."""
        for part in self.parts:
            if part.proc.poll() is None:
                part.proc.send_signal(signal.SIGTERM)
        for part in reversed(self.parts):
            part.stop()


@contextlib.contextmanager
def redis_nodes(tmp_path: Path, *names: str, one_url: bool = False,
                redis: RedisServer | None = None, **env: str) -> Iterator[list[Gateway]]:
    """Gateways `node-<name>` (each with its own directory) on one real redis-server,
    sharing the storage root (so the login signing key), stopped with it at the end.
    `one_url`: all take the first node's address as CONNECT_PROXY_URL, as nodes behind
    one load balancer share one public address (and so one OpenID client). `redis`: a
    started server to use (its caller stops it), else one of their own."""
    own = redis is None
    if redis is None:
        redis = RedisServer(tmp_path / "redis")
        redis.start()
    started: list[Gateway] = []
    try:
        for name in names:  # one after the other: the first makes the signing key
            public = started[0].proxy if one_url and started else None
            started.append(Gateway(tmp_path / name, public_url=public,
                                   CONNECT_REDIS_ADDRESS=redis.address,
                                   CONNECT_STORAGE_ROOT=str(tmp_path / "storage"),
                                   CONNECT_NODE_ID=f"node-{name}", **env))
        yield started
    finally:
        for node in reversed(started):
            node.stop()
        if own:
            redis.stop()


def oidc_env(idp: IdPProcess, **more: str) -> dict[str, str]:
    return {"PLATFORM_URL": idp.issuer,
            "CONNECT_OIDC_CLIENT_REGISTRATION_TOKEN": DEFAULT_REGISTRATION_TOKEN, **more}


@contextlib.contextmanager
def idp_and_gateway(tmp_path: Path, **idp_args: Any) -> Iterator[tuple[IdPProcess, Gateway]]:
    """The test IdP as its own process (`idp_args` as IdPProcess takes them) and a gateway
    (in tmp_path/gateway) that logs in against it; both stopped at the end."""
    idp = IdPProcess(tmp_path, **idp_args)
    g = None
    try:
        g = Gateway(tmp_path / "gateway", **oidc_env(idp))
        yield idp, g
    finally:
        if g is not None:
            g.stop()
        idp.stop()
