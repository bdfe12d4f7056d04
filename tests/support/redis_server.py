"""A real redis-server for integration tests: free port, temp dir, optional ACL user and TLS.

    server = RedisServer(tmp_path, user="gw", password="s3cret")
    server.start()     # (on a new port if the one picked was taken meanwhile)
    ...
    server.kill()      # SIGKILL, like a crash
    server.start()     # again, on the same port
    server.stop()      # by pid, in teardown

Nothing is persisted (``--save '' --appendonly no``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import IN_USE, START_ATTEMPTS, free_port
from tests.support.waiting import wait_until

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def redis_available() -> bool:
    return os.path.exists(REDIS_SERVER)


def redis_tls_support() -> str | None:
    """None when this redis-server was built with TLS; otherwise why not."""
    if not redis_available():
        return "redis-server is not installed"
    out = subprocess.run([REDIS_SERVER, "--port", "0", "--tls-port", "0"], capture_output=True,
                         text=True, timeout=10)
    text = out.stdout + out.stderr
    if "Bad directive" in text or "not supported" in text.lower():
        return "redis-server was built without TLS (--tls-port is not supported)"
    return None


@dataclass
class TLSFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path  # a CA that did not sign anything here


def make_tls_files(directory: Path, server_dns: str = "localhost",
                   server_ip: str | None = "127.0.0.1") -> TLSFiles:
    """A self-signed CA, a server certificate for 127.0.0.1/localhost (or the names
    given: `server_ip` None leaves the address out) and a client one."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    def ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                             False, False), critical=True)
                .sign(key, hashes.SHA256()))
        return key, cert

    def leaf(cn: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
             usage: x509.ObjectIdentifier, dns: str = "localhost",
             ip: str | None = "127.0.0.1") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        names: list[x509.GeneralName] = [x509.DNSName(dns)]
        if ip is not None:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        return key, cert

    ca_key, ca_cert = ca("studios-gateway test CA")
    _, other_cert = ca("some other CA")
    s_key, s_cert = leaf("redis", ca_key, ca_cert, ExtendedKeyUsageOID.SERVER_AUTH,
                          server_dns, server_ip)
    c_key, c_cert = leaf("gateway", ca_key, ca_cert, ExtendedKeyUsageOID.CLIENT_AUTH)
    pem = serialization.Encoding.PEM
    files = TLSFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key",
                     directory / "client.crt", directory / "client.key",
                     directory / "other-ca.crt")
    files.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    files.other_ca_cert.write_bytes(other_cert.public_bytes(pem))
    files.server_cert.write_bytes(s_cert.public_bytes(pem))
    write_key(files.server_key, s_key)
    files.client_cert.write_bytes(c_cert.public_bytes(pem))
    write_key(files.client_key, c_key)
    return files


class RedisServer:
    """One redis-server process on 127.0.0.1; restartable on the same port."""

    def __init__(self, directory: Path, *, user: str | None = None,
                 password: str | None = None, channels: str = "&*",
                 tls: TLSFiles | None = None, tls_auth_clients: bool = False,
                 acl_rules: str | None = None):
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.user = user
        self.password = password
        self.channels = channels
        #: The user's rules after its password (default: every key, channel, command).
        self.acl_rules = acl_rules
        self.tls = tls
        self.tls_auth_clients = tls_auth_clients
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.directory / f"redis-{self.port}.log"
        #: One line for each first start that found its port taken.
        self.retries: list[str] = []
        self._started = False  # from the first start that came up on, the port is kept

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [REDIS_SERVER, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(self.directory), "--protected-mode", "no",
               "--logfile", str(self.log_path)]
        if self.tls is None:
            cmd += ["--port", str(self.port)]
        else:
            cmd += ["--port", "0", "--tls-port", str(self.port),
                    "--tls-cert-file", str(self.tls.server_cert),
                    "--tls-key-file", str(self.tls.server_key),
                    "--tls-ca-cert-file", str(self.tls.ca_cert),
                    "--tls-auth-clients", "yes" if self.tls_auth_clients else "no"]
        if self.user is not None:
            acl = self.directory / "users.acl"
            # The default user is switched off: only our user gets in.
            rules = self.acl_rules or f"~* {self.channels} +@all"
            acl.write_text("user default off\n"
                           f"user {self.user} on >{self.password} {rules}\n")
            cmd += ["--aclfile", str(acl)]
        return cmd

    def start(self) -> None:
        """Start redis-server and wait until it says it is ready. At the first start a
        port taken in the meantime is picked again (`retries` says so); a start after
        that keeps the port."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("redis-server is running already")
        while True:
            since = self.log_path.stat().st_size if self.log_path.exists() else 0
            self.proc = proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL,
                                                stderr=subprocess.STDOUT, cwd=self.directory)
            try:
                # Its line, not a connect: another process's listener on the port accepts too.
                wait_until(lambda proc=proc, since=since: proc.poll() is not None
                           or "Ready to accept connections" in self._log(since),
                           f"redis-server ready on {self.address} ({self.log_path})", timeout=10)
            except AssertionError as e:
                self.stop()
                raise RuntimeError(f"redis-server did not start: {e}\n"
                                   f"{self._log(since)[-2000:]}") from e
            if proc.poll() is None:
                self._started = True
                return
            said, start = self._log(since), len(self.retries) + 1
            self.proc = None
            if self._started or not IN_USE.search(said) or start >= START_ATTEMPTS:
                earlier = "".join(f"\n  {line}" for line in self.retries)
                raise RuntimeError(f"redis-server exited with {proc.returncode} (start {start} "
                                   f"of {START_ATTEMPTS}):\n{said[-2000:]}{earlier}")
            self.retries.append(f"start {start} on port {self.port}: the port was in use")
            self.port = free_port()
            self.log_path = self.directory / f"redis-{self.port}.log"

    def _log(self, since: int = 0) -> str:
        """What redis-server wrote to its log file from offset `since` on."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL, as in a crash; waits until the process is gone."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def cli(self, *args: str) -> str:
        """Run redis-cli against this server (for checks from outside the gateway)."""
        cmd = ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "--no-raw"]
        if self.user is not None:
            cmd += ["--user", self.user, "--pass", str(self.password)]
        if self.tls is not None:
            cmd += ["--tls", "--cacert", str(self.tls.ca_cert)]
        env = {**os.environ, "REDISCLI_AUTH": ""}
        env.pop("REDISCLI_AUTH")
        out = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=10,
                             env=env)
        return out.stdout.strip()
