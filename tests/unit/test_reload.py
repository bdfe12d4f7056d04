"""SIGHUP reload (log level, certificates) and SIGTERM drain, wired through make_service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from OpenSSL import SSL, crypto
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs, formatEvent, globalLogPublisher

from studios_gateway import logs
from studios_gateway.component import Component
from studios_gateway.config import ConfigError
from studios_gateway.config_loading import load_config
from studios_gateway.metrics import Metrics
from studios_gateway.registry.memory import MemoryStore
from studios_gateway.reload import ReloadableServerTLS, ReloadError, apply_log_level, run_hooks
from studios_gateway.service import GatewayService, make_service
from studios_gateway.wire.tls import fingerprint_pem, make_self_signed, server_options


def write_pair(directory: Path, name: str) -> tuple[Path, Path, str]:
    cert_pem, key_pem = make_self_signed([name])
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    return cert, key, fingerprint_pem(cert_pem)


def served_pin(creator: ReloadableServerTLS) -> str:
    """The fingerprint of the certificate a new connection would be served."""

    from types import SimpleNamespace

    from twisted.internet.protocol import Factory

    tls_protocol = SimpleNamespace(factory=SimpleNamespace(wrappedFactory=Factory()))
    connection = creator.serverConnectionForTLS(tls_protocol)
    assert isinstance(connection, SSL.Connection)
    cert = connection.get_certificate()
    assert cert is not None
    return fingerprint_pem(crypto.dump_certificate(crypto.FILETYPE_PEM, cert))


def test_a_reload_serves_the_renewed_certificate_to_new_connections(tmp_path: Path) -> None:
    cert, key, old_pin = write_pair(tmp_path, "old.example")
    creator = ReloadableServerTLS(cert, key, server_options)
    assert served_pin(creator) == old_pin
    new_cert, new_key, new_pin = write_pair(tmp_path, "new.example")
    cert.write_bytes(new_cert.read_bytes())  # renewed in place, as certbot does
    key.write_bytes(new_key.read_bytes())
    creator.reload()
    assert served_pin(creator) == new_pin


def test_a_bad_certificate_keeps_the_old_one(tmp_path: Path) -> None:
    cert, key, pin = write_pair(tmp_path, "gw.example")
    creator = ReloadableServerTLS(cert, key, server_options)
    cert.write_text("not a certificate\n")
    with pytest.raises(ReloadError, match=r"gw.example.crt: cannot load .*still serving"):
        creator.reload()
    assert served_pin(creator) == pin and creator.cert_path == str(cert)


def test_every_hook_runs_and_each_failure_is_named() -> None:
    ran: list[str] = []

    def broken(config: Any) -> None:
        ran.append("broken")
        raise ValueError("certificate x: unreadable")

    cfg = load_config(environ={})
    with pytest.raises(ReloadError, match="^certificate x: unreadable$"):
        run_hooks([broken, lambda c: ran.append("level")], cfg)
    assert ran == ["broken", "level"]
    # The HTTPS and the tunnel port fail alike on the same files: said once.
    with pytest.raises(ReloadError, match="^certificate x: unreadable$"):
        run_hooks([broken, broken], cfg)


def test_the_reload_log_names_the_new_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not the event's own level: Twisted sets `log_level` on every event."""
    monkeypatch.setattr(logs, "set_level", lambda level: None)
    with capturedLogs() as events:
        apply_log_level(load_config(environ={"CONNECT_LOG_LEVEL": "debug"}))
    said = [formatEvent(e) for e in events if "reload" in e.get("log_format", "")]
    assert said == ["reload: log level debug"]
    assert events[-1]["log_level"] == LogLevel.info


@pytest.mark.parametrize(("level", "order"), [
    ("warn", ["said", "set"]), ("error", ["said", "set"]), ("fatal", ["said", "set"]),
    ("info", ["set", "said"]), ("debug", ["set", "said"])])
def test_a_reload_to_a_quieter_level_is_said_before_it_hides_the_line(
        monkeypatch: pytest.MonkeyPatch, level: str, order: list[str]) -> None:
    """CONNECT_LOG_LEVEL=warn in the env file, then a reload: the log had no word of it
    (the "reload: log level warn" line is info, written after warn applied); to debug
    the line comes after, so that a lower level is said at its own."""
    steps: list[str] = []
    monkeypatch.setattr(logs, "set_level", lambda level: steps.append("set"))
    def observe(event: dict[str, Any]) -> None:
        if "reload: log level" in event.get("log_format", ""):
            steps.append("said")

    globalLogPublisher.addObserver(observe)
    try:
        apply_log_level(load_config(environ={"CONNECT_LOG_LEVEL": level}))
    finally:
        globalLogPublisher.removeObserver(observe)
    assert steps == order


