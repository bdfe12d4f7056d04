"""The studio's SFTP server: the ``sftp`` subsystem of a session channel of the studio's
SSH server (:mod:`~studios_gateway.studio.sshd`), which OpenSSH's scp and sftp use; as
the connect client's OS user, relative paths under that server's working directory.

Conch's Unix SFTP server, handed one request at a time so that its channel's window
can pause it, told OpenSSH's limits (``limits@openssh.com``: 255 KiB per read and write
instead of the 32 KiB a client assumes of a server that says nothing), with reads and
writes served from and into the channel's buffers without Conch's copies. Paths stay
bytes from the wire to the file system, as OpenSSH's sftp-server keeps them (Conch's
took them as ASCII, and a name such as ``résumé.txt`` failed); mkdir and symlink do what
OpenSSH's do (the mode under the umask; the target first, kept as given); a failure the
file system reports is a status for the client, not a traceback in the studio's log.
OpenSSH's ``statvfs`` (sftp's ``df``), ``posix-rename``, ``hardlink`` and ``expand-path``
(``~`` in scp's and sftp's paths) extensions are offered too, and ``copy-data`` (sftp's
``cp``, copied in the studio: :mod:`~studios_gateway.studio.sftp_copy`).
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import struct
from collections.abc import Iterator
from typing import Any, Protocol, cast

from twisted.conch.ls import lsLine
from twisted.conch.ssh import common, filetransfer
from twisted.conch.unix import SFTPServerForUnixConchUser, UnixSFTPFile
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from studios_gateway.ssh.channels import conch_log
from studios_gateway.studio.sftp_copy import FileCopy, same_file

__all__ = ["SFTP_MAX_MESSAGE", "SFTP_MAX_READ", "SFTPServer"]

log = Logger(namespace="studios_gateway.studio.sftp")


class _Channel(Protocol):
    """What the server writes to: the session channel, which takes a read's reply (a
    bytearray) as it is (a Twisted transport wants bytes)."""

    def write(self, data: bytes | bytearray) -> None: ...


class _SFTPAvatar:
    """What Conch's Unix SFTP server needs from an avatar: we already are the user."""

    def __init__(self, home: str):
        self._home = FilePath(home)

    def getHomeDir(self) -> FilePath[str]:
        return self._home

    def getUserGroupId(self) -> tuple[int, int]:
        return os.getuid(), os.getgid()

    # Conch's contract: `f` is a callable, or a list of (callable, args, kwargs) tuples.
    def _runAsUser(self, f: Any, *args: Any, **kw: Any) -> Any:
        if callable(f):
            return f(*args, **kw)
        result = None
        for item in f:
            func = item[0]
            result = func(*(item[1] if len(item) > 1 else ()),
                          **(item[2] if len(item) > 2 else {}))
        return result


#: Largest SFTP message we take, and the largest read and write we serve in one request:
#: OpenSSH's own limits, told to clients by the ``limits@openssh.com`` extension. Its
#: scp and sftp then move 255 KiB per request instead of the 32 KiB they assume of a
#: server that says nothing: an eighth of the requests, replies and SSH packets.
SFTP_MAX_MESSAGE = 256 * 1024
SFTP_MAX_READ = SFTP_MAX_MESSAGE - 1024
LIMITS_EXTENSION = b"limits@openssh.com"
STATVFS_EXTENSION = b"statvfs@openssh.com"
#: `~` and `~user` in a path, expanded by the server (see SFTPServer.expand_path).
EXPAND_PATH_EXTENSION = b"expand-path@openssh.com"
#: Extensions answered with a status, not a reply of their own.
STATUS_EXTENSIONS = (b"posix-rename@openssh.com", b"hardlink@openssh.com")
#: sftp's `cp`: from one open file to another, in the studio (SFTPServer.copy_data).
COPY_DATA_EXTENSION = b"copy-data"
#: Copies under way at once in one SFTP session. OpenSSH's sftp waits for each copy's
#: status before it asks for the next; more at once only multiplied the work of each
#: turn of the connect client's one thread.
COPIES_AT_ONCE = 1
#: Offsets and lengths beyond this are no file's (the kernel's off_t).
_OFF_MAX = 2**63 - 1
#: What the version reply offers, with the versions OpenSSH's sftp looks for.
EXTENSIONS = {LIMITS_EXTENSION: b"1", STATVFS_EXTENSION: b"2", EXPAND_PATH_EXTENSION: b"1",
              COPY_DATA_EXTENSION: b"1", **dict.fromkeys(STATUS_EXTENSIONS, b"1")}
