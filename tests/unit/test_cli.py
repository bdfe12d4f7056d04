"""The studios-gateway command line: arguments as people type them."""

from __future__ import annotations

from typing import Any

import pytest

from studios_gateway.cli import build_parser

URL = "http://127.0.0.1:9901"


@pytest.mark.parametrize("argv", [
    ["sessions", "--url", URL, "list"],
    ["sessions", "list", "--url", URL],
    ["sessions", "list", "--json", f"--url={URL}"],
    ["sessions", "show", "--url", URL, "abc"],
    ["sessions", "delete", "abc", "--url", URL],
    ["sessions", "create", "--owner", "alice", "--url", URL],
    ["sessions", "users", "abc", "bob", "--url", URL],
])
def test_the_management_url_goes_before_or_after_the_action(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).url == URL


def test_without_url_it_is_unset_and_the_later_one_wins() -> None:
    assert build_parser().parse_args(["sessions", "list"]).url is None
    args = build_parser().parse_args(["sessions", "--url", "http://a", "list", "--url", URL])
    assert args.url == URL


def test_check_config_fails_on_a_certificate_the_start_refuses(
        tmp_path, monkeypatch, capsys) -> None:
    from studios_gateway.cli import main
    from studios_gateway.wire.tls import make_self_signed

    def files(*names: str) -> None:
        cert, key = make_self_signed(list(names))
        (tmp_path / "cert.pem").write_bytes(cert)
        (tmp_path / "key.pem").write_bytes(key)

    for k in [k for k in __import__("os").environ if k.startswith(("CONNECT_", "TOWER_"))]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("CONNECT_PROXY_URL", "https://connect.example.com")
    monkeypatch.setenv("CONNECT_STORAGE_ROOT", str(tmp_path))
    monkeypatch.setenv("CONNECT_TLS_CERT_FILE", str(tmp_path / "cert.pem"))
    monkeypatch.setenv("CONNECT_TLS_KEY_FILE", str(tmp_path / "key.pem"))
    files("connect.example.com", "*.connect.example.com")
    assert main(["check-config", "-q"]) == 0
    assert "configuration OK" in capsys.readouterr().out
    files("connect.example.com")  # no *.connect.example.com: the start refuses it
    assert main(["check-config", "-q"]) == 2
    out = capsys.readouterr()
    assert "*.connect.example.com" in out.err and "configuration OK" not in out.out
    files("connect.example.com", "*.connect.example.com")
    other_key = make_self_signed(["x.test"])[1]
    (tmp_path / "key.pem").write_bytes(other_key)  # a key that is not the certificate's
    assert main(["check-config", "-q"]) == 2
    assert (f"CONNECT_TLS_KEY_FILE='{tmp_path / 'key.pem'}' is not the key of the "
            "certificate" in capsys.readouterr().err)


@pytest.mark.parametrize("tool, hint", [
    ("jupyterlab", "--tool jupyterlab"),
    ("ride", "--tool ride"),
    ("generic", "--tool-port PORT"),
])
def test_create_says_how_to_run_the_studio_for_its_tool(monkeypatch, capsys, tool: str,
                                                        hint: str) -> None:
    from studios_gateway import cli

    created = {"id": "abc", "url": "http://abc.localhost/", "tool": tool,
               "connect_string": "studios-connect://abc:t@localhost:7070/"}
    monkeypatch.setattr(cli, "api_call", lambda *a, **k: created)
    args = build_parser().parse_args(["sessions", "create", "--owner", "alice", "--url", URL])
    assert cli.sessions_create(args) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("run in")][0]
    assert line.endswith(hint)


