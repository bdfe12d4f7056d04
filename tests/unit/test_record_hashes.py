"""packaging/record_hashes.py: the lines of pip's RECORD files for scripts whose shebang
build-deb rewrote are brought up to date, every other byte kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "packaging" / "record_hashes.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_a_rewritten_scripts_line_gets_its_hash_and_size_and_nothing_else_changes(
        tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    info = site / "demo-1.0.dist-info"
    info.mkdir(parents=True)
    (venv / "bin").mkdir()
    (site / "demo.py").write_text("x = 1\n")
    (venv / "bin" / "demo").write_text("#!/opt/demo/bin/python\nimport demo\n")
    # as pip wrote them: CRLF, the script's line from its staging shebang
    record = (
        "../../../bin/demo,sha256=VTM2RXrRRE4ElGfuR_DI4s-VJ4xntcW_-WT6ANZ-tqE,50\r\n"
        "demo.py,sha256=nia_NpkRxFwkPGhBR7I_yeHc_PJX0pmhxjIBam_NM_Q,6\r\n"
        "demo-1.0.dist-info/RECORD,,\r\n")
    (info / "RECORD").write_text(record, newline="")
    checked = run("--check", str(venv))
    assert checked.returncode == 1 and "../../../bin/demo does not match" in checked.stdout
    assert "demo.py" not in checked.stdout

    done = run(str(venv))
    assert done.returncode == 0, done.stderr
    assert "1 RECORD line(s) brought up to date" in done.stdout
    lines = (info / "RECORD").read_bytes().split(b"\r\n")
    # sha256 of the file as it is now, unpadded urlsafe base64, and its size
    assert lines[0] == b"../../../bin/demo,sha256=LWdZspd85ELTufomXgH0vAfN0mW8eY0jz41bdFeIpIU,35"
    assert b"\r\n".join(lines[1:]).decode() == record.split("\r\n", 1)[1]
    assert run("--check", str(venv)).returncode == 0


def test_nothing_to_check_is_an_error(tmp_path: Path) -> None:
    assert run(str(tmp_path)).returncode == 2
    assert run("--check").returncode == 2
