"""`studios-connect --tool X` refusing to start, as a person would see it (real processes).

A tool whose installed version lacks an option the preset needs stops
studios-connect before anything starts, with one line naming the tool, its
version and the option; a tool that is not installed is exit status 127.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

from studios_gateway.registry.base import new_token
from studios_gateway.studio.presets import PRESETS
from studios_gateway.studio.presets.base import hidden_modules, run_for_text
from tests.support.gateway import BIN, REPO
from tests.support.ports import free_port

pytestmark = pytest.mark.slow


def run(tmp_path: Path, *args: str, path: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECT_")}
    env.update({"PYTHONPATH": str(REPO), "PATH": path, "HOME": str(tmp_path),
                "CONNECT_STRING": f"studios-connect://abcd1234:{new_token()}@127.0.0.1:"
                                  f"{free_port()}/"})
    return subprocess.run([str(BIN / "studios-connect"), *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_an_old_tool_without_a_needed_option_is_one_line_before_anything_starts(
        tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    started = tmp_path / "started"
    fake = bin_dir / "code-server"
    # An old code-server: it knows --bind-addr and --auth but no --disable-workspace-trust.
    fake.write_text(f"""#!/bin/sh
case "$1" in
  --version) echo "3.12.0 abcdef with Code 1.60.2" ;;
  --help) printf '  --bind-addr\\n  --auth\\n  --disable-telemetry\\n  --disable-update-check\\n' ;;
  *) touch {started} ;;
esac
""")
    fake.chmod(0o755)
    done = run(tmp_path, "--tool", "vscode", path=f"{bin_dir}:/usr/bin:/bin")
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    # One line says why (after the log line that says the tool is being asked).
    said = [line for line in lines if line.startswith("studios-connect:")]
    assert len(said) == 1 and said == lines[-1:], done.stderr
    assert said[0].startswith("studios-connect: code-server (VS Code) 1.60.2 has no "
                              "--disable-workspace-trust option"), said[0]
    assert not started.exists()  # the tool never ran


def test_a_tool_that_is_not_installed_is_status_127(tmp_path: Path) -> None:
    done = run(tmp_path, "--tool", "ride", path=str(tmp_path / "nothing-here"))
    assert done.returncode == 127, done
    assert "rserver" in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(importlib.util.find_spec("jupyterlab") is None,
                    reason="jupyterlab is not installed (the test extra)")
@pytest.mark.skipif(importlib.util.find_spec("rfc3987_syntax") is None,
                    reason="rfc3987-syntax is not installed with this JupyterLab: nothing "
                           "to hide (the comparison would pass whatever the stand-in did)")
def test_jupyterlab_answers_the_same_with_its_slow_import_hidden() -> None:
    """The preset asks JupyterLab for its version and --help-all with rfc3987-syntax hidden
    (it compiles grammars at import, 1.5 s of each answer): the answers are the same."""
    preset = PRESETS["jupyterlab"]
    head = [str(BIN / "jupyter"), "lab"]
    with hidden_modules(preset.inspect_without) as more_env:
        quick = [run_for_text(preset.version_argv(head), more_env),
                 run_for_text(preset.help_argv(head), more_env)]
    full = [run_for_text(preset.version_argv(head)), run_for_text(preset.help_argv(head))]
    assert quick == full
    assert preset.read_version(full[0]) and "--ServerApp.port_retries" in full[1]
