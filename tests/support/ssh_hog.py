"""A hostile SSH client for tests: it logs in with a key, opens channels that each run
``cat /dev/zero`` and advertise the largest window SSH allows, then stops reading its
socket (the window stays "open" while nothing is taken).

    python -m tests.support.ssh_hog PORT LOGIN KEYFILE CHANNELS [rude]

prints ``reading stopped`` once its channels are open and it has stopped reading.
``rude``: then on SIGUSR1 it sends a message too short to parse (a global request
without its name), for which the gateway says goodbye; on SIGUSR2 it reads again,
ignoring the goodbye, and prints ``closed N`` when the gateway closes the socket (N:
the channel bytes that came after the goodbye).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any

from twisted.conch.ssh import channel, common, connection, keys, transport, userauth
from twisted.internet import defer, protocol, reactor

HUGE_WINDOW = 2**32 - 1


def main(argv: list[str]) -> None:
    port, login, keyfile, count = int(argv[0]), argv[1], argv[2], int(argv[3])
    rude = argv[4:] == ["rude"]
    key = keys.Key.fromFile(keyfile)
    opened: list[int] = []
    after_goodbye: list[int] = []  # [bytes] once the goodbye came

    class Zeros(channel.SSHChannel):
        name = b"session"

        def channelOpen(self, specificData: bytes) -> None:
            self.conn.sendRequest(self, b"exec", common.NS(b"cat /dev/zero"))
            opened.append(1)
            if len(opened) == count:
                # The data has begun to come; from now on none is read.
                reactor.callLater(0.5, stop_reading, self.conn)

        def dataReceived(self, data: bytes) -> None:
            if after_goodbye:
                after_goodbye[0] += len(data)

    def stop_reading(conn: Any) -> None:
        conn.transport.transport.stopReading()
        if rude:
            # Before the line below: a test signals as soon as it reads it, and
            # SIGUSR1's default action would end this process.
            signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(
                conn.transport.sendPacket, connection.MSG_GLOBAL_REQUEST, b""))
            signal.signal(signal.SIGUSR2, lambda *_: reactor.callFromThread(
                conn.transport.transport.startReading))
        print("reading stopped", flush=True)

    class Conn(connection.SSHConnection):
        def serviceStarted(self) -> None:
            for _ in range(count):
                self.openChannel(Zeros(localWindow=HUGE_WINDOW, localMaxPacket=32768))

    class Client(key_client(login, key, Conn)):  # type: ignore[misc]
        def ssh_DISCONNECT(self, packet: bytes) -> None:
            if not rude:
                super().ssh_DISCONNECT(packet)
            elif not after_goodbye:
                after_goodbye.append(0)

        def connectionLost(self, reason: Any = None) -> None:
            super().connectionLost(reason)
            print("closed", sum(after_goodbye), flush=True)
            if reactor.running:
                reactor.stop()

    run(port, Client)


def key_client(login: str, key: Any, make_conn: Callable[[], connection.SSHConnection]
               ) -> type[transport.SSHClientTransport]:
    """An SSH client that takes any host key, logs in as `login` with `key` alone, then
    runs `make_conn()` (tests/support/ssh_slow_reader.py uses it too)."""
    class Auth(userauth.SSHUserAuthClient):
        offered = False

        def getPublicKey(self) -> Any:
            if self.offered:
                return None
            self.offered = True
            return key.public()

        def getPrivateKey(self) -> Any:
            return defer.succeed(key)

    class Client(transport.SSHClientTransport):
        def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> Any:
            return defer.succeed(True)

        def connectionSecure(self) -> None:
            self.requestService(Auth(login.encode(), make_conn()))

    return Client


def run(port: int, client: type[transport.SSHClientTransport]) -> None:
    """Connect `client` to 127.0.0.1:`port` and run the reactor."""
    f = protocol.ClientFactory()
    f.protocol = client
    reactor.connectTCP("127.0.0.1", port, f)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
