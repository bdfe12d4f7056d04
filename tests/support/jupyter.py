"""What the tests of a real JupyterLab in headless Chromium share: their marks, the
Jupyter directories kept in the test's tmp dir, a notebook file, and what the page says."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.support.chromium import Chromium, chromium_path

#: Slow; skipped without JupyterLab and ipykernel (the test extra) or Chromium.
MARKS = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("jupyterlab") is None
                       or importlib.util.find_spec("ipykernel") is None,
                       reason="jupyterlab and ipykernel are not installed (the test extra)"),
    pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed"),
]

#: The text of the page's open dialogs, one after the other ("" when none is open).
DIALOGS = ("Array.from(document.querySelectorAll('.jp-Dialog'))"
           ".map(d => d.innerText).join('\\n---\\n')")


def jupyter_env(tmp: Path) -> dict[str, str]:
    """Jupyter's configuration, runtime and IPython directories under `tmp`."""
    return {"JUPYTER_CONFIG_DIR": str(tmp / "jupyter-config"),
            "JUPYTER_RUNTIME_DIR": str(tmp / "jupyter-runtime"),
            "IPYTHONDIR": str(tmp / "ipython")}


def write_notebook(path: Path, source: str) -> None:
    """A notebook of one code cell, for the Python 3 kernel."""
    path.write_text(json.dumps({
        "cells": [{"cell_type": "code", "execution_count": None, "id": "c1", "metadata": {},
                   "outputs": [], "source": source.splitlines(keepends=True)}],
        "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)",
                                    "language": "python", "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5}))


def press(browser: Chromium, key: str, code: str, key_code: int, modifiers: int) -> None:
    """A key pressed in the notebook's cell (modifiers: 2 Ctrl, 8 Shift)."""
    browser.evaluate("document.querySelector('.jp-Notebook .cm-content').focus()")
    for kind in ("rawKeyDown", "keyUp"):
        browser.call("Input.dispatchKeyEvent", type=kind, key=key, code=code,
                     windowsVirtualKeyCode=key_code, modifiers=modifiers)
