"""The demo tool's log, from a real process: its own lines, not Twisted's beside them."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request

from tests.support.ports import free_port, wait_for_port


def test_the_demo_tool_says_where_it_listens_once_and_not_twisteds_lines() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "studios_gateway.demo.tool", "--port",
                             str(port)], stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, proc=proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
            assert answer.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"demo tool listening on 127.0.0.1:{port}/" in err
    # Before: "QuietSite starting on N", "Starting factory <...QuietSite object at 0x...>",
    # "(TCP Port N Closed)" and "Stopping factory ..." beside it.
    for twisteds in ("starting on", "Starting factory", "Port", "Stopping factory"):
        assert twisteds not in err, err
