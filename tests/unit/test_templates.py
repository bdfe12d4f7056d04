"""The image templates (templates/<tool>/Containerfile), read without building them: entry
point, build arguments, labels, root user, and the versions the documents give.

The documents' versions (seed 000, "Studios container image templates") are written out
here, since the seed is not part of the repository: JupyterLab 4.2.5 with its list of
conda-forge packages, R-IDE 4.4.1, Visual Studio Code 1.93.1 with Nextflow and its VS Code
extension; Xpra has no version there (the template takes Debian 12's).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from studios_gateway.studio.presets import preset_for
from studios_gateway.versions import CONNECT_PROTOCOL_VERSION, ImageTag, published_tags
from studios_gateway.wire.tools import TOOLS, canonical

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"

SEED_VERSIONS = {"jupyterlab": "4.2.5", "ride": "4.4.1", "vscode": "1.93.1", "xpra": None}
SEED_JUPYTER_PACKAGES = [
    "python=3.13.0", "pip=24.2", "jedi-language-server=0.41.4", "jupyterlab=4.2.5",
    "jupyter-collaboration=1.2.0", "jupyterlab-git=0.50.1", "jupytext=1.16.4",
    "jupyter-dash=0.4.2", "ipywidgets=7.8.4", "pandas[all]=2.2.3", "scikit-learn=1.5.2",
    "statsmodels=0.14.4", "itables=2.2.2", "seaborn[stats]=0.13.2", "altair=5.4.1",
    "plotly=5.24.1", "r-ggplot2=3.5.1", "nb_black=1.0.7", "qgrid=1.3.1",
]
VERSION_LABEL = "${TOOL_VERSION}-${UPDATE_VERSION:+${UPDATE_VERSION}-}${CONNECT_VERSION}"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        word, _, rest = text.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, f"{path}: ends inside a continued line"
    return out


class Containerfile:
    def __init__(self, path: Path):
        self.path = path
        self.steps = instructions(path)
        self.args: dict[str, str | None] = {}
        self.labels: dict[str, str] = {}
        self.users = [rest for word, rest in self.steps if word == "USER"]
        entry = [rest for word, rest in self.steps if word == "ENTRYPOINT"]
        assert len(entry) == 1, f"{path}: one ENTRYPOINT"
        self.entrypoint = json.loads(entry[0])
        for word, rest in self.steps:
            if word == "ARG":
                name, eq, default = rest.partition("=")
                if eq or name not in self.args:
                    self.args[name] = default if eq else None
            elif word == "LABEL":
                for pair in shlex.split(rest):
                    key, _, value = pair.partition("=")
                    self.labels[key] = value


def template(tool: str) -> Containerfile:
    return Containerfile(TEMPLATES / tool / "Containerfile")


def test_one_template_per_tool_with_a_preset() -> None:
    found = sorted(p.parent.name for p in TEMPLATES.glob("*/Containerfile"))
    assert found == sorted(t for t in TOOLS if preset_for(t) is not None) == \
        sorted(SEED_VERSIONS)


@pytest.mark.parametrize("tool", sorted(SEED_VERSIONS))
def test_entry_point_is_the_tools_preset(tool: str) -> None:
    entry = template(tool).entrypoint
    assert entry == ["studios-connect", "--tool", tool]
    assert canonical(entry[2]) == tool and preset_for(tool) is not None


@pytest.mark.parametrize("tool", sorted(SEED_VERSIONS))
def test_build_arguments_and_versions(tool: str) -> None:
    c = template(tool)
    for name in ("BASE", "TOOL_VERSION", "UPDATE_VERSION", "CONNECT_VERSION"):
        assert name in c.args, f"{tool}: ARG {name}"
    assert c.args["CONNECT_VERSION"] == str(CONNECT_PROTOCOL_VERSION)
    assert c.args["UPDATE_VERSION"] == ""
    version = c.args["TOOL_VERSION"]
    assert version
    if SEED_VERSIONS[tool] is not None:
        assert version == SEED_VERSIONS[tool]
    # The defaults make a tag the parser reads back (what image-tag prints for them).
    series, full = published_tags(version, None, CONNECT_PROTOCOL_VERSION)
    assert str(full) == f"{version}-{CONNECT_PROTOCOL_VERSION}"
    assert isinstance(series, ImageTag)
    assert c.steps[0][0] == "ARG" and c.steps[1] == ("FROM", "${BASE}")


@pytest.mark.parametrize("tool", sorted(SEED_VERSIONS))
def test_labels_carry_the_versions(tool: str) -> None:
    labels = template(tool).labels
    assert labels["org.opencontainers.image.version"] == VERSION_LABEL
    assert labels["org.opencontainers.image.title"]
    assert labels["org.opencontainers.image.base.name"] == "${BASE}"
    assert labels["studios-gateway.tool"] == tool
    assert labels["studios-gateway.tool-version"] == "${TOOL_VERSION}"
    assert labels["studios-gateway.update-version"] == "${UPDATE_VERSION}"
    assert labels["studios-gateway.connect-version"] == "${CONNECT_VERSION}"


@pytest.mark.parametrize("tool", sorted(SEED_VERSIONS))
def test_root_user_and_studios_connect_from_the_wheels(tool: str) -> None:
    c = template(tool)
    assert c.users and c.users[-1] == "root"
    runs = [rest for word, rest in c.steps if word == "RUN"]
    assert any("--mount=type=bind,source=wheels,target=/tmp/wheels" in r
               and "install-studios-connect \"${CONNECT_VERSION}\"" in r for r in runs)
    copies = [rest for word, rest in c.steps if word == "COPY"]
    assert "wheels/SHA256SUMS /opt/studio/wheels.sha256" in copies


@pytest.mark.parametrize("tool", sorted(SEED_VERSIONS))
def test_studios_connect_comes_after_the_tool(tool: str) -> None:
    """A new studios-connect (each release of the gateway, a new wheel in wheels/) rebuilds
    only the layers from its step on: the copy of SHA256SUMS, which that wheel changes, and
    the install of studios-connect come after every other RUN (the tool's, its checks)."""
    steps = template(tool).steps
    at = steps.index(("COPY", "wheels/SHA256SUMS /opt/studio/wheels.sha256"))
    before = [rest for word, rest in steps[:at] if word == "RUN"]
    after = [rest for word, rest in steps[at:] if word == "RUN"]
    assert len(after) == 1 and "install-studios-connect" in after[0], after
    assert any(f"/opt/studio/{tool}/" in r or "check-version" in r for r in before), before
    if any("source=wheels" in r for r in before):
        # (a tool installed from wheels/ too: keyed on every wheel's checksum but ours)
        assert ("COPY", "wheels/SHA256SUMS.deps /opt/studio/wheels-deps.sha256") in steps[:at]


@pytest.mark.parametrize("tool", sorted(SEED_VERSIONS))
def test_the_tools_layer_is_not_keyed_on_the_rest_of_common(tool: str) -> None:
    """Of common/, the steps before studios-connect's copy check-version alone (the tool's
    install runs it): a release that changes the images' apt or install-studios-connect
    rebuilt the tool's layer too, common/ being copied whole before it (review50c)."""
    steps = template(tool).steps
    at = steps.index(("COPY", "wheels/SHA256SUMS /opt/studio/wheels.sha256"))
    tool_run = max(i for i, (word, rest) in enumerate(steps[:at])
                   if word == "RUN" and ("check-version" in rest or f"/{tool}/" in rest))
    copies = [rest.split()[0] for word, rest in steps[:tool_run] if word == "COPY"]
    assert [c for c in copies if c.startswith("common")] == ["common/check-version"], copies
    assert ("COPY", "common/ /opt/studio/common/") in steps[tool_run:at]


def test_make_wheels_keys_the_tools_layer_on_every_wheel_but_ours(tmp_path: Path) -> None:
    """make-wheels' SHA256SUMS.deps is its SHA256SUMS without this project's wheel."""
    script = (TEMPLATES / "make-wheels").read_text()
    line = next(x for x in script.splitlines() if "SHA256SUMS.deps" in x and "grep" in x)
    (tmp_path / "SHA256SUMS").write_text("a  studios_gateway-0.1.0-cp311-cp311-linux_x86_64.whl\n"
                                         "b  twisted-26.10.0-py3-none-any.whl\n")
    done = subprocess.run(["sh", "-c", f'set -e; dir="{tmp_path}"; {line}'], check=False)
    assert done.returncode == 0
    assert (tmp_path / "SHA256SUMS.deps").read_text() == "b  twisted-26.10.0-py3-none-any.whl\n"
    (tmp_path / "SHA256SUMS").write_text("a  studios_gateway-0.1.0-py3-none-any.whl\n")
    done = subprocess.run(["sh", "-c", f'set -e; dir="{tmp_path}"; {line}'], check=False)
    assert done.returncode == 0 and (tmp_path / "SHA256SUMS.deps").read_text() == ""


def test_jupyterlab_packages_are_the_documented_ones() -> None:
    env = (TEMPLATES / "jupyterlab" / "environment.yml").read_text()
    assert re.search(r"channels:\n  - conda-forge\n", env)
    listed = re.findall(r"^  - (\S+=\S+)$", env, re.M)
    assert listed == SEED_JUPYTER_PACKAGES
    # The PyPI list is the same but for Python itself, pip and the R package.
    pypi = [line for line in (TEMPLATES / "jupyterlab" / "requirements.txt").read_text()
            .splitlines() if line and not line.startswith("#") and not line.startswith("httpx")]
    expected = [p.replace("=", "==") for p in SEED_JUPYTER_PACKAGES
                if not p.startswith(("python=", "pip=", "r-"))]
    assert pypi == expected


def test_vscode_brings_nextflow_and_its_extension() -> None:
    c = template("vscode")
    assert c.args["CODE_SERVER_VERSION"] == "4.93.1"  # the release built on VS Code 1.93.1
    assert c.args["NEXTFLOW_EXTENSION"] == "nextflow.nextflow"
    install = (TEMPLATES / "vscode" / "install").read_text()
    assert "get.nextflow.io" in install and '--install-extension "$extension"' in install


@pytest.mark.parametrize("tool", sorted(SEED_VERSIONS))
def test_the_readme_covers_each_template(tool: str) -> None:
    readme = (TEMPLATES / "README.md").read_text()
    assert f"templates/{tool}/Containerfile" in readme
    assert f"--tool {tool}" in readme or f'"--tool", "{tool}"' in readme


def test_the_pip_a_notebook_runs_is_the_kernels() -> None:
    """Seed 000: ``!pip install <packagename>`` in a notebook adds a package. The shell a
    notebook's ``!`` runs finds /opt/tool's pip first, the environment the kernel runs in."""
    env = [rest for word, rest in template("jupyterlab").steps if word == "ENV"]
    path = [e.partition("=")[2] for e in env if e.startswith("PATH=")]
    assert path and path[-1].split(":")[0] == "/opt/tool/bin"
    assert "pip=24.2" in SEED_JUPYTER_PACKAGES  # in the conda environment; a venv has its own
    assert "python3 -m venv /opt/tool" in (TEMPLATES / "jupyterlab" / "install").read_text()


def test_r_ide_can_build_packages_from_source() -> None:
    """Seed 000: ``install.packages("<packagename>")``; CRAN's Linux packages are sources."""
    assert '"r-base-dev=$deb_version"' in (TEMPLATES / "ride" / "install").read_text()


@pytest.mark.parametrize("tool", sorted(SEED_VERSIONS))
def test_the_guide_says_apt_needs_its_lists_fetched_first(tool: str) -> None:
    """Seed 000: system packages with ``apt install <packagename>`` in a terminal. The
    images drop Debian's package lists; their apt fetches them first (below), and the
    guide says so."""
    runs = " ".join(rest for word, rest in template(tool).steps if word == "RUN")
    assert "rm -rf /var/lib/apt/lists/*" in runs
    assert "install-studios-connect" in runs  # (which links templates/common/apt)
    readme = (TEMPLATES / "README.md").read_text()
    section = readme[readme.index("## Adding packages in a running studio"):
                     readme.index("## A custom image")]
    assert "apt install <package>" in section and "/usr/local/bin/apt" in section
    assert "Unable to locate package" in section
    # (docs/studios.md's pointer to it said `apt-get update` first, from before that apt)
    studios = (TEMPLATES.parent / "docs" / "studios.md").read_text()
    pointer = studios[studios.index('Its "Adding packages in a running studio"'):]
    assert "their `apt` fetches them first" in pointer[:400], pointer[:400]
    title = {"jupyterlab": "JupyterLab", "ride": "R-IDE", "vscode": "VS Code",
             "xpra": "Xpra"}[tool]
    assert f"| {title} |" in section
    for how in ("!pip install <package>", 'install.packages("<package>")', "**Extensions**"):
        assert how in section


XPRA_CLIENT = Path("/usr/share/xpra/www/index.html")  # Debian's Xpra 3.1.3 HTML5 client


def fix_html5_client(www: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TEMPLATES / "xpra" / "fix-html5-client"),
                           str(www)], capture_output=True, text=True, timeout=30)


