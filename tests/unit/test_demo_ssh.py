"""`studios-gateway demo --ssh`: the person's key, the demo's host key, the printed command."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from studios_gateway.demo import run
from studios_gateway.ssh.keys import fingerprint, load_host_key


def _keygen(path: Path, kind: str = "ed25519") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
    return path


def _refused(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as raised:
        run.main(argv)
    return str(raised.value)


def test_no_key_says_how_to_make_one_before_anything_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    said = _refused(["--ssh", "--storage-root", str(tmp_path / "var")])
    assert "--ssh needs your public SSH key and there is none at ~/.ssh/id_ed25519.pub" in said
    assert "ssh-keygen -t ed25519" in said and "--ssh-key FILE.pub" in said
    assert not (tmp_path / "var").exists()  # nothing started, nothing made


def test_the_key_given_must_be_a_readable_public_key(tmp_path: Path) -> None:
    private = _keygen(tmp_path / "k")
    said = _refused(["--ssh", "--ssh-key", str(private)])
    assert f"--ssh-key {private} is a private key; give its public half ({private}.pub" in said
    said = _refused(["--ssh", "--ssh-key", str(tmp_path / "missing.pub")])
    assert "missing.pub: cannot read it (No such file or directory)" in said
    (tmp_path / "notes.pub").write_text("hello\n")
    said = _refused(["--ssh", "--ssh-key", str(tmp_path / "notes.pub")])
    assert "not a public key the gateway accepts (line 1: expected" in said


def test_ssh_key_and_port_go_with_ssh(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    for extra in (["--ssh-key", str(tmp_path / "k.pub")], ["--ssh-port", "2223"]):
        with pytest.raises(SystemExit) as raised:
            run.main(extra)
        assert raised.value.code == 2
        assert "--ssh-key and --ssh-port go with --ssh" in capsys.readouterr().err


def test_the_default_key_is_the_first_there_is(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    _keygen(tmp_path / ".ssh" / "id_rsa", "rsa")
    path, text = run.ssh_public_key(None)
    assert path == tmp_path / ".ssh" / "id_rsa.pub"
    assert text.startswith("ssh-rsa ")
    _keygen(tmp_path / ".ssh" / "id_ed25519")
    assert run.ssh_public_key(None)[0] == tmp_path / ".ssh" / "id_ed25519.pub"


def test_the_command_names_a_key_ssh_would_not_offer_by_itself(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    own = _keygen(tmp_path / "my keys" / "demo")
    known = tmp_path / "var" / "known_hosts"
    words = shlex.split(run.ssh_command("demo", "ab12cd34", 2222, known, Path(f"{own}.pub")))
    assert words == ["ssh", "-p", "2222", "-o", f"UserKnownHostsFile={known}", "-i", str(own),
                     "demo@ab12cd34@127.0.0.1"]
    default = _keygen(tmp_path / ".ssh" / "id_ed25519")
    assert run.ssh_command("demo", "ab12cd34", 2222, known, Path(f"{default}.pub")) == (
        f"ssh -p 2222 -o UserKnownHostsFile={known} demo@ab12cd34@127.0.0.1")


def test_the_host_key_is_made_once_and_the_gateway_reads_it(tmp_path: Path) -> None:
    path, public = run.demo_host_key(tmp_path / "ssh")
    assert path.stat().st_mode & 0o777 == 0o600
    assert run.demo_host_key(tmp_path / "ssh") == (path, public)  # kept across runs
    gateway_key = load_host_key(str(path), None, str(tmp_path))
    assert gateway_key.public().toString("OPENSSH").decode() == public
    assert run.ssh_fingerprint(public) == fingerprint(gateway_key)
    listed = subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True,
                            check=True).stdout
    assert run.ssh_fingerprint(public) in listed
