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

from typing import Any

from OpenSSL import SSL

__all__ = ["AVAILABLE", "CONNECTION_ATTRIBUTES", "FUNCTIONS", "ffi", "lib", "missing"]

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