def test_the_xpra_image_changes_its_html5_client_at_build() -> None:
    steps = template("xpra").steps
    assert ("COPY", "xpra/fix-html5-client /opt/studio/xpra/fix-html5-client") in steps
    assert ("RUN", "python3 /opt/studio/xpra/fix-html5-client /usr/share/xpra/www") in steps


def test_the_xpra_image_has_every_file_its_html5_client_links_to(tmp_path: Path) -> None:
    """Debian 12's xpra package links the client's js/lib/jquery.js into libjs-jquery, which
    it does not depend on: the template's image answered 404 for it and its page stayed
    dark, in either routing mode (builder50, in Chromium). The package is installed, and
    the build stops on a link in the client that points at nothing (the check is run here
    on a stand-in directory)."""
    step = next(rest for word, rest in template("xpra").steps
                if word == "RUN" and "apt-get install" in rest)
    assert re.search(r"apt-get install [^&]*\blibjs-jquery\b", step), step
    check = step[step.index("if [ -n"):step.index("fi", step.index("exit 1")) + 2]
    www = tmp_path / "www"
    (www / "js" / "lib").mkdir(parents=True)
    (tmp_path / "jquery.js").write_text("")
    (www / "js" / "lib" / "jquery.js").symlink_to(tmp_path / "jquery.js")
    script = check.replace("/usr/share/xpra/www", str(www))
    assert subprocess.run(["sh", "-c", script], capture_output=True).returncode == 0
    (tmp_path / "jquery.js").unlink()
    failed = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert failed.returncode == 1
    assert failed.stderr.strip() == ("xpra's HTML5 client links to files no package "
                                     f"installed: {www}/js/lib/jquery.js")