def test_create_from_an_image_whose_name_names_no_tool_says_so(monkeypatch, capsys) -> None:
    """sessions create --image .../genomics:4.2.5-0.12.0 made a generic session with nothing
    said but 'tool generic' in the image's line; its JupyterLab (or Xpra) studio bound
    into it and was served as a web application of its own (builder50)."""
    from studios_gateway import cli

    created = {"id": "abc", "url": "http://abc.localhost/", "tool": "generic",
               "image": "r.example/genomics:4.2.5-0.12.0", "tool_version": "4.2.5",
               "connect_version": "0.12.0",
               "connect_string": "studios-connect://abc:t@localhost:7070/"}
    monkeypatch.setattr(cli, "api_call", lambda *a, **k: created)
    create = ["sessions", "create", "--owner", "alice", "--url", URL, "--image",
              created["image"]]
    assert cli.sessions_create(build_parser().parse_args(create)) == 0
    notes = [x for x in capsys.readouterr().out.splitlines() if x.startswith("note:")]
    assert [" ".join(x.split()) for x in notes] == [
        "note: the image's repository name names no tool, so this is a generic studio; for a "
        "JupyterLab, R-IDE, VS Code or Xpra image, delete it and create it with --tool"]
    assert cli.sessions_create(build_parser().parse_args([*create, "--tool", "generic"])) == 0
    assert "note:" not in capsys.readouterr().out  # chosen, not fallen back to


def test_check_config_says_when_the_compiled_lane_is_missing(
        tmp_path, monkeypatch, capsys) -> None:
    from studios_gateway.cli import main
    from studios_gateway.http import lane

    for k in [k for k in __import__("os").environ if k.startswith(("CONNECT_", "TOWER_"))]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("CONNECT_STORAGE_ROOT", str(tmp_path))
    assert main(["check-config", "-q"]) == 0
    assert "compiled" not in capsys.readouterr().out  # built: nothing to say
    monkeypatch.setattr(lane, "_answer", None)  # an install built without a C compiler
    assert main(["check-config", "-q"]) == 0
    out = capsys.readouterr().out
    assert "without its C extension" in out and "configuration OK" in out
    monkeypatch.setenv("CONNECT_COMPILED_LANE", "off")  # turned off: nothing to say
    assert main(["check-config", "-q"]) == 0
    assert "compiled" not in capsys.readouterr().out.lower()


def test_check_config_says_when_redis_replies_would_be_read_in_python(
        tmp_path, monkeypatch, capsys) -> None:
    import txredisapi

    from studios_gateway.cli import main

    for k in [k for k in __import__("os").environ if k.startswith(("CONNECT_", "TOWER_"))]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("CONNECT_STORAGE_ROOT", str(tmp_path))
    monkeypatch.setattr(txredisapi, "RedisProtocol", txredisapi.BaseRedisProtocol)
    assert main(["check-config", "-q"]) == 0
    assert "hiredis" not in capsys.readouterr().out  # no Redis: nothing to say
    monkeypatch.setenv("CONNECT_REDIS_ADDRESS", "127.0.0.1:6379")
    assert main(["check-config", "-q"]) == 0
    out = capsys.readouterr().out
    assert "hiredis is not installed" in out and "configuration OK" in out


def test_ssh_on_and_off_patch_the_session(monkeypatch, capsys) -> None:
    from studios_gateway import cli

    sent: list[tuple[str, str, object]] = []

    def api(args, method, path, body=None):
        sent.append((method, path, body))
        return {"id": "abc", "tool": "generic", "owner": "alice", "ssh_enabled": body and
                body["ssh_enabled"]}

    monkeypatch.setattr(cli, "api_call", api)
    for state in ("on", "off"):
        args = build_parser().parse_args(["sessions", "ssh", "abc", state, "--url", URL])
        assert args.func(args) == 0
        assert f"ssh={state}" in capsys.readouterr().out
    assert sent == [("PATCH", "/api/sessions/abc", {"ssh_enabled": True}),
                    ("PATCH", "/api/sessions/abc", {"ssh_enabled": False})]


