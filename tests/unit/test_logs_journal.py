"""Under systemd (JOURNAL_STREAM names standard output) the gateway's lines carry their
priority as sd-daemon's prefix and no time of their own: journald filed every line at
info (`journalctl -p warning` showed no warning) and showed two time stamps on each."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.logger import ILogObserver, Logger, LogPublisher

from studios_gateway import logs, systemd


def test_each_line_has_its_priority_and_no_time(tmp_path: Path) -> None:
    publisher = LogPublisher()
    path = tmp_path / "stdout"
    with open(path, "w") as out:
        publisher.addObserver(logs.journal_observer(out))
        log = Logger(namespace="studios_gateway.x", observer=publisher)
        log.info("session {sid} bound", sid="s1")
        log.warn("a warning")
        try:
            raise ValueError("boom")
        except ValueError:
            log.failure("it failed")
    lines = path.read_text().splitlines()
    assert lines[:2] == ["<6>[studios_gateway.x#info] session s1 bound",
                         "<4>[studios_gateway.x#warn] a warning"]
    assert lines[2] == "<2>[studios_gateway.x#critical] it failed"
    assert len(lines) > 4 and all(line.startswith("<2>") for line in lines[2:])  # traceback
    assert lines[-1].endswith("ValueError: boom")


def test_twistd_logs_there_unless_told_where_else(tmp_path: Path, monkeypatch) -> None:
    """The application's log observer (set by the service when tap.py says so) is what
    twistd starts logging to; --logfile, --syslog or --logger keep twistd's choice."""
    from twisted.application import service as app_service
    from twisted.internet.task import Clock

    from studios_gateway import tap
    from studios_gateway.config_loading import load_config
    from studios_gateway.registry.memory import MemoryStore
    from studios_gateway.service import GatewayService

    stream = tmp_path / "stream"
    with open(stream, "w") as out:
        st = os.fstat(out.fileno())
        monkeypatch.setattr("sys.stdout", out)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        options = tap.Options()
        options.parent = {"nodaemon": True, "logfile": None, "syslog": False, "logger": None}
        assert tap.writes_to_journal(options)
        options.parent = {"nodaemon": True, "logfile": "/var/log/gw.log"}
        assert not tap.writes_to_journal(options)
        # A daemon (no -n: a Type=forking unit of one's own) has /dev/null for standard
        # output from its fork on: all its log went there, and no twistd.log was written.
        options.parent = {"nodaemon": False, "logfile": None}
        assert not tap.writes_to_journal(options)
        monkeypatch.delenv("JOURNAL_STREAM")
        options.parent = {}
        assert not tap.writes_to_journal(options)
    application = app_service.Application("studios-gateway")
    config = load_config(environ={"CONNECT_STORAGE_ROOT": str(tmp_path)})
    gateway = GatewayService(config, Clock(), MemoryStore(Clock()))
    with open(os.devnull, "w") as devnull:
        gateway.log_observer = observer = logs.journal_observer(devnull)
        gateway.setServiceParent(application)
    assert application.getComponent(ILogObserver) is observer


def test_the_journal_is_known_by_the_device_and_inode_systemd_gives(tmp_path: Path) -> None:
    path = tmp_path / "stream"
    path.write_text("")
    fd = os.open(path, os.O_WRONLY)
    try:
        st = os.fstat(fd)
        assert systemd.writes_to_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, fd)
        assert not systemd.writes_to_journal({"JOURNAL_STREAM": f"{st.st_dev}:1"}, fd)
        assert not systemd.writes_to_journal({"JOURNAL_STREAM": "x"}, fd)
        assert not systemd.writes_to_journal({}, fd)
    finally:
        os.close(fd)


def test_a_start_refused_is_an_error_in_the_journal_too(tmp_path: Path, monkeypatch) -> None:
    """The lines a start refused for its settings prints on stderr before any log (status
    78's reason) carry their priority under systemd too: journald filed them at info, so
    `journalctl -p warning` showed nothing of why the gateway did not start. Elsewhere
    (a terminal, check-config's caller) they are as before."""
    from studios_gateway.component import say_to_operator

    stream = tmp_path / "stderr"
    with open(stream, "w") as err:
        st = os.fstat(err.fileno())
        monkeypatch.setattr("sys.__stderr__", err)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        say_to_operator("CONNECT_HTTP_PORT='x': expected a port")
        say_to_operator("warning: CONNECT_HTTP_PROT is not a setting", priority=4)
        monkeypatch.delenv("JOURNAL_STREAM")
        say_to_operator("as before")
    assert stream.read_text().splitlines() == [
        "<3>studios-gateway: CONNECT_HTTP_PORT='x': expected a port",
        "<4>studios-gateway: warning: CONNECT_HTTP_PROT is not a setting",
        "studios-gateway: as before"]
