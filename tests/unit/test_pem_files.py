"""An operator's certificate and key files: what is wrong with them, said in one line
that names the variable to fix, at start and in check-config alike, never a prompt for a
passphrase."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from studios_gateway.wire.tls import make_self_signed

CONNECT_PASSPHRASE = b"not given to the gateway"


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    (tmp_path / name).write_bytes(data)
    return str(tmp_path / name)


def _encrypted(key_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(CONNECT_PASSPHRASE))


@pytest.fixture
def settings(tmp_path, monkeypatch):
    """A clean environment for check-config; returns (setenv, files)."""
    for k in [k for k in os.environ if k.startswith(("CONNECT_", "TOWER_"))]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("CONNECT_PROXY_URL", "https://connect.example.com")
    monkeypatch.setenv("CONNECT_STORAGE_ROOT", str(tmp_path))
    cert, key = make_self_signed(["connect.example.com", "*.connect.example.com"])
    other_key = make_self_signed(["x.test"])[1]
    files = {"cert": _write(tmp_path, "cert.pem", cert), "key": _write(tmp_path, "key.pem", key),
             "other_key": _write(tmp_path, "other.pem", other_key),
             "encrypted": _write(tmp_path, "enc.pem", _encrypted(key)),
             "garbage": _write(tmp_path, "garbage.pem", b"not a PEM file\n")}
    return monkeypatch.setenv, files


def _check(capsys) -> tuple[int, str]:
    from studios_gateway.cli import main

    code = main(["check-config", "-q"])
    return code, capsys.readouterr().err


def test_an_encrypted_key_is_named_without_a_prompt(settings, capsys) -> None:
    setenv, files = settings
    setenv("CONNECT_TLS_CERT_FILE", files["cert"])
    setenv("CONNECT_TLS_KEY_FILE", files["encrypted"])
    code, err = _check(capsys)
    assert code == 2
    # OpenSSL's own loader asked 'Enter PEM pass phrase:' on the terminal, then listed
    # its error tuples ('UI routines', 'bad password read'...).
    assert err.strip().splitlines() == [
        f"studios-gateway: CONNECT_TLS_KEY_FILE='{files['encrypted']}' holds a private key "
        "encrypted with a passphrase, which the gateway has no way to be given: write it "
        f"out unencrypted (openssl pkey -in {files['encrypted']} -out NEW_FILE), readable "
        "only by the gateway's user"]


@pytest.mark.parametrize("cert, key, expected", [
    ("cert", "other_key", "CONNECT_TLS_KEY_FILE='{other_key}' is not the key of the "
                          "certificate in {cert} (their public keys differ)"),
    ("key", "cert", "CONNECT_TLS_CERT_FILE='{key}' holds no PEM certificate (a '-----BEGIN "
                    "CERTIFICATE-----' block); it holds a private key: are the certificate "
                    "and key files swapped?"),
    ("cert", "garbage", "CONNECT_TLS_KEY_FILE='{garbage}' holds no PEM private key"),
])
def test_a_pair_that_will_not_do_names_the_file_to_fix(settings, capsys, cert: str, key: str,
                                                       expected: str) -> None:
    setenv, files = settings
    setenv("CONNECT_TLS_CERT_FILE", files[cert])
    setenv("CONNECT_TLS_KEY_FILE", files[key])
    code, err = _check(capsys)
    assert code == 2
    assert expected.format(**files) in err
    assert "routines" not in err and "cryptography.io" not in err


def test_the_start_refuses_in_the_same_words(settings) -> None:
    from studios_gateway.component import StartError
    from studios_gateway.config_loading import load_config
    from studios_gateway.service import make_service

    setenv, files = settings
    setenv("CONNECT_TLS_CERT_FILE", files["cert"])
    setenv("CONNECT_TLS_KEY_FILE", files["encrypted"])
    with pytest.raises(StartError) as refused:
        make_service(load_config(environ=os.environ), environ=os.environ)
    assert str(refused.value).startswith(
        f"CONNECT_TLS_KEY_FILE='{files['encrypted']}' holds a private key encrypted")


def test_check_config_knows_the_peer_files_the_start_refuses(settings, capsys) -> None:
    setenv, files = settings
    setenv("CONNECT_REDIS_ADDRESS", "127.0.0.1:6379")
    setenv("CONNECT_PEER_TLS_CERT_FILE", files["cert"])
    setenv("CONNECT_PEER_TLS_KEY_FILE", files["other_key"])
    setenv("CONNECT_PEER_TLS_CA_FILE", files["cert"])
    code, err = _check(capsys)  # it said 'configuration OK'; the start exited 78
    assert code == 2
    assert (f"CONNECT_PEER_TLS_KEY_FILE='{files['other_key']}' is not the key of the "
            "certificate" in err)
    setenv("CONNECT_PEER_TLS_KEY_FILE", files["key"])
    setenv("CONNECT_PEER_TLS_CA_FILE", files["garbage"])
    code, err = _check(capsys)
    assert code == 2
    assert (f"CONNECT_PEER_TLS_CA_FILE='{files['garbage']}' holds no PEM certificate"
            in err)


def test_a_redis_client_key_that_will_not_do_stops_the_start_before_listening(
        settings, capsys) -> None:
    from studios_gateway.component import StartError
    from studios_gateway.config_loading import load_config
    from studios_gateway.service import build_store

    setenv, files = settings
    setenv("CONNECT_REDIS_ADDRESS", "127.0.0.1:6379")
    setenv("CONNECT_REDIS_TLS_ENABLE", "true")
    setenv("CONNECT_REDIS_TLS_CERT_FILE", files["cert"])
    setenv("CONNECT_REDIS_TLS_KEY_FILE", files["other_key"])
    expected = (f"CONNECT_REDIS_TLS_KEY_FILE='{files['other_key']}' is not the key of the "
                "certificate")
    code, err = _check(capsys)
    assert code == 2 and expected in err
    # It was a traceback from the store's start, after the listeners were bound.
    with pytest.raises(StartError, match="^" + expected):
        build_store(load_config(environ=os.environ), clock=None)


def test_a_damaged_self_signed_tunnel_certificate_is_one_line(settings, capsys) -> None:
    """A restore cut short, a disk full when it was written: the start ended in a
    traceback from the pin's computation, and check-config said 'configuration OK'."""
    from studios_gateway.component import StartError
    from studios_gateway.config_loading import load_config
    from studios_gateway.service import make_service

    setenv, files = settings
    root = Path(files["cert"]).parent
    (root / "tunnel").mkdir()
    (root / "tunnel" / "cert.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\ncut")
    (root / "tunnel" / "key.pem").write_bytes(Path(files["key"]).read_bytes())
    expected = (f"CONNECT_STORAGE_ROOT='{root}': the self-signed tunnel certificate's file "
                f"{root / 'tunnel' / 'cert.pem'} holds no PEM certificate")
    code, err = _check(capsys)
    assert code == 2 and expected in err, err
    with pytest.raises(StartError) as refused:
        make_service(load_config(environ=os.environ), environ=os.environ)
    assert str(refused.value).startswith(expected)
    assert f"restore {root / 'tunnel'} from a backup, or remove it" in str(refused.value)


