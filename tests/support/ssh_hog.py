"""A hostile SSH client for tests: it logs in with a key, opens channels that each run
``cat /dev/zero`` and advertise the largest window SSH allows, then stops reading its
socket (the window stays "open" while nothing is taken).

    python -m tests.support.ssh_hog PORT LOGIN KEYFILE CHANNELS

prints ``reading stopped`` once its channels are open and it has stopped reading.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.conch.ssh import channel, common, connection, keys, transport, userauth
from twisted.internet import defer, protocol, reactor

HUGE_WINDOW = 2**32 - 1


def main(argv: list[str]) -> None:
    port, login, keyfile, count = int(argv[0]), argv[1], argv[2], int(argv[3])
    key = keys.Key.fromFile(keyfile)
    opened: list[int] = []

    class Zeros(channel.SSHChannel):
        name = b"session"

        def channelOpen(self, specificData: bytes) -> None:
            self.conn.sendRequest(self, b"exec", common.NS(b"cat /dev/zero"))
            opened.append(1)
            if len(opened) == count:
                # The data has begun to come; from now on none is read.
                reactor.callLater(0.5, stop_reading, self.conn)

        def dataReceived(self, data: bytes) -> None:
            pass

    def stop_reading(conn: Any) -> None:
        conn.transport.transport.stopReading()
        print("reading stopped", flush=True)

    class Conn(connection.SSHConnection):
        def serviceStarted(self) -> None:
            for _ in range(count):
                self.openChannel(Zeros(localWindow=HUGE_WINDOW, localMaxPacket=32768))

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
            self.requestService(Auth(login.encode(), Conn()))

        def connectionLost(self, reason: Any = None) -> None:
            super().connectionLost(reason)
            if reactor.running:
                reactor.stop()

    f = protocol.ClientFactory()
    f.protocol = Client
    reactor.connectTCP("127.0.0.1", port, f)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
