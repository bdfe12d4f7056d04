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

It also adds AES-GCM (``aes128-gcm@openssh.com``, ``aes256-gcm@openssh.com``: RFC
5647's packet format under OpenSSH's names), which Conch lacks: one AEAD call per
packet instead of AES-CTR plus HMAC-SHA2, about a fifth of the crypto cost.
:class:`AEADCiphers` replaces Conch's cipher set after KEXINIT when GCM was agreed;
the packet length travels in clear as associated data, the nonce is the 4-byte fixed
part of the derived IV and a 64-bit counter bumped per packet, and the negotiated
MAC is not used. Transports using this mixin offer no compression.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Callable
from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.conch.ssh import transport

__all__ = ["GCM_CIPHERS", "AEADCiphers", "PacketFraming"]

#: AES-GCM ciphers (OpenSSH's names) and their key sizes.
GCM_CIPHERS = {b"aes128-gcm@openssh.com": 16, b"aes256-gcm@openssh.com": 32}
_GCM_TAG = 16
_GCM_BLOCK = 16
_U32 = struct.Struct(">L")

_LENGTH = struct.Struct("!LB")
_HEADER = struct.Struct("!LBB")  # packet length, padding length, message type
_SEQ = struct.Struct(">L")
#: Longest packet we accept (Conch's limit; RFC 4253 asks for at least 35,000 bytes).
MAX_PACKET_LENGTH = 1024 * 1024
#: Random padding is taken from a pool this size (one getrandom call per pool).
_PAD_POOL = 64 * 1024


class _GCM:
    """One direction of AES-GCM: the key and the nonce's invocation counter."""

    def __init__(self, key: bytes, iv: bytes):
        self.aead = AESGCM(key)
        self.fixed = iv[:4]
        self.counter = int.from_bytes(iv[4:12], "big")

    def nonce(self) -> bytes:
        nonce = self.fixed + self.counter.to_bytes(8, "big")
        self.counter = (self.counter + 1) & 0xFFFF_FFFF_FFFF_FFFF
        return nonce