def test_check_config_by_a_user_who_may_not_look_under_the_storage_root(
        settings, capsys, monkeypatch) -> None:
    """check-config run as an operator's own user, the storage root the gateway's (mode
    0700): looking for the self-signed tunnel pair there ended it in a PermissionError
    traceback. (The storage root's own check says when it cannot be used.)"""
    import pathlib

    setenv, files = settings
    tunnel = Path(files["cert"]).parent / "tunnel"
    tunnel.mkdir()
    (tunnel / "cert.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\ncut")
    (tunnel / "key.pem").write_bytes(Path(files["key"]).read_bytes())
    stat = pathlib.Path.stat

    def no_entry(self: Path, **kwargs: object) -> os.stat_result:
        if self.parent == tunnel:  # (as for a user without the right to search the root)
            raise PermissionError(13, "Permission denied", str(self))
        return stat(self, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pathlib.Path, "stat", no_entry)
    code, err = _check(capsys)
    assert (code, err) == (0, "")


def pairs_read(monkeypatch) -> list[str]:
    """The certificate files pem_files.load_pair reads from now on, in order."""
    from studios_gateway import pem_files

    read: list[str] = []
    load_pair = pem_files.load_pair

    def counted(cert: str | Path, key: str | Path) -> object:
        read.append(str(cert))
        return load_pair(cert, key)

    monkeypatch.setattr(pem_files, "load_pair", counted)
    return read