def test_sessions_take_the_port_key_and_address_from_the_gateway_s_env_file(
        monkeypatch, tmp_path) -> None:
    # On the gateway's host the port and key are in its env file, not in the shell:
    # `sessions --env-file /etc/studios-gateway/gateway.env list` finds them.
    import json as json_
    import urllib.request

    from studios_gateway import cli

    for k in [k for k in __import__("os").environ if k.startswith("CONNECT_")]:
        monkeypatch.delenv(k)
    env = tmp_path / "gateway.env"
    env.write_text("CONNECT_MANAGEMENT_PORT=9101\nCONNECT_MANAGEMENT_AUTH_KEY=s3cret-key\n"
                   "CONNECT_BIND_ADDRESS=10.0.0.5\n")
    sent: list[urllib.request.Request] = []

    class Answer:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def read(self):
            return json_.dumps({"sessions": []}).encode()

    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda req, timeout: sent.append(req) or Answer())
    for argv in (["sessions", "--env-file", str(env), "list"],
                 ["sessions", "list", "--env-file", str(env)]):
        assert cli.main(argv) == 0
    assert [r.full_url for r in sent] == ["http://10.0.0.5:9101/api/sessions"] * 2
    assert sent[0].get_header("Authorization") == "Bearer s3cret-key"
    # The environment wins over the file; every interface means loopback.
    monkeypatch.setenv("CONNECT_BIND_ADDRESS", "0.0.0.0")
    monkeypatch.setenv("CONNECT_MANAGEMENT_PORT", "9102")
    assert cli.main(["sessions", "--env-file", str(env), "list"]) == 0
    assert sent[-1].full_url == "http://127.0.0.1:9102/api/sessions"
    monkeypatch.setenv("CONNECT_BIND_ADDRESS", "fd00::5")
    assert cli.main(["sessions", "--env-file", str(env), "list"]) == 0
    assert sent[-1].full_url == "http://[fd00::5]:9102/api/sessions"
    with pytest.raises(SystemExit, match="a readable env file"):
        cli.main(["sessions", "--env-file", str(tmp_path / "missing.env"), "list"])


def test_token_gives_a_new_connect_string(monkeypatch, capsys) -> None:
    from studios_gateway import cli

    sent: list[tuple[str, str]] = []

    def api(args, method, path, body=None):
        sent.append((method, path))
        return {"id": "abc", "connect_string": "studios-connect://abc:new@gw:7070/"}

    monkeypatch.setattr(cli, "api_call", api)
    args = build_parser().parse_args(["sessions", "token", "abc", "--url", URL])
    assert args.func(args) == 0
    assert sent == [("POST", "/api/sessions/abc/token")]
    out = capsys.readouterr().out
    assert "connect string: studios-connect://abc:new@gw:7070/" in out
    assert "old token no longer binds" in out


def test_list_shows_only_the_versions_it_knows(monkeypatch, capsys) -> None:
    from studios_gateway import cli

    base = {"tool": "generic", "owner": "alice", "allowed_users": [], "connected": False}
    found = [{**base, "id": "a1", "image": None},
             {**base, "id": "a2", "image": None, "connected": True,
              "connect_version": "0.12.0"},
             {**base, "id": "a3", "image": "reg/data-studio-jupyter:4.2.5-0.12.0",
              "tool_version": "4.2.5", "connect_version": "0.12.0"}]
    monkeypatch.setattr(cli, "api_call", lambda *a, **k: {"sessions": found})
    args = build_parser().parse_args(["sessions", "list", "--url", URL])
    assert args.func(args) == 0
    ends = [line.split("  ")[-1] for line in capsys.readouterr().out.splitlines()]
    assert ends == ["image=-", "image=- (connect 0.12.0)",
                    "image=reg/data-studio-jupyter:4.2.5-0.12.0 (tool 4.2.5, connect 0.12.0)"]