def test_fix_html5_client_turns_xpras_reconnect_off_and_reloads_once(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text(XPRA_CLIENT.read_text())
    done = fix_html5_client(tmp_path)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "index.html").read_text()
    assert 'getboolparam("reconnect", false)' in page
    assert 'getboolparam("reconnect", true)' not in page
    assert page.count("studio-reconnect: added by the studio image") == 1
    # The waiting and reloading come before the client's first script (a script that
    # fails to load reloads the page too); the end of the connection leads to them.
    assert page.index("var studio_reconnect = ") < page.index('src="js/lib/es6-shim.js"')
    assert page.index("if (!studio_reconnect(") < page.index("client.init(ignore_audio_")
    # Xpra's own Disconnect (its menu marks it "User request") stays disconnected.
    assert page.index('client.disconnect_reason === "User request"') < \
        page.index("if (!studio_reconnect(")
    # A session another tab or browser took (Xpra's reason "new client") is left there.
    assert page.index('split("\\n")[0] === "new client"') < page.index("if (!studio_reconnect(")
    # One reload count per studio: its key names the path the page is served under.
    assert '"studio-reconnect-reloads:" +\n\t\t\t\t\twindow.location.pathname' in page
    # Reloads go to the address without its fragment (a meta refresh ignores such a page).
    assert 'window.location.replace(window.location.href.split("#")[0])' in page
    helper = page[page.index("var studio_reconnect = "):page.index('src="js/lib/es6-shim.js"')]
    assert "location.reload()" not in helper
    again = fix_html5_client(tmp_path)  # a second run leaves it alone
    assert again.returncode == 0 and "already changed" in again.stdout
    assert (tmp_path / "index.html").read_text() == page


