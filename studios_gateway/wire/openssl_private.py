"""The one place that reaches into pyOpenSSL's private OpenSSL bindings.

pyOpenSSL's ``Connection`` keeps its ``SSL*`` and its two memory BIOs in private
attributes and its cffi bindings (``OpenSSL._util.lib`` / ``ffi``, the ones
``cryptography`` builds) in a private module. Two things here need them:
wire/tls_memory.py renews a connection's memory BIOs, and wire/tls_lean.py moves
a tunnel's records in and out of OpenSSL without pyOpenSSL's per-call buffers and
exceptions. Both check :data:`AVAILABLE` and fall back to the public path (keep
the BIOs; Twisted's own TLS layer) when a pyOpenSSL release no longer has what
they use. tests/unit/test_openssl_private.py fails when that happens, so that an
upgrade that silently drops to the slow path is noticed.
See docs/decisions/tunnel-tls-path.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from OpenSSL import SSL

from studios_gateway import compiled

__all__ = ["AVAILABLE", "CONNECTION_ATTRIBUTES", "FUNCTIONS", "RECORDS", "RECORD_FUNCTIONS", "ffi",
           "lib", "missing", "records_stale"]

#: The bindings' functions and constants used here and by the modules named above.
FUNCTIONS = (
    "BIO_new", "BIO_s_mem", "BIO_free", "BIO_get_mem_data", "BIO_read", "BIO_write",
    "SSL_set_bio", "SSL_read", "SSL_write", "SSL_get_error", "SSL_pending",
    "SSL_ERROR_WANT_READ", "SSL_ERROR_NONE",
)
#: What a memory-BIO ``SSL.Connection`` holds (instance attributes) and the method
#: that turns a failed OpenSSL call into pyOpenSSL's exception.
CONNECTION_ATTRIBUTES = ("_ssl", "_into_ssl", "_from_ssl")
CONNECTION_METHODS = ("_raise_ssl_error",)

lib: Any
ffi: Any
try:
    from OpenSSL._util import ffi, lib
except ImportError:  # pragma: no cover - a pyOpenSSL without the private module
    lib = ffi = None


def missing() -> list[str]:
    """What of the private API this pyOpenSSL lacks (empty when everything is there)."""
    if lib is None or ffi is None:
        return ["OpenSSL._util.lib/ffi"]
    gone = [name for name in FUNCTIONS if not hasattr(lib, name)]
    gone += [f"Connection.{name}" for name in CONNECTION_METHODS
             if not callable(getattr(SSL.Connection, name, None))]
    probe = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    gone += [f"Connection.{name}" for name in CONNECTION_ATTRIBUTES
             if getattr(probe, name, None) is None]
    return gone


#: Everything the fast paths use is there.
AVAILABLE = not missing()


def _load_records() -> Any:
    """The compiled record path (wire/_records.c) given the OpenSSL functions' addresses
    in the bindings' own library; None when it is not built (an install without a C
    compiler) or the bindings do not let the addresses be taken."""
    if not AVAILABLE:
        return None
    try:
        from studios_gateway.wire import _records
    except ImportError:
        return None
    # The bindings' functions live in cffi's Lib object; OpenSSL._util.lib is a module
    # made from its attributes, which ffi.addressof does not take.
    real = getattr(lib.SSL_write, "__self__", None)
    try:
        addresses = [int(ffi.cast("uintptr_t", ffi.addressof(real, name)))
                     for name in RECORD_FUNCTIONS]
    except (TypeError, AttributeError, ffi.error):
        return None
    write, read, pending, get_error, bio_read, mem_data = addresses
    _records.init(write, read, pending, get_error, bio_read, mem_data,
                  lib.SSL_ERROR_WANT_READ)
    return _records


#: The OpenSSL functions wire/_records.c calls, in init()'s order.
RECORD_FUNCTIONS = ("SSL_write", "SSL_read", "SSL_pending", "SSL_get_error", "BIO_read",
                    "BIO_get_mem_data")

#: wire/_records.c, ready to use; None: the records take the Python loop.
RECORDS: Any = _load_records()


def records_stale() -> bool:
    """wire/_records.c changed since its extension was built (a source tree after an
    edit); the tests fail on it rather than test the old C."""
    return compiled.stale(RECORDS, Path(__file__).with_name("_records.c"))
