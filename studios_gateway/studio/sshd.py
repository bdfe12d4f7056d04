"""The studio's SSH server: runs inside the connect client, reachable only by tunnel.

No TCP listener: each ``S`` stream the gateway opens is handed to
:meth:`StudioSSHServer.ssh_target`, which runs a Conch SSH server on it. The only
login accepted is the gateway's, by public key, checked against the pinned
fingerprint(s) of the gateway's host key (:meth:`StudioSSHServer.pin`).

Offered, as the connect client's OS user, in the tool's working directory:
shell and exec with or without a pty (env, window-change, signals, exit status
and signals; ``SSH_CONNECTION`` and ``SSH_CLIENT`` with the user's address as the
gateway tells it, :mod:`~studios_gateway.ssh.client_address`), the ``sftp``
subsystem (so OpenSSH's scp and sftp work; served by
:mod:`~studios_gateway.studio.sftp`), agent forwarding (a private UNIX socket named
by ``SSH_AUTH_SOCK``) and direct-tcpip (``ssh -L``). Every byte path is
flow-controlled: process output pauses when the channel's window is shut, and the
gateway's window re-opens only once the process, the socket or the sftp server has
taken the data.
"""

from __future__ import annotations

import fcntl
import os
import pty
import pwd
import re
import shutil
import signal
import struct
import tempfile
import termios
import tty
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, Protocol, cast

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch import avatar as conch_avatar
from twisted.conch import error as conch_error
from twisted.conch import ttymodes
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import common, factory, keys, session, transport, userauth
from twisted.cred import credentials
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, endpoints, protocol
from twisted.internet import error as net_error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IHalfCloseableProtocol,
    IProcessTransport,
    IPushProducer,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from studios_gateway.ssh.algorithms import HOST_KEY_ALGORITHMS, INNER_CIPHERS, KEX, MACS, _supported
from studios_gateway.ssh.channels import (
    OPEN_CONNECT_FAILED,
    OPEN_UNKNOWN_CHANNEL_TYPE,
    WINDOW,
    FlowChannel,
    FlowConnection,
    OpenRefused,
    conch_log,
)
from studios_gateway.ssh.client_address import REQUEST as CLIENT_ADDRESS
from studios_gateway.ssh.client_address import UNKNOWN, ClientAddress
from studios_gateway.ssh.framing import PacketFraming
from studios_gateway.ssh.keys import fingerprint
from studios_gateway.studio.processes import SIGNALS, exit_request, spawn
from studios_gateway.studio.sftp import SFTPServer
from studios_gateway.wire.mux import words
from studios_gateway.wire.splice import SpliceEnd, join

__all__ = ["StudioSSHServer"]

log = Logger(namespace="studios_gateway.studio.sshd")

#: Environment names a user may set with SendEnv / SetEnv.
ACCEPT_ENV = re.compile(r"(LANG|LANGUAGE|LC_[A-Z_]+|TZ|TERM|COLORTERM|EDITOR|VISUAL|"
                        r"GIT_[A-Z_]+|STUDIO_[A-Z0-9_]+)")
#: The connect client's own settings (its token!) never reach a user's shell, nor the
#: state of the shell that started it: an SHLVL of 1 made a session's bash a nested
#: one (2), which then skipped ~/.bashrc for `ssh studio cmd` where sshd's reads it.
HIDDEN_ENV = re.compile(r"CONNECT_.*|SSH_AUTH_SOCK|SSH_CONNECTION|SSH_CLIENT|SSH_TTY|"
                        r"SHLVL|PWD|OLDPWD|_")


class _SocketTransport(Protocol):
    """What a connected TCP or UNIX transport offers (Twisted types it ``ITransport | None``:
    it is also the IConsumer and IPushProducer the relay needs)."""

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...


def _socket_transport(proto: protocol.Protocol) -> _SocketTransport | None:
    """A socket protocol's transport with the interfaces a connected one provides."""
    return cast("_SocketTransport | None", proto.transport)


