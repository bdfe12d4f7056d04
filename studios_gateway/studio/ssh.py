"""The connect client's SSH side: a StudioSSHServer that trusts the gateway it is bound to.

Each successful bind tells the client the fingerprint of the gateway's SSH key
(``ssh_host_key`` in the bind reply); the studio's server then accepts a login
with that key only. A gateway without the SSH proxy sends none, and every SSH
stream is refused until a bind carries one.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from studios_gateway.wire.bind import BindReply

log = Logger(namespace="studios_gateway.studio.ssh")


class StudioSSH:
    """Holds the studio's SSH server; ``ssh_target`` and ``on_bind`` go to ConnectClient."""

    def __init__(self, reactor: Any, cwd: str | None = None):
        from studios_gateway.studio.sshd import StudioSSHServer

        self.server = StudioSSHServer(reactor=reactor, cwd=cwd)
        self.pinned: str | None = None

    def ssh_target(self, stream_end: Any) -> None:
        self.server.ssh_target(stream_end)

    def on_bind(self, reply: BindReply) -> None:
        fp = reply.ssh_host_key or None
        if fp == self.pinned:
            return
        self.pinned = fp
        if fp is None:
            self.server.pin()
            log.info("SSH: the gateway offers no SSH; SSH streams are refused")
        else:
            self.server.pin(fp)
            log.info("SSH: accepting the gateway's key {fp}", fp=fp)
