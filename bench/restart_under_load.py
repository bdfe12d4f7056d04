"""Restarts under load behind a load balancer: what a SIGTERM costs the requests in flight.

Two gateway nodes (memory registries: no studio is needed, each answers its own "not
found" page) behind HAProxy or nginx with docs/cluster.md's recipe, written by
tests/integration/test_rolling_restart.py's helpers. A few clients each send requests in
a loop (GET and POST in turn, a new connection each), while the nodes are restarted one
after the other as the recipe says (SIGTERM, exit, start, /ready, the load balancer's
wait). Prints how many requests each method had answered, and every 5xx with the load
balancer's words. `--plain` drops the recipe's retry settings (HAProxy's `retry-on` and
`option http-buffer-request`, nginx's `proxy_next_upstream ... non_idempotent`), to
see what they are for: a request the node had accepted but not read at its SIGTERM.

    .venv/bin/python -m bench.restart_under_load [--lb haproxy|nginx] [--rounds 6]
        [--clients 6] [--plain]
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import signal
import threading
from collections import Counter

from bench import deploy
from bench.common import Processes, free_port, port_open, wait_until, work_dir
from tests.integration.test_rolling_restart import FAIL_TIMEOUT, haproxy_conf, nginx_conf

#: The recipe's lines that retry a request the node reset unread (dropped by --plain).
RETRY_LINES = re.compile(r"retry-on|http-buffer-request|non_idempotent")


def load(port: int, stop: threading.Event, answers: Counter[tuple[str, str]]) -> None:
    posting = False
    while not stop.is_set():
        method = "POST" if posting else "GET"
        posting = not posting
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(method, "/_studio/00000000/x", headers={"Host": "localhost"},
                         body=b"x" * 512 if method == "POST" else None)
            reply = conn.getresponse()
            reply.read()
            answers[(method, str(reply.status))] += 1
        except (OSError, http.client.HTTPException) as e:
            answers[(method, type(e).__name__)] += 1
        finally:
            conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lb", choices=("haproxy", "nginx"), default="haproxy")
    parser.add_argument("--rounds", type=int, default=6, help="restarts, A and B in turn")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--plain", action="store_true", help="without the retry settings")
    args = parser.parse_args()
    if shutil.which(args.lb) is None:
        raise SystemExit(f"bench: {args.lb} is not installed")
    work = work_dir()
    procs = Processes(work)
    stop = threading.Event()
    try:
        envs = {n: deploy.gateway_env(work, f"gw-{n}", {"CONNECT_SHUTDOWN_GRACE": "5s"})
                for n in ("a", "b")}
        nodes = {n: deploy.launch_gateway(procs, work, env, f"gw-{n}")
                 for n, env in envs.items()}
        port = free_port()
        ports = [(env["CONNECT_HTTP_PORT"], env["CONNECT_MANAGEMENT_PORT"])
                 for env in envs.values()]
        if args.lb == "haproxy":
            conf = haproxy_conf(work, port, ports, key=deploy.AUTH_KEY)
            argv = ["haproxy", "-db", "-f", str(conf)]
        else:
            conf = nginx_conf(work, port, [http for http, _ in ports])
            argv = ["nginx", "-c", str(conf), "-p", str(work)]
        if args.plain:
            conf.write_text("".join(line for line in conf.read_text().splitlines(True)
                                    if not RETRY_LINES.search(line)))
        lb = procs.start(args.lb, argv)
        log = work / ("haproxy.log" if args.lb == "haproxy" else "nginx-error.log")
        wait_until(lambda: port_open(port), args.lb, proc=lb)

        def up(name: str) -> bool:  # HAProxy counts the node up again (recipe, step 3)
            return log.read_text().count(f"Server studios_gateway/{name} is UP") > ups[name]

        ups = Counter[str]()
        answers: Counter[tuple[str, str]] = Counter()
        clients = [threading.Thread(target=load, args=(port, stop, answers), daemon=True)
                   for _ in range(args.clients)]
        for client in clients:
            client.start()
        for i in range(args.rounds):
            name = "ab"[i % 2]
            nodes[name].proc.send_signal(signal.SIGTERM)
            nodes[name].proc.wait(timeout=30)
            nodes[name] = deploy.launch_gateway(procs, work, envs[name], f"gw-{name}-{i}")
            if args.lb == "haproxy":
                wait_until(lambda n=name: up(n), f"HAProxy counting {name} up", timeout=10)
                ups[name] += 1
            else:
                stop.wait(FAIL_TIMEOUT + 1)
        stop.set()
        for client in clients:
            client.join(timeout=35)
        recipe = "without the retry settings" if args.plain else "the recipe"
        print(f"{args.lb}, {recipe}: {args.rounds} restarts, {args.clients} clients")
        for method in ("GET", "POST"):
            said = {k[1]: n for k, n in answers.items() if k[0] == method}
            failed = sum(n for status, n in said.items() if not status.startswith("4"))
            print(f"  {method}: {sum(said.values())} answered, {failed} not by a node "
                  f"({', '.join(f'{s}: {n}' for s, n in sorted(said.items()))})")
        words = [line for line in log.read_text().splitlines()
                 if re.search(r'\s50\d\s.*"(GET|POST) |reset by peer', line)]
        for line in words[:20]:
            print("  " + line[:160])
    finally:
        stop.set()
        procs.stop_all()
    print(f"logs: {work}")


if __name__ == "__main__":
    main()