@pytest.mark.skipif(not XPRA_CLIENT.exists(), reason="Debian's Xpra HTML5 client is not here")
def test_fix_html5_client_refuses_a_client_whose_disconnect_it_does_not_know(tmp_path: Path
                                                                            ) -> None:
    """The change tells Xpra's own Disconnect by the reason its menu item sets: a client
    that marks it otherwise stops the build (its Disconnect would reconnect)."""
    other = XPRA_CLIENT.read_text().replace("client.disconnect_reason='User request'; ",
                                            "client.disconnect_reason='Disconnected'; ")
    (tmp_path / "index.html").write_text(other)
    done = fix_html5_client(tmp_path)
    assert done.returncode == 1
    assert "User request" in done.stderr and "not Xpra 3.1's HTML5 client" in done.stderr
    assert (tmp_path / "index.html").read_text() == other  # unchanged


def test_fix_html5_client_refuses_a_client_it_does_not_know(tmp_path: Path) -> None:
    other = "<html><script>var reconnect = true;</script></html>\n"
    (tmp_path / "index.html").write_text(other)
    done = fix_html5_client(tmp_path)
    assert done.returncode == 1
    assert "not Xpra 3.1's HTML5 client" in done.stderr
    assert (tmp_path / "index.html").read_text() == other  # unchanged