def cannot_connect(host: str, port: int, failure: Failure) -> str:
    """What `ssh -L` (or -D) reads when the studio cannot reach host:port: ``channel 2:
    open failed: connect failed: <this>``."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if failure.check(net_error.ConnectionRefusedError):
        why = "connection refused (nothing listens there)"
    else:
        why = words(failure)
    return f"cannot connect to {where} in the studio: {why}"


@implementer(IPushProducer)
class _CreditGate:
    """Registered on a consumer (process stdin, socket): its pauses hold channel credit."""

    def __init__(self, channel: FlowChannel):
        self.channel = channel

    def pauseProducing(self) -> None:
        self.channel.pause_consumer()

    def resumeProducing(self) -> None:
        self.channel.resume_consumer()

    def stopProducing(self) -> None:
        self.channel.pause_consumer()


# Sessions: shell, exec, sftp ------------------------------------------------------------------


class _ProcessSide(protocol.ProcessProtocol):
    def __init__(self, channel: SessionChannel):
        self.channel = channel

    def connectionMade(self) -> None:
        # A spawned process's transport is also the consumer of its stdin.
        assert self.transport is not None
        cast(IConsumer, self.transport).registerProducer(_CreditGate(self.channel), True)

    def outReceived(self, data: bytes) -> None:
        self.channel.write(data)

    def errReceived(self, data: bytes) -> None:
        self.channel.writeExtended(1, data)

    def processEnded(self, reason: Failure) -> None:
        self.channel.process_ended(reason)


class _ChannelTransport:
    """Lets a Protocol (the sftp server) write to a channel."""

    def __init__(self, channel: SessionChannel):
        self.channel = channel

    def write(self, data: bytes | bytearray) -> None:
        self.channel.write(data)  # type: ignore[arg-type]  # FlowChannel keeps it as it is

    def writeSequence(self, seq: Iterable[bytes]) -> None:
        self.channel.write(b"".join(seq))

    def loseConnection(self) -> None:
        self.channel.loseConnection()

    def getPeer(self) -> IAddress:
        return _TunnelAddress()

    def getHost(self) -> IAddress:
        return _TunnelAddress()


class SessionChannel(FlowChannel):
    """A ``session`` channel: one shell, command or sftp server."""

    def __init__(self, server: StudioSSHServer, **kw: Any):
        super().__init__(window=server.window, **kw)
        self.server = server
        self.env: dict[str, str] = {}
        self.pty: tuple[int, int, str] | None = None  # master fd, slave fd, tty name
        self.term = "xterm"
        self.process: IProcessTransport | None = None
        self.sftp: SFTPServer | None = None
        self.agent: _AgentListener | None = None
        self._ended = False
        self._stdin_closed = False  # the client's EOF closed the command's stdin

    # Requests ---------------------------------------------------------------------------

    def handle_request(self, request: bytes, data: bytes, want_reply: bool) -> bool:
        name = request.decode("latin-1")
        try:
            handler: Callable[[bytes], bool] | None = {
                "pty-req": self._pty_req, "env": self._env, "shell": self._shell,
                "exec": self._exec, "subsystem": self._subsystem,
                "window-change": self._window_change, "signal": self._signal,
                "auth-agent-req@openssh.com": self._agent_req,
            }.get(name)
            if handler is None:
                return False
            return handler(data)
        except Exception:
            log.failure("session request {name} failed", name=name)
            return False

    def _started(self) -> bool:
        return self.process is not None or self.sftp is not None

    def _pty_req(self, data: bytes) -> bool:
        if self.pty is not None or self._started():
            return False
        term, size, modes = session.parseRequest_pty_req(data)
        self.term = term.decode("latin-1") or "xterm"
        master, slave = pty.openpty()
        _set_size(slave, size)
        _apply_modes(slave, modes)
        self.pty = (master, slave, os.ttyname(slave))
        return True

    def _env(self, data: bytes) -> bool:
        name, value, _ = common.getNS(data, 2)
        key = name.decode("utf-8", "replace")
        if not ACCEPT_ENV.fullmatch(key) or len(self.env) > 64 or len(value) > 4096:
            return False
        self.env[key] = value.decode("utf-8", "replace")
        return True

    def _shell(self, data: bytes) -> bool:
        shell = self.server.shell
        return self._spawn(shell, ["-" + os.path.basename(shell)])

    def _exec(self, data: bytes) -> bool:
        command = common.getNS(data)[0].decode("utf-8", "surrogateescape")
        shell = self.server.shell
        return self._spawn(shell, [os.path.basename(shell), "-c", command])

    def _subsystem(self, data: bytes) -> bool:
        name = common.getNS(data)[0]
        if name != b"sftp" or self._started():
            return False
        self.sftp = SFTPServer(self.server.cwd, self.server.reactor)
        self.sftp.makeConnection(_ChannelTransport(self))
        return True

    def _window_change(self, data: bytes) -> bool:
        if self.pty is None:
            return False
        size = session.parseRequest_window_change(data)
        _set_size(self.pty[0], size)
        return True

    def _signal(self, data: bytes) -> bool:
        name = common.getNS(data)[0].decode("ascii", "replace")
        if self.process is None or name not in SIGNALS:
            return False
        try:
            self.process.signalProcess(name if name in ("KILL", "INT", "TERM") else
                                       getattr(signal, "SIG" + name))
        except Exception:
            return False
        return True

    def _agent_req(self, data: bytes) -> bool:
        if self.agent is None:
            assert isinstance(self.conn, StudioConnection)
            self.agent = _AgentListener(self.server, self.conn)
        return True

    def _spawn(self, executable: str, argv: list[str]) -> bool:
        if self._started():
            return False
        env = self.server.base_env()
        env.update(self.env)
        assert isinstance(self.conn, StudioConnection)
        env.update(self.conn.client.environment())
        if self.agent is not None:
            env["SSH_AUTH_SOCK"] = self.agent.path
        proto = _ProcessSide(self)
        reactor = self.server.reactor
        if self.pty is not None:
            env["TERM"] = self.term
            env["SSH_TTY"] = self.pty[2]
        self.process = spawn(reactor, proto, executable, argv, env, self.server.cwd, self.pty)
        log.info("studio SSH: started {what} (pid {pid})",
                 what="a login shell" if argv[0].startswith("-") else "a command",
                 pid=getattr(self.process, "pid", "?"))
        return True

    # Data ----------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.process is not None:
            # After the client's EOF (no client should send more) it is dropped, as sshd
            # drops it: the stdin pipe has no credit gate any more, and it was held for
            # the command without bound, its credit given back at once.
            if not self._stdin_closed:
                self.process.write(data)
            self.consumed(len(data))
        elif self.sftp is not None:
            self.sftp.dataReceived(data)
            self.consumed(len(data))
        else:
            self.consumed(len(data))

    def writes_blocked(self) -> None:
        if self.process is not None:  # a process transport also produces its output
            cast(IPushProducer, self.process).pauseProducing()
        elif self.sftp is not None:
            # No new sftp requests handled, nor credit for more, until its answers left.
            self.sftp.pause()
            self.pause_consumer()

    def writes_unblocked(self) -> None:
        if self.process is not None:
            cast(IPushProducer, self.process).resumeProducing()
        elif self.sftp is not None:
            self.resume_consumer()
            self.sftp.resume()

    def eofReceived(self) -> None:
        if self.process is not None and self.pty is None:
            # Our credit gate is the stdin pipe's producer; while registered, Twisted
            # resumes it when the pipe has drained instead of closing the pipe, so a
            # command that began reading after more than a pipe's worth had come
            # (`sleep 1; wc -c` < 100 KB) never saw the end of its input.
            cast(IConsumer, self.process).unregisterProducer()
            self.process.closeStdin()
            self._stdin_closed = True
        elif self.sftp is not None:
            self.sftp.connectionLost(Failure(ConnectionError("eof")))
            self.sftp = None
            self.send_request(b"exit-status", struct.pack(">L", 0), False)
            self.send_eof()
            self.loseConnection()

    def process_ended(self, reason: Failure) -> None:
        if self._ended:
            return
        self._ended = True
        self.send_request(*exit_request(reason), False)
        self.send_eof()
        self.loseConnection()

    def closed(self) -> None:
        super().closed()
        if self.process is not None and not self._ended:
            try:
                self.process.signalProcess("HUP")
            except Exception:  # noqa: S110 - the process is already gone
                pass
            # And, as sshd, its pipes (its pty) close with the channel: a pipeline the
            # shell leaves behind, blocked on output nobody reads, ends writing to them.
            self.process.loseConnection()
        if self.sftp is not None:
            self.sftp.connectionLost(Failure(ConnectionError("channel closed")))
            self.sftp = None
        if self.pty is not None:
            try:
                os.close(self.pty[1])
            except OSError:
                pass
            if self.process is None:
                try:
                    os.close(self.pty[0])
                except OSError:
                    pass
        if self.agent is not None:
            self.agent.close()
            self.agent = None


def _set_size(fd: int, size: tuple[int, int, int, int]) -> None:
    rows, cols, xpixel, ypixel = size
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("4H", rows, cols, xpixel, ypixel))


def _apply_modes(fd: int, modes: list[tuple[int, int]]) -> None:
    """Apply the client's terminal modes (RFC 4254 8) to the pty."""
    attr = termios.tcgetattr(fd)
    for mode, value in modes:
        spec: object = ttymodes.TTYMODES.get(mode)
        if isinstance(spec, tuple):  # (attribute index, flag name)
            index, flag_name = spec
            flag = getattr(termios, flag_name, None)
            if flag is not None:
                attr[index] = attr[index] | flag if value else attr[index] & ~flag
        elif spec == "ISPEED" or spec == "OSPEED":
            speed = getattr(termios, f"B{value}", None)
            if speed is not None:
                attr[tty.ISPEED if spec == "ISPEED" else tty.OSPEED] = speed
        elif isinstance(spec, str):  # a control character, such as VINTR
            cc = getattr(termios, spec, None)
            if cc is not None and cc < len(attr[tty.CC]):
                attr[tty.CC][cc] = bytes([value & 0xFF])
    termios.tcsetattr(fd, termios.TCSANOW, attr)


