"""How two gateway nodes prove to each other that they belong to the same cluster.

The exchange, one line each, before the connection turns into a yamux multiplexer:

    server -> client   studios-peer/1 <server nonce>
    client -> server   <client node id> <client nonce> <client proof>
    server -> client   ok <server proof>            (or: refused <reason>, then close)

A proof is HMAC-SHA256(CONNECT_PEER_SECRET, role | server nonce | client nonce) in
hex, so the secret never crosses the wire and each side proves it knows it; both
are compared in constant time. Nonces are 16 random bytes each. With mutual TLS
and no secret the proofs are ``-``: the TLS layer has already checked both
certificates against the cluster's CA. With neither, the server refuses every
peer. Plain objects: no transport, no reactor.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

VERSION = b"studios-peer/1"
NONCE_BYTES = 16
MAX_LINE = 512
NO_PROOF = b"-"
_NODE_ID = re.compile(rb"[A-Za-z0-9_.:-]{1,128}")
_HEX_NONCE = re.compile(rb"[0-9a-f]{%d}" % (2 * NONCE_BYTES))


class HandshakeError(Exception):
    """The peer is not one of ours (or speaks something else); `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class PeerAuth:
    """What this node knows to prove itself: the shared secret and/or mutual TLS."""

    def __init__(self, secret: str | None, mutual_tls: bool = False):
        self._key = secret.encode("utf-8") if secret else None
        self.mutual_tls = mutual_tls

    def __repr__(self) -> str:
        return f"PeerAuth(secret={'***' if self._key else None}, mutual_tls={self.mutual_tls})"

    @property
    def enabled(self) -> bool:
        return self._key is not None or self.mutual_tls

    def proof(self, role: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
        if self._key is None:
            return NO_PROOF
        msg = role + b"|" + server_nonce + b"|" + client_nonce
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest().encode()

    def check(self, role: bytes, server_nonce: bytes, client_nonce: bytes, proof: bytes) -> bool:
        expected = self.proof(role, server_nonce, client_nonce)
        if expected == NO_PROOF:
            return self.mutual_tls and proof == NO_PROOF
        return hmac.compare_digest(expected, proof)


def _nonce(text: bytes) -> bytes:
    if not _HEX_NONCE.fullmatch(text):
        raise HandshakeError("malformed peer greeting (nonce)")
    return bytes.fromhex(text.decode())


class ServerHandshake:
    """The accepting node's side."""

    def __init__(self, auth: PeerAuth, nonce: bytes | None = None):
        self.auth = auth
        self.nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
        self.peer_node: str | None = None
        #: The node id the client's line named, proven or not (for the log of a refusal).
        self.claimed_node: str | None = None

    def hello(self) -> bytes:
        return VERSION + b" " + self.nonce.hex().encode() + b"\n"

    def answer(self, line: bytes) -> bytes:
        """The reply to the client's line; raises HandshakeError (send `refusal()`)."""
        parts = line.strip().split(b" ")
        if len(parts) != 3 or not _NODE_ID.fullmatch(parts[0]):
            raise HandshakeError("malformed peer greeting")
        node, client_nonce, proof = parts[0], _nonce(parts[1]), parts[2]
        self.claimed_node = node.decode()
        if not self.auth.enabled:
            raise HandshakeError("this node accepts no peers: neither CONNECT_PEER_SECRET nor "
                                 "CONNECT_PEER_TLS_* is configured on it")
        if not self.auth.check(b"client", self.nonce, client_nonce, proof):
            raise HandshakeError("peer authentication failed (CONNECT_PEER_SECRET differs "
                                 "between the nodes?)")
        self.peer_node = node.decode()
        return b"ok " + self.auth.proof(b"server", self.nonce, client_nonce) + b"\n"

    @staticmethod
    def refusal(err: HandshakeError) -> bytes:
        return b"refused " + err.reason.encode("utf-8", "replace")[:MAX_LINE - 16] + b"\n"


class ClientHandshake:
    """The dialing node's side."""

    def __init__(self, auth: PeerAuth, node_id: str, nonce: bytes | None = None):
        if not _NODE_ID.fullmatch(node_id.encode()):
            raise ValueError(f"node id {node_id!r} cannot be sent to peers")
        self.auth = auth
        self.node_id = node_id
        self.nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
        self.server_nonce: bytes | None = None

    def greet(self, hello: bytes) -> bytes:
        """The line answering the server's hello."""
        version, _, nonce = hello.strip().partition(b" ")
        if version != VERSION:
            shown = version[:40].decode("ascii", "replace")
            raise HandshakeError(f"not a gateway peer listener (it said {shown!r})")
        self.server_nonce = _nonce(nonce)
        proof = self.auth.proof(b"client", self.server_nonce, self.nonce)
        return b" ".join([self.node_id.encode(), self.nonce.hex().encode(), proof]) + b"\n"

    def finish(self, line: bytes) -> None:
        """Check the server's answer; raises HandshakeError if it refused or is not ours."""
        word, _, rest = line.strip().partition(b" ")
        if word == b"refused":
            raise HandshakeError("the peer refused us: " + rest.decode("utf-8", "replace"))
        if word != b"ok" or self.server_nonce is None:
            raise HandshakeError("malformed peer answer")
        if not self.auth.check(b"server", self.server_nonce, self.nonce, rest):
            raise HandshakeError("the peer could not prove it knows CONNECT_PEER_SECRET")
