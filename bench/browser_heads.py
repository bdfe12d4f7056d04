"""How often a real browser's request heads repeat their connection's last one.

    .venv/bin/python -m bench.browser_heads [--seconds 15] [--keep DIR]

The proxy remembers a connection's last request head (``h1.HeadMemo``): a head whose
field lines, method and version are the last one's is read from the memo. This measures
how often that happens with a real browser rather than wrk: it starts ``studios-gateway
demo`` (JupyterLab when installed) in a scratch directory, records the gateway's reads
with ``strace`` (Debian's strace; the gateway is slower while traced, which does not
change what the browser sends), opens the demo's link in headless Chromium, logs in,
waits for JupyterLab, opens a new notebook from the launcher and stays ``--seconds``.
Then it replays each browser connection's bytes through the proxy's own ``HeadReader``
and prints how many requests were read from the memo, by method.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

from studios_gateway.http.exchange import Exchange, HeadReader, Limits

REPO = Path(__file__).resolve().parent.parent
_ACCEPT = re.compile(r"^\d+\s+accept4?\(\d+, \{.*\) = (\d+)$")
_READ = re.compile(r'^\d+\s+(?:recvfrom|read)\((\d+), "((?:\\x[0-9a-f]{2})*)"')
_CLOSE = re.compile(r"^\d+\s+close\((\d+)\)")
_LENGTH = re.compile(rb"(?i)\r\ncontent-length:[ \t]*(\d+)")
_METHODS = (b"GET ", b"POST", b"PUT ", b"DELE", b"PATC", b"HEAD", b"OPTI")


def connections(strace_lines: Iterable[str]) -> list[bytes]:
    """The bytes read from each accepted connection, in order, from ``strace -f -xx``
    lines of accept4, recvfrom/read and close (a descriptor's reads belong to the
    connection last accepted on it)."""
    open_: dict[int, bytearray] = {}
    done: list[bytes] = []
    for line in strace_lines:
        m = _ACCEPT.match(line)
        if m:
            fd = int(m.group(1))
            if fd in open_:
                done.append(bytes(open_.pop(fd)))
            open_[fd] = bytearray()
            continue
        m = _READ.match(line)
        if m and int(m.group(1)) in open_:
            open_[int(m.group(1))] += bytes.fromhex(m.group(2).replace("\\x", ""))
            continue
        m = _CLOSE.match(line)
        if m and int(m.group(1)) in open_:
            done.append(bytes(open_.pop(int(m.group(1)))))
    return done + [bytes(b) for b in open_.values()]


def replay(streams: Iterable[bytes]) -> collections.Counter[tuple[str, str]]:
    """Each HTTP connection's requests through a ``HeadReader`` of this tree: counts
    by (method, "first" | "memo" | "read"), "memo" for a head read from the memo. A
    connection ends at its first upgrade (a WebSocket) or at bytes that are no head."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for data in streams:
        if not data.startswith(_METHODS):
            continue  # the tunnel's TLS, or nothing
        reader = HeadReader(Limits())
        last: Exchange | None = None
        while True:
            end = data.find(b"\r\n\r\n")
            if end == -1:
                break
            head, data = data[:end + 4], data[end + 4:]
            length = _LENGTH.search(head)
            data = data[int(length.group(1)) if length else 0:]
            ex = reader.take_read(head)
            if not isinstance(ex, Exchange):
                break
            how = ("first" if last is None else
                   "memo" if ex.memo is not None and ex.request.headers is last.request.headers
                   else "read")
            counts[(ex.request.method.decode("ascii", "replace"), how)] += 1
            last = ex
            if ex.upgrade:
                break
    return counts


def _browse(link: str, seconds: float, work: Path) -> None:
    from tests.support.chromium import Chromium  # (run from the repository's root)

    browser = Chromium(work)
    try:
        browser.call("Page.enable")
        browser.call("Page.navigate", url=link)
        browser.wait_for("!!document.forms.length", timeout=60)
        browser.evaluate("document.forms[0].submit()")  # the link's login form
        browser.wait_for("!!document.querySelector('.jp-Launcher, .jp-LabShell')", timeout=120)
        time.sleep(3)  # the lab's first API calls (pacing the session, not a race)
        browser.evaluate("(document.querySelector("
                         "'.jp-LauncherCard[data-category=\"Notebook\"]')||{click(){}}).click()")
        time.sleep(seconds)  # what the lab does while it is open
        browser.screenshot(work / "lab.png")
    finally:
        browser.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--port", type=int, default=18095, help="the demo's browser port")
    ap.add_argument("--keep", type=Path, help="keep the work directory here")
    args = ap.parse_args(argv)
    for tool in ("strace", "chromium"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (bench/setup installs it)", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="browser-heads-"))
    log = open(work / "demo.log", "wb")  # noqa: SIM115 - closed below
    # In the work directory: JupyterLab's files (the new notebook) land there.
    demo = subprocess.Popen([str(REPO / ".venv/bin/studios-gateway"), "demo", "--http-port",
                             str(args.port), "--storage-root", str(work / "state")],
                            cwd=work, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    trace = None
    try:
        deadline = time.monotonic() + 180
        link = None
        while link is None:
            found = re.search(rb"(http://\S+/_connect/link\?\S+)", (work / "demo.log").read_bytes())
            if found:
                link = found.group(1).decode()
            elif demo.poll() is not None or time.monotonic() > deadline:
                print((work / "demo.log").read_text(errors="replace"), file=sys.stderr)
                return 1
            else:
                time.sleep(0.2)
        twistd = next(p for p in psutil.Process(demo.pid).children(recursive=True)
                      if "twistd" in " ".join(p.cmdline()))
        trace = subprocess.Popen(["strace", "-f", "-p", str(twistd.pid), "-e",
                                  "trace=accept4,accept,recvfrom,read,close", "-s", "1000000",
                                  "-xx", "-o", str(work / "strace.txt")],
                                 stderr=subprocess.PIPE)
        assert trace.stderr is not None
        if b"attached" not in trace.stderr.readline():  # "Process N attached"
            print("strace could not attach to the gateway", file=sys.stderr)
            return 1
        _browse(link, args.seconds, work)
    finally:
        if trace is not None:
            trace.terminate()
            trace.wait(10)
        os.killpg(demo.pid, signal.SIGTERM)
        demo.wait(30)
        log.close()
    with open(work / "strace.txt", errors="replace") as f:
        streams = connections(f)
    counts = replay(streams)
    http = [s for s in streams if s.startswith(_METHODS)]
    total = sum(counts.values())
    later = total - sum(n for (_, how), n in counts.items() if how == "first")
    memo = sum(n for (_, how), n in counts.items() if how == "memo")
    print(f"{len(http)} browser connections, {total} requests; read from the memo: {memo} "
          f"({memo / max(later, 1):.0%} of the {later} after a connection's first)")
    for (method, how), n in sorted(counts.items()):
        print(f"  {method:7} {how:6} {n}")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        for name in ("lab.png", "strace.txt", "demo.log"):
            if (work / name).exists():
                shutil.copy(work / name, args.keep / name)
        print(f"kept in {args.keep}: lab.png (the page at the end), strace.txt, demo.log")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