def test_list_says_which_not_connected_case_it_is(monkeypatch, capsys) -> None:
    import time

    from studios_gateway import cli

    base = {"tool": "generic", "owner": "alice", "allowed_users": [], "connected": False}
    since = time.time() - 600
    hm = time.strftime("%H:%M UTC", time.gmtime(since))
    found = [{**base, "id": "a1", "away": {"case": "starting", "since": None}},
             {**base, "id": "a2", "away": {"case": "stopped", "since": since}},
             {**base, "id": "a3", "away": None},  # an older gateway, or cannot tell
             {**base, "id": "a4"}]
    monkeypatch.setattr(cli, "api_call", lambda *a, **k: {"sessions": found})
    args = build_parser().parse_args(["sessions", "list", "--url", URL])
    assert args.func(args) == 0
    states = [line.split("  ")[-2] for line in capsys.readouterr().out.splitlines()]
    assert states[0] == "not connected (not yet: starting)"
    assert states[1] in (f"not connected (was connected until {hm})",  # (around midnight:
                         f"not connected (was connected until "    # the date as well)
                         f"{time.strftime('%Y-%m-%d', time.gmtime(since))} {hm})")
    assert states[2:] == ["not connected", "not connected"]


def test_users_add_and_remove_change_the_list_as_it_is(monkeypatch, capsys) -> None:
    # Retyping a list of 20 to add one user risked dropping (and disconnecting) another.
    from studios_gateway import cli

    sent: list[tuple[str, str, object]] = []

    def api(args, method, path, body=None):
        sent.append((method, path, body))
        users = ["bob", "carol"] if method == "GET" else body["allowed_users"]
        return {"id": "abc", "tool": "generic", "owner": "alice", "allowed_users": users}

    monkeypatch.setattr(cli, "api_call", api)
    args = build_parser().parse_args(["sessions", "users", "abc", "--add", "dan", "--add",
                                      "bob", "--remove", "carol", "--url", URL])
    assert args.func(args) == 0
    assert sent == [("GET", "/api/sessions/abc", None),
                    ("PATCH", "/api/sessions/abc", {"allowed_users": ["bob", "dan"]})]
    assert "users=bob,dan" in capsys.readouterr().out
    sent.clear()
    args = build_parser().parse_args(["sessions", "users", "abc", "erin", "--url", URL])
    assert args.func(args) == 0
    assert sent == [("PATCH", "/api/sessions/abc", {"allowed_users": ["erin"]})]
    args = build_parser().parse_args(["sessions", "users", "abc", "erin", "--add", "x",
                                      "--url", URL])
    with pytest.raises(SystemExit, match="not both"):
        args.func(args)