# --- through make_service: the systemd wiring's reload and the SIGTERM drain -----------


@pytest.fixture
def gateway_env(tmp_path: Path) -> dict[str, str]:
    return {"CONNECT_STORAGE_ROOT": str(tmp_path), "CONNECT_MANAGEMENT_PORT": "9000",
            "CONNECT_LOG_LEVEL": "info", "CONNECT_SHUTDOWN_GRACE": "10s"}


def test_sighup_applies_the_re_read_log_level(gateway_env: dict[str, str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    settings = dict(gateway_env)
    gw = make_service(load_config(environ=settings), MemoryReactorClock(), environ={},
                      reload=lambda: load_config(environ=settings))
    settings["CONNECT_LOG_LEVEL"] = "debug"
    applied: list[str] = []
    monkeypatch.setattr(logs, "set_level", applied.append)
    result: list[Any] = []
    assert gw.systemd is not None
    gw.systemd.on_reload().addBoth(result.append)
    assert result == [None] and applied == ["debug"]


def reload_warnings(gw: GatewayService) -> tuple[list[str], list[Any]]:
    """SIGHUP through the systemd wiring: the warnings it logged, and every event."""
    assert gw.systemd is not None
    with capturedLogs() as events:
        gw.systemd.on_reload()
    return [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn], list(events)


def test_a_reload_names_each_changed_setting_that_takes_a_restart(
        gateway_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    # It used to say nothing: a new port or limit in the env file looked applied.
    monkeypatch.setattr(logs, "set_level", lambda level: None)
    settings = dict(gateway_env)
    gw = make_service(load_config(environ=settings), MemoryReactorClock(), environ={},
                      reload=lambda: load_config(environ=settings))
    settings.update(CONNECT_LOG_LEVEL="debug", CONNECT_HTTP_MAX_BODY="1MiB",
                    CONNECT_MANAGEMENT_PORT="9001",
                    CONNECT_MANAGEMENT_AUTH_KEY="new-s3cret-key-value")
    said, events = reload_warnings(gw)
    assert said == [
        "reload: CONNECT_MANAGEMENT_PORT changed from 9000 to 9001, which takes a restart; "
        "running on with the old value",
        "reload: CONNECT_MANAGEMENT_AUTH_KEY changed, which takes a restart; running on "
        "with the old value",
        "reload: CONNECT_HTTP_MAX_BODY changed from (not set) to 1MiB, which takes a "
        "restart; running on with the old value"]
    assert not any("new-s3cret" in formatEvent(e) for e in events)
    assert any(formatEvent(e) == "reload: log level debug" for e in events)


def test_a_changed_password_in_a_url_is_named_but_not_shown() -> None:
    from studios_gateway.reload import needs_restart

    before = load_config(environ={"PLATFORM_URL": "https://u:old-pw@platform.example"})
    after = load_config(environ={"PLATFORM_URL": "https://u:new-pw@platform.example"})
    assert needs_restart(before, after) == ["PLATFORM_URL changed"]
    moved = load_config(environ={"PLATFORM_URL": "https://u:new-pw@other.example"})
    assert needs_restart(before, moved) == [
        "PLATFORM_URL changed from https://u:<redacted>@platform.example to "
        "https://u:<redacted>@other.example"]


def test_an_invalid_setting_fails_the_reload_and_changes_nothing(
        gateway_env: dict[str, str]) -> None:
    reactor = MemoryReactorClock()

    def reread() -> Any:
        raise ConfigError("CONNECT_LOG_LEVEL", "loud", "a level")

    gw = make_service(load_config(environ=gateway_env), reactor, environ={}, reload=reread)
    sent: list[str] = []
    assert gw.systemd is not None
    gw.systemd.notifier.notify = lambda *a: sent.extend(a) or True  # type: ignore[method-assign]
    gw.systemd.on_reload()
    assert sent[-2] == "READY=1"
    assert sent[-1].startswith("STATUS=reload failed (CONNECT_LOG_LEVEL='loud': expected a level)")


def test_a_bad_setting_on_reload_is_one_error_line_without_a_traceback(
        gateway_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    applied: list[str] = []
    monkeypatch.setattr(logs, "set_level", applied.append)
    settings = dict(gateway_env)
    gw = make_service(load_config(environ=settings), MemoryReactorClock(), environ={},
                      reload=lambda: load_config(environ=settings))
    settings["CONNECT_LOG_LEVEL"] = "verbose"
    assert gw.systemd is not None
    with capturedLogs() as events:
        gw.systemd.on_reload()
    failed = [e for e in events if "reload failed" in formatEvent(e)]
    assert len(failed) == 1 and failed[0]["log_level"] == LogLevel.error
    assert "log_failure" not in failed[0]
    assert formatEvent(failed[0]) == (
        "reload failed: CONNECT_LOG_LEVEL='verbose': expected one of trace, debug, info, "
        "warn, error, fatal; running on with the old settings")
    assert applied == []  # running on with the old settings


def test_a_bug_on_reload_still_logs_its_traceback(gateway_env: dict[str, str]) -> None:
    def reread() -> Any:
        raise KeyError("a bug")

    gw = make_service(load_config(environ=gateway_env), MemoryReactorClock(), environ={},
                      reload=reread)
    assert gw.systemd is not None
    with capturedLogs() as events:
        gw.systemd.on_reload()
    failed = [e for e in events if "reload failed" in formatEvent(e)]
    assert len(failed) == 1 and failed[0]["log_failure"].check(KeyError)


def make(reactor: MemoryReactorClock) -> tuple[GatewayService, defer.Deferred[None]]:
    cfg = load_config(environ={"CONNECT_SHUTDOWN_GRACE": "10s"})
    gw = GatewayService(cfg, reactor, MemoryStore(reactor), Metrics())
    drained: defer.Deferred[None] = defer.Deferred()
    gw.add_component(Component("tunnels", drain=lambda: drained))
    return gw, drained


def test_stop_service_drains_first() -> None:
    """reactor.stop() (SIGINT, say) waits for the drain before stopping the parts."""
    reactor = MemoryReactorClock()
    gw, drained = make(reactor)
    began: list[int] = []
    gw.on_drain.append(lambda: began.append(1))
    gw.startService()
    stopped: list[Any] = []
    gw.stopService().addBoth(stopped.append)
    assert gw.draining and began == [1] and stopped == [] and gw.running
    drained.callback(None)
    assert len(stopped) == 1 and not gw.running


def test_stop_service_after_a_drain_does_not_wait_again() -> None:
    reactor = MemoryReactorClock()
    reactor.running = True
    gw, drained = make(reactor)
    gw.startService()
    gw.terminate()  # SIGTERM: the same drain as POST /shutdown
    assert gw.draining and not reactor.hasStopped
    drained.callback(None)
    assert reactor.hasStopped
    stopped: list[Any] = []
    gw.stopService().addBoth(stopped.append)
    assert len(stopped) == 1


def test_a_second_sigterm_stops_without_waiting() -> None:
    reactor = MemoryReactorClock()
    reactor.running = True
    gw, _ = make(reactor)
    gw.terminate()
    reactor.advance(1)
    assert not reactor.hasStopped
    gw.terminate()
    assert reactor.hasStopped


def test_a_renewed_certificate_without_the_studios_wildcard_is_refused_on_reload(
        gateway_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The start refuses a certificate that does not cover *.<studios domain>; a reload
    took one (a renewal that lost the wildcard) and served it on the HTTPS and tunnel
    ports, so every browser failed on every studio while the log said the reload went
    well. It is now refused like an invalid setting: nothing changes, and the reason is
    check-config's."""
    wide_pem, key_pem = make_self_signed(["gw.example", "*.gw.example"])
    cert, key = tmp_path / "fullchain.pem", tmp_path / "key.pem"
    cert.write_bytes(wide_pem)
    key.write_bytes(key_pem)
    settings = dict(gateway_env, CONNECT_PROXY_URL="https://gw.example",
                    CONNECT_TLS_CERT_FILE=str(cert), CONNECT_TLS_KEY_FILE=str(key),
                    CONNECT_LOG_LEVEL="info")
    creators: list[ReloadableServerTLS] = []  # the HTTPS port's and the tunnel port's
    made = ReloadableServerTLS.__init__

    def recorded(self: ReloadableServerTLS, *args: Any) -> None:
        made(self, *args)
        creators.append(self)

    monkeypatch.setattr(ReloadableServerTLS, "__init__", recorded)
    gw = make_service(load_config(environ=settings), MemoryReactorClock(), environ={},
                      reload=lambda: load_config(environ=settings))
    assert len(creators) == 2
    pin = fingerprint_pem(wide_pem)
    narrow_pem, narrow_key = make_self_signed(["gw.example"])
    cert.write_bytes(narrow_pem)  # renewed in place without the wildcard
    key.write_bytes(narrow_key)
    settings["CONNECT_LOG_LEVEL"] = "debug"
    sent: list[str] = []
    assert gw.systemd is not None
    gw.systemd.notifier.notify = lambda *a: sent.extend(a) or True  # type: ignore[method-assign]
    with capturedLogs() as events:
        gw.systemd.on_reload()
    reason = (f"CONNECT_TLS_CERT_FILE={str(cert)!r} does not cover *.gw.example (studio "
              "subdomains)")
    assert sent[-1].startswith(f"STATUS=reload failed ({reason}"), sent[-1]
    failed = [formatEvent(e) for e in events if "reload failed" in formatEvent(e)]
    assert len(failed) == 1 and failed[0].startswith(f"reload failed: {reason}"), failed
    assert [served_pin(c) for c in creators] == [pin, pin]
    assert not any(formatEvent(e) == "reload: log level debug" for e in events)
    # The wildcard back: the same reload goes through.
    cert.write_bytes(wide_pem)
    key.write_bytes(key_pem)
    with capturedLogs() as events:
        gw.systemd.on_reload()
    assert not any("reload failed" in formatEvent(e) for e in events)
    said = [formatEvent(e) for e in events if formatEvent(e).startswith("reload: ")]
    # One line per port (the two lines were the same words).
    assert said == [f"reload: certificate {cert} for the tunnel listener",
                    f"reload: certificate {cert} for the HTTPS proxy",
                    "reload: log level debug"], said


def test_a_reload_says_when_the_environment_hides_a_changed_env_file_line(
        gateway_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Under the units the environment (a drop-in's Environment=, gateway@NN.env) wins over
    # the --env-file: a line changed there would otherwise look applied.
    applied: list[str] = []
    monkeypatch.setattr(logs, "set_level", applied.append)
    env_file = tmp_path / "gateway.env"
    env_file.write_text("CONNECT_LOG_LEVEL=info\nCONNECT_MANAGEMENT_AUTH_KEY=old-key-value-1234\n")
    environ = dict(gateway_env, CONNECT_MANAGEMENT_AUTH_KEY="from-the-unit-0123456789")

    def read() -> Any:
        return load_config(environ=environ, env_file=str(env_file))

    gw = make_service(read(), MemoryReactorClock(), environ={}, reload=read)
    env_file.write_text("CONNECT_LOG_LEVEL=debug\nCONNECT_MANAGEMENT_AUTH_KEY=new-s3cret-99\n")
    said, events = reload_warnings(gw)
    assert said == [
        "reload: CONNECT_MANAGEMENT_AUTH_KEY changed in the env file, but the environment "
        "sets it, which wins over the file; running on with that value",
        "reload: CONNECT_LOG_LEVEL changed in the env file, but the environment sets it "
        "(info), which wins over the file; running on with that value"]
    assert applied == ["info"]
    assert not any("s3cret" in formatEvent(e) or "from-the-unit" in formatEvent(e)
                   for e in events)


def test_a_reload_says_the_warnings_the_re_read_settings_draw(
        gateway_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelt name added to the env file was said at the next start only: the reload
    that read it said nothing, and the setting looked applied. The start's own warnings
    are not said again."""
    monkeypatch.setattr(logs, "set_level", lambda level: None)
    env_file = tmp_path / "gateway.env"
    env_file.write_text("CONNECT_LOG_LEVEL=info\n")

    def read() -> Any:
        return load_config(environ=gateway_env, env_file=str(env_file))

    gw = make_service(read(), MemoryReactorClock(), environ={}, reload=read)
    assert reload_warnings(gw)[0] == []
    env_file.write_text("CONNECT_LOG_LEVEL=info\nCONNECT_LOCAL_CACHE_TTL=5s\n")
    said, _ = reload_warnings(gw)
    assert said == ["reload: config: CONNECT_LOCAL_CACHE_TTL in the env file is not a "
                    "setting of the gateway and is ignored; the gateway reads "
                    "LOCAL_CACHE_TTL, without CONNECT_"], said