class AEADCiphers(transport.SSHCiphers):
    """Conch's cipher set plus AES-GCM: a GCM direction has no separate MAC."""

    out_gcm: _GCM | None = None
    in_gcm: _GCM | None = None

    def setKeys(self, outIV: bytes, outKey: bytes, inIV: bytes, inKey: bytes,
                outInteg: bytes, inInteg: bytes) -> None:
        names = self.outCipType, self.inCipType, self.outMACType, self.inMACType
        out_size = GCM_CIPHERS.get(self.outCipType)
        in_size = GCM_CIPHERS.get(self.inCipType)
        # Conch keys whatever is not GCM; a GCM direction is "none" to it.
        if out_size:
            self.outCipType = self.outMACType = b"none"
        if in_size:
            self.inCipType = self.inMACType = b"none"
        super().setKeys(outIV, outKey, inIV, inKey, outInteg, inInteg)
        self.outCipType, self.inCipType, self.outMACType, self.inMACType = names
        if out_size:
            self.out_gcm = _GCM(outKey[:out_size], outIV)
            self.encBlockSize = _GCM_BLOCK
        if in_size:
            self.in_gcm = _GCM(inKey[:in_size], inIV)
            self.decBlockSize = _GCM_BLOCK
            self.verifyDigestSize = _GCM_TAG


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
    nextEncryptions: Any
    _blockedByKeyExchange: list[tuple[int, bytes]]
    sendDisconnect: Callable[[int, bytes], None]
    dispatchMessage: Callable[[int, bytes], None]
    _allowedKeyExchangeMessageType: Callable[[int], bool]

    _first: bytes | None = None  # the decrypted first block of a partly received packet
    _receiving = False
    _pending: list[bytes] | None = None
    _pad = b""
    _pad_pos = 0

    def _conch_reads(self, enc: Any) -> bool:
        """Whether Conch's own reader handles packets under `enc`."""
        if getattr(enc, "in_gcm", None) is not None:
            return False
        return (enc.inCipType == b"none" or not enc.inMAC[0]
                or self.incomingCompression is not None)

    def ssh_KEXINIT(self, packet: bytes) -> Any:
        result = super().ssh_KEXINIT(packet)  # type: ignore[misc]
        nxt = getattr(self, "nextEncryptions", None)
        if (nxt is not None and not isinstance(nxt, AEADCiphers)
                and (nxt.outCipType in GCM_CIPHERS or nxt.inCipType in GCM_CIPHERS)):
            self.nextEncryptions = AEADCiphers(nxt.outCipType, nxt.inCipType,
                                               nxt.outMACType, nxt.inMACType)
        return result

    def getPacket(self) -> bytes | None:
        """Conch's reader, for a GCM packet right behind NEWKEYS in the same read."""
        gcm = getattr(self.currentEncryptions, "in_gcm", None)
        if gcm is None:
            return super().getPacket()  # type: ignore[misc]
        got = self._read_gcm(gcm, self.buf, memoryview(self.buf), 0)
        if got is None or got is False:
            return None
        pos, message, payload = got
        self.buf = self.buf[pos:]
        return bytes((message,)) + payload

    def _read_gcm(self, gcm: _GCM, buf: bytes, view: memoryview,
                  pos: int) -> tuple[int, int, bytes] | None | Literal[False]:
        """One GCM packet at `pos`: (next pos, message, payload), None (need more) or
        False (refused; the connection is being dropped)."""
        end = len(buf)
        if end - pos < 4:
            return None
        length = _U32.unpack_from(buf, pos)[0]
        if length > MAX_PACKET_LENGTH or length < _GCM_BLOCK or length % _GCM_BLOCK:
            self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR,
                                b"bad packet length %d" % length)
            return False
        stop = pos + 4 + length + _GCM_TAG
        if end < stop:
            return None
        try:
            plain = gcm.aead.decrypt(gcm.nonce(), view[pos + 4:stop], buf[pos:pos + 4])
        except InvalidTag:
            self.sendDisconnect(transport.DISCONNECT_MAC_ERROR, b"bad MAC")
            return False
        padding = plain[0]
        if padding < 4 or padding + 2 > len(plain):
            self.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"bad padding length")
            return False
        self.incomingPacketSequence += 1
        return stop, plain[1], plain[2:len(plain) - padding]

    # Receiving ---------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if not self.gotVersion or self._conch_reads(self.currentEncryptions):
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
            gcm = getattr(enc, "in_gcm", None)
            if gcm is not None:
                got = self._read_gcm(gcm, buf, view, pos)
                if got is False:
                    return
                if got is None:
                    break
                assert isinstance(got, tuple)
                pos = got[0]
                self.dispatchMessage(got[1], got[2])
                continue
            if self._conch_reads(enc):
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
        self.send_parts(messageType, (payload,))

    def send_parts(self, messageType: int, parts: tuple[bytes | memoryview, ...]) -> None:
        """Send one packet whose payload is `parts` joined: they are copied once, into
        the packet (a channel's data need not be joined to its header first)."""
        enc = self.currentEncryptions
        gcm = getattr(enc, "out_gcm", None)
        if gcm is not None:
            if (self._keyExchangeState != self._KEY_EXCHANGE_NONE
                    and not self._allowedKeyExchangeMessageType(messageType)):
                self._blockedByKeyExchange.append((messageType, b"".join(parts)))
                return
            size = 2 + sum(len(p) for p in parts)  # padding length, type, payload
            pad = _GCM_BLOCK - size % _GCM_BLOCK
            if pad < 4:
                pad += _GCM_BLOCK
            head = _U32.pack(size + pad)
            sealed = gcm.aead.encrypt(gcm.nonce(), b"".join(
                (bytes((pad, messageType)), *parts, self._padding(pad))), head)
            self.transport.writeSequence((head, sealed))
            self.outgoingPacketSequence += 1
            return
        if (enc.outCipType == b"none" or not enc.outMAC[0] or self.outgoingCompression
                or self._keyExchangeState != self._KEY_EXCHANGE_NONE):
            super().sendPacket(messageType, b"".join(parts))  # type: ignore[misc]
            return
        bs = enc.encBlockSize
        size = 6 + sum(len(p) for p in parts)  # length, padding length, type, payload
        pad = bs - size % bs
        if pad < 4:
            pad += bs
        packet = b"".join((_HEADER.pack(size + pad - 4, pad, messageType), *parts,
                           self._padding(pad)))
        mac = hmac.new(enc.outMAC.key, _SEQ.pack(self.outgoingPacketSequence), enc.outMAC[0])
        mac.update(packet)
        self.transport.writeSequence((enc.encrypt(packet), mac.digest()))
        self.outgoingPacketSequence += 1

    def _padding(self, n: int) -> bytes:
        """`n` random bytes (RFC 4253 asks for random padding), from a pooled read."""
        pos = self._pad_pos
        if pos + n > len(self._pad):
            self._pad, pos = os.urandom(_PAD_POOL), 0
        self._pad_pos = pos + n
        return self._pad[pos:pos + n]