# Sockets: direct-tcpip and agent connections ---------------------------------------------------


class SocketChannel(FlowChannel):
    """A channel joined to a stream socket (TCP for -L, UNIX for the agent)."""

    def __init__(self, window: int, **kw: Any):
        super().__init__(window=window, **kw)
        self.sock: _SocketSide | None = None

    def _transport(self) -> _SocketTransport | None:
        return _socket_transport(self.sock) if self.sock is not None else None

    def attach(self, sock: _SocketSide) -> None:
        self.sock = sock
        transport = _socket_transport(sock)
        assert transport is not None
        transport.registerProducer(_CreditGate(self), True)

    def dataReceived(self, data: bytes) -> None:
        transport = self._transport()
        if transport is not None:
            transport.write(data)
        self.consumed(len(data))

    def writes_blocked(self) -> None:
        transport = self._transport()
        if transport is not None:
            transport.pauseProducing()

    def writes_unblocked(self) -> None:
        transport = self._transport()
        if transport is not None:
            transport.resumeProducing()

    def eofReceived(self) -> None:
        if self.sock is not None and self.sock.transport is not None:
            lose_write = getattr(self.sock.transport, "loseWriteConnection", None)
            if lose_write is not None:
                lose_write()

    def closed(self) -> None:
        super().closed()
        sock, self.sock = self.sock, None
        if sock is not None and sock.transport is not None:
            sock.channel = None
            sock.transport.loseConnection()


