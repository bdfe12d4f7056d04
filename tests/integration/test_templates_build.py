"""Image templates really built and run behind a real gateway: JupyterLab and Xpra (the two
whose sources these machines reach; R-IDE and VS Code need CRAN, Posit, GitHub and Open VSX).

No image registry is reachable from these machines, so the base is a Debian 12 root
file system made here with mmdebstrap and imported into podman (`--build-arg BASE=`). The
JupyterLab image is built offline: its pip installer (INSTALLER=pip, the small
requirements-core.txt) takes every wheel from the build context (PIP_OPTIONS=--no-index),
where templates/make-wheels put them; Xpra comes from Debian's archive. Each container runs
in a network namespace of its own (slirp4netns) with only CONNECT_STRING set; its entry
point (`studios-connect --tool <tool>`) starts the tool through the preset and binds.
Skipped where podman cannot run containers. The images are built side by side; the base
image, and each template's last layer before studios-connect's (its Debian packages and
its tool: the layer below `COPY wheels/SHA256SUMS`, tagged
localhost/studios-templates-cache:<tool>), are kept for later runs, which take those layers
from podman's build cache as long as the steps up to them are the same (Xpra's packages were
downloaded and installed again by every run: about a minute; JupyterLab's ~100 wheels were
installed again for each commit, its own wheel being new, until its tool came before
studios-connect: 30-40 s); the built images are removed. Every step from studios-connect's
on is built by every run, from this commit's wheel.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import BIN, REPO, GatewayProcess, base_env
from tests.support.sources import copy_sources
from tests.support.web import Browser

pytestmark = pytest.mark.slow

BASE = "localhost/studios-templates-base:bookworm"
KEY = "templates-test-key"
HOST_FROM_CONTAINER = "10.0.2.2"  # slirp4netns's address for the host's loopback


def podman(*args: str, timeout: float = 120, check: bool = True
           ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {done.returncode}\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def containers_run() -> str | None:
    """Why containers cannot run here (None: they can)."""
    for tool in ("podman", "mmdebstrap", "slirp4netns"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup --test installs it)"
    info = subprocess.run(["podman", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        return f"podman info failed: {info.stderr.strip()[-500:]}"
    return None


def ensure_base(tmp_path: Path) -> None:
    """A minimal Debian 12 image made with mmdebstrap (kept for later runs)."""
    if podman("image", "exists", BASE, check=False).returncode == 0:
        return
    tarball = tmp_path / "base.tar"
    made = subprocess.run(["mmdebstrap", "--variant=minbase", "--include=ca-certificates",
                           "bookworm", str(tarball), "http://deb.debian.org/debian"],
                          capture_output=True, text=True, timeout=900)
    assert made.returncode == 0, made.stderr[-3000:]
    podman("import", "--quiet", str(tarball), BASE, timeout=300)


#: tool -> (TOOL_VERSION, repository, more build arguments, a path that answers 200, a word
#: the tool's answer there contains)
TEMPLATES = {
    "jupyterlab": ("4.2.5", "data-studio-jupyter",
                   ["INSTALLER=pip", "PIP_REQUIREMENTS=requirements-core.txt",
                    "PIP_OPTIONS=--no-index"], "/api/status", '"started"'),
    "xpra": ("3.1.3", "data-studio-xpra", [], "/", "xpra"),
}


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    why = containers_run()
    if why:
        pytest.skip(f"containers cannot run here: {why}")
    tmp = tmp_path_factory.mktemp("template")
    ensure_base(tmp)
    context = tmp / "context"
    shutil.copytree(REPO / "templates", context, ignore=shutil.ignore_patterns("wheels"))
    # (make-wheels builds the project where it finds itself: in a copy of the sources, not
    # in the one the other runner may be building at the same time)
    sources = copy_sources(tmp / "src")
    wheels = subprocess.run(
        [str(sources / "templates" / "make-wheels"), str(context / "wheels"),
         "-r", str(context / "jupyterlab" / "requirements-core.txt")],
        env={"PATH": f"{BIN}:/usr/bin:/bin", "PYTHON": str(BIN / "python")},
        capture_output=True, text=True, timeout=600)
    assert wheels.returncode == 0, wheels.stderr[-3000:]
    return context


class Build:
    """One `podman build` of a template, started in the background."""

    def __init__(self, tool: str, context: Path, log: Path) -> None:
        version, repository, args, _, _ = TEMPLATES[tool]
        tags = subprocess.run([str(BIN / "studios-gateway"), "image-tag", version],
                              env={"PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                              check=True).stdout.split()
        name = f"localhost/studios-test-{uuid.uuid4().hex[:8]}/{repository}"
        self.refs = [f"{name}:{tag}" for tag in tags]
        command = ["podman", "build", "--build-arg", f"BASE={BASE}",
                   "-f", str(context / tool / "Containerfile")]
        for arg in args:
            command += ["--build-arg", arg]
        for ref in self.refs:
            command += ["-t", ref]
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen([*command, str(context)], stdout=out,
                                            stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 1800) -> str:
        """The full tag (<version>-0.12.0) once the build has ended well."""
        code = self.process.wait(timeout=timeout)
        assert code == 0, f"podman build: exit {code}\n{self.log.read_text()[-4000:]}"
        return self.refs[-1]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=60)
        podman("rmi", "--force", *self.refs, check=False)


@pytest.fixture(scope="module")
def builds(context: Path) -> Iterator[dict[str, Build]]:
    """Every template's build, all started at once: one image's package downloads and
    another's installs overlap (the two took 95 + 108 s one after the other)."""
    started: dict[str, Build] = {}
    try:
        for tool in sorted(TEMPLATES):
            started[tool] = Build(tool, context, context.parent / f"build-{tool}.log")
        yield started
    finally:
        for build in started.values():
            build.stop()


