"""packaging/build-deb: the .deb holds a relocated venv, the units and the conffile, and its
twistd lists both plugins. Installed with dpkg only in CI (CI=true)."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed"),
    pytest.mark.skipif(subprocess.run(["/usr/bin/python3", "-c", "import ensurepip, venv"],
                                      capture_output=True).returncode != 0
                       if Path("/usr/bin/python3").exists() else True,
                       reason="Debian's python3 with venv is needed (apt install python3-venv)"),
]

TWISTD_HELP = ("import sys; sys.argv = ['twistd', '--help']; "
               "from twisted.scripts.twistd import run; run()")


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as build-deb makes it, but for dpkg-deb's compression level: xz still
    (dpkg's default, what users get), at level 0 instead of 6 (~3 s instead of 18-39 s
    for its ~55 MB on two CPUs; nothing here depends on the size)."""
    out = tmp_path_factory.mktemp("deb")
    proc = subprocess.run([str(REPO / "packaging" / "build-deb"), str(out)], capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "DPKG_DEB_COMPRESSOR_LEVEL": "0"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = out.glob("studios-gateway_*.deb")
    return path


def dpkg_deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True,
                          check=True).stdout


def test_control_and_contents(deb: Path, tmp_path: Path) -> None:
    info = dpkg_deb("-I", str(deb))
    assert "Package: studios-gateway" in info
    assert "Depends: python3." in info
    for script in ("postinst", "prerm", "postrm", "conffiles"):
        assert script in info
    contents = dpkg_deb("-c", str(deb))
    for path in ("./opt/studios-gateway/bin/twistd", "./opt/studios-gateway/bin/studios-gateway",
                 "./etc/studios-gateway/gateway.env",
                 "./lib/systemd/system/studios-gateway.service",
                 "./lib/systemd/system/studios-gateway@.service",
                 "./lib/systemd/system/studios-gateway-http.socket",
                 "./lib/systemd/system/studios-connect.service",
                 "./usr/share/studios-gateway/grafana/studios-gateway.json",
                 "/twisted/plugins/studios_gateway_plugin.py"):
        assert path in contents, path
    assert "__pycache__" not in contents and "dropin.cache" not in contents
    # the operator's command on PATH, as the documents write it
    assert "./usr/bin/studios-gateway -> /opt/studios-gateway/bin/studios-gateway" in contents
    # the compiled lane, built by pip against Debian's python3-dev (scripts/setup installs it)
    assert "/studios_gateway/http/_answer.cpython-" in contents
    assert "/studios_gateway/wire/_records.cpython-" in contents  # the tunnel's bulk records
    assert "-rw------- root/root" in next(line for line in contents.splitlines()
                                          if line.endswith("etc/studios-gateway/gateway.env"))

    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "-e", str(deb), str(control)], check=True)
    assert (control / "conffiles").read_text().split() == ["/etc/studios-gateway/gateway.env"]
    postinst = (control / "postinst").read_text()
    assert "useradd --system" in postinst and "twistd --help" in postinst
    # The gateway's user must read its settings (check-config as that user).
    assert "chgrp studios-gateway \"$env\"" in postinst and "chmod 0640 \"$env\"" in postinst
    # ... which the service itself now reads as that user (--env-file): said when it cannot.
    assert "runuser -u studios-gateway -- test -r \"$env\"" in postinst

    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    venv = root / "opt" / "studios-gateway"
    assert (venv / "bin" / "twistd").read_text().startswith("#!/opt/studios-gateway/bin/python")
    assert os.readlink(venv / "bin" / "python3").startswith("/usr/bin/python3.")
    assert "/opt/studios-gateway" in (venv / "pyvenv.cfg").read_text()
    # The extracted venv runs where it lies (a venv finds itself from its interpreter link).
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", TWISTD_HELP], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert "studios-gateway" in proc.stdout and "studios-connect" in proc.stdout, proc.stdout


