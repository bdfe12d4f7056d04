"""Certificates for the peer link's mutual TLS in tests: a cluster CA and a node's."""

from __future__ import annotations

import datetime
from pathlib import Path
from types import SimpleNamespace


def ca_and_leaf(directory: Path) -> SimpleNamespace:
    """A cluster CA and one node certificate it signed (no EKU: good for both roles)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("cluster CA")).issuer_name(name("cluster CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(name("node")).issuer_name(name("cluster CA"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    out = SimpleNamespace(peer_tls_cert_file=str(directory / "node.crt"),
                          peer_tls_key_file=str(directory / "node.key"),
                          peer_tls_ca_file=str(directory / "ca.crt"))
    Path(out.peer_tls_cert_file).write_bytes(leaf.public_bytes(pem))
    Path(out.peer_tls_ca_file).write_bytes(ca.public_bytes(pem))
    Path(out.peer_tls_key_file).write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return out
