"""SSH binary packets (RFC 4253 6) with fewer copies than Conch's transport makes.

Conch's ``SSHTransportBase`` re-slices its whole receive buffer for every packet
(twice: once for the packet, once for the MAC), and copies each packet four more
times on its way in (the encrypted rest, decrypted first block plus rest, the MAC
input, the payload, the payload without its type byte) and four times on its way
out. At 32 KiB per packet that is the same order of work as the AES itself.
:class:`PacketFraming`, mixed in before Conch's transport class, reads packets by
offset from the buffer, feeds the MAC in pieces and writes each packet with one
join. It changes nothing on the wire: same algorithms (whatever Conch negotiated),
same checks (length limit, block multiple, MAC compared in constant time), same
disconnect reasons. Before the version exchange, with compression, or while a
``none`` cipher is in use (the first key exchange), Conch's own code runs.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Callable
from typing import Any

from twisted.conch.ssh import transport

__all__ = ["PacketFraming"]

_LENGTH = struct.Struct("!LB")
_HEADER = struct.Struct("!LBB")  # packet length, padding length, message type
_SEQ = struct.Struct(">L")
#: Longest packet we accept (Conch's limit; RFC 4253 asks for at least 35,000 bytes).
MAX_PACKET_LENGTH = 1024 * 1024
#: Random padding is taken from a pool this size (one getrandom call per pool).
_PAD_POOL = 64 * 1024


class PacketFraming:
    """Mixin for a Conch ``SSHTransportBase`` subclass (list it first among the bases)."""

    # Provided by SSHTransportBase.
    buf: bytes
    gotVersion: bool
    currentEncryptions: Any  # Conch's SSHCiphers (untyped)
    incomingCompression: Any
    outgoingCompression: Any
    incomingPacketSequence: int
    outgoingPacketSequence: int
    transport: Any
    _keyExchangeState: Any
    _KEY_EXCHANGE_NONE: Any
    sendDisconnect: Callable[[int, bytes], None]
    dispatchMessage: Callable[[int, bytes], None]

    _first: bytes | None = None  # the decrypted first block of a partly received packet
    _receiving = False
    _pending: list[bytes] | None = None
    _pad = b""
    _pad_pos = 0

    def _fast(self, cipher_type: bytes, compression: Any) -> bool:
        return cipher_type != b"none" and compression is None

    # Receiving ---------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        enc = self.currentEncryptions
        if (not self.gotVersion or not self._fast(enc.inCipType, self.incomingCompression)
                or not enc.inMAC[0]):
            super().dataReceived(data)  # type: ignore[misc]
            return
        if self._receiving:  # a packet we dispatched led to more input: after this one
            if self._pending is None:
                self._pending = []
            self._pending.append(data)
            return
        self._receiving = True
        try:
            self._receive(data)
            while self._pending:
                more, self._pending = b"".join(self._pending), None
                self._receive(more)
        finally:
            self._receiving = False

    def _receive(self, data: bytes) -> None:
        first = getattr(self, "first", None)  # left by Conch's getPacket (the handover)
        if first is not None:
            delattr(self, "first")
            self._first = first
        buf = self.buf + data if self.buf else data
        self.buf = b""
        view = memoryview(buf)
        end = len(buf)
        pos = 0
        while True:
            enc = self.currentEncryptions
            if not self._fast(enc.inCipType, self.incomingCompression) or not enc.inMAC[0]:
                # Keys changed to something we leave to Conch: hand it the rest.
                if self._first is not None:
                    setattr(self, "first", self._first)  # noqa: B010 - Conch's own name
                    self._first = None
                self.buf = b""
                super().dataReceived(buf[pos:])  # type: ignore[misc]
                return
            bs = enc.decBlockSize
            ms = enc.verifyDigestSize
            if end - pos < bs:
                break
            first = self._first
            if first is None:
                first = enc.decrypt(view[pos:pos + bs])
            length, padding = _LENGTH.unpack_from(first)
            if length > MAX_PACKET_LENGTH:
                self._first = None
                self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR,
                                    b"bad packet length %d" % length)
                return
            total = 4 + length
            if end - pos < total + ms:
                self._first = first
                break
            self._first = None
            if total % bs:
                self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR,
                                    b"bad packet mod (%d%%%d == %d)" % (total, bs, total % bs))
                return
            if padding < 4 or 5 + padding >= total:
                self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"bad padding length")
                return
            rest = enc.decrypt(view[pos + bs:pos + total])
            mac = hmac.new(enc.inMAC.key, _SEQ.pack(self.incomingPacketSequence),
                           enc.inMAC[0])
            mac.update(first)
            mac.update(rest)
            if not hmac.compare_digest(mac.digest(), view[pos + total:pos + total + ms]):
                self.sendDisconnect(transport.DISCONNECT_MAC_ERROR, b"bad MAC")
                return
            pos += total + ms
            self.incomingPacketSequence += 1
            # The message type, then the payload without the padding: at most one copy.
            stop = len(rest) - padding  # where the payload ends in `rest`
            if stop > 0:
                payload = first[6:] + rest[:stop]
            else:
                payload = first[6:bs + stop]
            self.dispatchMessage(first[5], payload)
        if pos < end:
            self.buf = buf[pos:]

    # Sending -----------------------------------------------------------------------------

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        enc = self.currentEncryptions
        if (not self._fast(enc.outCipType, self.outgoingCompression) or not enc.outMAC[0]
                or self._keyExchangeState != self._KEY_EXCHANGE_NONE):
            super().sendPacket(messageType, payload)  # type: ignore[misc]
            return
        bs = enc.encBlockSize
        size = 6 + len(payload)  # length, padding length, type, payload
        pad = bs - size % bs
        if pad < 4:
            pad += bs
        packet = b"".join((_HEADER.pack(size + pad - 4, pad, messageType), payload,
                           self._padding(pad)))
        mac = hmac.new(enc.outMAC.key, _SEQ.pack(self.outgoingPacketSequence), enc.outMAC[0])
        mac.update(packet)
        self.transport.write(enc.encrypt(packet) + mac.digest())
        self.outgoingPacketSequence += 1

    def _padding(self, n: int) -> bytes:
        """`n` random bytes (RFC 4253 asks for random padding), from a pooled read."""
        pos = self._pad_pos
        if pos + n > len(self._pad):
            self._pad, pos = os.urandom(_PAD_POOL), 0
        self._pad_pos = pos + n
        return self._pad[pos:pos + n]