def test_the_start_reads_the_peer_files_once(settings, monkeypatch) -> None:
    """The peer listener's start checked CONNECT_PEER_TLS_* (to refuse in one line) and
    then read the same files again to make its TLS options: it takes the checked ones."""
    from twisted.internet.testing import MemoryReactorClock

    from studios_gateway.config_loading import load_config
    from studios_gateway.service import make_service
    from tests.support.peer_certs import ca_and_leaf

    setenv, files = settings
    peer = ca_and_leaf(Path(files["cert"]).parent)
    setenv("CONNECT_REDIS_ADDRESS", "127.0.0.1:6379")
    setenv("CONNECT_PEER_TLS_CERT_FILE", peer.peer_tls_cert_file)
    setenv("CONNECT_PEER_TLS_KEY_FILE", peer.peer_tls_key_file)
    setenv("CONNECT_PEER_TLS_CA_FILE", peer.peer_tls_ca_file)
    read = pairs_read(monkeypatch)
    make_service(load_config(environ=os.environ), MemoryReactorClock(), environ=os.environ)
    assert read.count(peer.peer_tls_cert_file) == 1, read


def test_what_openssl_alone_refuses_names_the_files_the_operator_can_fix(
        settings, monkeypatch) -> None:
    """The tunnel listener's pair refused past the PEM checks (OpenSSL's own words): the
    operator's files are named as check-config names them, and the self-made pair by
    its place under the storage root. The latter named CONNECT_TLS_CERT_FILE and
    CONNECT_TLS_KEY_FILE, which were not set."""
    from OpenSSL import SSL

    from studios_gateway.component import StartError
    from studios_gateway.config_loading import load_config
    from studios_gateway.service import make_service
    from studios_gateway.wire import tls

    def refusing(cert: object, key: object) -> object:
        raise SSL.Error([("SSL routines", "", "ee key too small")])

    monkeypatch.setattr(tls, "tunnel_server_options", refusing)
    setenv, files = settings
    root = Path(files["cert"]).parent
    with pytest.raises(StartError) as refused:
        make_service(load_config(environ=os.environ), environ=os.environ)
    said = str(refused.value)
    assert said.startswith(f"CONNECT_STORAGE_ROOT='{root}': the self-signed tunnel "
                           f"certificate and key in {root / 'tunnel'} cannot be loaded ("), said
    assert "ee key too small" in said and "CONNECT_TLS_" not in said
    setenv("CONNECT_TLS_CERT_FILE", files["cert"])
    setenv("CONNECT_TLS_KEY_FILE", files["key"])
    with pytest.raises(StartError) as refused:
        make_service(load_config(environ=os.environ), environ=os.environ)
    assert str(refused.value).startswith("CONNECT_TLS_*_FILE: cannot load the certificate "
                                         "and key ("), str(refused.value)


def test_the_start_reads_the_redis_client_files_once(settings, monkeypatch) -> None:
    """The store's start checked CONNECT_REDIS_TLS_* and the store read them again when
    it made its endpoint: it takes the checked options."""
    from twisted.internet.task import Clock

    from studios_gateway.config_loading import load_config
    from studios_gateway.service import build_store

    setenv, files = settings
    setenv("CONNECT_REDIS_ADDRESS", "127.0.0.1:6379")
    setenv("CONNECT_REDIS_TLS_ENABLE", "true")
    setenv("CONNECT_REDIS_TLS_CERT_FILE", files["cert"])
    setenv("CONNECT_REDIS_TLS_KEY_FILE", files["key"])
    read = pairs_read(monkeypatch)
    store = build_store(load_config(environ=os.environ), clock=Clock())
    store.inner.endpoint()  # (what its start dials)
    assert read == [files["cert"]], read