@implementer(IHalfCloseableProtocol)
class _SocketSide(protocol.Protocol):
    def __init__(self, channel: SocketChannel | None = None):
        self.channel = channel
        self._read_done = False  # the tool's end sent its FIN
        self._write_done = False  # ours went (the client's EOF), after what was queued

    def dataReceived(self, data: bytes) -> None:
        if self.channel is not None:
            self.channel.write(data)

    def readConnectionLost(self) -> None:
        self._read_done = True
        if self.channel is not None:
            self.channel.send_eof()
        self._close_when_both_done()

    def writeConnectionLost(self) -> None:
        self._write_done = True
        self._close_when_both_done()

    def _close_when_both_done(self) -> None:
        # Twisted leaves a socket closed both ways open until its protocol closes it.
        # Closed now, the channel's CLOSE follows its EOF (as from OpenSSH's sshd); it
        # waited for the client's CLOSE, the socket held meanwhile, for ever with a
        # client that sends none.
        if self._read_done and self._write_done and self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        channel, self.channel = self.channel, None
        if channel is not None:
            channel.sock = None
            channel.loseConnection()


class _AgentListener:
    """A private UNIX socket for SSH_AUTH_SOCK; each client opens an agent channel."""

    def __init__(self, server: StudioSSHServer, conn: StudioConnection):
        self.conn = conn
        self.window = server.window
        self.dir = tempfile.mkdtemp(prefix="ssh-studio-")  # mode 0700
        self.path = os.path.join(self.dir, f"agent.{os.getpid()}")
        fac = protocol.Factory.forProtocol(lambda: _AgentClient(self))
        self.port = server.reactor.listenUNIX(self.path, fac, mode=0o600)

    def close(self) -> None:
        d = defer.maybeDeferred(self.port.stopListening)
        d.addBoth(lambda _: shutil.rmtree(self.dir, ignore_errors=True))


