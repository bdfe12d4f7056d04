"""Headless Debian Chromium driven over the DevTools protocol (CDP), for screenshot tests.

Started with a fresh profile and no background traffic; the DevTools port is
chosen by Chromium and read from its profile directory. Stopped by pid.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.studio import _stop as stop_process
from tests.support.websocket import WebSocket

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", "--window-size=1280,800"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


#: What Runtime.evaluate answers when the page it asked went away under it.
_NAVIGATING = ("Inspected target navigated or closed",
               "Execution context was destroyed",
               "Cannot find context with specified id")


class Chromium:
    def __init__(self, tmp_path: Path, timeout: float = 60, flags: Sequence[str] = ()):
        """`flags`: more command-line switches (host resolver rules, a trusted key...)."""
        profile = tmp_path / "chromium-profile"
        profile.mkdir()
        self.log = open(tmp_path / "chromium.log", "wb")  # noqa: SIM115 - closed in stop()
        binary = chromium_path()
        assert binary, "chromium is not installed (scripts/setup --test)"
        self.proc = subprocess.Popen(
            [binary, *FLAGS, *flags, f"--user-data-dir={profile}", "--remote-debugging-port=0",
             "about:blank"], stdout=self.log, stderr=subprocess.STDOUT)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            assert self.proc.poll() is None, "chromium exited at start"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        self.port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list",
                                    timeout=10) as resp:
            pages = [t for t in json.loads(resp.read()) if t["type"] == "page"]
        path = "/" + pages[0]["webSocketDebuggerUrl"].split("/", 3)[3]
        self.ws = WebSocket(self.port, f"127.0.0.1:{self.port}", path, timeout=timeout)
        self._ids = itertools.count(1)
        self.keep_events: set[str] = set()  # CDP event names to keep in `events`
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """One CDP command (to the first page, or to the target attached as `session`:
        see :meth:`open_tab`); events that arrive meanwhile are dropped unless in
        keep_events."""
        msg_id = next(self._ids)
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        self.ws.send_text(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv_text())
            if reply.get("method") in self.keep_events:
                self.events.append(reply)
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]

    def open_tab(self, url: str) -> str:
        """A new tab at `url`; returns the session to pass to call, evaluate, wait_for."""
        target = self.call("Target.createTarget", url=url)["targetId"]
        return str(self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"])

    def evaluate(self, expression: str, session: str | None = None,
                 await_promise: bool = False) -> Any:
        """The expression's value (a promise's, with `await_promise`)."""
        result = self.call("Runtime.evaluate", session, expression=expression,
                           returnByValue=True, awaitPromise=await_promise)
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60,
                 session: str | None = None, await_promise: bool = False) -> Any:
        """Poll a JavaScript expression until it is truthy (the page's own event); with
        `await_promise`, until the promise's value is."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression, session, await_promise)
            except AssertionError as err:
                # Asked while the page navigates (a click's navigation, what the caller
                # waits for): the old document is gone before the new one answers. Not
                # yet; any other error is the caller's.
                if not any(why in str(err) for why in _NAVIGATING):
                    raise
                value = None
            if value:
                return value
            assert time.monotonic() < deadline, f"{expression!r} still false after {timeout}s"
            time.sleep(0.25)

    def screenshot(self, path: Path) -> bytes:
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.write_bytes(png)
        return png

    def quit(self, timeout: float = 30) -> None:
        """Browser.close: Chromium shuts down as when a person quits it, writing what it
        writes then (a net log's state, `net_log_state`), where SIGTERM ends it at once.
        Stopped by pid if it has not exited within `timeout`."""
        try:  # no answer awaited: the DevTools socket goes with the browser
            self.ws.send_text(json.dumps({"id": next(self._ids), "method": "Browser.close",
                                          "params": {}}))
            self.proc.wait(timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        try:
            self.ws.close()
        finally:
            stop_process(self.proc)
            self.log.close()


def net_log_state(path: Path) -> dict[str, Any]:
    """The network stack's state a net log (``--log-net-log=path``) ends with when Chromium
    quits (:meth:`Chromium.quit`): "reportingInfo" (NEL policies, queued reports), the
    socket pools, the host cache... AssertionError when the log has no such end."""
    try:
        polled = json.loads(path.read_bytes())["polledData"]
    except (ValueError, KeyError):
        raise AssertionError(f"{path} has no state at its end: Chromium did not quit "
                             "cleanly") from None
    # (Chromium 156 writes a list of one object)
    return dict(polled[0] if isinstance(polled, list) else polled)


def png_colours(png: bytes, sample: int = 200_000) -> int:
    """How many distinct pixel values (RGB(A) tuples) a sample of a PNG's scanlines has.

    Enough to tell a rendered page from a blank or single-colour one; filter bytes
    make the count approximate, which is fine for that.
    """
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = channels = 0
    while pos < len(png):
        length = int.from_bytes(png[pos:pos + 4], "big")
        kind, data = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width = int.from_bytes(data[:4], "big")
            channels = {2: 3, 6: 4}.get(data[9], 1)
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels + 1
    colours = set()
    for row in range(0, min(len(raw), sample), stride):
        line = raw[row + 1:row + stride]
        colours.update(line[i:i + channels] for i in range(0, len(line), channels))
    return len(colours)