def test_check_config_help_says_what_it_does(capsys: pytest.CaptureFixture[str]) -> None:
    """`studios-gateway check-config --help` listed its three options and nothing of what
    it prints, what its exit status means or as whom to run it."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["check-config", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "where it came from" in out and "Exits 2 on the errors the gateway would stop " \
        "on" in out and "Run it as the gateway's user" in out, out


def test_output_cut_short_by_its_reader_is_no_traceback(tmp_path) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    # `studios-gateway sessions list | head -1`: the reader is gone before the rest is
    # written (here before the first line: its end of the pipe is closed at once).
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
           "CONNECT_STORAGE_ROOT": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", "from studios_gateway.cli import console; "
                           "console()", "check-config"],
                          stdout=write_end, stderr=subprocess.PIPE, env=env, timeout=60)
    os.close(write_end)
    err = proc.stderr.decode()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert proc.returncode == 141


@pytest.mark.parametrize("kind, expected", [
    ("public", "expected an ed25519, RSA or ECDSA private key, not a public key"),
    ("certificate", "not a usable private key"),
    ("passphrase", "host keys must not have a passphrase"),
])
def test_check_config_refuses_the_ssh_host_keys_the_start_refuses(
        tmp_path, monkeypatch, capsys, kind: str, expected: str) -> None:
    """It said 'configuration OK', then the start exited 78 with these very lines."""
    import os

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from studios_gateway.cli import main
    from studios_gateway.wire.tls import make_self_signed

    key = ec.generate_private_key(ec.SECP256R1())
    data = {
        "public": key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                serialization.PublicFormat.OpenSSH),
        "certificate": make_self_signed(["x.test"])[0],
        "passphrase": key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.BestAvailableEncryption(b"pw")),
    }[kind]
    (tmp_path / "host_key").write_bytes(data)
    for k in [k for k in os.environ if k.startswith(("CONNECT_", "TOWER_"))]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("CONNECT_STORAGE_ROOT", str(tmp_path))
    monkeypatch.setenv("CONNECT_SSH_ENABLED", "true")
    monkeypatch.setenv("CONNECT_SSH_KEY_PATH", str(tmp_path / "host_key"))
    assert main(["check-config", "-q"]) == 2
    err = capsys.readouterr().err
    assert f"CONNECT_SSH_KEY_PATH='{tmp_path / 'host_key'}'" in err and expected in err, err


def test_check_config_reads_the_host_key_the_gateway_generated_as_the_start_does(
        tmp_path, monkeypatch, capsys) -> None:
    """No CONNECT_SSH_KEY_PATH: the key generated at an earlier start, kept under the
    storage root, damaged (a restore cut short) ended the start, and check-config said OK.
    Both now say which file, and what to do."""
    import os

    from studios_gateway.cli import main
    from studios_gateway.ssh.keys import GENERATED_NAME, HostKeyError, generated_host_key

    for k in [k for k in os.environ if k.startswith(("CONNECT_", "TOWER_"))]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("CONNECT_STORAGE_ROOT", str(tmp_path))
    monkeypatch.setenv("CONNECT_SSH_ENABLED", "true")
    assert main(["check-config", "-q"]) == 0  # none kept yet: the start makes one
    kept = tmp_path / "ssh" / GENERATED_NAME
    assert not kept.exists()  # (check-config leaves nothing behind)
    generated_host_key(kept.parent)
    assert main(["check-config", "-q"]) == 0
    kept.write_bytes(kept.read_bytes()[:60])  # cut short
    capsys.readouterr()
    assert main(["check-config", "-q"]) == 2
    err = capsys.readouterr().err
    assert str(kept) in err and "restore it from a backup, or remove it" in err, err
    with pytest.raises(HostKeyError, match="restore it from a backup"):
        generated_host_key(kept.parent)


def test_check_config_says_as_whom_it_ran_when_a_file_was_not_its_to_read(
        tmp_path, monkeypatch, capsys) -> None:
    """A key file the gateway's user may read and the operator's may not: 'Permission
    denied' alone read as a broken file."""
    import os

    from studios_gateway.cli import main
    from studios_gateway.config_values import user_name

    for k in [k for k in os.environ if k.startswith(("CONNECT_", "TOWER_"))]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("CONNECT_STORAGE_ROOT", str(tmp_path))
    monkeypatch.setenv("CONNECT_SSH_ENABLED", "true")
    (tmp_path / "host_key").write_bytes(b"")
    monkeypatch.setenv("CONNECT_SSH_KEY_PATH", str(tmp_path / "host_key"))

    def refused(self: object) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("pathlib.Path.read_bytes", refused)
    assert main(["check-config", "-q"]) == 2
    err = capsys.readouterr().err
    assert "cannot read (Permission denied)" in err, err
    assert f"check-config ran as {user_name()}" in err and "sudo -u studios-gateway" in err


def test_a_generated_host_key_is_one_warning_with_what_to_set(tmp_path, monkeypatch) -> None:
    """The start said it twice (the config's warning, then the key's own with the same
    advice); now the config's warning says what to set and the key's line is its facts."""
    from studios_gateway.config_loading import load_config
    from studios_gateway.ssh.keys import generated_host_key
    from tests.unit.test_node_settings import Logged

    config = load_config({}, environ={"CONNECT_STORAGE_ROOT": str(tmp_path),
                                      "CONNECT_SSH_ENABLED": "true"})
    [said] = [w for w in config.warnings if "SSH host key" in w]
    assert "set CONNECT_SSH_KEY_PATH or CONNECT_SSH_KEY_VALUE_BASE64" in said
    with Logged("warn") as warn, Logged("info") as info:
        generated_host_key(tmp_path / "ssh")
        generated_host_key(tmp_path / "ssh")
    assert warn.lines == []
    assert [line.split(",")[0] for line in info.lines] == [
        "SSH: generated a host key", "SSH: using the host key generated at an earlier start"]


