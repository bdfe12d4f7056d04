"""An SSH client on a slow link, for tests: it logs in with a key, opens a channel that
runs ``cat /dev/zero`` (a download), reads its socket only a few milliseconds in every
100 (a link much slower than the studio), and once the gateway's socket to it is full
opens a second channel on the same connection that runs ``echo hello`` (a shell's
prompt beside the download).

    python -m tests.support.ssh_slow_reader PORT LOGIN KEYFILE

prints ``hello after S`` (seconds from the second channel's open to its output), or
``no hello within S`` after 20 seconds.
"""

from __future__ import annotations

import sys
import time

from twisted.conch.ssh import channel, common, connection, keys
from twisted.internet import reactor, task

from tests.support.ssh_hog import key_client, run

LIMIT = 20.0


def main(argv: list[str]) -> None:
    port, login, keyfile = int(argv[0]), argv[1], argv[2]
    key = keys.Key.fromFile(keyfile)
    opened_at: list[float] = []

    def done(text: str) -> None:
        print(text, flush=True)
        if reactor.running:
            reactor.stop()

    class Zeros(channel.SSHChannel):
        name = b"session"

        def channelOpen(self, specificData: bytes) -> None:
            self.conn.sendRequest(self, b"exec", common.NS(b"cat /dev/zero"))
            socket = self.conn.transport.transport

            def sip() -> None:  # a slow link: a short read now and then
                socket.startReading()
                reactor.callLater(0.003, socket.stopReading)

            task.LoopingCall(sip).start(0.1)
            # Once the gateway's side is full (the download has filled the link), a
            # prompt on another channel.
            reactor.callLater(1.0, self.conn.openChannel, Echo())

        def dataReceived(self, data: bytes) -> None:
            pass

    class Echo(channel.SSHChannel):
        name = b"session"

        def channelOpen(self, specificData: bytes) -> None:
            opened_at.append(time.monotonic())
            self.conn.sendRequest(self, b"exec", common.NS(b"echo hello"))
            reactor.callLater(LIMIT, done, f"no hello within {LIMIT:g}")

        def dataReceived(self, data: bytes) -> None:
            if b"hello" in data:
                done(f"hello after {time.monotonic() - opened_at[0]:.2f}")

    class Conn(connection.SSHConnection):
        def serviceStarted(self) -> None:
            self.openChannel(Zeros(localWindow=2**31, localMaxPacket=32768))

    run(port, key_client(login, key, Conn))


if __name__ == "__main__":
    main(sys.argv[1:])
