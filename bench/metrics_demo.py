"""A gateway under load, scraped by a real Prometheus, and a screenshot of Prometheus's
graph page over the dashboard's main queries (Grafana is not packaged for Debian).

    .venv/bin/python -m bench.metrics_demo --out docs/images/metrics-prometheus.png

Starts twistd studios-gateway (SSH on), the demo tool behind studios-connect, Debian's
`prometheus` (1 s scrapes of /metrics with the management key), then for --seconds
drives HTTP requests (some 404s), 1 MiB downloads, a WebSocket echo and repeated SSH
copies through the gateway, and screenshots the graphs with headless Chromium.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

from bench.common import free_port, port_open, wait_until
from tests.integration.test_traffic_process import SSHStudio, ssh_studio
from tests.integration.test_tunnel_process import KEY, Deployment
from tests.support.websocket import WebSocket

GRAPHS = [
    ("sum by (code) (rate(studios_gateway_http_requests_total[30s]))", "requests/s by class"),
    ("histogram_quantile(0.95, sum by (le) "
     "(rate(studios_gateway_http_request_duration_seconds_bucket[30s])))", "p95 latency"),
    ("sum by (kind, direction) (rate(studios_gateway_transfer_bytes_total[30s]))",
     "bytes/s by kind"),
    ('label_replace(studios_gateway_websockets_open, "open", "websockets", "", "") or '
     'label_replace(studios_gateway_ssh_sessions_open, "open", "ssh sessions", "", "") or '
     'label_replace(studios_gateway_ssh_channels_open, "open", "ssh channels", "", "")',
     "open connections"),
]


def prometheus(work: Path, target: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    (work / "key").write_text(KEY)
    (work / "prometheus.yml").write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: studios-gateway
    authorization: {{type: Bearer, credentials_file: {work / 'key'}}}
    static_configs: [{{targets: ["{target}"]}}]
""")
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={work / 'prometheus.yml'}",
         f"--storage.tsdb.path={work / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=open(work / "prometheus.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    return proc, port


def load(d: Deployment, studio: SSHStudio, stop: threading.Event) -> list[threading.Thread]:
    created, sid = studio.created, studio.sid
    host = f"{sid}.localhost:{d.http_port}"
    cookie = d.browser._cookie_header(f"{sid}.localhost", "/") or ""

    def http() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            d.browser.get(d.url(created, "/api/info"))
            if i % 5 == 0:
                d.browser.get(d.url(created, "/no/such/page"))
            if i % 20 == 0:
                d.browser.get(d.url(created, f"/download?size={1 << 20}"))
            time.sleep(0.01)

    def websocket() -> None:
        while not stop.is_set():
            ws = WebSocket(d.http_port, host, "/ws", {"Cookie": cookie})
            for n in range(200):
                if stop.is_set():
                    break
                ws.send_text(f"message {n}")
                ws.recv_text()
                time.sleep(0.02)
            ws.close()

    def ssh() -> None:
        while not stop.is_set():
            subprocess.run(studio.ssh("head -c 30000000 /dev/zero; sleep 3"),
                           stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, timeout=60)
            stop.wait(4)

    threads = [threading.Thread(target=fn, daemon=True) for fn in (http, websocket, ssh)]
    for t in threads:
        t.start()
    return threads


def screenshot(port: int, out: Path, minutes: int) -> None:
    query = {}
    for i, (expr, _) in enumerate(GRAPHS):
        query.update({f"g{i}.expr": expr, f"g{i}.tab": "0", f"g{i}.stacked": "0",
                      f"g{i}.range_input": f"{minutes}m", f"g{i}.show_exemplars": "0"})
    url = f"http://127.0.0.1:{port}/graph?" + urllib.parse.urlencode(query)
    browser = shutil.which("chromium") or "chromium"
    subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", "--window-size=1400,2300",
                    "--virtual-time-budget=20000", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("metrics-prometheus.png"))
    parser.add_argument("--seconds", type=float, default=120)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="metrics-demo-"))
    d = Deployment(work, CONNECT_SSH_ENABLED="true", CONNECT_LOG_LEVEL="warn",
                   CONNECT_ACCESS_LOG="off")
    prom = None
    stop = threading.Event()
    try:
        studio = ssh_studio(d, work)
        prom, prom_port = prometheus(work, f"127.0.0.1:{d.gw.management_port}")
        wait_until(lambda: port_open(prom_port), "prometheus", 30, prom)
        threads = load(d, studio, stop)
        time.sleep(args.seconds)
        screenshot(prom_port, args.out.resolve(), max(1, int(args.seconds // 60) + 1))
        stop.set()
        for t in threads:
            t.join(timeout=70)
        print(f"screenshot: {args.out}")
    finally:
        stop.set()
        if prom is not None:
            prom.send_signal(signal.SIGTERM)
            prom.wait(timeout=30)
        d.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
