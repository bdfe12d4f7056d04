"""The studio's SFTP server tells OpenSSH its limits (limits@openssh.com), and serves at
most that much per read."""

from __future__ import annotations

import os
import pwd
import stat
import struct
from pathlib import Path

import pytest
from twisted.conch.ssh import filetransfer
from twisted.conch.ssh.common import NS, getNS
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from studios_gateway.studio import sftp_copy
from studios_gateway.studio.sftp import SFTP_MAX_MESSAGE, SFTP_MAX_READ, SFTPServer


def _packet(kind: int, data: bytes) -> bytes:
    return struct.pack("!LB", len(data) + 1, kind) + data


def _replies(wire: bytes) -> list[tuple[int, bytes]]:
    out = []
    while wire:
        length, kind = struct.unpack("!LB", wire[:5])
        out.append((kind, wire[5:4 + length]))
        wire = wire[4 + length:]
    return out


class _Channel(StringTransport):
    """What the server writes to (its channel takes a read's reply as a bytearray)."""

    def write(self, data: bytes | bytearray) -> None:
        super().write(bytes(data))


def _server(tmp_path: Path) -> tuple[SFTPServer, StringTransport]:
    server = SFTPServer(str(tmp_path))
    transport = _Channel()
    server.makeConnection(transport)
    server.dataReceived(_packet(filetransfer.FXP_INIT, struct.pack("!L", 3)))
    return server, transport


def test_the_version_reply_offers_limits_and_openssh_extensions(tmp_path: Path) -> None:
    _, transport = _server(tmp_path)
    [(kind, data)] = _replies(transport.value())
    assert kind == filetransfer.FXP_VERSION
    assert struct.unpack("!L", data[:4]) == (3,)
    offered, rest = {}, data[4:]
    while rest:
        name, rest = getNS(rest)
        offered[name], rest = getNS(rest)
    assert offered == {b"limits@openssh.com": b"1", b"statvfs@openssh.com": b"2",
                       b"expand-path@openssh.com": b"1", b"posix-rename@openssh.com": b"1",
                       b"hardlink@openssh.com": b"1", b"copy-data": b"1"}


def test_limits_reply_and_unknown_extensions(tmp_path: Path) -> None:
    server, transport = _server(tmp_path)
    transport.clear()
    server.dataReceived(_packet(filetransfer.FXP_EXTENDED, struct.pack("!L", 7)
                                + NS(b"limits@openssh.com")))
    server.dataReceived(_packet(filetransfer.FXP_EXTENDED, struct.pack("!L", 8)
                                + NS(b"no-such@example.com")))
    (kind, data), (status_kind, status) = _replies(transport.value())
    assert kind == filetransfer.FXP_EXTENDED_REPLY
    assert struct.unpack("!L4Q", data) == (7, SFTP_MAX_MESSAGE, SFTP_MAX_READ, SFTP_MAX_READ, 0)
    assert status_kind == filetransfer.FXP_STATUS
    assert struct.unpack("!2L", status[:8]) == (8, filetransfer.FX_OP_UNSUPPORTED)