@pytest.mark.parametrize("damage", ["sessions", "journal", "key", "unreadable key"])
def test_check_config_reads_the_kept_sessions_and_signing_key_as_the_start_does(
        tmp_path, monkeypatch, capsys, damage: str) -> None:
    """A single node's sessions.json (or its journal) or the login signing key, damaged or
    unreadable, ended the start while check-config said 'configuration OK'. It now says
    the start's line, what to do, and quotes neither the key nor a token's hash."""
    import os

    from twisted.internet.task import Clock

    from studios_gateway.auth.files import StorageError, load_or_create_key
    from studios_gateway.auth.login import KEY_FILE
    from studios_gateway.cli import main
    from studios_gateway.component import StartError
    from studios_gateway.config_loading import load_config
    from studios_gateway.registry.sessions_journal import JOURNAL_NAME
    from studios_gateway.service import build_store

    for k in [k for k in os.environ if k.startswith(("CONNECT_", "TOWER_"))]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("CONNECT_STORAGE_ROOT", str(tmp_path))
    assert main(["check-config", "-q"]) == 0  # nothing kept yet: the start makes them
    assert list(tmp_path.iterdir()) == []  # (and check-config left nothing behind)
    config = load_config(environ={"CONNECT_STORAGE_ROOT": str(tmp_path)})
    key = tmp_path / KEY_FILE
    secret_hash = "b" * 40
    (tmp_path / "sessions.json").write_text(
        '{"version": 1, "sessions": [{"id": "a1", "workspace_id": null, "tool": "generic", '
        '"owner": "alice", "allowed_users": [], "ssh_enabled": false, '
        f'"token_hash": "{secret_hash}", "created_at": 1}}]}}')
    key.write_bytes(b"k" * 32)
    assert main(["check-config", "-q"]) == 0
    capsys.readouterr()
    if damage == "sessions":
        (tmp_path / "sessions.json").write_text('{"version": 1, "sessions": [{"id": "a1"')
        expected = "sessions.json is not JSON"
        what_to_do = "restore it from a backup, or move it aside"
    elif damage == "journal":
        (tmp_path / JOURNAL_NAME).write_text('{"put": 3}\n{"delete": "a1"}\n')
        expected = "sessions.journal: line 1 is malformed"
        what_to_do = "move the file aside"
    elif damage == "key":
        key.write_bytes(b"k" * 20)
        expected = f"the key file {key} is shorter than 32 bytes"
        what_to_do = "remove it to make a new one"
    else:
        key.unlink()
        key.mkdir()  # (unreadable whoever runs it, root too)
        expected = f"cannot read the key file {key}: Is a directory"
        what_to_do = "or absent to have a new one made"
    before = sorted((p.name, p.stat().st_size) for p in tmp_path.iterdir())
    assert main(["check-config", "-q"]) == 2
    out = capsys.readouterr()
    [said] = out.err.splitlines()
    assert expected in said and what_to_do in said, said
    assert "configuration OK" not in out.out
    assert "kkkk" not in said and secret_hash not in said
    assert sorted((p.name, p.stat().st_size) for p in tmp_path.iterdir()) == before
    # The start says the very same line.
    if damage in ("sessions", "journal"):
        with pytest.raises(StartError) as start:
            build_store(config, Clock())
        assert str(start.value) == said.removeprefix("studios-gateway: ")
    else:
        with pytest.raises(StorageError) as start:  # (Auth.from_config: a StartError)
            load_or_create_key(key)
        assert str(start.value) == said.removeprefix("studios-gateway: ")


