"""What the tests of a real JupyterLab in headless Chromium share: their marks, the
Jupyter directories kept in the test's tmp dir, a notebook file, and what the page says."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.support.chromium import Chromium, chromium_path
from tests.support.tool_studio import ToolStudio

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
#: The text of the notebook's outputs, one after the other.
OUTPUT = ("Array.from(document.querySelectorAll('.jp-OutputArea-output'))"
          ".map(e => e.innerText).join('|')")


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


#: The first cell's prompt: "[ ]:" before it runs, "[*]:" once queued or running.
PROMPT = "(document.querySelector('.jp-Notebook .jp-InputPrompt')?.innerText ?? '')"


def run_cell(browser: Chromium, lab: ToolStudio) -> str:
    """Its output once the kernel answers. A page just loaded may take the first keys
    for something else (before its kernel is connected, its kernel dialog's button
    focused): pressed again until the cell is queued, never once it is (a second run
    would change n), then its output awaited. (Each press that went elsewhere waited
    out 20 s for an output before: 20-40 s per test.)"""
    for _ in range(30):
        press(browser, "Enter", "Enter", 13, modifiers=8)  # Shift+Enter: run
        try:
            browser.wait_for(f"({OUTPUT}) || {PROMPT}.includes('*')", timeout=3)
        except AssertionError:
            continue
        return str(browser.wait_for(OUTPUT, timeout=60))
    lab.screenshot(browser, "no-output")
    raise AssertionError("the cell never ran")


def run_again(browser: Chromium, lab: ToolStudio, before: str, timeout: float) -> None:
    """The page's dialogs closed, the notebook's cell (n = n + 1; n * 42) run once more: it
    must show 42 more than `before`, n kept (the same kernel). Screenshot: kernel-back."""
    browser.evaluate("document.querySelectorAll('.jp-Dialog .jp-mod-reject, "
                     ".jp-Dialog .jp-mod-accept').forEach(b => b.click())")
    browser.wait_for(f"!({DIALOGS})", timeout=10)
    press(browser, "Enter", "Enter", 13, modifiers=8)  # Shift+Enter: run
    said = browser.wait_for(f"({OUTPUT}) && ({OUTPUT}) !== '{before}' ? ({OUTPUT}) "
                            f": ({DIALOGS})", timeout=timeout)
    lab.screenshot(browser, "kernel-back")
    assert said == str(int(before) + 42), (before, said)
