"""Where a user's ssh came from, told by the gateway to the studio's SSH server.

The studio's SSH server sees only a tunnel stream: the user's address and the address
the user connected to are known at the gateway. Right after it has logged in to the
studio, the gateway sends them in one global request (:data:`REQUEST`, no reply
wanted), before any of the user's channels; the studio's server sets
``SSH_CONNECTION`` and ``SSH_CLIENT`` from them, as sshd does from its socket, for the
sessions of that connection only. A studio that does not know the request ignores
it; a gateway that does not send it leaves the studio with OpenSSH's words for a
connection that is not a socket (:data:`UNKNOWN`).

Both ends are ours; the name follows RFC 4251's ``name@domain`` form for local
extensions.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from twisted.conch.ssh import common

__all__ = ["REQUEST", "UNKNOWN", "ClientAddress"]

#: The global request the gateway sends to the studio's SSH server.
REQUEST = b"client-address@studios-gateway"

_PORT = struct.Struct(">L")


def _host(host: str) -> str:
    """An address as sshd writes it: IPv4-mapped IPv6 as plain IPv4; not an address: ''."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


@dataclass(frozen=True)
class ClientAddress:
    """The user's address and port, and the gateway's address and port they connected to."""

    host: str
    port: int
    server_host: str
    server_port: int

    @classmethod
    def of(cls, peer: object, local: object) -> ClientAddress | None:
        """From a TCP transport's getPeer() and getHost(); None for anything else."""
        host = _host(str(getattr(peer, "host", "")))
        server_host = _host(str(getattr(local, "host", "")))
        port, server_port = getattr(peer, "port", None), getattr(local, "port", None)
        if not (host and server_host and isinstance(port, int)
                and isinstance(server_port, int)):
            return None
        return cls(host, port, server_host, server_port)

    def encode(self) -> bytes:
        """The request's data: host, port, server host, server port (SSH string, uint32)."""
        return (common.NS(self.host.encode()) + _PORT.pack(self.port)
                + common.NS(self.server_host.encode()) + _PORT.pack(self.server_port))

    @classmethod
    def decode(cls, data: bytes) -> ClientAddress | None:
        """The request's data read back; None unless it holds two addresses and ports."""
        try:
            host, rest = common.getNS(data)
            (port,) = _PORT.unpack(rest[:4])
            server_host, rest = common.getNS(rest[4:])
            (server_port,) = _PORT.unpack(rest[:4])
        except (struct.error, IndexError, ValueError):
            return None
        texts = [_host(h.decode("ascii", "replace")) for h in (host, server_host)]
        if not all(texts) or rest[4:] or port > 65535 or server_port > 65535:
            return None
        return cls(texts[0], port, texts[1], server_port)

    def environment(self) -> dict[str, str]:
        """``SSH_CONNECTION`` and ``SSH_CLIENT`` as sshd sets them."""
        return {"SSH_CONNECTION": f"{self.host} {self.port} {self.server_host} "
                                  f"{self.server_port}",
                "SSH_CLIENT": f"{self.host} {self.port} {self.server_port}"}


#: What sshd says when its connection is no socket (``sshd -i`` on a pipe): what a
#: studio tells its sessions when the gateway did not say where the user came from.
UNKNOWN = ClientAddress("UNKNOWN", 65535, "UNKNOWN", 65535)
