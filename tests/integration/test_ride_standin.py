"""The R-IDE preset (RStudio Server) and its proxy headers, against a RECORDING STAND-IN.

This is not a real RStudio test: RStudio Server is not in the package
registries these machines reach. `rserver` here is tests/support/rstudio_standin.py,
which checks its command line against the options RStudio documents, serves at
``/`` as RStudio does behind a path-removing proxy, and records each request's
path and ``X-RStudio-Root-Path``. The studio is started only through the
preset (`studios-connect --tool ride`, the session created with the
Platform's name `rstudio`), in both routing modes.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.side_by_side import studio_per_mode
from tests.support.tool_studio import ToolStudio, tool_studio

pytestmark = pytest.mark.slow


def standin_bin(tmp: Path) -> Path:
    """A directory whose `rserver` is the stand-in."""
    bin_dir = tmp / "standin-bin"
    bin_dir.mkdir()
    shim = bin_dir / "rserver"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m tests.support.rstudio_standin \"$@\"\n")
    shim.chmod(0o755)
    return bin_dir


@contextmanager
def ride_studio(tmp: Path, mode: str) -> Iterator[tuple[ToolStudio, Path]]:
    log = tmp / "rserver-standin.jsonl"
    env = {"PATH": f"{standin_bin(tmp)}{os.pathsep}{os.environ.get('PATH', '')}",
           "RSTUDIO_STANDIN_LOG": str(log)}
    with tool_studio(tmp, "rstudio", mode, "", extra_env=env) as studio:
        yield studio, log


rides, ride = studio_per_mode("ride", ride_studio)


def records(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_rserver_gets_the_documented_flags_and_the_root_path_from_the_routing(
        ride: tuple[ToolStudio, Path]) -> None:
    studio, log = ride
    (start,) = [r for r in records(log) if "options" in r]
    options = start["options"]
    root = studio.prefix.rstrip("/") or "/"
    assert options == {"server-daemonize": "0", "www-address": "127.0.0.1",
                       "www-port": options["www-port"], "auth-none": "1",
                       "server-user": options["server-user"], "www-root-path": root}
    assert options["server-user"] and options["www-port"].isdigit()
    out = studio.client.output()
    assert "ride preset: starting `rserver " in out and "RStudio Server is ready" in out


def test_rstudio_is_served_at_slash_and_told_its_root_path_by_header(
        ride: tuple[ToolStudio, Path]) -> None:
    studio, log = ride
    page = studio.browser.get(studio.url("rstudio/session/abc?x=1"))
    assert page.status == 200, page.text[:300]
    root = studio.prefix.rstrip("/") or "/"
    got = [r for r in records(log) if r.get("path") == "/rstudio/session/abc?x=1"]
    assert got, records(log)  # the prefix was removed before RStudio, in both modes
    assert got[-1]["root_path_header"] == root
    assert f'href="{root.rstrip("/")}/auth-sign-in"' in page.text
    assert not any(r.get("path", "").startswith("/_studio/") for r in records(log))