MIRROR_URIS = (  # what Debian's apt-get update --print-uris prints (its first lines)
    "'http://deb.debian.org/debian/dists/bookworm/InRelease' "
    "deb.debian.org_debian_dists_bookworm_InRelease 0 \n"
    "'http://deb.debian.org/debian-security/dists/bookworm-security/InRelease' "
    "deb.debian.org_debian-security_dists_bookworm-security_InRelease 0 \n"
    "'http://deb.debian.org/debian/dists/bookworm/main/binary-amd64/Packages.xz' "
    "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages 0 \n")


def run_apt(tmp_path: Path, *args: str, lists: list[str], reachable: bool = True,
            stderr: list[str] | None = None) -> tuple[int, list[str]]:
    """templates/common/apt with stand-ins for Debian's apt and apt-get that log their
    calls; `lists`: the files in the package lists' directory. The stand-in apt-get update
    fetches a list when a mirror is `reachable`; when none is, it warns and exits 0, as
    Debian's does. The script's stderr is added to `stderr` when given."""
    calls = tmp_path / "calls"
    calls.write_text("")
    listdir = tmp_path / "lists"
    shutil.rmtree(listdir, ignore_errors=True)  # (a fetch of an earlier call's left)
    listdir.mkdir()
    for name in lists:
        (listdir / name).write_text("")
    (tmp_path / "uris").write_text(MIRROR_URIS)
    fetch = (f"touch {listdir}/deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages"
             if reachable else "echo 'W: Some index files failed to download.' >&2")
    for name in ("apt", "apt-get"):
        stand_in = tmp_path / name
        body = f'echo "{name} $*" >> {calls}\n'
        if name == "apt-get":
            body = (f'if [ "$*" = "update --print-uris" ]; then cat {tmp_path}/uris; exit 0; fi\n'
                    f'{body}[ "$1" = update ] && {fetch}\nexit 0\n')
        stand_in.write_text(f"#!/bin/sh\n{body}")
        stand_in.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "APT_LISTS": str(listdir), "REAL_APT": str(tmp_path / "apt"),
           "APT_GET": str(tmp_path / "apt-get")}
    done = subprocess.run([str(TEMPLATES / "common" / "apt"), *args], env=env,
                          capture_output=True, text=True, timeout=10)
    if stderr is not None:
        stderr.append(done.stderr)
    return done.returncode, calls.read_text().splitlines()


