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
  one a transport write per :data:`WRITE_CHUNK` of records;
- any other answer from OpenSSL (close_notify, an alert, a renegotiation that
  wants a read) goes to pyOpenSSL's own error translation and then to the same
  handling as Twisted's (``_tlsShutdownFinished``, ``_bufferedWrite``...).

The shared buffers are module-level: they cost nothing per connection (an idle
tunnel holds what it held before). They belong to the reactor thread, and nothing
in them is left uncopied when the application is called.

When pyOpenSSL lacks something this uses (wire/openssl_private.py), the class is
Twisted's path unchanged. See docs/decisions/tunnel-tls-path.md.
"""

from __future__ import annotations

from typing import Any

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from studios_gateway.wire import openssl_private as _private

__all__ = ["DELIVER", "LEAN", "WRITE_CHUNK", "LeanTLSProtocol"]

#: Whether the lean path is in use (pyOpenSSL has everything it needs).
LEAN = _private.AVAILABLE

#: The most cleartext handed to the application in one ``dataReceived``.
DELIVER = 256 * 1024
#: The most cleartext encrypted before its records are handed to the transport
#: (records are at most 16 KiB: four per chunk).
WRITE_CHUNK = 64 * 1024
#: The shared buffer for records taken out of the write BIO (WRITE_CHUNK and up to
#: one more record); more than this at once is read into a buffer of its own.
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
    _take = _ffi.buffer

#: :meth:`LeanTLSProtocol._read_outcome` of the peer's close_notify.
_CLOSED = object()


class LeanTLSProtocol(TLSMemoryBIOProtocol):
    """``TLSMemoryBIOProtocol`` whose post-handshake reads and writes take the lean
    path (see the module). Every write is encrypted and sent when it is made."""

    if LEAN:

        def dataReceived(self, data: bytes) -> None:
            if not self._handshakeDone:
                super().dataReceived(data)  # the handshake: Twisted's path throughout
                return
            n = len(data)
            if _BIO_write(self._tlsConnection._into_ssl, data, n) != n:
                raise MemoryError("OpenSSL could not take a TLS read into its memory BIO")
            if self._appSendBuffer:
                self._unbufferPendingWrites()
            self._flushReceiveBIO()

        def _flushReceiveBIO(self) -> None:
            conn = self._tlsConnection
            if conn is None:
                return
            ssl, into = conn._ssl, conn._into_ssl
            got = 0
            while not self._lostTLSConnection:
                result = _SSL_read(ssl, _in_buf + got, DELIVER - got)
                if result > 0:
                    got += result
                    if got < DELIVER:
                        if _SSL_pending(ssl) or _pending(into, _NULL):
                            continue
                        # All that was read is out (OpenSSL reads no record ahead of
                        # the one it decrypts): no call that can only say "no more".
                        if not self._aborted:
                            self.wrappedProtocol.dataReceived(_take(_in_buf, got)[:])
                        break
                    data, got = _take(_in_buf, got)[:], 0
                    if not self._aborted:
                        self.wrappedProtocol.dataReceived(data)
                    continue
                # Asked at once: the application's writes change what it would say.
                if _SSL_get_error(ssl, result) == _WANT_READ:
                    if got and not self._aborted:
                        self.wrappedProtocol.dataReceived(_take(_in_buf, got)[:])
                    break
                # The connection's end or a failure: what pyOpenSSL makes of it now,
                # acted on (as Twisted does) after the cleartext before it is delivered.
                outcome = self._read_outcome(conn, ssl, result)
                if got and not self._aborted:
                    self.wrappedProtocol.dataReceived(_take(_in_buf, got)[:])
                if outcome is _CLOSED:
                    # The peer's close_notify: answer it; the application's
                    # connectionLost gets the transport's reason.
                    self._shutdownTLS()
                    self._tlsShutdownFinished(None)
                elif outcome is not None:
                    self._tlsShutdownFinished(outcome)
                break
            self._flushSendBIO()

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
                return Failure()
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
                self.transport.write(_take(buf, got)[:])  # type: ignore[union-attr]

        def _write(self, data: bytes) -> None:
            if not self._handshakeDone or type(data) is not bytes:
                super()._write(data)
                return
            if self._lostTLSConnection:
                return
            conn = self._tlsConnection
            ssl = conn._ssl
            total = len(data)
            if not total:
                return
            result = _SSL_write(ssl, data, total)
            if result == total:  # a small write: one record
                self._flushSendBIO()
            elif result > 0:
                self._write_from(conn, ssl, data, result)
            else:
                self._write_failed(conn, ssl, result, data)

        def _write_from(self, conn: Any, ssl: Any, data: bytes, done: int) -> None:
            # pyOpenSSL's contexts allow partial writes: SSL_write makes one record
            # (16 KiB at most) per call. The records go out WRITE_CHUNK at a time.
            total, sent = len(data), 0
            with _ffi.from_buffer(data) as view:
                while done < total:
                    result = _SSL_write(ssl, view + done, total - done)
                    if result <= 0:
                        self._write_failed(conn, ssl, result, data[done:])
                        return
                    done += result
                    if done - sent >= WRITE_CHUNK or done == total:
                        self._flushSendBIO()
                        sent = done

        def _write_failed(self, conn: Any, ssl: Any, result: int, rest: bytes) -> None:
            """What Twisted does with the exception pyOpenSSL makes of this ``SSL_write``."""
            try:
                conn._raise_ssl_error(ssl, result)
            except WantReadError:
                self._flushSendBIO()  # the records made before it
                self._bufferedWrite(rest)  # OpenSSL needs the peer first (renegotiation)
            except Error:
                self._tlsShutdownFinished(Failure())