@pytest.fixture(scope="module", params=sorted(TEMPLATES, key=lambda tool: tool != "xpra"))
def image(request: pytest.FixtureRequest, builds: dict[str, Build]) -> tuple[str, str]:
    """(tool, the built image's reference with its full tag). Xpra's first: its tests run
    while JupyterLab's build goes on (~50 s when its tool's layer is not in the cache; with
    it both builds install only studios-connect, ~25-30 s side by side)."""
    tool = request.param
    ref = builds[tool].wait()
    keep_tool_layer(tool, ref)
    return tool, ref


def keep_tool_layer(tool: str, ref: str) -> None:
    """Tag the last layer before studios-connect's (the template's Debian packages and its
    tool), so that it outlives the built image (removed after the tests) and the next run's
    build takes it from the cache; the layer it replaces, if another, is removed (when
    nothing else uses it)."""
    history = podman("history", "--no-trunc", "--format", "{{.ID}}\t{{.CreatedBy}}",
                     ref).stdout.splitlines()  # (the newest first)
    at = next((i for i, line in enumerate(history)
               if line.rstrip().endswith(" /opt/studio/wheels.sha256")), None)
    if at is None or at + 1 >= len(history):
        return  # (no such step: nothing to keep)
    layer = history[at + 1].split("\t", 1)[0]
    if not re.fullmatch(r"[0-9a-f]{64}", layer):
        return  # (podman does not show its layer: nothing to keep)
    tag = f"localhost/studios-templates-cache:{tool}"
    old = podman("image", "inspect", "--format", "{{.Id}}", tag, check=False).stdout.strip()
    podman("tag", layer, tag)
    if old and old != layer:
        podman("rmi", old, check=False)