def management_answering(answers: dict[str, tuple[int, object]]) -> Any:
    """A management port on loopback answering each path with its (status, JSON), in a
    thread (shutdown() and server_close() it)."""
    import http.server
    import json as json_
    import threading

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = answers[self.path]
            data = json_.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_status_says_whether_the_gateway_is_ready_each_check_and_its_sessions(
        capsys) -> None:
    """`studios-gateway status` (the first thing an operator types) was no command: the
    readiness took a curl with the bearer key. /ready's 503 is an answer, not a failure."""
    import json as json_

    from studios_gateway import cli

    answers = {"/ready": (503, {"status": "not ready", "checks": {
        "listener:http": "ok", "store": "unavailable: Connection refused"}}),
        "/api/sessions": (200, {"sessions": [{"id": "a1", "connected": True},
                                             {"id": "b2", "connected": False}]})}

    server = management_answering(answers)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert cli.main(["status", "--url", url]) == 1
        out = capsys.readouterr().out.splitlines()
        assert out == [f"not ready ({url})", "  listener:http  ok",
                       "  store          unavailable: Connection refused",
                       "sessions: 2 (1 connected)"], out
        answers["/ready"] = (200, {"status": "ready", "checks": {"store": "ok"}})
        assert cli.main(["status", "--url", url, "--json"]) == 0
        assert json_.loads(capsys.readouterr().out) == {
            "status": "ready", "checks": {"store": "ok"}, "sessions": 2, "connected": 1}
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(SystemExit, match="cannot reach the gateway at"):
        cli.main(["status", "--url", url])


def test_a_refused_key_says_which_setting_gives_it(monkeypatch) -> None:
    """A 401 from the management port said only 'missing or wrong bearer token': a
    newcomer did not know the key is CONNECT_MANAGEMENT_AUTH_KEY nor that --env-file
    brings it."""
    from studios_gateway import cli

    monkeypatch.delenv("CONNECT_MANAGEMENT_AUTH_KEY", raising=False)
    server = management_answering(
        {"/api/sessions": (401, {"error": "missing or wrong bearer token"})})
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(SystemExit) as none_given:
            cli.main(["sessions", "--url", url, "list"])
        assert str(none_given.value) == (
            "studios-gateway: GET /api/sessions: 401 missing or wrong bearer token; the key "
            "is the gateway's CONNECT_MANAGEMENT_AUTH_KEY, and none was given: set it, or "
            "give --env-file with it")
        monkeypatch.setenv("CONNECT_MANAGEMENT_AUTH_KEY", "not-it")
        with pytest.raises(SystemExit, match="and the one given is not it$"):
            cli.main(["sessions", "--url", url, "list"])
    finally:
        server.shutdown()
        server.server_close()


def test_status_says_the_checks_when_the_session_store_is_away(capsys, monkeypatch) -> None:
    """With the session store away (Redis down: /ready's 503 says so), /api/sessions
    answers 503 too: status said only 'GET /api/sessions: 503 ...', none of the checks
    that say why. A gateway that takes the connection and never answers (its reactor
    stuck) or drops it ended in a traceback."""
    import json as json_
    import socket

    from studios_gateway import cli

    answers = {"/ready": (503, {"status": "not ready", "checks": {
        "store": "unavailable: Connection refused"}}),
        "/api/sessions": (503, {"error": "session store unavailable: Connection refused"})}

    server = management_answering(answers)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert cli.main(["status", "--url", url]) == 1
        out = capsys.readouterr().out.splitlines()
        assert out == [f"not ready ({url})", "  store  unavailable: Connection refused",
                       "sessions: unknown (session store unavailable: Connection refused)"
                       ], out
        assert cli.main(["status", "--url", url, "--json"]) == 1
        assert json_.loads(capsys.readouterr().out)["sessions"] is None
    finally:
        server.shutdown()
        server.server_close()
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(1)  # (taken by the kernel, never answered)
    monkeypatch.setattr(cli, "API_TIMEOUT", 0.3)
    try:
        with pytest.raises(SystemExit, match="did not answer: no answer in time"):
            cli.main(["status", "--url", f"http://127.0.0.1:{stuck.getsockname()[1]}"])
    finally:
        stuck.close()
