"""Twisted's memory-BIO TLS layer with a lean path for records once the handshake is done.

``TLSMemoryBIOProtocol`` goes through pyOpenSSL for every step, and pyOpenSSL
allocates a buffer per call and reports "nothing more" by raising: per TCP read
``bio_write``, ``recv(32 KiB)`` until it raises ``WantReadError`` (the error built
through OpenSSL's error queue), then ``bio_read(32 KiB)`` until it raises again;
per write ``send`` and the same ``bio_read``. On the tunnel, where most reads and
writes are one small frame, that machinery was a quarter of the gateway's CPU.

:class:`LeanTLSProtocol` keeps the handshake, shutdown, producer and error
handling of Twisted's class and replaces the hot path once the handshake is done:

- a read goes into the read BIO with one ``BIO_write``, and the records are
  decrypted with ``SSL_read`` into one buffer shared by all connections; the
  cleartext of all records of the read reaches the application in one
  ``dataReceived`` (up to :data:`DELIVER` bytes at a time), and "nothing more"
  is ``SSL_get_error``'s answer, not an exception;
- a write is encrypted with ``SSL_write`` straight from the caller's bytes (a
  record per call), and what OpenSSL wrote out is taken with one ``BIO_read`` of
  exactly what the BIO holds (``BIO_get_mem_data``'s length) and handed to the
  transport at once: a small write is one record and one transport write, a large
  one a transport write per :data:`WRITE_CHUNK` of records (a short rest of at most
  :data:`WRITE_TAIL` goes with the chunk before it);
- bulk (a write of more than one record, a read of more than :data:`OPEN_MIN`) makes
  the same OpenSSL calls from C when wire/_records.c is built: no Python per record,
  and OpenSSL writes straight into the bytes handed on (one copy fewer each way); with
  its direct BIOs (:data:`_DIRECT`) the records also skip the memory BIOs: sealed into
  the bytes handed to the transport, read from the TCP read's own bytes;
- any other answer from OpenSSL (close_notify, an alert, a renegotiation that
  wants a read) goes to pyOpenSSL's own error translation and then to the same
  handling as Twisted's (``_tlsShutdownFinished``, ``_bufferedWrite``...).

The shared buffers are module-level: they cost nothing per connection (an idle
tunnel holds what it held before). They belong to the reactor thread, and nothing
in them is left uncopied when the application is called.

When pyOpenSSL lacks something this uses (wire/openssl_private.py), the class is
Twisted's path unchanged (and memory BIOs are not renewed). See
docs/decisions/tunnel-tls-path.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from studios_gateway.wire import openssl_private as _private
from studios_gateway.wire.frames import data_frames, data_frames_size

__all__ = ["DELIVER", "LEAN", "QUIET", "WRITE_CHUNK", "WRITE_TAIL", "LeanTLSProtocol",
           "renew_bios"]

#: Whether the lean path is in use (pyOpenSSL has everything it needs).
LEAN = _private.AVAILABLE

#: The most cleartext handed to the application in one ``dataReceived``.
DELIVER = 256 * 1024
#: The most cleartext encrypted before its records are handed to the transport
#: (records are at most 16 KiB: sixteen per chunk): a bulk tunnel write of several
#: 64 KiB frames (Stream.write) is one send per 256 KiB, a frame one send.
WRITE_CHUNK = 256 * 1024
#: A rest of a write at most this long goes out with the chunk before it, not alone: a
#: tunnel frame (12 bytes of header and 64 KiB of data) is one transport write, not a
#: 64 KiB one and a second one of a 12-byte record (a send and the peer's wake-up each).
WRITE_TAIL = 4 * 1024
#: The shared buffer for records taken out of the write BIO (WRITE_CHUNK, a tail and up
#: to one more record); more than this at once is read into a buffer of its own.
_OUT_ROOM = WRITE_CHUNK + 20 * 1024

if LEAN:
    _lib, _ffi = _private.lib, _private.ffi
    _NULL = _ffi.NULL
    _SSL_read = _lib.SSL_read
    _SSL_write = _lib.SSL_write
    _SSL_get_error = _lib.SSL_get_error
    _BIO_write = _lib.BIO_write
    _BIO_read = _lib.BIO_read
    _SSL_pending = _lib.SSL_pending
    _pending = _lib.BIO_get_mem_data  # (bio, NULL): the bytes a memory BIO holds
    _WANT_READ = _lib.SSL_ERROR_WANT_READ
    # Not zeroed: the pages of the read buffer are touched only when bulk fills them.
    _alloc = _ffi.new_allocator(should_clear_after_alloc=False)
    _in_buf = _alloc("char[]", DELIVER)
    _out_buf = _alloc("char[]", _OUT_ROOM)
    _take = _ffi.unpack  # (char buffer, n): its first n bytes, as bytes
    _records = _private.RECORDS
    _seal: Any = _records.seal if _records is not None else None
    _seal_frames: Any = _records.seal_frames if _records is not None else None
    _open: Any = _records.open if _records is not None else None
    _open_from: Any = _records.open_from if _private.DIRECT else None
    _busy: Any = _records.busy if _private.DIRECT else None

    def _addr(pointer: Any) -> int:
        return int(_ffi.cast("uintptr_t", pointer))
else:
    _seal = _seal_frames = _open = _open_from = _busy = None  # (Twisted's class: unused)

#: Bulk records are sealed into, and read from, Python's bytes without the memory BIOs
#: (wire/_records.c's direct BIOs): no zeroing and one copy fewer each way, and the
#: memory BIOs stay small through bulk.
_DIRECT = LEAN and _private.DIRECT
#: The most cleartext one TLS record carries: a write longer than this is sealed in C
#: from its start when the direct BIOs are in use.
RECORD = 16 * 1024

#: A TCP read longer than this has its records decrypted in C (wire/_records.c) when it
#: is built; shorter ones (one small record, the usual request or answer) in Python.
OPEN_MIN = 16 * 1024

#: A read of at most this many bytes (TLS records included) is a quiet one; a read
#: or write above it marks the BIOs as grown. A BIO renewed at quiet times holds
#: at most about a third more than this.
QUIET = 4096


def _bios(conn: SSL.Connection) -> tuple[Any, Any, Any] | None:
    """(SSL*, read BIO, write BIO) of a memory-BIO connection, as pyOpenSSL made them."""
    ssl, into, out = (getattr(conn, name, None) for name in ("_ssl", "_into_ssl", "_from_ssl"))
    if ssl is None or into is None or out is None:
        return None  # a socket connection, or a pyOpenSSL that keeps them elsewhere
    return ssl, into, out


def renew_bios(conn: SSL.Connection) -> bool:
    """Give ``conn`` two new empty memory BIOs if both of its BIOs are empty.

    What pyOpenSSL itself does when it makes the connection (``SSL_set_bio``
    with two new ``BIO_s_mem``); OpenSSL frees the old BIOs. Returns whether it
    did; False (nothing changed) when a BIO holds bytes or the connection is not
    a memory-BIO one.
    """
    parts = _bios(conn)
    if parts is None or not _private.AVAILABLE:
        return False
    _lib, _ffi = _private.lib, _private.ffi
    ssl, into, out = parts
    if _lib.BIO_get_mem_data(into, _ffi.NULL) or _lib.BIO_get_mem_data(out, _ffi.NULL):
        return False
    new_into = _lib.BIO_new(_lib.BIO_s_mem())
    new_out = _lib.BIO_new(_lib.BIO_s_mem())
    if new_into == _ffi.NULL or new_out == _ffi.NULL:
        for bio in (new_into, new_out):
            if bio != _ffi.NULL:
                _lib.BIO_free(bio)
        return False
    _lib.SSL_set_bio(ssl, new_into, new_out)
    conn._into_ssl, conn._from_ssl = new_into, new_out
    return True


#: :meth:`LeanTLSProtocol._read_outcome` of the peer's close_notify.
_CLOSED = object()


def _untraced(failure: Failure) -> Failure:
    """``failure`` with its traceback kept as text only (Failure.cleanFailure).

    A Failure made in an ``except`` holds the traceback's frames, and they hold the
    frames above them: the read loop's, whose locals hold this Failure and the TLS
    protocol. Such a connection outlives its end until a full collection finds the
    cycle (10,000 studios dropping at once: one pause of 300 ms, and every closed
    connection's OpenSSL memory held until then). The error's type, message and
    printed traceback stay.
    """
    failure.cleanFailure()
    return failure


#: What a TLS layer declares it provides, by (its class, what its transport provides,
#: whether the application is connected yet): zope's own cache of these declarations
#: is weak, and Twisted makes ten of them per connection (one per interface of a TCP
#: transport, each replacing the last, then all of them), ~50 us per connection.
_DECLARED: dict[tuple[type, Any, bool], Any] = {}
_DECLARED_MOST = 64  # (transports of a few kinds; anything past that is declared anew)


class LeanTLSProtocol(TLSMemoryBIOProtocol):
    """``TLSMemoryBIOProtocol`` whose post-handshake reads and writes take the lean
    path (see the module), with its memory BIOs renewed once quiet (:meth:`renew_bios`).
    Every write is encrypted and sent when it is made."""

    # The handshake's flights have grown both BIOs by the time it is done.
    _bios_grown: bool
    #: Where a read's cleartext goes: the application (None) or what it named with
    #: :meth:`deliver_to`.
    _receiver: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Set here, in the same place for every connection, so that they join the
        # instance attributes CPython shares between instances (set later, one makes the
        # instance's attribute dict a full one of its own: ~460 bytes per connection).
        self._bios_grown = True
        self._receiver = None
        self._producer = None  # Twisted's TLS layer sets it later (registerProducer): same

    def makeConnection(self, transport: Any) -> None:
        """``TLSMemoryBIOProtocol.makeConnection``, with this protocol's interfaces
        declared from :data:`_DECLARED` (tests/unit/test_tls_lean_declared.py fails when
        Twisted's code changes)."""
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        self._declare(transport, connected=False)
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        if self._connectWrapped:
            self.connect_application(transport)
        self._checkHandshakeStatus()

    def connect_application(self, transport: Any) -> None:
        """``ProtocolWrapper.makeConnection``: the application's protocol is connected,
        with this layer as its transport (declared from :data:`_DECLARED`)."""
        self._declare(transport, connected=True)
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self.wrappedProtocol.makeConnection(self)

    def _declare(self, transport: Any, connected: bool) -> None:
        """What Twisted declares: before the application is connected, each interface
        of the transport in turn (so the last one stays); then all of them."""
        spec = providedBy(transport)
        key = (type(self), spec, connected)
        declared = _DECLARED.get(key)
        if declared is not None:
            self.__provides__ = declared
            return
        if connected:
            directlyProvides(self, spec)
        else:
            for interface in spec:
                directlyProvides(self, interface)
        mine = self.__dict__.get("__provides__")
        if mine is not None and len(_DECLARED) < _DECLARED_MOST:
            _DECLARED[key] = mine

    def deliver_to(self, receiver: Any) -> None:
        """Hand every later read's cleartext straight to ``receiver.dataReceived``, not to
        the application's: for an application that, once set up, passes all it reads to
        another protocol (the tunnel's bind protocol to its multiplexer), one call less
        per read. Everything else (the connection's end, the producer) still goes to the
        application."""
        self._receiver = receiver

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            super().connectionLost(reason)
        finally:
            # The receiver and the producer (a multiplexer, wrapped for the producer)
            # hold this protocol as their transport: let go of both, as Twisted's layer
            # lets go of the application here, so a closed tunnel is freed by reference
            # counting rather than left for a full collection.
            self._receiver = self._producer = None

    def renew_bios(self) -> bool:
        """Free the BIOs' buffers now if the connection allows it (wire/tls_memory.py)."""
        conn = self._tlsConnection
        if conn is None or not self._handshakeDone or self._lostTLSConnection:
            return False
        if renew_bios(conn):
            self._bios_grown = False
            return True
        return False

    if LEAN:

        def dataReceived(self, data: bytes) -> None:
            """A TCP read: once the handshake is done, written into the read BIO and its
            records decrypted and delivered in this same call. Empty (Twisted's
            ``_flushReceiveBIO``): what the read BIO holds already."""
            # A read or write above QUIET marks the BIOs as grown; the next quiet read
            # renews them (wire/tls_memory.py).
            n = len(data)
            conn = self._tlsConnection
            direct = False
            if n:
                if not self._handshakeDone:
                    if n > QUIET:
                        self._bios_grown = True
                    super().dataReceived(data)  # the handshake: Twisted's path throughout
                    if n <= QUIET and self._bios_grown:
                        self.renew_bios()
                    return
                into = conn._into_ssl
                if (n > OPEN_MIN and _DIRECT and type(data) is bytes
                        and not _pending(into, _NULL) and not _busy()):
                    direct = True  # OpenSSL reads the records from `data` itself
                else:
                    if n > QUIET:
                        self._bios_grown = True
                    if _BIO_write(into, data, n) != n:
                        raise MemoryError("OpenSSL could not take a TLS read into its "
                                          "memory BIO")
                if self._appSendBuffer:
                    self._unbufferPendingWrites()
                    conn = self._tlsConnection
            if conn is None:
                return
            receiver = self._receiver or self.wrappedProtocol
            if direct:
                self._open_records(conn, receiver, data)
            elif _open is not None and n > OPEN_MIN:
                self._open_records(conn, receiver)
            else:
                self._read_records(conn, receiver)
            # What reading made OpenSSL write (close_notify's answer, a key update);
            # nothing, almost always: asked here without a call.
            conn = self._tlsConnection
            if conn is not None and _pending(conn._from_ssl, _NULL):
                self._flushSendBIO()
            if n and n <= QUIET and self._bios_grown:
                self.renew_bios()

        def _open_records(self, conn: Any, receiver: Any, data: bytes | None = None) -> None:
            """The records of a bulk read, decrypted in C (wire/_records.c): up to DELIVER
            bytes of cleartext per call and delivery, as the Python loop does. From the read
            BIO, or (``data``, the direct read BIO) read by OpenSSL from ``data`` itself;
            what of ``data`` is left unread when reading stops (a failure, close_notify, the
            connection lost) goes into the read BIO, where the other paths leave it."""
            read = b"" if data is None else data
            at, n = 0, len(read)
            while not self._lostTLSConnection:
                ssl = conn._ssl
                try:
                    if data is None:
                        out, state, result = _open(_addr(ssl), _addr(conn._into_ssl), DELIVER)
                    else:
                        out, state, result, at = _open_from(_addr(ssl), _addr(conn._into_ssl),
                                                            data, at, DELIVER)
                except MemoryError:
                    self._out_of_memory()
                    return
                # Asked at once, before the application runs: its writes change the answer.
                outcome = self._read_outcome(conn, ssl, result) if state == 2 else None
                if state != 1 and at < n:
                    self._keep_unread(conn, read, at)
                    at = n
                if out is not None and not self._aborted:
                    receiver.dataReceived(out)
                if state == 1:  # DELIVER reached; records remain
                    continue
                self._act_on(outcome)
                return
            if at < n:
                self._keep_unread(conn, read, at)

        def _keep_unread(self, conn: Any, data: bytes, at: int) -> None:
            self._bios_grown = True
            rest = data[at:]
            if _BIO_write(conn._into_ssl, rest, len(rest)) != len(rest):
                raise MemoryError("OpenSSL could not take a TLS read into its memory BIO")

        def _read_records(self, conn: Any, receiver: Any) -> None:
            """The records the read BIO holds, decrypted and delivered record by record
            (without the compiled path, and for small reads)."""
            ssl, into = conn._ssl, conn._into_ssl
            got = 0
            while not self._lostTLSConnection:
                result = _SSL_read(ssl, _in_buf + got if got else _in_buf, DELIVER - got)
                if result > 0:
                    got += result
                    if got < DELIVER:
                        if _SSL_pending(ssl) or _pending(into, _NULL):
                            continue
                        # All that was read is out (OpenSSL reads no record ahead of
                        # the one it decrypts): no call that can only say "no more".
                        if not self._aborted:
                            receiver.dataReceived(_take(_in_buf, got))
                        break
                    data, got = _take(_in_buf, got), 0
                    if not self._aborted:
                        receiver.dataReceived(data)
                    continue
                # Asked at once: the application's writes change what it would say.
                if _SSL_get_error(ssl, result) == _WANT_READ:
                    if got and not self._aborted:
                        receiver.dataReceived(_take(_in_buf, got))
                    break
                # The connection's end or a failure: what pyOpenSSL makes of it now,
                # acted on (as Twisted does) after the cleartext before it is delivered.
                outcome = self._read_outcome(conn, ssl, result)
                if got and not self._aborted:
                    receiver.dataReceived(_take(_in_buf, got))
                self._act_on(outcome)
                break

        def _out_of_memory(self) -> None:
            """A compiled call could not allocate: records it decrypted or sealed may be
            lost with it, so the connection cannot go on; it ends as on a TLS error."""
            self._tlsShutdownFinished(_untraced(Failure()))

        def _act_on(self, outcome: Failure | object | None) -> None:
            """A read's end (:meth:`_read_outcome`) acted on, after its cleartext."""
            if outcome is _CLOSED:
                # The peer's close_notify: answer it; the application's connectionLost
                # gets the transport's reason.
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            elif outcome is not None:
                self._tlsShutdownFinished(outcome)

        def _flushReceiveBIO(self) -> None:
            # Twisted's callers (the handshake's last read, connectionLost): the read
            # loop of dataReceived, with nothing new to write into the BIO.
            LeanTLSProtocol.dataReceived(self, b"")

        @staticmethod
        def _read_outcome(conn: Any, ssl: Any, result: int) -> Failure | object | None:
            """pyOpenSSL's exception for this ``SSL_read`` as Twisted sorts it: None (no
            more for now), :data:`_CLOSED` (close_notify) or the Failure to close with."""
            try:
                conn._raise_ssl_error(ssl, result)
            except WantReadError:
                return None
            except ZeroReturnError:
                return _CLOSED
            except Error:
                return _untraced(Failure())
            return None  # OpenSSL reports nothing to act on

        def _flushSendBIO(self) -> None:
            conn = self._tlsConnection
            if conn is None:
                return
            out = conn._from_ssl
            n = _pending(out, _NULL)
            if n <= 0:
                return
            buf = _out_buf if n <= _OUT_ROOM else _alloc("char[]", n)
            got = _BIO_read(out, buf, n)
            if got > 0:
                self.transport.write(_take(buf, got))  # type: ignore[union-attr]

        def _write(self, data: bytes) -> None:
            total = len(data)
            if not self._handshakeDone or type(data) is not bytes:
                if total > QUIET:
                    self._bios_grown = True
                super()._write(data)
                return
            if self._lostTLSConnection or not total:
                return
            conn = self._tlsConnection
            ssl = conn._ssl
            if total > RECORD and _DIRECT:  # more than one record: all sealed in C
                self._hand_on(conn, ssl, total, lambda: data, _seal, _addr(ssl),
                              _addr(conn._from_ssl), data, 0, WRITE_CHUNK, WRITE_TAIL, True)
                return
            if total > QUIET:
                self._bios_grown = True
            result = _SSL_write(ssl, data, total)
            if result == total:  # a small write: one record, out in one BIO_read
                got = _BIO_read(conn._from_ssl, _out_buf, _OUT_ROOM)
                if got > 0:
                    self.transport.write(_take(_out_buf, got))  # type: ignore[union-attr]
                    if got == _OUT_ROOM:
                        self._flushSendBIO()  # more than the buffer held (nothing does)
            elif result > 0:
                self._write_from(conn, ssl, data, result)
            else:
                self._write_failed(conn, ssl, result, data)

        def _write_from(self, conn: Any, ssl: Any, data: bytes, done: int) -> None:
            # pyOpenSSL's contexts allow partial writes: SSL_write makes one record
            # (16 KiB at most) per call. The records go out WRITE_CHUNK at a time, a
            # last WRITE_TAIL or less with the chunk before it.
            total = len(data)
            if _seal is not None:  # the same calls, in C (wire/_records.c)
                self._hand_on(conn, ssl, total, lambda: data, _seal, _addr(ssl),
                              _addr(conn._from_ssl), data, done, WRITE_CHUNK, WRITE_TAIL)
                return
            sent = 0
            with _ffi.from_buffer(data) as view:
                while done < total:
                    result = _SSL_write(ssl, view + done, total - done)
                    if result <= 0:
                        self._write_failed(conn, ssl, result, data[done:])
                        return
                    done += result
                    if done == total or (done - sent >= WRITE_CHUNK
                                         and total - done > WRITE_TAIL):
                        self._flushSendBIO()
                        sent = done

        def write_frames(self, sid: int, data: bytes, step: int) -> None:
            """``write(frames.data_frames(sid, data, step))``, the records sealed from
            ``data`` and the frames' headers in C without joining them first (a bulk
            tunnel write: mux.Multiplexer._write_frames)."""
            if self.disconnecting and self._producer is None:
                return  # Twisted's write: nothing after loseConnection
            if (_seal_frames is None or not self._handshakeDone or self._lostTLSConnection
                    or type(data) is not bytes):
                self._write(data_frames(sid, data, step))
                return
            direct = _DIRECT
            if not direct:
                self._bios_grown = True
            conn = self._tlsConnection
            ssl = conn._ssl
            self._hand_on(conn, ssl, data_frames_size(len(data), step),
                          lambda: data_frames(sid, data, step), _seal_frames, _addr(ssl),
                          _addr(conn._from_ssl), sid, data, step, WRITE_CHUNK, WRITE_TAIL,
                          direct)

        def _hand_on(self, conn: Any, ssl: Any, total: int, whole: Callable[[], bytes],
                     seal: Callable[..., tuple[list[bytes], int, int]], *args: Any) -> None:
            """What ``seal(*args)`` (seal() / seal_frames()) made of the ``total`` bytes
            ``whole()`` gives, to the transport; if SSL_write stopped short, what Twisted
            does with its failure (asked at once), with the rest."""
            try:
                out, done, result = seal(*args)
            except MemoryError:
                self._out_of_memory()
                return
            write = self.transport.write  # type: ignore[union-attr]
            for records in out:
                write(records)
            if done < total:
                self._write_failed(conn, ssl, result, whole()[done:])

        def _write_failed(self, conn: Any, ssl: Any, result: int, rest: bytes) -> None:
            """What Twisted does with the exception pyOpenSSL makes of this ``SSL_write``."""
            try:
                conn._raise_ssl_error(ssl, result)
            except WantReadError:
                self._flushSendBIO()  # the records made before it
                self._bufferedWrite(rest)  # OpenSSL needs the peer first (renegotiation)
            except Error:
                self._tlsShutdownFinished(_untraced(Failure()))
