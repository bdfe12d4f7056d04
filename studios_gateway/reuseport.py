"""Listening sockets that several gateway processes on one host can share.

With ``CONNECT_REUSE_PORT=true`` the public listeners (HTTP, tunnel, SSH) set
SO_REUSEPORT before binding, so N processes started by hand (one per core)
can all bind the same ports and the kernel spreads new connections over
them. The processes find each other's tunnels through Redis and the peer
link, exactly like nodes on different machines. Management and peer ports
stay per process.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from zope.interface import implementer

from studios_gateway.component import LISTEN_BACKLOG

#: Listeners that make sense to share between the processes of one host.
SHARED_LISTENERS = frozenset({"http", "tunnel", "ssh"})


@implementer(IStreamServerEndpoint)
class ReusePortEndpoint:
    def __init__(self, reactor: Any, host: str, port: int, backlog: int = LISTEN_BACKLOG):
        self.reactor = reactor
        self.host = host
        self.port = port
        self.backlog = backlog

    def listen(self, factory: Any) -> Deferred[Any]:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.host, self.port))
            sock.listen(self.backlog)
            sock.setblocking(False)
            port = self.reactor.adoptStreamPort(sock.fileno(), family, factory)
        except OSError as e:
            return defer.fail(CannotListenError(self.host, self.port, e))
        finally:
            sock.close()  # the reactor holds its own duplicate of the descriptor
        return defer.succeed(port)