class _AgentClient(_SocketSide):
    def __init__(self, listener: _AgentListener):
        super().__init__()
        self.listener = listener

    def connectionMade(self) -> None:
        conn = self.listener.conn
        transport = _socket_transport(self)
        assert transport is not None
        if conn.transport is None or getattr(conn, "_stopped", False):
            transport.loseConnection()
            return
        transport.pauseProducing()
        channel = SocketChannel(self.listener.window, name=b"auth-agent@openssh.com")
        self.channel = channel
        conn.openChannel(channel, b"")

        def opened(_: FlowChannel) -> None:
            transport = _socket_transport(self)
            if transport is not None and self.channel is channel:
                channel.attach(self)
                transport.resumeProducing()

        def failed(_: Failure) -> None:
            self.channel = None
            if self.transport is not None:
                self.transport.loseConnection()

        channel.opened.addCallbacks(opened, failed)


# Connection, authentication, factory --------------------------------------------------------------


class StudioConnection(FlowConnection):
    server: StudioSSHServer
    #: Where this connection's user came from, as the gateway says (one per connection:
    #: never another user's); UNKNOWN from a gateway that does not say.
    client: ClientAddress = UNKNOWN
    #: Told once, before any channel (the gateway sends it so): what a session was
    #: started with stays its connection's address.
    _client_settled = False

    def serviceStarted(self) -> None:
        super().serviceStarted()
        assert self.transport is not None and isinstance(self.transport.factory, _StudioFactory)
        self.server = self.transport.factory.server

    def gotGlobalRequest(self, requestType: bytes, data: bytes) -> Any:
        if requestType == CLIENT_ADDRESS:
            client = None if self._client_settled else ClientAddress.decode(data)
            if client is None:
                log.warn("studio SSH: the gateway's {name} could not be read, or came "
                         "again or after a channel", name=CLIENT_ADDRESS.decode())
                return 0
            self.client, self._client_settled = client, True
            return 1
        return super().gotGlobalRequest(requestType, data)

    def open_channel(self, channel_type: bytes, window: int, max_packet: int,
                     data: bytes) -> FlowChannel | Deferred[FlowChannel]:
        self._client_settled = True
        if channel_type == b"session":
            return SessionChannel(self.server)
        if channel_type == b"direct-tcpip":
            return self._direct_tcpip(data)
        raise OpenRefused(OPEN_UNKNOWN_CHANNEL_TYPE,
                          f"{channel_type.decode('latin-1')} channels are not offered")

    def _direct_tcpip(self, data: bytes) -> Deferred[FlowChannel]:
        host_b, rest = common.getNS(data)
        port = struct.unpack(">L", rest[:4])[0]
        host = host_b.decode("utf-8", "replace")
        if not 0 < port < 65536:
            raise OpenRefused(OPEN_CONNECT_FAILED, f"bad port {port}")
        channel = SocketChannel(self.server.window)
        endpoint = endpoints.HostnameEndpoint(self.server.reactor, host, port, timeout=10)

        def connected(sock: _SocketSide) -> FlowChannel:
            sock.channel = channel
            channel.attach(sock)
            return channel

        def failed(f: Failure) -> NoReturn:
            raise OpenRefused(OPEN_CONNECT_FAILED, cannot_connect(host, port, f))

        d = endpoint.connect(protocol.Factory.forProtocol(_SocketSide))
        return d.addCallbacks(connected, failed)