def test_the_images_apt_fetches_the_package_lists_first_when_they_are_not_there(
        tmp_path: Path) -> None:
    """Seed 000's ``apt install <packagename>`` said "Unable to locate package" in these
    images: their apt fetches Debian's lists first when they are not there."""
    assert os.access(TEMPLATES / "common" / "apt", os.X_OK)
    assert "ln -sf /opt/studio/common/apt /usr/local/bin/apt" in (
        TEMPLATES / "common" / "install-studios-connect").read_text()
    assert run_apt(tmp_path, "install", "-y", "jq", lists=["lock"]) == (
        0, ["apt-get update", "apt install -y jq"])
    assert run_apt(tmp_path, "install", "jq",
                   lists=["deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages"]
                   ) == (0, ["apt install jq"])  # lists there: Debian's apt alone
    assert run_apt(tmp_path, "--version", lists=[]) == (0, ["apt --version"])


def test_the_images_apt_says_plainly_when_no_mirror_gave_it_the_lists(tmp_path: Path) -> None:
    """Without network Debian's apt-get update warns and exits 0, and apt then said
    "Unable to locate package" of a package that exists. The images' apt says the lists
    could not be fetched, names the mirrors it tried, runs nothing more and exits 100."""
    stderr: list[str] = []
    assert run_apt(tmp_path, "install", "jq", lists=[], reachable=False, stderr=stderr) == (
        100, ["apt-get update"])
    (said,) = stderr
    assert "package lists could not be fetched: no network, or no mirror reachable" in said
    assert "(tried http://deb.debian.org/debian http://deb.debian.org/debian-security)" in said
    # lists there: no fetch, whatever the network; a fetch that worked: apt runs
    assert run_apt(tmp_path, "install", "jq", lists=["x_Packages"], reachable=False) == (
        0, ["apt install jq"])
    assert run_apt(tmp_path, "install", "jq", lists=[]) == (
        0, ["apt-get update", "apt install jq"])


def test_the_images_apt_installs_a_package_file_without_network(tmp_path: Path) -> None:
    """``apt install ./quarto.deb`` in a studio without network (the file uploaded through
    the tool): Debian's apt installs a package file without lists when what it depends on
    is installed, and did after the failed fetch; the images' apt stopped with status 100
    and "nothing was done" (measured in the bookworm base image, --network none: refused,
    then installed with this change). A package file that is not there stops as before."""
    deb = tmp_path / "quarto-linux-amd64.deb"
    deb.write_bytes(b"!<arch>\n")
    stderr: list[str] = []
    assert run_apt(tmp_path, "install", "-y", str(deb), lists=[], reachable=False,
                   stderr=stderr) == (0, ["apt-get update", f"apt install -y {deb}"])
    assert "could not be fetched" in stderr[0] and "installing the package file" in stderr[0]
    assert run_apt(tmp_path, "install", str(tmp_path / "gone.deb"), lists=[],
                   reachable=False) == (100, ["apt-get update"])
    assert run_apt(tmp_path, "install", "quarto.deb", lists=[], reachable=False) == (
        100, ["apt-get update"])  # (a name, which apt looks up in its lists)
    readme = " ".join((TEMPLATES / "README.md").read_text().split())
    assert "(`apt install ./quarto-linux-amd64.deb`, uploaded through the tool) is installed" \
        in readme


def test_the_images_apt_answers_a_question_from_the_installed_packages_without_network(
        tmp_path: Path) -> None:
    """``apt show bash``, ``apt policy bash``, ``apt list bash``, ``apt search bash``:
    Debian's apt answers them without lists from dpkg's record of the installed packages,
    and did after the failed fetch; the images' apt said "nothing was done" and exited 100
    (measured in the bookworm base image, --network none). It says why the lists are
    missing, then lets apt answer."""
    for question in ("show", "policy", "list", "search"):
        stderr: list[str] = []
        assert run_apt(tmp_path, question, "bash", lists=[], reachable=False,
                       stderr=stderr) == (0, ["apt-get update", f"apt {question} bash"])
        assert "could not be fetched" in stderr[0]
        assert "answering from the installed packages only" in stderr[0]


