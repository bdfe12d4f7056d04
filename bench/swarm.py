"""Many idle tunnels from one process: a ConnectClient per connect string.

    python -m bench.swarm FILE     (FILE: one connect string per line)

Each client is the real connect client (studios_gateway.studio.client), bound to a
do-nothing tool this process listens on. Binds are started a window at a time so
the gateway's accept queue is not flooded. Prints ``bound N`` as it goes and
``ready N`` once every tunnel is bound; then idles until SIGTERM.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from studios_gateway.studio.client import ConnectClient
from studios_gateway.studio.settings import load_client_settings

WINDOW = 64  # binds in flight at once


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@defer.inlineCallbacks
def run(strings: list[str], tool_port: int) -> Iterator[Any]:
    clients: list[ConnectClient] = []
    pending: list[defer.Deferred[None]] = []
    for i, cs in enumerate(strings, 1):
        settings = load_client_settings({"CONNECT_STRING": cs,
                                         "CONNECT_TOOL_PORT": str(tool_port)})
        client = ConnectClient(settings, reactor)
        client.startService()
        clients.append(client)
        pending.append(client.ready)
        if len(pending) >= WINDOW:
            yield defer.gatherResults(pending)
            pending = []
            if i % 500 == 0:
                _say(f"bound {i}")
    yield defer.gatherResults(pending)
    _say(f"ready {len(clients)}")
    run.clients = clients  # type: ignore[attr-defined]  # kept alive until exit


def main() -> int:
    strings = [s.strip() for s in open(sys.argv[1]) if s.strip()]
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])],
        redirectStandardIO=False)
    tool = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    d = run(strings, tool.getHost().port)
    d.addErrback(lambda f: (_say(f"failed {f.getErrorMessage()}"), reactor.stop()))
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
