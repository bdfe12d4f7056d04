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

:func:`module_functions` finds public OpenSSL functions that the bindings do not
offer in the extension module's symbol table (wire/openssl_peer_key.py's
``SSL_ctrl``, wire/tls.py's ``SSL_CTX_set_num_tickets``).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from OpenSSL import SSL

from studios_gateway import compiled

__all__ = ["AVAILABLE", "CONNECTION_ATTRIBUTES", "DIRECT", "DIRECT_FUNCTIONS", "DIRECT_MISSING",
           "FUNCTIONS", "RECORDS", "RECORD_FUNCTIONS",
           "Unreachable", "elf_functions", "ffi", "lib", "missing", "module_functions",
           "records_stale"]

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


class Unreachable(Exception):
    """A function of the OpenSSL in cryptography's extension module cannot be reached
    safely here (the message says why)."""


#: Functions the bindings give whose addresses the extension module's symbol table must
#: agree on, every one, before any other address is taken from it.
_CHECKED = ("SSL_free", "SSL_new", "SSL_version", "EVP_PKEY_free", "SSL_read", "SSL_write")


#: The functions wire/_records.c's direct BIOs use, in init_direct()'s order: public
#: OpenSSL functions the bindings do not offer (but BIO_new), all taken from the
#: symbol table (:func:`module_functions`).
DIRECT_FUNCTIONS = (
    "BIO_meth_new", "BIO_get_new_index", "BIO_meth_set_write_ex", "BIO_meth_set_read_ex",
    "BIO_meth_set_ctrl", "BIO_new", "BIO_set_init", "BIO_up_ref", "BIO_set_flags",
    "BIO_clear_flags", "SSL_get_rbio", "SSL_get_wbio", "SSL_set0_rbio", "SSL_set0_wbio",
)

#: The functions :func:`module_functions` may be asked for: the symbol table is read
#: once, for all of them (~50 ms of Python for a module of cryptography's size).
MODULE_FUNCTIONS = ("SSL_ctrl", "SSL_CTX_set_num_tickets", "SSL_CTX_get_num_tickets",
                    *DIRECT_FUNCTIONS)


def module_functions(names: Sequence[str]) -> dict[str, int]:
    """Where in this process the named functions are, of the OpenSSL linked into
    cryptography's extension module: public OpenSSL functions the bindings do not offer
    (of :data:`MODULE_FUNCTIONS`). Taken from the module's symbol table, which must first
    place every function of :data:`_CHECKED` where the bindings have it. Raises
    :class:`Unreachable` saying why when that cannot be done."""
    if not set(names) <= set(MODULE_FUNCTIONS):
        raise Unreachable(f"not looked for: {sorted(set(names) - set(MODULE_FUNCTIONS))}")
    found = _module_functions()
    if isinstance(found, str):
        raise Unreachable(found)
    if not set(names) <= set(found):
        raise Unreachable(f"symbols missing from cryptography's extension module: "
                          f"{sorted(set(names) - set(found))}")
    return {name: found[name] for name in names}


@functools.cache
def _module_functions() -> dict[str, int] | str:
    """:data:`MODULE_FUNCTIONS` found in this process, or why they cannot be (whatever
    went wrong: a caller then does without, and a gateway still starts)."""
    try:
        return _find_module_functions()
    except Unreachable as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - a truncated or odd file, a changed module
        return f"cannot read cryptography's extension module: {e!r}"


def _find_module_functions() -> dict[str, int]:
    if not AVAILABLE:
        raise Unreachable("pyOpenSSL's private bindings are missing")
    from cryptography.hazmat.bindings import _rust

    cffi_lib = getattr(getattr(_rust, "_openssl", None), "lib", None)
    if cffi_lib is None:
        raise Unreachable("cryptography's cffi module is not where it was")
    checked = [f"_cffi_d_{name}" for name in _CHECKED]
    symbols = elf_functions(Path(_rust.__file__), [*checked, *MODULE_FUNCTIONS])
    if not set(checked) <= set(symbols):
        raise Unreachable(f"{_rust.__file__} has no symbol table to check against its bindings")
    # Where the module is loaded: each bound function must sit at base + its symbol.
    bases = {int(ffi.cast("uintptr_t", ffi.addressof(cffi_lib, name)))
             - symbols[f"_cffi_d_{name}"] for name in _CHECKED}
    if len(bases) != 1:
        raise Unreachable("the symbol table does not match the loaded module")
    base = bases.pop()
    return {name: base + symbols[name] for name in MODULE_FUNCTIONS if name in symbols}


def _load_direct() -> str | None:
    """Have wire/_records.c make its direct BIOs (records sealed into, and read from,
    Python's bytes without a memory BIO between); None when it did, else why not."""
    if RECORDS is None:
        return "wire/_records.c is not in use"
    try:
        found = module_functions(DIRECT_FUNCTIONS)
    except Unreachable as e:
        return str(e)
    if not RECORDS.init_direct([found[name] for name in DIRECT_FUNCTIONS]):
        return "OpenSSL did not make the BIO method"
    return None


def elf_functions(path: Path, names: Sequence[str]) -> dict[str, int]:
    """The values (addresses relative to the load base) of the named function symbols in
    a 64-bit little-endian ELF file's ``.symtab``; names not found are left out."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise Unreachable(f"{path} is not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                for i in range(shnum)]
    wanted = {name.encode() for name in names}
    found: dict[str, int] = {}
    for _name, kind, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if kind != 2 or entsize != 24:  # SHT_SYMTAB
            continue
        strings = sections[link][4]
        for st_name, info, _other, _shndx, value, _size in struct.iter_unpack(
                "<IBBHQQ", data[offset:offset + size]):
            if info & 0xF != 2 or not value:  # STT_FUNC, defined
                continue
            start = strings + st_name
            name = data[start:data.index(b"\0", start)]
            if name in wanted:
                found[name.decode()] = value
    return found


#: Why wire/_records.c's direct BIOs are not in use (None: they are). Without them the
#: compiled path moves records through the memory BIOs, as before.
DIRECT_MISSING: str | None = _load_direct()
#: wire/_records.c's direct BIOs are ready.
DIRECT = DIRECT_MISSING is None
