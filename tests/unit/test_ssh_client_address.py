"""Where the user came from, as the gateway tells the studio's SSH server
(studios_gateway.ssh.client_address): the codec, and what a studio's session gets."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from studios_gateway.ssh.channels import OpenRefused
from studios_gateway.ssh.client_address import REQUEST, UNKNOWN, ClientAddress
from studios_gateway.studio.sshd import StudioConnection

_hosts = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
_ports = st.integers(0, 65535)


@given(_hosts, _ports, _hosts, _ports)
def test_what_the_gateway_sends_the_studio_reads_back(host: str, port: int, server: str,
                                                      server_port: int) -> None:
    address = ClientAddress.of(IPv6Address("TCP", host, port) if ":" in host
                               else IPv4Address("TCP", host, port),
                               IPv4Address("TCP", server, server_port))
    assert address is not None
    assert ClientAddress.decode(address.encode()) == address


@given(st.binary(max_size=80))
def test_anything_else_is_no_address(data: bytes) -> None:
    address = ClientAddress.decode(data)  # never raises
    if address is not None:  # (hypothesis found a well-formed one)
        for host in (address.host, address.server_host):
            ipaddress.ip_address(host)
        assert len(address.environment()["SSH_CONNECTION"].split()) == 4


def test_environment_as_sshd_writes_it() -> None:
    # An IPv4 user on a dual-stack listener is seen as ::ffff:a.b.c.d; sshd writes a.b.c.d.
    address = ClientAddress.of(IPv6Address("TCP", "::ffff:203.0.113.5", 51234),
                               IPv6Address("TCP", "::ffff:192.0.2.7", 2222))
    assert address is not None
    assert address.environment() == {"SSH_CONNECTION": "203.0.113.5 51234 192.0.2.7 2222",
                                     "SSH_CLIENT": "203.0.113.5 51234 2222"}
    assert ClientAddress.of(UNIXAddress(b"/run/x"), IPv4Address("TCP", "1.2.3.4", 1)) is None


def test_words_no_address_may_hold_are_refused() -> None:
    # A space or a line break would end up inside a session's SSH_CONNECTION.
    bad = ClientAddress("203.0.113.5 1 2 3\nX", 1, "192.0.2.7", 2222)
    assert ClientAddress.decode(bad.encode()) is None
    good = ClientAddress("203.0.113.5", 1, "192.0.2.7", 2222).encode()
    assert ClientAddress.decode(good + b"more") is None
    assert ClientAddress.decode(good[:-1]) is None


def test_a_studio_connection_keeps_its_own_address() -> None:
    """Each connection has its user's address; one the gateway did not tell (an older
    gateway) has OpenSSH's words for an address not known, not another connection's."""
    first, second, untold = StudioConnection(), StudioConnection(), StudioConnection()
    alice = ClientAddress("203.0.113.5", 51234, "192.0.2.7", 2222)
    carol = ClientAddress("198.51.100.8", 40001, "192.0.2.7", 2222)
    assert first.gotGlobalRequest(REQUEST, alice.encode()) == 1
    assert second.gotGlobalRequest(REQUEST, carol.encode()) == 1
    assert (first.client, second.client, untold.client) == (alice, carol, UNKNOWN)
    assert untold.client.environment()["SSH_CONNECTION"] == "UNKNOWN 65535 UNKNOWN 65535"
    assert untold.gotGlobalRequest(REQUEST, b"junk") == 0
    assert untold.client == UNKNOWN


def test_told_once_and_before_any_channel() -> None:
    """The gateway tells it once, before the user's channels; a second telling, or one
    after a channel opened, would give the connection's later sessions another address
    than its first (or another's): refused, the first kept."""
    told, late = StudioConnection(), StudioConnection()
    alice = ClientAddress("203.0.113.5", 51234, "192.0.2.7", 2222)
    carol = ClientAddress("198.51.100.8", 40001, "192.0.2.7", 2222)
    assert told.gotGlobalRequest(REQUEST, alice.encode()) == 1
    assert told.gotGlobalRequest(REQUEST, carol.encode()) == 0
    assert told.client == alice
    with pytest.raises(OpenRefused):
        late.open_channel(b"x11", 0, 0, b"")
    assert late.gotGlobalRequest(REQUEST, carol.encode()) == 0
    assert late.client == UNKNOWN