def test_the_images_apt_finds_its_command_after_options(tmp_path: Path) -> None:
    """``apt -y install jq`` (options first, as scripts write it) said "Unable to locate
    package": only the first word was looked at. ``apt list --installed`` needs no lists
    (dpkg's own record): it waited for Debian's archive, and without a way out for its
    time-outs."""
    assert run_apt(tmp_path, "-y", "install", "jq", lists=[]) == (
        0, ["apt-get update", "apt -y install jq"])
    assert run_apt(tmp_path, "-o", "Debug::X=1", "-q", "install", "jq", lists=[]) == (
        0, ["apt-get update", "apt -o Debug::X=1 -q install jq"])
    assert run_apt(tmp_path, "-o", "install", "update", lists=[]) == (
        0, ["apt -o install update"])  # (-o's value is no command)
    assert run_apt(tmp_path, "list", "--installed", lists=[]) == (
        0, ["apt list --installed"])
    assert run_apt(tmp_path, "list", "jq", lists=[]) == (
        0, ["apt-get update", "apt list jq"])


def test_the_guide_says_what_a_builders_mistakes_look_like(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A custom image built as the guide says, with a builder's usual mistakes (an
    ENTRYPOINT of its own, no install-studios-connect step, a CMD without '--', no connect
    string, a working directory not in the image, a tool on ::1, a name without the tool):
    the guide said none of what each looks like (builder50). Its table quotes what
    studios-connect prints, checked here against what it does print."""
    from studios_gateway.studio.main import main

    readme = (TEMPLATES / "README.md").read_text()
    section = " ".join(readme[readme.index("### When a custom image's studio"):].split())
    assert main([], {}) == 2  # run without its connect string
    said = capsys.readouterr().err.strip().removeprefix("studios-connect: ")
    assert f"exit 2: `{said}`" in section
    with pytest.raises(SystemExit):  # CMD ["jupyter", "lab"]: no "--"
        main(["--tool", "jupyterlab", "jupyter", "lab"], {})
    said = capsys.readouterr().err
    assert "unrecognized arguments: jupyter lab; a command goes after '--'" in said
    assert "exit 2: `unrecognized arguments: jupyter lab ...; a command goes after '--'`" \
        in section
    with pytest.raises(SystemExit):  # the command's own option named as one of ours
        main(["--tool", "jupyterlab", "jupyter", "lab", "--log-level=DEBUG"], {})
    said = capsys.readouterr().err  # (review50a: it was left out of the CMD shown)
    assert 'CMD ["--", "jupyter", "lab", "--log-level=DEBUG"]' in said, said
    with pytest.raises(SystemExit):  # our option shortened, as argparse takes it
        main(["--log", "debug", "--tool", "jupyterlab", "jupyter", "lab"], {})
    said = capsys.readouterr().err  # (review50c: it was put in the CMD shown)
    assert 'CMD ["--", "jupyter", "lab"]' in said, said
    assert "exit 2: `the tool's working directory /data does not exist (CONNECT_TOOL_WORKDIR)`" \
        in section
    assert "`RUN mkdir -p /data`" in readme[readme.index("## A custom image"):]
    for words in ('`"studios-connect": executable file not found in $PATH` (exit 127)',
                  "`install-studios-connect` step", "an `ENTRYPOINT` of the image's own",
                  "`[studios-connect --tool <tool>]`",
                  "`, but [::1]:PORT accepts them: the tool listens on IPv6's loopback only`",
                  "`note: the image's repository name names no tool`"):
        assert words in section, words


@pytest.mark.parametrize("tool", sorted(SEED_VERSIONS))
def test_each_containerfiles_header_makes_the_wheels_as_the_build_needs(tool: str) -> None:
    """Each Containerfile's header said `python3 -m pip wheel --wheel-dir templates/wheels .`,
    which makes no wheels/SHA256SUMS: a build that followed it stopped at `COPY
    wheels/SHA256SUMS` (no such file or directory) (builder50)."""
    text = (TEMPLATES / tool / "Containerfile").read_text()
    header = text[:text.index("ARG ")]
    assert "pip wheel" not in header
    assert "#   templates/make-wheels" in header
    assert ("COPY", "wheels/SHA256SUMS /opt/studio/wheels.sha256") in template(tool).steps