def test_the_built_image_carries_its_versions(image: tuple[str, str]) -> None:
    tool, ref = image
    version = TEMPLATES[tool][0]
    config = json.loads(podman("image", "inspect", ref).stdout)[0]["Config"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == f"{version}-0.12.0"
    assert (labels["studios-gateway.tool"], labels["studios-gateway.tool-version"],
            labels["studios-gateway.connect-version"]) == (tool, version, "0.12.0")
    assert config["Entrypoint"] == ["studios-connect", "--tool", tool]
    assert config.get("User", "") in ("", "root")
    # A terminal's `apt` is the image's own, which fetches the package lists it leaves
    # out before an install (templates/common/apt).
    found = podman("run", "--rm", "--entrypoint", "sh", ref, "-c",
                   "command -v apt && readlink /usr/local/bin/apt").stdout.split()
    assert found == ["/usr/local/bin/apt", "/opt/studio/common/apt"], found


def test_the_image_runs_behind_a_real_gateway(image: tuple[str, str], tmp_path: Path) -> None:
    tool, ref = image
    version, _, _, path, word = TEMPLATES[tool]
    env = base_env(tmp_path, CONNECT_MANAGEMENT_AUTH_KEY=KEY)
    env["CONNECT_PROXY_URL"] = f"http://localhost:{env['CONNECT_HTTP_PORT']}"
    gw = GatewayProcess(tmp_path, env)
    container = f"studios-test-{uuid.uuid4().hex[:8]}"
    try:
        gw.wait_healthy()
        http_port = env["CONNECT_HTTP_PORT"]  # (once up: a start may have picked it again)
        status, body, _ = gw.request("/api/sessions", method="POST",
                                     body={"owner": "alice", "image": ref})
        assert status == 201, body
        created = json.loads(body)
        assert (created["tool"], created["tool_version"], created["connect_version"]) == \
            (tool, version, "0.12.0")  # from the image's name and tag
        # A network namespace of its own (X servers' abstract sockets, ports), from which
        # the host's loopback, where the gateway listens, is 10.0.2.2; the pin in the
        # connect string is what the client checks, not the host name.
        connect = re.sub(r"@[^@:/]+:", f"@{HOST_FROM_CONTAINER}:", created["connect_string"])
        assert HOST_FROM_CONTAINER in connect, created["connect_string"]
        podman("run", "--detach", "--name", container,
               "--network", "slirp4netns:allow_host_loopback=true",
               "--env", f"CONNECT_STRING={connect}", ref)
        shown = wait_for_tool_version(gw, created["id"], container)
        assert shown["tunnel"]["tool_version"] == version  # what the preset found installed
        assert shown["image"] == ref
        browser = Browser()
        assert browser.use_login_link(created["login_link"]).status == 200
        reply = browser.get(f"http://{created['id']}.localhost:{http_port}{path}")
        assert reply.status == 200, (reply.status, reply.text[:500])
        assert word in reply.text.lower()  # the tool's own answer, through the tunnel
        if tool == "xpra":
            # The image's HTML5 client is Debian's as templates/xpra/fix-html5-client changed
            # it: a page that comes back by itself after its connection ends.
            assert "studio-reconnect: added by the studio image" in reply.text
            assert 'getboolparam("reconnect", false)' in reply.text
            # Every script the page loads is there (jquery.js is a link into libjs-jquery,
            # which the xpra package does not depend on: without it the page stayed dark).
            for script in sorted(set(re.findall(r'<script[^>]+src="([^"?]+)', reply.text))):
                got = browser.get(f"http://{created['id']}.localhost:{http_port}/{script}")
                assert got.status == 200, (script, got.status)
        if tool == "jupyterlab":
            # The image answers JupyterLab's news question for every user (the install
            # script's overrides.json): JupyterLab serves it as the setting's default.
            news = browser.get(f"http://{created['id']}.localhost:{http_port}/lab/api/"
                               "settings/@jupyterlab/apputils-extension:notification")
            assert news.status == 200, (news.status, news.text[:500])
            assert news.json()["schema"]["properties"]["fetchNews"]["default"] == "false"
    finally:
        logs = podman("logs", container, check=False)
        podman("rm", "--force", "--time", "10", container, check=False, timeout=60)
        gw.stop()
        print(logs.stdout[-3000:], logs.stderr[-3000:])


def wait_for_tool_version(gw: GatewayProcess, sid: str, container: str,
                          timeout: float = 120) -> dict:
    """The session once its studio has bound and announced its tool version."""
    deadline = time.monotonic() + timeout
    while True:
        state = json.loads(gw.request(f"/api/sessions/{sid}")[1])
        if state.get("connected") and (state.get("tunnel") or {}).get("tool_version"):
            return state
        running = podman("inspect", "--format", "{{.State.Running}}", container, check=False)
        logs = podman("logs", container, check=False)
        assert running.stdout.strip() == "true", \
            f"the studio container stopped:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}"
        assert time.monotonic() < deadline, \
            f"not bound after {timeout}s:\n{logs.stderr[-3000:]}\n{gw.output()[-2000:]}"
        time.sleep(0.5)