@implementer(ICredentialsChecker)
class _GatewayKeyChecker:
    credentialInterfaces = (credentials.ISSHPrivateKey,)

    def __init__(self, server: StudioSSHServer):
        self.server = server

    def requestAvatarId(self, creds: credentials.SSHPrivateKey
                        ) -> Deferred[bytes | tuple[()]]:
        try:
            key = keys.Key.fromString(creds.blob)
        except Exception:
            return defer.fail(UnauthorizedLogin("unreadable key"))
        if fingerprint(key) not in self.server.trusted():
            log.warn("studio SSH: refused a login with key {fp}: not the gateway's",
                     fp=fingerprint(key))
            return defer.fail(UnauthorizedLogin("not the gateway's key"))
        if creds.signature is None:
            return defer.fail(conch_error.ValidPublicKey())
        if not key.verify(creds.signature, creds.sigData):
            return defer.fail(UnauthorizedLogin("bad signature"))
        return defer.succeed(creds.username)


@implementer(IRealm)
class _Realm:
    def requestAvatar(self, avatar_id: bytes | tuple[()], mind: object,
                      *interfaces: type[Interface]
                      ) -> tuple[type[Interface], object, Callable[[], None]]:
        return IConchUser, conch_avatar.ConchUser(), lambda: None


class _StudioUserAuth(userauth.SSHUserAuthServer):
    _log = conch_log
    attemptsBeforeDisconnect = 2


class _StudioTransport(PacketFraming, transport.SSHServerTransport):
    _log = conch_log
    ourVersionString = b"SSH-2.0-studios_connect"

    def __init__(self) -> None:
        super().__init__()
        self.supportedKeyExchanges = _supported(KEX, self.supportedKeyExchanges)
        self.supportedCiphers = INNER_CIPHERS
        self.supportedMACs = MACS
        self.supportedCompressions = [b"none"]


class _StudioFactory(factory.SSHFactory):
    protocol = _StudioTransport
    _log = conch_log
    noisy = False

    def __init__(self, server: StudioSSHServer):
        self.server = server
        key = keys.Key(ed25519.Ed25519PrivateKey.generate())
        self.publicKeys = {key.sshType(): key.public()}
        self.privateKeys = {key.sshType(): key}
        self.primes = None
        self.portal = Portal(_Realm(), [_GatewayKeyChecker(server)])
        self.services = {b"ssh-userauth": _StudioUserAuth, b"ssh-connection": StudioConnection}

    def buildProtocol(self, addr: IAddress | None) -> _StudioTransport:
        t = super().buildProtocol(addr)
        assert isinstance(t, _StudioTransport)
        t.supportedPublicKeys = _supported(HOST_KEY_ALGORITHMS, t.supportedPublicKeys)
        return t


class _SSHEnd(SpliceEnd):
    """The SSH server's end of a splice with a tunnel stream (see :meth:`ssh_target`)."""

    def __init__(self, ssh: _StudioTransport):
        super().__init__()
        self.ssh: _StudioTransport | None = ssh

    def connectionLost(self, reason: Failure | None = None) -> None:
        super().connectionLost(reason)
        ssh, self.ssh = self.ssh, None
        if ssh is not None:
            ssh.connectionLost(reason or Failure(ConnectionError("stream closed")))


