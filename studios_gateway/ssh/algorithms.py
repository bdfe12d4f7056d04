"""The SSH algorithms and version line the gateway's transports offer.

Shared by the SSH server users log in to (:mod:`studios_gateway.ssh.server`), the
gateway's client towards the studio (:mod:`studios_gateway.ssh.relay`) and the studio's
own SSH server (:mod:`studios_gateway.studio.sshd`).
"""

from __future__ import annotations

from studios_gateway.ssh.framing import GCM_CIPHERS

__all__ = ["CIPHERS", "HOST_KEY_ALGORITHMS", "INNER_CIPHERS", "KEX", "MACS", "VERSION"]

#: Key exchanges, best first; all are in OpenSSH 9's defaults (mlkem from 9.9).
KEX = [b"mlkem768x25519-sha256", b"curve25519-sha256", b"curve25519-sha256@libssh.org",
       b"ecdh-sha2-nistp256", b"ecdh-sha2-nistp384", b"ecdh-sha2-nistp521"]
#: Offered to users. OpenSSH takes the first of its own list we have: aes128-ctr by
#: default (it lists CTR before GCM); GCM is there for clients that ask for it.
CIPHERS = [b"aes128-ctr", b"aes256-ctr", b"aes192-ctr", *GCM_CIPHERS]
#: Gateway -> studio, where we choose (the client's order wins): GCM first, one AEAD
#: call per packet instead of CTR + HMAC; CTR still agreed with an older studio.
INNER_CIPHERS = [*GCM_CIPHERS, b"aes128-ctr", b"aes256-ctr", b"aes192-ctr"]
MACS = [b"hmac-sha2-256", b"hmac-sha2-512"]
HOST_KEY_ALGORITHMS = [b"ssh-ed25519", b"ecdsa-sha2-nistp256", b"ecdsa-sha2-nistp384",
                       b"ecdsa-sha2-nistp521", b"rsa-sha2-512", b"rsa-sha2-256"]
VERSION = b"SSH-2.0-studios_gateway"


def _supported(wanted: list[bytes], offered: list[bytes]) -> list[bytes]:
    """Those of `wanted` that Conch `offered`, in our order."""
    return [w for w in wanted if w in offered]