def test_each_commit_builds_its_own_later_version(deb: Path) -> None:
    """An upgrade with apt replaces the installed build only if the new one's version is
    greater: setup.cfg's version alone was the same for every build (apt kept the old
    one, "already the newest version"). The commit's number and hash follow it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                              text=True, check=True).stdout.strip()

    base = next(line.split("=", 1)[1].strip() for line in
                (REPO / "setup.cfg").read_text().splitlines() if line.startswith("version"))
    version = dpkg_deb("-f", str(deb), "Version").strip()
    count = int(git("rev-list", "--count", "HEAD"))
    assert version == f"{base}+git{count}.{git('rev-parse', '--short=7', 'HEAD')}"
    assert deb.name == f"studios-gateway_{version}_{deb.name.rsplit('_', 1)[1]}"
    # later than a build of setup.cfg's version alone, and than the parent commit's build
    for earlier in (base, f"{base}+git{count - 1}.fffffff"):
        assert subprocess.run(["dpkg", "--compare-versions", version, "gt", earlier]
                              ).returncode == 0, (version, earlier)


def test_purge_removes_the_units_enablement_and_an_upgrade_restarts_the_connect_client(
        deb: Path, tmp_path: Path) -> None:
    """`systemctl enable`'s links in /etc/systemd/system outlived a purge, pointing at unit
    files no longer there; a drop-in directory, the administrator's, stays. The connect
    client runs from the same /opt venv: an upgrade restarts it as it does the gateway."""
    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "-e", str(deb), str(control)], check=True)
    assert "studios-connect.service >/dev/null" in (control / "postinst").read_text()

    etc = tmp_path / "etc-systemd-system"
    (etc / "multi-user.target.wants").mkdir(parents=True)
    (etc / "sockets.target.wants").mkdir()
    (etc / "studios-gateway.service.d").mkdir()
    (etc / "studios-gateway.service.d" / "override.conf").write_text("[Service]\n")
    links = [etc / "multi-user.target.wants" / "studios-gateway.service",
             etc / "multi-user.target.wants" / "studios-gateway@01.service",
             etc / "multi-user.target.wants" / "studios-connect.service",
             etc / "sockets.target.wants" / "studios-gateway-http.socket",
             etc / "studios-gateway-ssh.socket"]  # masked: a link to /dev/null
    for link in links:
        link.symlink_to("/lib/systemd/system/" + link.name)
    other = etc / "multi-user.target.wants" / "ssh.service"
    other.symlink_to("/lib/systemd/system/ssh.service")
    # The script as shipped, but for the directory it cleans (and /etc/studios-gateway).
    postrm = (control / "postrm").read_text()
    assert "find /etc/systemd/system -type l" in postrm
    script = tmp_path / "postrm"
    script.write_text(postrm.replace("/etc/systemd/system", str(etc))
                      .replace("/etc/studios-gateway", str(tmp_path / "none")))
    subprocess.run(["sh", str(script), "purge"], check=True, env={"PATH": "/usr/bin:/bin"})
    assert [link for link in links if os.path.lexists(link)] == []
    assert os.path.lexists(other)
    assert (etc / "studios-gateway.service.d" / "override.conf").exists()


def test_the_shipped_scripts_match_their_lines_in_pips_records(
        deb: Path, tmp_path: Path) -> None:
    """build-deb rewrites the staging path in the console scripts' shebangs; their lines in
    pip's *.dist-info/RECORD kept the old sha256 and size (18 of them: twistd, trial, pip,
    studios-gateway, ...). Read here as the standard library reads a RECORD
    (importlib.metadata), every hashed file matches."""
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    (site,) = root.glob("opt/studios-gateway/lib/python3.*/site-packages")
    checked, wrong = [], []
    for dist in importlib.metadata.distributions(path=[str(site)]):
        for file in dist.files or []:
            if file.hash is None:
                continue
            data = (site / file).read_bytes()
            raw = hashlib.new(file.hash.mode, data).digest()
            value = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
            checked.append(str(file))
            if (value, len(data)) != (file.hash.value, file.size):
                wrong.append(f"{dist.metadata['Name']}: {file}")
    assert len(checked) > 1000 and "../../../bin/twistd" in checked
    assert wrong == []


@pytest.mark.skipif(os.environ.get("CI") != "true" or os.geteuid() != 0,
                    reason="installs with dpkg -i: only in CI (CI=true) as root")
def test_install_in_ci(deb: Path) -> None:
    subprocess.run(["dpkg", "-i", str(deb)], check=True, timeout=300)
    try:
        help_text = subprocess.run(["/opt/studios-gateway/bin/twistd", "--help"],
                                   capture_output=True, text=True, check=True).stdout
        assert "studios-gateway" in help_text and "studios-connect" in help_text
        assert list(Path("/opt/studios-gateway").rglob("dropin.cache"))
        assert subprocess.run(["getent", "passwd", "studios-gateway"]).returncode == 0
        assert Path("/var/lib/studios-gateway").is_dir()
        env_file = Path("/etc/studios-gateway/gateway.env")
        assert (env_file.stat().st_mode & 0o777, env_file.group()) == (0o640, "studios-gateway")
        # As operators.md says to: as the gateway's user (it reads the file, and its
        # storage root is checked for that user).
        # (runuser is in /usr/sbin: found on this PATH, not on the command's own)
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        check = subprocess.run([runuser, "-u", "studios-gateway", "--",
                                "studios-gateway", "check-config",  # /usr/bin's link
                                "--env-file", str(env_file)],
                               capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        assert check.returncode == 0, check.stdout + check.stderr
        if shutil.which("systemd-analyze"):
            units = sorted(str(p) for p in Path("/lib/systemd/system").glob("studios-*"))
            units = [u.replace("@.service", "@01.service") for u in units]
            verify = subprocess.run(["systemd-analyze", "verify", "--man=no", *units],
                                    capture_output=True, text=True)
            assert verify.returncode == 0 and not verify.stderr, verify.stderr
    finally:
        subprocess.run(["dpkg", "--purge", "studios-gateway"], check=True, timeout=120)
    assert not Path("/opt/studios-gateway/bin").exists()
    assert not os.path.lexists("/usr/bin/studios-gateway")
