"""PacketFraming against Conch's own packet code: same bytes on the wire both ways, any
split of the input, and the same refusals (bad MAC, bad length)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.conch.ssh import transport
from twisted.internet.testing import StringTransport

from studios_gateway.ssh.framing import AEADCiphers, PacketFraming

KEYS = [os.urandom(32) for _ in range(6)]


class _Stock(transport.SSHTransportBase):
    def __init__(self) -> None:
        self.got: list[tuple[int, bytes]] = []
        self.disconnects: list[bytes] = []

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        self.got.append((messageNum, payload))

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        self.disconnects.append(desc)


class _Fast(PacketFraming, _Stock):
    pass


def _pair(sender_cls: type[_Stock], receiver_cls: type[_Stock],
          cipher: bytes = b"aes128-ctr", mac: bytes = b"hmac-sha2-256") -> tuple[_Stock, _Stock]:
    """Two keyed transports: what `sender` writes, `receiver` can read."""
    ends = []
    for cls, mine in ((sender_cls, True), (receiver_cls, False)):
        t = cls()
        t.gotVersion = True
        t.buf = b""
        t._keyExchangeState = t._KEY_EXCHANGE_NONE
        t.outgoingPacketSequence = t.incomingPacketSequence = 0
        t.outgoingCompression = t.incomingCompression = None
        enc = AEADCiphers(cipher, cipher, mac, mac)
        out, inn = (KEYS[:3], KEYS[3:]) if mine else (KEYS[3:], KEYS[:3])
        enc.setKeys(out[0][:16], out[1], inn[0][:16], inn[1], out[2], inn[2])
        t.currentEncryptions = enc
        t.transport = StringTransport()
        ends.append(t)
    return ends[0], ends[1]


PAYLOADS = [b"", b"x", b"y" * 9, b"z" * 10, b"w" * 11, os.urandom(1000), os.urandom(32768)]


@pytest.mark.parametrize("sender_cls, receiver_cls",
                         [(_Fast, _Stock), (_Stock, _Fast), (_Fast, _Fast)])
@pytest.mark.parametrize("cipher, mac", [(b"aes128-ctr", b"hmac-sha2-256"),
                                         (b"aes256-ctr", b"hmac-sha2-512")])
def test_interoperates_with_conch(sender_cls: type[_Stock], receiver_cls: type[_Stock],
                                  cipher: bytes, mac: bytes) -> None:
    a, b = _pair(sender_cls, receiver_cls, cipher, mac)
    for i, p in enumerate(PAYLOADS):
        a.sendPacket(94 + i % 3, p)
    b.dataReceived(a.transport.value())
    assert b.got == [(94 + i % 3, p) for i, p in enumerate(PAYLOADS)]
    assert b.disconnects == [] and b.buf == b""


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=40))
def test_any_split_of_the_input(cuts: list[int]) -> None:
    a, b = _pair(_Fast, _Fast)
    for p in PAYLOADS:
        a.sendPacket(94, p)
    wire = a.transport.value()
    pos, i = 0, 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        b.dataReceived(wire[pos:pos + step])
        assert not hasattr(b, "first")  # Conch's own reader (which sets it) was not used
        pos, i = pos + step, i + 1
    assert [p for _, p in b.got] == PAYLOADS


GCM = [b"aes128-gcm@openssh.com", b"aes256-gcm@openssh.com"]


@pytest.mark.parametrize("cipher", GCM)
def test_gcm_round_trip(cipher: bytes) -> None:
    a, b = _pair(_Fast, _Fast, cipher)
    for p in PAYLOADS:
        a.sendPacket(94, p)
    wire = a.transport.value()
    # Length in clear, a multiple of the block size; 16-byte tag; nothing of the payload.
    assert int.from_bytes(wire[:4], "big") % 16 == 0
    assert PAYLOADS[-1][:64] not in wire
    for i in range(0, len(wire), 777):
        b.dataReceived(wire[i:i + 777])
    assert [p for _, p in b.got] == PAYLOADS and b.disconnects == []
    # The nonce counts packets: a replayed packet does not verify.
    b.dataReceived(wire[:4 + int.from_bytes(wire[:4], "big") + 16])
    assert b.disconnects == [b"bad MAC"]


def test_gcm_refuses_a_bad_tag_and_a_bad_length() -> None:
    a, b = _pair(_Fast, _Fast, GCM[0])
    a.sendPacket(94, b"hello")
    wire = bytearray(a.transport.value())
    wire[10] ^= 1
    b.dataReceived(bytes(wire))
    assert b.got == [] and b.disconnects == [b"bad MAC"]
    a, b = _pair(_Fast, _Fast, GCM[0])
    b.dataReceived((20).to_bytes(4, "big") + b"\0" * 40)
    assert b.disconnects == [b"bad packet length 20"]


def test_a_bad_mac_disconnects_and_dispatches_nothing() -> None:
    a, b = _pair(_Fast, _Fast)
    a.sendPacket(94, b"hello")
    wire = bytearray(a.transport.value())
    wire[-1] ^= 1
    b.dataReceived(bytes(wire))
    assert b.got == [] and b.disconnects == [b"bad MAC"]


def test_an_oversized_length_disconnects() -> None:
    a, b = _pair(_Stock, _Fast)
    b.dataReceived(a.currentEncryptions.encrypt((2**24).to_bytes(4, "big") + b"\4" + b"\0" * 11))
    assert b.got == [] and b.disconnects == [b"bad packet length 16777216"]


def test_packets_dispatched_while_receiving_are_read_after_the_current_one() -> None:
    a, b = _pair(_Fast, _Fast)
    a.sendPacket(94, b"one")
    first = a.transport.value()
    a.transport.clear()
    a.sendPacket(94, b"two")
    second = a.transport.value()
    seen: list[bytes] = []

    def dispatch(num: int, payload: bytes) -> None:
        seen.append(payload)
        if payload == b"one":
            b.dataReceived(second)  # e.g. a synchronous peer answering in the same turn
            seen.append(b"after one")

    b.dispatchMessage = dispatch  # type: ignore[method-assign]
    b.dataReceived(first)
    assert seen == [b"one", b"after one", b"two"]


@pytest.mark.parametrize("cipher", [b"aes128-ctr", GCM[0]])
def test_a_payload_sent_in_parts_arrives_whole(cipher: bytes) -> None:
    a, b = _pair(_Fast, _Stock if cipher == b"aes128-ctr" else _Fast, cipher)
    data = os.urandom(40000)
    a.send_parts(94, (b"head", memoryview(data)[:32768], bytearray(b"tail")))
    a.send_parts(95, ())
    b.dataReceived(a.transport.value())
    assert b.got == [(94, b"head" + data[:32768] + b"tail"), (95, b"")]
    assert b.disconnects == []