def test_a_read_larger_than_the_limit_is_served_short(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    server, transport = _server(tmp_path)
    transport.clear()
    server.dataReceived(_packet(filetransfer.FXP_OPEN, struct.pack("!L", 1) + NS(b"big")
                                + struct.pack("!2L", filetransfer.FXF_READ, 0)))
    [(kind, data)] = _replies(transport.value())
    assert kind == filetransfer.FXP_HANDLE
    handle, _ = getNS(data[4:])
    transport.clear()
    server.dataReceived(_packet(filetransfer.FXP_READ, struct.pack("!L", 2) + NS(handle)
                                + struct.pack("!QL", 1000, 1 << 20)))
    [(kind, data)] = _replies(transport.value())
    assert kind == filetransfer.FXP_DATA
    chunk, _ = getNS(data[4:])
    assert len(chunk) == SFTP_MAX_READ
    assert chunk == ((bytes(range(256)) * 4096)[1000:1000 + SFTP_MAX_READ])
    # The end of the file is a short read, then FX_EOF.
    transport.clear()
    for request_id, offset in ((3, (1 << 20) - 10), (4, 1 << 20)):
        server.dataReceived(_packet(filetransfer.FXP_READ, struct.pack("!L", request_id)
                                    + NS(handle) + struct.pack("!QL", offset, 100)))
    (kind, data), (eof_kind, eof) = _replies(transport.value())
    assert kind == filetransfer.FXP_DATA and data[:4] == struct.pack("!L", 3)
    assert getNS(data[4:]) == ((bytes(range(256)) * 4096)[-10:], b"")
    assert eof_kind == filetransfer.FXP_STATUS
    assert struct.unpack("!2L", eof[:8]) == (4, filetransfer.FX_EOF)


def _stat(request_id: int) -> bytes:
    return _packet(filetransfer.FXP_STAT, struct.pack("!L", request_id) + NS(b"."))


def test_requests_wait_while_paused(tmp_path: Path) -> None:
    server, transport = _server(tmp_path)
    transport.clear()
    server.pause()
    wire = _stat(1) + _stat(2)
    server.dataReceived(wire[:5])
    server.dataReceived(wire[5:])
    assert transport.value() == b""
    server.resume()
    assert [kind for kind, _ in _replies(transport.value())] == [filetransfer.FXP_ATTRS] * 2
    # A request split across reads is handled once whole.
    transport.clear()
    wire = _stat(3)
    server.dataReceived(wire[:7])
    assert transport.value() == b""
    server.dataReceived(wire[7:])
    assert len(_replies(transport.value())) == 1


def test_a_request_over_the_limit_closes_the_session(tmp_path: Path) -> None:
    server, transport = _server(tmp_path)
    transport.clear()
    server.dataReceived(struct.pack("!LBL", SFTP_MAX_MESSAGE + 1, filetransfer.FXP_WRITE, 1))
    assert transport.disconnecting
    server.dataReceived(_stat(2))
    assert transport.value() == b""


def _open(server: SFTPServer, transport: StringTransport, name: bytes, flags: int) -> bytes:
    transport.clear()
    server.dataReceived(_packet(filetransfer.FXP_OPEN, struct.pack("!L", 1) + NS(name)
                                + struct.pack("!2L", flags, 0)))
    [(kind, data)] = _replies(transport.value())
    assert kind == filetransfer.FXP_HANDLE
    transport.clear()
    return getNS(data[4:])[0]


def test_writes_land_at_their_offsets_and_are_answered(tmp_path: Path) -> None:
    server, transport = _server(tmp_path)
    handle = _open(server, transport, b"up.bin",
                   filetransfer.FXF_WRITE | filetransfer.FXF_CREAT)
    block = bytes(range(256)) * 1000
    wire = b"".join(_packet(filetransfer.FXP_WRITE, struct.pack("!L", 10 + i) + NS(handle)
                            + struct.pack("!Q", i * len(block)) + NS(block))
                    for i in (1, 0, 2))
    for i in range(0, len(wire), 32768):  # as channel packets bring it
        server.dataReceived(wire[i:i + 32768])
    replies = _replies(transport.value())
    assert [(kind, struct.unpack("!2L", data[:8])) for kind, data in replies] == [
        (filetransfer.FXP_STATUS, (11, filetransfer.FX_OK)),
        (filetransfer.FXP_STATUS, (10, filetransfer.FX_OK)),
        (filetransfer.FXP_STATUS, (12, filetransfer.FX_OK))]
    assert (tmp_path / "up.bin").read_bytes() == block * 3
    # A write to a handle that is not open fails with a status, as Conch's does.
    transport.clear()
    server.dataReceived(_packet(filetransfer.FXP_WRITE, struct.pack("!L", 20) + NS(b"nope")
                                + struct.pack("!Q", 0) + NS(b"x")))
    [(kind, data)] = _replies(transport.value())
    assert kind == filetransfer.FXP_STATUS
    assert struct.unpack("!2L", data[:8])[0] == 20 and data[4:8] != b"\0\0\0\0"


def _request(server: SFTPServer, transport: StringTransport, kind: int,
             *fields: bytes) -> tuple[int, bytes]:
    """One request (id 1, its strings in order), and its one reply without the id."""
    transport.clear()
    server.dataReceived(_packet(kind, struct.pack("!L", 1) + b"".join(fields)))
    [(reply, data)] = _replies(transport.value())
    assert data[:4] == struct.pack("!L", 1)
    return reply, data[4:]


def _status(reply: tuple[int, bytes]) -> tuple[int, bytes]:
    kind, data = reply
    assert kind == filetransfer.FXP_STATUS
    return struct.unpack("!L", data[:4])[0], getNS(data[4:])[0]


_NO_ATTRS = struct.pack("!L", 0)
_MODE_0777 = struct.pack("!2L", filetransfer.FILEXFER_ATTR_PERMISSIONS, 0o777)


def test_names_beyond_ascii_are_bytes_end_to_end(tmp_path: Path) -> None:
    """scp -r and sftp of a file named "naïve résumé.txt" failed ("stat remote:
    Failure"): Conch decoded every path as ASCII, and logged a traceback."""
    server, transport = _server(tmp_path)
    folder, name = "ünï çødé".encode(), "naïve résumé.txt".encode()
    assert _status(_request(server, transport, filetransfer.FXP_MKDIR, NS(folder),
                            _NO_ATTRS))[0] == filetransfer.FX_OK
    path = folder + b"/" + name
    handle = _open(server, transport, path, filetransfer.FXF_WRITE | filetransfer.FXF_CREAT)
    assert _status(_request(server, transport, filetransfer.FXP_CLOSE,
                            NS(handle)))[0] == filetransfer.FX_OK
    assert (tmp_path / "ünï çødé" / "naïve résumé.txt").is_file()
    kind, _ = _request(server, transport, filetransfer.FXP_STAT, NS(path))
    assert kind == filetransfer.FXP_ATTRS
    (tmp_path / "ünï çødé").joinpath(os.fsdecode(b"raw-\xff")).write_text("")
    kind, data = _request(server, transport, filetransfer.FXP_OPENDIR, NS(folder))
    assert kind == filetransfer.FXP_HANDLE
    kind, data = _request(server, transport, filetransfer.FXP_READDIR, NS(getNS(data)[0]))
    assert kind == filetransfer.FXP_NAME
    count, rest = struct.unpack("!L", data[:4])[0], data[4:]
    names, lines = [], []
    for _ in range(count):
        entry, rest = getNS(rest)
        line, rest = getNS(rest)
        _, rest = server._parseAttributes(rest)
        names.append(entry)
        lines.append(line.decode())
    assert names == [name, b"raw-\xff"]  # (a name that is no UTF-8 keeps its bytes)
    assert lines[0].endswith(" naïve résumé.txt") and lines[1].endswith(" raw-\ufffd")
    kind, data = _request(server, transport, filetransfer.FXP_REALPATH, NS(folder))
    assert kind == filetransfer.FXP_NAME
    assert getNS(data[4:])[0] == os.fsencode(tmp_path) + b"/" + folder
    assert _status(_request(server, transport, filetransfer.FXP_RENAME, NS(path),
                            NS(name))) == (filetransfer.FX_OK, b"rename succeeded")
    assert (tmp_path / "naïve résumé.txt").is_file()


def test_the_owner_in_a_listing_is_named(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    server, transport = _server(tmp_path)
    _, data = _request(server, transport, filetransfer.FXP_OPENDIR, NS(b"."))
    _, data = _request(server, transport, filetransfer.FXP_READDIR, NS(getNS(data)[0]))
    line = getNS(getNS(data[4:])[1])[0].decode()
    user = pwd.getpwuid(os.getuid()).pw_name
    assert line.split()[2] == user, line


def test_mkdir_keeps_the_umask(tmp_path: Path) -> None:
    """sftp's `mkdir` asks for mode 0777: the directory was made world-writable (Conch
    set the mode after mkdir, past the umask); OpenSSH's server leaves it to the umask."""
    server, transport = _server(tmp_path)
    old = os.umask(0o022)
    try:
        assert _status(_request(server, transport, filetransfer.FXP_MKDIR, NS(b"made"),
                                _MODE_0777))[0] == filetransfer.FX_OK
        assert _status(_request(server, transport, filetransfer.FXP_MKDIR, NS(b"private"),
                                struct.pack("!2L", filetransfer.FILEXFER_ATTR_PERMISSIONS,
                                            0o700)))[0] == filetransfer.FX_OK
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "made").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700


def test_symlink_in_openssh_order_keeps_the_target_as_given(tmp_path: Path) -> None:
    """`sftp> ln -s data/x.csv latest` failed ("Unknown status"): OpenSSH sends the target
    first, Conch took it for the link (and made the target absolute)."""
    (tmp_path / "data").mkdir()
    server, transport = _server(tmp_path)
    assert _status(_request(server, transport, filetransfer.FXP_SYMLINK, NS(b"data/x.csv"),
                            NS(b"latest"))) == (filetransfer.FX_OK, b"symlink succeeded")
    assert os.readlink(tmp_path / "latest") == "data/x.csv"
    kind, data = _request(server, transport, filetransfer.FXP_READLINK, NS(b"latest"))
    assert kind == filetransfer.FXP_NAME and getNS(data[4:])[0] == b"data/x.csv"


def test_file_system_refusals_are_statuses_without_tracebacks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    server, transport = _server(tmp_path)
    failures: list[object] = []
    monkeypatch.setattr(server._log, "failure", lambda *a, **kw: failures.append(a))
    # An existing directory: version 3 has no "already exists" (OpenSSH read Conch's
    # version-6 code as "Unknown status"); a directory not empty; a missing one.
    assert _status(_request(server, transport, filetransfer.FXP_MKDIR, NS(b"full"),
                            _NO_ATTRS)) == (filetransfer.FX_FAILURE, b"File exists")
    assert _status(_request(server, transport, filetransfer.FXP_RMDIR, NS(b"full"))) == (
        filetransfer.FX_FAILURE, b"Directory not empty")
    assert _status(_request(server, transport, filetransfer.FXP_RMDIR, NS(b"none")))[0] == (
        filetransfer.FX_NO_SUCH_FILE)
    assert failures == []


def test_df_rename_onto_a_file_and_hard_links(tmp_path: Path) -> None:
    """sftp's `df` said "Server does not support statvfs@openssh.com extension", and `ln`
    (a hard link) likewise."""
    (tmp_path / "old.csv").write_text("old")
    (tmp_path / "new.csv").write_text("new")
    server, transport = _server(tmp_path)
    kind, data = _request(server, transport, filetransfer.FXP_EXTENDED,
                          NS(b"statvfs@openssh.com"), NS(b"."))
    assert kind == filetransfer.FXP_EXTENDED_REPLY
    fields = struct.unpack("!11Q", data)
    st = os.statvfs(tmp_path)
    assert (fields[0], fields[2], fields[10]) == (st.f_bsize, st.f_blocks, st.f_namemax)
    assert _status(_request(server, transport, filetransfer.FXP_EXTENDED,
                            NS(b"posix-rename@openssh.com"), NS(b"new.csv"),
                            NS(b"old.csv")))[0] == filetransfer.FX_OK
    assert (tmp_path / "old.csv").read_text() == "new" and not (tmp_path / "new.csv").exists()
    assert _status(_request(server, transport, filetransfer.FXP_EXTENDED,
                            NS(b"hardlink@openssh.com"), NS(b"old.csv"),
                            NS(b"same.csv")))[0] == filetransfer.FX_OK
    assert (tmp_path / "same.csv").stat().st_ino == (tmp_path / "old.csv").stat().st_ino
    assert _status(_request(server, transport, filetransfer.FXP_EXTENDED,
                            NS(b"hardlink@openssh.com"), NS(b"none.csv"),
                            NS(b"x.csv")))[0] == filetransfer.FX_NO_SUCH_FILE
    assert _status(_request(server, transport, filetransfer.FXP_EXTENDED,
                            NS(b"hardlink@openssh.com"), b"\0\0"))[0] == (
        filetransfer.FX_BAD_MESSAGE)


def test_a_tilde_is_the_home_directory_not_the_working_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`scp studio:~/x .` found no x (OpenSSH's scp took `~/` for the directory sftp
    starts in, the tool's working directory, from a server without expand-path)."""
    home, work = tmp_path / "home", tmp_path / "work"
    (home / "data").mkdir(parents=True)
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    server, transport = _server(work)
    for asked, meant in ((b"~", home), (b"~/data", home / "data"), (b"~/new.csv",
                                                                     home / "new.csv"),
                         (b"sub/../x", work / "x")):
        kind, data = _request(server, transport, filetransfer.FXP_EXTENDED,
                              NS(b"expand-path@openssh.com"), NS(asked))
        assert kind == filetransfer.FXP_NAME, (asked, data)
        assert getNS(data[4:])[0] == os.fsencode(meant), asked
    assert _status(_request(server, transport, filetransfer.FXP_EXTENDED,
                            NS(b"expand-path@openssh.com"),
                            NS(b"~no-such-user-here/x")))[0] == filetransfer.FX_NO_SUCH_FILE


def test_a_forwarding_the_studio_cannot_connect_says_where_and_why() -> None:
    """`ssh -L` to a port nothing listens on read "... Connection was refused by other
    side: 111: Connection refused.", Twisted's words around the errno's."""
    from twisted.internet import error as net_error

    from studios_gateway.studio.sshd import cannot_connect

    refused = Failure(net_error.ConnectionRefusedError("111: Connection refused"))
    assert cannot_connect("127.0.0.1", 8888, refused) == (
        "cannot connect to 127.0.0.1:8888 in the studio: connection refused (nothing "
        "listens there)")
    assert cannot_connect("::1", 8888, refused).startswith("cannot connect to [::1]:8888 ")
    lookup = Failure(net_error.DNSLookupError("no results for hostname lookup: db.invalid"))
    assert cannot_connect("db.invalid", 5432, lookup) == (
        "cannot connect to db.invalid:5432 in the studio: DNS lookup failed: no results for "
        "hostname lookup: db.invalid.")


def _copy_data(source: bytes, source_at: int, length: int, target: bytes,
               target_at: int, cut: int = 0) -> bytes:
    body = (struct.pack("!L", 9) + NS(b"copy-data") + NS(source)
            + struct.pack("!2Q", source_at, length) + NS(target) + struct.pack("!Q", target_at))
    return _packet(filetransfer.FXP_EXTENDED, body[:len(body) - cut])


def _copy_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                 ) -> tuple[SFTPServer, StringTransport, Clock]:
    monkeypatch.setattr(sftp_copy, "COPY_STEP", 64 * 1024)
    clock = Clock()
    server = SFTPServer(str(tmp_path), clock)
    transport = _Channel()
    server.makeConnection(transport)
    server.dataReceived(_packet(filetransfer.FXP_INIT, struct.pack("!L", 3)))
    return server, transport, clock


_READ = filetransfer.FXF_READ
_NEW = filetransfer.FXF_WRITE | filetransfer.FXF_CREAT | filetransfer.FXF_TRUNC


def test_cp_copies_in_the_studio_a_step_per_turn(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """sftp's `cp` said "Server does not support copy-data extension". The copy goes in
    steps, one per turn of the reactor: the connect client's one thread also serves the
    tool and the other sessions."""
    payload = os.urandom(3 * 64 * 1024 + 5)
    (tmp_path / "results.bin").write_bytes(payload)
    server, transport, clock = _copy_server(tmp_path, monkeypatch)
    source = _open(server, transport, b"results.bin", _READ)
    target = _open(server, transport, b"copy.bin", _NEW)
    transport.clear()
    server.dataReceived(_copy_data(source, 0, 0, target, 0))  # 0: up to the end
    # One step, then the reactor's turn: the rest waits for the next.
    assert transport.value() == b"" and clock.getDelayedCalls()
    assert (tmp_path / "copy.bin").stat().st_size == 64 * 1024
    clock.advance(0)  # (runs the steps due now, each scheduling the next, to the end)
    [(_, status)] = _replies(transport.value())
    assert struct.unpack("!2L", status[:8]) == (9, filetransfer.FX_OK)
    assert (tmp_path / "copy.bin").read_bytes() == payload
    # A part, at offsets; a length past the end is FX_EOF, as from OpenSSH's server.
    transport.clear()
    server.dataReceived(_copy_data(source, 10, 20, target, 100))
    server.dataReceived(_copy_data(source, len(payload) - 4, 100, target, 0))
    (_, first), (_, second) = _replies(transport.value())
    assert struct.unpack("!2L", first[:8]) == (9, filetransfer.FX_OK)
    assert struct.unpack("!2L", second[:8]) == (9, filetransfer.FX_EOF)
    copied = (tmp_path / "copy.bin").read_bytes()
    assert copied[100:120] == payload[10:30] and copied[:4] == payload[-4:]


def test_cp_refusals_and_a_file_closed_during_the_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.bin").write_bytes(b"a" * (5 * 64 * 1024))
    (tmp_path / "log.txt").write_bytes(b"head\n")
    server, transport, clock = _copy_server(tmp_path, monkeypatch)
    source = _open(server, transport, b"a.bin", _READ)
    again = _open(server, transport, b"a.bin", filetransfer.FXF_WRITE)
    transport.clear()
    server.dataReceived(_copy_data(source, 0, 0, again, 64))  # onto itself
    server.dataReceived(_copy_data(source, 0, 0, b"nope", 0))
    server.dataReceived(_copy_data(source, 0, 0, b"", 0, cut=3))  # cut short
    codes = [struct.unpack("!2L", data[:8])[1] for _, data in _replies(transport.value())]
    assert codes == [filetransfer.FX_FAILURE, filetransfer.FX_FAILURE,
                     filetransfer.FX_BAD_MESSAGE]
    # Onto a file opened for appending: at its end, whatever the offset.
    log = _open(server, transport, b"log.txt", filetransfer.FXF_WRITE | filetransfer.FXF_APPEND)
    transport.clear()
    server.dataReceived(_copy_data(source, 0, 3, log, 0))
    assert struct.unpack("!2L", _replies(transport.value())[0][1][:8])[1] == filetransfer.FX_OK
    assert (tmp_path / "log.txt").read_bytes() == b"head\naaa"
    # The source closed after the first step: the copy stops and says so.
    target = _open(server, transport, b"b.bin", _NEW)
    transport.clear()
    server.dataReceived(_copy_data(source, 0, 0, target, 0))
    assert transport.value() == b"" and clock.getDelayedCalls()
    server.dataReceived(_packet(filetransfer.FXP_CLOSE, struct.pack("!L", 10) + NS(source)))
    (_, stopped), (_, closed) = _replies(transport.value())
    assert struct.unpack("!2L", stopped[:8]) == (9, filetransfer.FX_FAILURE)
    assert struct.unpack("!2L", closed[:8]) == (10, filetransfer.FX_OK)
    assert not clock.getDelayedCalls()
    assert (tmp_path / "b.bin").stat().st_size == 64 * 1024


def test_cp_one_at_a_time_and_no_copy_outlives_its_session(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second copy under the same request id was kept under that id in place of the
    first, which then ran on out of reach of a close and of the session's end: once the
    session's files were closed and their descriptors taken by files opened later, it
    wrote into those. One copy at a time (OpenSSH's sftp waits for each); an offset no
    file has is refused (it was an OverflowError: no status, and sftp waited for ever)."""
    (tmp_path / "a.bin").write_bytes(b"A" * (20 * 64 * 1024))
    (tmp_path / "notes.txt").write_bytes(b"mine\n")
    server, transport, clock = _copy_server(tmp_path, monkeypatch)
    source = _open(server, transport, b"a.bin", _READ)
    first = _open(server, transport, b"b1.bin", _NEW)
    second = _open(server, transport, b"b2.bin", _NEW)
    server.dataReceived(_copy_data(source, 0, 0, first, 0))
    server.dataReceived(_copy_data(source, 0, 0, second, 0))  # the same request id, 9
    [(_, refused)] = _replies(transport.value())
    assert struct.unpack("!2L", refused[:8]) == (9, filetransfer.FX_FAILURE)
    assert (tmp_path / "b2.bin").stat().st_size == 0
    server.connectionLost(Failure(ConnectionError("gone")))
    assert not clock.getDelayedCalls()
    # The descriptors the session had, taken again by what opens next in the studio.
    reopened = [os.open(tmp_path / "a.bin", os.O_RDONLY) for _ in range(2)]
    reopened.append(os.open(tmp_path / "notes.txt", os.O_RDWR))
    try:
        clock.advance(0)
        assert (tmp_path / "notes.txt").read_bytes() == b"mine\n"
    finally:
        for fd in reopened:
            os.close(fd)

    server, transport, clock = _copy_server(tmp_path, monkeypatch)
    source = _open(server, transport, b"a.bin", _READ)
    target = _open(server, transport, b"c.bin", _NEW)
    for at in ((2**63, 0, 0), (0, 2**64 - 1, 0), (0, 0, 2**63)):
        transport.clear()
        server.dataReceived(_copy_data(source, at[0], at[1], target, at[2]))
        [(_, status)] = _replies(transport.value())
        assert struct.unpack("!2L", status[:8]) == (9, filetransfer.FX_FAILURE)
    assert not server.copies and not clock.getDelayedCalls()


def test_cp_of_a_file_the_kernel_copies_as_empty(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """copy_file_range says 0, not an error, for /proc and /sys files on Linux 5.3 to
    5.18 (their size reads 0): `cp /proc/cpuinfo x` made an empty x and said it was
    done. A 0 is checked with a read, which copies what is there."""
    (tmp_path / "status").write_bytes(b"State: R (running)\n")
    monkeypatch.setattr(os, "copy_file_range", lambda *args: 0)
    server, transport, _ = _copy_server(tmp_path, monkeypatch)
    source = _open(server, transport, b"status", _READ)
    target = _open(server, transport, b"copy", _NEW)
    server.dataReceived(_copy_data(source, 0, 0, target, 0))
    [(_, status)] = _replies(transport.value())
    assert struct.unpack("!2L", status[:8]) == (9, filetransfer.FX_OK)
    assert (tmp_path / "copy").read_bytes() == b"State: R (running)\n"


class _Turns(Clock):
    """A clock whose calls for now wait for the next turn (Clock.advance(0) runs those
    they schedule too, to the end)."""

    def turn(self) -> None:
        due, self.calls = self.calls, []
        for call in due:
            call.func(*call.args, **call.kw)


def test_copies_under_way_share_a_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One copy per session, but a connection has up to 30 sessions, and a studio many
    connections: each copy took a whole step per turn, so a turn of the connect client's
    one thread was as many steps long as there were copies. They now share one step."""
    monkeypatch.setattr(sftp_copy, "MIN_SHARE", 4096)
    (tmp_path / "a.bin").write_bytes(b"a" * (40 * 64 * 1024))
    clock = _Turns()
    servers = []
    for i in range(4):
        server, transport, _ = _copy_server(tmp_path, monkeypatch)
        server.clock = clock
        source = _open(server, transport, b"a.bin", _READ)
        target = _open(server, transport, f"copy{i}.bin".encode(), _NEW)
        server.dataReceived(_copy_data(source, 0, 0, target, 0))
        servers.append(server)
    sizes = [(tmp_path / f"copy{i}.bin").stat().st_size for i in range(4)]
    clock.turn()  # every copy's next step
    moved = sum((tmp_path / f"copy{i}.bin").stat().st_size for i in range(4)) - sum(sizes)
    assert moved == 64 * 1024
    for server in servers:
        server.connectionLost(Failure(ConnectionError("gone")))
    assert not [c for c in clock.calls if c.active()]