_STATVFS_RDONLY, _STATVFS_NOSUID = 1, 2
#: An FXP_DATA reply's head: message length, type, request id, data length.
_DATA_REPLY = struct.Struct(">LB4sL")


class _SFTPFile(UnixSFTPFile):
    """Conch's Unix file, with fsetstat (scp sets modes and times) and positional I/O."""

    def readChunk(self, offset: int, length: int) -> bytes:
        # A short read is allowed; a client asking for more than it was told gets less.
        return os.pread(self.fd, min(length, SFTP_MAX_READ), offset)

    def read_reply(self, request_id: bytes, offset: int, length: int) -> bytearray | None:
        """The whole FXP_DATA reply to a read, the file's bytes read into it in place
        (no copy of them here); None at the end of the file."""
        length = min(length, SFTP_MAX_READ)
        reply = bytearray(_DATA_REPLY.size + length)
        with memoryview(reply) as view:
            n = os.preadv(self.fd, [view[_DATA_REPLY.size:]], offset)
        if n == 0:
            return None
        if n < length:
            del reply[_DATA_REPLY.size + n:]
        _DATA_REPLY.pack_into(reply, 0, n + 9, filetransfer.FXP_DATA, request_id, n)
        return reply

    def writeChunk(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view, offset = view[n:], offset + n

    def setAttrs(self, attrs: dict[str, Any]) -> None:  # Any: ints, bytes for extensions
        if "size" in attrs:
            os.ftruncate(self.fd, attrs["size"])
        if "uid" in attrs and "gid" in attrs:
            os.fchown(self.fd, attrs["uid"], attrs["gid"])
        if "permissions" in attrs:
            os.fchmod(self.fd, attrs["permissions"] & 0o7777)
        if "atime" in attrs and "mtime" in attrs:
            os.utime(self.fd, (attrs["atime"], attrs["mtime"]))


def _owner_names(line: str, uid: int, gid: int) -> str:
    """An `ls -l` line of Conch's with the owner's and group's names for their numbers,
    as OpenSSH's sftp-server writes it (its `sftp ls -l` shows them)."""
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    head, numbers, rest = line[:16], line[16:34], line[34:]
    if numbers != f"{uid:<9}{gid:<9}":  # (not the layout this was written for)
        return line
    return f"{head}{user:<8} {group:<8} {rest}"


class _SFTPDirectory:
    """A directory's entries, as (name, `ls -l` line, attributes), the names as bytes."""

    def __init__(self, server: _SFTPFiles, path: bytes):
        self.server = server
        self.path = path
        self.names = sorted(os.listdir(path))

    def __iter__(self) -> Iterator[tuple[bytes, str, dict[str, Any]]]:
        return self

    def __next__(self) -> tuple[bytes, str, dict[str, Any]]:
        while self.names:
            name = self.names.pop(0)
            try:
                s = os.lstat(os.path.join(self.path, name))
            except FileNotFoundError:  # gone since the listing
                continue
            line = lsLine(name.decode("utf-8", "replace"), s)
            return name, _owner_names(line, s.st_uid, s.st_gid), self.server._getAttrs(s)
        raise StopIteration

    def close(self) -> None:
        self.names = []


class _SFTPFiles(SFTPServerForUnixConchUser):
    def _absPath(self, path: bytes) -> bytes:
        # Bytes as the client sent them (Conch's decoded them as ASCII).
        return os.path.join(os.fsencode(self.avatar.getHomeDir().path), path)

    def makeDirectory(self, path: bytes, attrs: dict[str, Any]) -> None:
        # The client's mode under the umask, as OpenSSH's sftp-server (and mkdir -m);
        # Conch's set it afterwards, past the umask: sftp's `mkdir` made rwxrwxrwx.
        os.mkdir(self._absPath(path), attrs.get("permissions", 0o777) & 0o7777)

    def makeLink(self, linkPath: bytes, targetPath: bytes) -> None:
        # OpenSSH's sftp (and its server) sends the target first and the link second,
        # the other way round from the draft; every common client does as OpenSSH. The
        # target is stored as given: a relative link stays relative.
        target, link = linkPath, targetPath
        os.symlink(target, self._absPath(link))

    def openDirectory(self, path: bytes) -> _SFTPDirectory:
        return _SFTPDirectory(self, self._absPath(path))

    def gotVersion(self, otherVersion: int, extData: dict[bytes, bytes]) -> dict[bytes, bytes]:
        return dict(EXTENSIONS)

    def extendedRequest(self, extName: bytes, extData: bytes) -> bytes:
        if extName == LIMITS_EXTENSION:
            # Message, read and write lengths; 0 open handles: no limit of our own.
            return struct.pack(">4Q", SFTP_MAX_MESSAGE, SFTP_MAX_READ, SFTP_MAX_READ, 0)
        if extName == STATVFS_EXTENSION:  # sftp's `df`
            st = os.statvfs(self._absPath(common.getNS(extData)[0]))
            flags = ((st.f_flag & os.ST_RDONLY and _STATVFS_RDONLY)
                     | (st.f_flag & os.ST_NOSUID and _STATVFS_NOSUID))
            return struct.pack(">11Q", st.f_bsize, st.f_frsize, st.f_blocks, st.f_bfree,
                               st.f_bavail, st.f_files, st.f_ffree, st.f_favail,
                               st.f_fsid & 0xFFFFFFFFFFFFFFFF, flags, st.f_namemax)
        raise NotImplementedError(f"no extension {extName.decode('latin-1')}")

    def status_extension(self, name: bytes, data: bytes) -> None:
        """One of the extensions answered with a status (:data:`STATUS_EXTENSIONS`)."""
        first, rest = common.getNS(data)
        if name == b"posix-rename@openssh.com":  # sftp's `rename` onto a file that is there
            os.rename(self._absPath(first), self._absPath(common.getNS(rest)[0]))
        elif name == b"hardlink@openssh.com":  # sftp's `ln` (without -s)
            os.link(self._absPath(first), self._absPath(common.getNS(rest)[0]))

    def openFile(self, filename: bytes, flags: int,
                 attrs: dict[str, Any]) -> _SFTPFile:  # Any: as setAttrs
        return _SFTPFile(self, self._absPath(filename), flags, attrs)


#: SFTP version 3 status codes for file system errors, as OpenSSH's sftp-server maps them
#: (Conch sent version 6's FILE_ALREADY_EXISTS, which OpenSSH reads as "Unknown status").
_STATUS_OF_ERRNO = {errno.ENOENT: filetransfer.FX_NO_SUCH_FILE,
                    errno.EACCES: filetransfer.FX_PERMISSION_DENIED,
                    errno.EPERM: filetransfer.FX_PERMISSION_DENIED,
                    errno.EINVAL: filetransfer.FX_BAD_MESSAGE,
                    errno.ENOSYS: filetransfer.FX_OP_UNSUPPORTED}


class SFTPServer(filetransfer.FileTransferServer):
    """Conch's SFTP server, handed one request at a time so that it can be paused.

    While paused (its channel's window is shut and a reply waits) requests stay here
    unanswered, so what waits to be sent is at most one reply: a client with many
    255 KiB reads outstanding, or one that stopped reading, does not make the studio
    queue them all (and an abandoned download ends with little still to send).
    """

    _log = conch_log

    def __init__(self, home: str, clock: IReactorTime | None = None):
        filetransfer.FileTransferBase.__init__(self)
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.clock: IReactorTime = clock
        self.copies: dict[bytes, FileCopy] = {}  # request id -> a copy-data under way
        self.client = _SFTPFiles(_SFTPAvatar(home))
        self.openFiles: dict[bytes, object] = {}  # handle -> open file
        self.openDirs: dict[bytes, object] = {}  # handle -> directory listing
        self._requests = bytearray()
        self._paused = False
        self._handling = False

    def dataReceived(self, data: bytes) -> None:
        self._requests += data
        self._handle()

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._handle()

    def _handle(self) -> None:
        if self._handling:
            return
        self._handling = True
        try:
            buf, pos = self._requests, 0
            while not self._paused and len(buf) - pos >= 9:
                length = int.from_bytes(buf[pos:pos + 4], "big")
                if length > SFTP_MAX_MESSAGE:
                    log.warn("studio SFTP: a request of {n} bytes (the limit is {limit}); "
                             "closing the session", n=length, limit=SFTP_MAX_MESSAGE)
                    self._paused = True
                    pos = len(buf)
                    if self.transport is not None:
                        self.transport.loseConnection()
                    break
                end = pos + 4 + length
                if len(buf) < end:
                    break
                start, pos = pos, end
                if buf[start + 4] == filetransfer.FXP_WRITE and self._write(
                        memoryview(buf)[start + 4:end]):
                    continue
                super().dataReceived(bytes(buf[start:end]))  # Conch's dispatch, one request
            if pos:
                # A fresh buffer for the rest (views of the old one may still be about).
                self._requests = buf[pos:]
        finally:
            self._handling = False

    def expand_path(self, request_id: bytes, data: bytes) -> None:
        """`~/results` to the user's home directory's results, absolute, as a NAME reply.

        OpenSSH's scp and sftp ask for it for a path that starts with `~`; from a server
        without it they take `~/` for the directory the session starts in, which is the
        tool's working directory here, not the home directory: `scp studio:~/x .` found
        no file, and an upload to `~/x` landed beside the tool's files."""
        try:
            path = common.getNS(data)[0]
        except (struct.error, IndexError):
            self._sendStatus(request_id, filetransfer.FX_BAD_MESSAGE, b"bad request")
            return
        expanded = os.path.expanduser(path)
        if expanded.startswith(b"~"):  # ~nobody-known
            self._sendStatus(request_id, filetransfer.FX_NO_SUCH_FILE,
                             b"no such user: " + expanded.split(b"/")[0][1:])
            return
        resolved = os.path.realpath(cast(_SFTPFiles, self.client)._absPath(expanded))
        self._cbReadLink(resolved, request_id)

    def _ebStatus(self, reason: Failure, requestId: bytes,
                  msg: bytes = b"request failed") -> None:
        """A request the file system refused: the status OpenSSH's sftp-server would
        send, with the system's words, and no traceback (Conch logs one for anything
        but a missing file or a denied one: a full disk, a directory not empty)."""
        error = reason.value
        if not isinstance(error, OSError) or error.errno is None:
            super()._ebStatus(reason, requestId, msg)
            return
        code = _STATUS_OF_ERRNO.get(error.errno, filetransfer.FX_FAILURE)
        log.debug("studio SFTP: {what}: {why}", what=msg.decode("latin-1"),
                  why=error.strerror)
        self._sendStatus(requestId, code, (error.strerror or msg.decode()).encode())

    def copy_data(self, request_id: bytes, data: bytes) -> None:
        """sftp's `cp`: the client has opened the source and the target, and asks for
        bytes of one to be copied into the other; the status answers when done."""
        try:
            source_handle, rest = common.getNS(data)
            source_at, length = struct.unpack(">2Q", rest[:16])
            target_handle, rest = common.getNS(rest[16:])
            (target_at,) = struct.unpack(">Q", rest)
        except (struct.error, IndexError):
            self._sendStatus(request_id, filetransfer.FX_BAD_MESSAGE, b"bad request")
            return
        if max(source_at, length, target_at) > _OFF_MAX:
            self._sendStatus(request_id, filetransfer.FX_FAILURE,
                             b"an offset or length beyond any file")
            return
        if len(self.copies) >= COPIES_AT_ONCE:
            # (A copy is known by its request id: a second under the same id was out of
            # reach of a close and of the session's end, and ran on into reused fds.)
            self._sendStatus(request_id, filetransfer.FX_FAILURE,
                             b"another copy is under way in this session")
            return
        source, target = (self.openFiles.get(h) for h in (source_handle, target_handle))
        if not isinstance(source, _SFTPFile) or not isinstance(target, _SFTPFile):
            self._sendStatus(request_id, filetransfer.FX_FAILURE, b"no such open file")
            return
        if same_file(source.fd, target.fd):
            self._sendStatus(request_id, filetransfer.FX_FAILURE,
                             b"the source and the target are the same file")
            return
        copy = FileCopy(self.clock, source.fd, source_at, length, target.fd, target_at)
        self.copies[request_id] = copy
        d = copy.start()

        def answered(_: object) -> None:
            self.copies.pop(request_id, None)

        d.addCallback(lambda whole: self._sendStatus(
            request_id, filetransfer.FX_OK if whole else filetransfer.FX_EOF,
            b"copied" if whole else b"the source ended first"))
        d.addErrback(self._ebStatus, request_id, b"copy failed")
        d.addBoth(answered)

    def packet_CLOSE(self, data: bytes) -> None:
        # A file closed while a copy uses it (no OpenSSH sftp does: it waits for the
        # copy's status): the copy stops there and says so.
        handle = common.getNS(data[4:])[0] if len(data) > 8 else b""
        f = self.openFiles.get(handle)
        if isinstance(f, _SFTPFile):
            for request_id, copy in list(self.copies.items()):
                if f.fd in (copy.source, copy.target):
                    copy.stop()
                    del self.copies[request_id]
                    self._sendStatus(request_id, filetransfer.FX_FAILURE,
                                     b"a file of the copy was closed")
        super().packet_CLOSE(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        for copy in self.copies.values():
            copy.stop()
        self.copies.clear()
        super().connectionLost(reason)

    def packet_EXTENDED(self, data: bytes) -> None:
        request_id = data[:4]
        name, rest = common.getNS(data[4:])
        if name == EXPAND_PATH_EXTENSION:
            self.expand_path(request_id, rest)
            return
        if name == COPY_DATA_EXTENSION:
            self.copy_data(request_id, rest)
            return
        if name not in STATUS_EXTENSIONS:
            super().packet_EXTENDED(data)  # (Conch answers with an extended reply)
            return
        try:
            cast(_SFTPFiles, self.client).status_extension(name, rest)
        except (struct.error, IndexError):  # (getNS of a request cut short)
            self._sendStatus(request_id, filetransfer.FX_BAD_MESSAGE, b"bad request")
        except OSError:
            self._ebStatus(Failure(), request_id, name.split(b"@")[0] + b" failed")
        else:
            self._cbStatus(None, request_id, name.split(b"@")[0] + b" succeeded")

    def packet_READ(self, data: bytes) -> None:
        # Conch's path copies the data three times (and once more per channel packet).
        request_id = data[:4]
        handle, rest = common.getNS(data[4:])
        f = self.openFiles.get(handle)
        if not isinstance(f, _SFTPFile) or len(rest) != 12:
            super().packet_READ(data)  # it answers an unknown handle or a bad request
            return
        offset, length = struct.unpack(">QL", rest)
        try:
            reply = f.read_reply(request_id, offset, length)
        except OSError:
            self._ebStatus(Failure(), request_id, b"read failed")
            return
        if reply is None:
            self._sendStatus(request_id, filetransfer.FX_EOF, b"end of file")
        else:  # the channel takes a bytearray as it is (a Twisted transport wants bytes)
            cast(_Channel, self.transport).write(reply)

    def _write(self, message: memoryview) -> bool:
        """FXP_WRITE from the receive buffer as it lies (Conch's copies the data four
        times); False leaves the request to Conch's path (which answers a bad one)."""
        n = int.from_bytes(message[5:9], "big")
        at = 9 + n
        if len(message) < at + 12:
            return False
        handle = bytes(message[9:at])
        size = int.from_bytes(message[at + 8:at + 12], "big")
        if at + 12 + size != len(message):
            return False
        request_id = bytes(message[1:5])
        f = self.openFiles.get(handle)
        if not isinstance(f, _SFTPFile):  # (Conch's path fails on an unknown handle)
            self._sendStatus(request_id, filetransfer.FX_FAILURE, b"no such open file")
            return True
        try:
            f.writeChunk(int.from_bytes(message[at:at + 8], "big"), message[at + 12:])
        except OSError:
            self._ebStatus(Failure(), request_id, b"write failed")
        else:
            self._cbStatus(None, request_id, b"write succeeded")
        return True