@implementer(IPushProducer)
class _MemoryPipe:
    """Connects the SSH protocol to its splice end inside this process.

    Writes by the SSH protocol go to the stream; bytes the splice delivers go to the
    SSH protocol. Backpressure is the SSH channels' windows (see module docstring).
    """

    def __init__(self, end: _SSHEnd):
        self.end = end
        self.disconnecting = False
        self._producer: object = None

    # Seen by the splice end (as its transport): bytes from the stream.
    def write(self, data: bytes) -> None:
        ssh = self.end.ssh
        if ssh is not None:
            ssh.dataReceived(data)

    def writeSequence(self, seq: Iterable[bytes]) -> None:
        self.write(b"".join(seq))

    def loseWriteConnection(self) -> None:
        self.loseConnection()

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            self.end.connectionLost(Failure(ConnectionError("stream ended")))

    def abortConnection(self) -> None:
        self.loseConnection()

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self._producer = producer

    def unregisterProducer(self) -> None:
        self._producer = None

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.loseConnection()

    def getPeer(self) -> IAddress:
        return _TunnelAddress()

    def getHost(self) -> IAddress:
        return _TunnelAddress()


class _SSHTransportOut:
    """The SSH protocol's transport: writes go to the tunnel stream."""

    def __init__(self, stream_end: SpliceEnd):
        self.stream_end = stream_end
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        t = self.stream_end.transport
        if t is not None and not self.disconnecting:
            t.write(data)

    def writeSequence(self, seq: Iterable[bytes]) -> None:
        self.write(b"".join(seq))

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            t = self.stream_end.transport
            if t is not None:
                t.loseConnection()

    def abortConnection(self) -> None:
        self.loseConnection()

    def getPeer(self) -> IAddress:
        return _TunnelAddress()

    def getHost(self) -> IAddress:
        return _TunnelAddress()


@implementer(IAddress)
class _TunnelAddress:
    host = "tunnel"
    port = 0

    def __repr__(self) -> str:
        return "<tunnel stream>"


class StudioSSHServer:
    """The studio's SSH server. Hand streams to :meth:`ssh_target`; pin the gateway's key
    fingerprint with :meth:`pin`."""

    # reactor: Any because it must provide IReactorProcess, IReactorUNIX and IReactorTCP at
    # once, which no single interface names.
    def __init__(self, *, reactor: Any = None, cwd: str | None = None,
                 trusted: Iterable[str] = (), shell: str | None = None,
                 window: int = WINDOW, env: dict[str, str] | None = None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.cwd = cwd or os.getcwd()
        self._trusted = set(trusted)
        self.window = window
        self._env = dict(os.environ if env is None else env)
        self.shell = shell or _login_shell()
        self.factory = _StudioFactory(self)
        self.factory.doStart()

    def pin(self, *fingerprints: str) -> None:
        """Trust exactly these gateway key fingerprints (``SHA256:...``) from now on."""
        self._trusted = set(fingerprints)

    def trusted(self) -> set[str]:
        return self._trusted

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in self._env.items() if not HIDDEN_ENV.fullmatch(k)}
        try:
            pw = pwd.getpwuid(os.getuid())
            env.setdefault("HOME", pw.pw_dir)
            env.setdefault("USER", pw.pw_name)
            env.setdefault("LOGNAME", pw.pw_name)
        except KeyError:
            pass
        env["SHELL"] = self.shell
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        return env

    def build_protocol(self) -> _StudioTransport:
        """A fresh server-side SSH protocol (connect it to any byte stream)."""
        return self.factory.buildProtocol(_TunnelAddress())

    def ssh_target(self, stream_end: SpliceEnd) -> None:
        """Serve SSH on a tunnel stream; `stream_end` is the stream's (paused) protocol.

        This is the connect client's ``ssh_target`` hook.
        """
        if not self._trusted:
            log.warn("studio SSH: no gateway key pinned yet; refusing the stream")
            if stream_end.transport is not None:
                stream_end.transport.loseConnection()
            return
        log.debug("studio SSH: serving stream {sid}",
                  sid=getattr(stream_end.transport, "stream_id", "?"))
        ssh = self.build_protocol()
        end = _SSHEnd(ssh)
        pipe = _MemoryPipe(end)
        end.makeConnection(pipe)
        ssh.makeConnection(_SSHTransportOut(stream_end))
        join(stream_end, end)


def _login_shell() -> str:
    try:
        shell = pwd.getpwuid(os.getuid()).pw_shell
    except KeyError:
        shell = ""
    if shell and os.access(shell, os.X_OK) and not shell.endswith(("nologin", "false")):
        return shell
    return "/bin/bash" if os.access("/bin/bash", os.X_OK) else "/bin/sh"
