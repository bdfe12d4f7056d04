"""Debian's tinyproxy as the studio's only way out: an HTTP forward proxy that allows
CONNECT to the ports it is told (the gateway's HTTP port), no other."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.support.ports import free_port, wait_for_port
from tests.support.studio import _stop


def tinyproxy_available() -> bool:
    return shutil.which("tinyproxy") is not None


class Tinyproxy:
    def __init__(self, work: Path, connect_ports: list[int],
                 basic_auth: tuple[str, str] | None = None):
        work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = work / "tinyproxy.conf"
        lines = [f"Port {self.port}", "Listen 127.0.0.1", "Timeout 600",
                 "LogLevel Connect", "MaxClients 100",
                 "Allow 127.0.0.1", *[f"ConnectPort {p}" for p in connect_ports]]
        if basic_auth is not None:  # then a CONNECT without that user and password gets 407
            lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
        if os.geteuid() == 0:
            lines += ["User nobody", "Group nogroup"]
        conf.write_text("\n".join(lines) + "\n")
        self.log = work / "tinyproxy.log"  # in the foreground it logs to its output
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(["tinyproxy", "-d", "-c", str(conf)], stdout=out,
                                         stderr=subprocess.STDOUT)
        wait_for_port(self.port, proc=self.proc)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        _stop(self.proc)


def stunnel_available() -> bool:
    return shutil.which("stunnel4") is not None


class TlsFront:
    """stunnel in front of a port: TLS in (a self-signed certificate for `names`, in
    ``cert``), plain TCP on to `port` (an https:// proxy, when `port` is tinyproxy's)."""

    def __init__(self, work: Path, port: int, names: list[str]):
        from studios_gateway.wire.tls import make_self_signed

        work.mkdir(parents=True, exist_ok=True)
        self.cert, key = work / "cert.pem", work / "key.pem"
        cert_pem, key_pem = make_self_signed(names)
        self.cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        key.chmod(0o600)
        self.port = free_port()
        conf = work / "stunnel.conf"
        conf.write_text(f"foreground = yes\npid =\noutput = {work / 'stunnel.log'}\n"
                        f"[proxy]\naccept = 127.0.0.1:{self.port}\n"
                        f"connect = 127.0.0.1:{port}\ncert = {self.cert}\nkey = {key}\n")
        self.proc = subprocess.Popen(["stunnel4", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for_port(self.port, proc=self.proc)

    def stop(self) -> None:
        _stop(self.proc)
