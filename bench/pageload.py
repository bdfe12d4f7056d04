"""Opening JupyterLab in a real browser: through the gateway, direct, nginx and CHP.

    .venv/bin/python -m bench.pageload [--runs 5] [--keep DIR]

The issue's small-request figures are wrk's, one request at a time or 32 at once. What a
person waits for is the page: JupyterLab's HTML, its scripts and styles (a few MB), and
the dozens of API requests its start makes, over the six connections a browser opens to
an origin. This scenario starts ``studios-connect --tool jupyterlab`` behind the gateway
(subdomain mode, so the same JupyterLab at ``/`` serves every path), puts nginx
proxy_pass and configurable-http-proxy in front of the same JupyterLab, and opens
``/lab`` in headless Chromium through each path in turn:

* **cold**: the browser's cache cleared first (a person's first visit, or after an
  upgrade of the image);
* **warm**: opened again with the cache kept (the next visit; Jupyter's scripts are
  cached, its API requests are not).

For each it records when the launcher's first card was in the page (the moment the
person can click; a script put in the page before its own checks every 5 ms), the load
event, and the number of requests. The paths take turns within a run; each figure is the
median of the runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import baselines
from bench.common import Processes, free_port, port_open, wait_until

#: Put in every page before its own scripts: the moment the launcher's first card exists.
_WATCH = ("(function(){var i=setInterval(function(){"
          "if(document.querySelector('.jp-Launcher .jp-LauncherCard')){"
          "window.__launcherAt=performance.now();clearInterval(i);}},5);})();")
_WAIT = ("new Promise(function(done){var i=setInterval(function(){if(window.__launcherAt){"
         "clearInterval(i);var n=performance.getEntriesByType('navigation')[0];"
         "done({launcher:window.__launcherAt,load:n?n.loadEventEnd:0,"
         "requests:performance.getEntriesByType('resource').length+1});}},50);})")
_PORT = re.compile(r"--ServerApp\.port=(\d+)")


def _nginx(procs: Processes, work: Path, tool_port: int) -> int:
    """nginx proxy_pass in front of JupyterLab, WebSockets on every path (as an operator
    would write it for Jupyter)."""
    port = free_port()
    servers = (
        f"upstream tool {{ server 127.0.0.1:{tool_port}; keepalive 64; }}\n"
        "map $http_upgrade $connection_upgrade { default upgrade; '' ''; }\n"
        f"server {{ listen 127.0.0.1:{port};\n"
        "  client_max_body_size 0; proxy_request_buffering off; proxy_buffering off;\n"
        "  proxy_http_version 1.1; proxy_set_header Host $host;\n"
        "  location / { proxy_pass http://tool; proxy_set_header Upgrade $http_upgrade;\n"
        "    proxy_set_header Connection $connection_upgrade; proxy_read_timeout 1h; }\n}\n")
    baselines._start_nginx(procs, work / "nginx-lab", "nginx-lab", servers)
    wait_until(lambda: port_open(port), "nginx (in front of JupyterLab)")
    return port


def _open(browser: Any, url: str, cold: bool) -> dict[str, float]:
    if cold:
        browser.call("Network.clearBrowserCache")
    browser.call("Page.navigate", url="about:blank")
    browser.call("Page.navigate", url=url)
    got = browser.evaluate(_WAIT, await_promise=True)
    assert got, f"{url}: the launcher did not appear"
    return {k: float(v) for k, v in got.items()}


def measure(runs: int, keep: Path | None) -> str:
    from tests.support.chromium import chromium_path
    from tests.support.tool_studio import tool_studio

    if chromium_path() is None:
        raise SystemExit("bench.pageload: chromium is not installed (scripts/setup --test)")
    work = keep or Path(tempfile.mkdtemp(prefix="bench-pageload-"))
    work.mkdir(parents=True, exist_ok=True)
    procs = Processes(work)
    env = {"JUPYTER_CONFIG_DIR": str(work / "jupyter-config"),
           "JUPYTER_RUNTIME_DIR": str(work / "jupyter-runtime"),
           "IPYTHONDIR": str(work / "ipython")}
    browser = None
    try:
        with tool_studio(work, "jupyterlab", "subdomain", "api/status", extra_env=env,
                         gateway_env={"CONNECT_ACCESS_LOG": "off"}) as lab:
            found = _PORT.search(lab.client.output())
            assert found, "no --ServerApp.port in studios-connect's output"
            tool = int(found.group(1))
            paths = {"gateway (full path)": lab.url("lab"),
                     "direct to JupyterLab": f"http://127.0.0.1:{tool}/lab",
                     "nginx proxy_pass": f"http://127.0.0.1:{_nginx(procs, work, tool)}/lab"}
            chp = baselines.start_chp(procs, tool, tool)
            if chp is not None:
                paths["configurable-http-proxy"] = f"http://127.0.0.1:{chp}/lab"
            browser = lab.chromium()
            browser.call("Page.enable")
            browser.call("Network.enable")
            browser.call("Page.addScriptToEvaluateOnNewDocument", source=_WATCH)
            for url in paths.values():  # once each, unmeasured: JupyterLab's own first-time work
                _open(browser, url, cold=True)
            got: dict[tuple[str, str], list[dict[str, float]]] = {}
            names = list(paths)
            for r in range(runs):
                order = names[r % len(names):] + names[:r % len(names)]
                for name in order:
                    for kind, cold in (("cold", True), ("warm", False)):
                        got.setdefault((name, kind), []).append(_open(browser, paths[name], cold))
                print(f"  run {r + 1} of {runs} done", file=sys.stderr)
            if keep is not None:
                lab.screenshot(browser, "launcher")
    finally:
        if browser is not None:
            browser.stop()
        procs.stop_all()
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return _report(got, names, runs)


def _report(got: dict[tuple[str, str], list[dict[str, float]]], names: list[str],
            runs: int) -> str:
    def med(name: str, kind: str, key: str) -> float:
        return statistics.median(x[key] for x in got[(name, kind)])

    lines = [f"JupyterLab's /lab in headless Chromium, median of {runs} runs (ms from the "
             "navigation's start)", "",
             "| path | cold: launcher | cold: load event | warm: launcher | warm: load event "
             "| requests | launcher / nginx (cold, warm) |", "|---|---|---|---|---|---|---|"]
    nginx = "nginx proxy_pass"
    for name in names:
        ratio = (f"{med(name, 'cold', 'launcher') / med(nginx, 'cold', 'launcher'):.2f}, "
                 f"{med(name, 'warm', 'launcher') / med(nginx, 'warm', 'launcher'):.2f}")
        lines.append(f"| {name} | {med(name, 'cold', 'launcher'):,.0f} | "
                     f"{med(name, 'cold', 'load'):,.0f} | {med(name, 'warm', 'launcher'):,.0f} "
                     f"| {med(name, 'warm', 'load'):,.0f} | {med(name, 'cold', 'requests'):.0f} "
                     f"| {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pageload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="work here and keep it (logs, screenshot)")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    started = time.monotonic()
    print(measure(args.runs, args.keep))
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
