"""The facts an audit of a new OpenSSL build needs for wire/openssl_peer_key.py.

    python -m bench.peer_key_audit

Prints the OpenSSL version text and cryptography's version (the key of
``openssl_peer_key.AUDITED``), the offsets in a TLS 1.3 server connection whose word
holds the peer key share ``SSL_get_peer_tmp_key`` returns (read through
/proc/self/mem, so an unmapped page is an error, not a crash), and, with objdump,
every function of the extension module whose instructions use that displacement.
The audit itself (that each libssl function there is the getter, a free, or a
handshake function) is reading that list: docs/decisions/openssl-peer-key.md.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
from collections import Counter

import cryptography
from cryptography.hazmat.bindings import _rust

from studios_gateway.wire import openssl_peer_key as peer_key
from studios_gateway.wire import openssl_private as private


def main() -> int:
    lib, ffi = private.lib, private.ffi
    version = ffi.string(lib.OpenSSL_version(0)).decode()
    print(f"build: ({version!r}, {cryptography.__version__!r})")
    ctrl = ffi.cast("long (*)(SSL *, int, long, void *)",
                    private.module_functions(["SSL_ctrl"])["SSL_ctrl"])
    server, _client = peer_key.handshaken_pair()
    out = ffi.new("EVP_PKEY **")
    if ctrl(server._ssl, peer_key.SSL_CTRL_GET_PEER_TMP_KEY, 0, out) != 1:
        print("the getter returns no key share")
        return 1
    key = int(ffi.cast("uintptr_t", out[0]))
    lib.EVP_PKEY_free(out[0])
    start = int(ffi.cast("uintptr_t", server._ssl))
    with open("/proc/self/mem", "rb", buffering=0) as mem:
        raw = os.pread(mem.fileno(), 16384, start)
    offsets = [i for i in range(0, len(raw) - 7, 8) if struct.unpack_from("<Q", raw, i)[0] == key]
    print("words holding the key share: " + ", ".join(hex(o) for o in offsets))
    if len(offsets) != 1 or shutil.which("objdump") is None:
        return 0 if len(offsets) == 1 else 1
    pattern = re.compile(rf"[^0-9a-fx]{hex(offsets[0])}\(%r")
    users: Counter[str] = Counter()
    function = "?"
    dump = subprocess.run(["objdump", "-d", "--no-show-raw-insn", _rust.__file__],
                          capture_output=True, text=True, check=True).stdout
    for line in dump.splitlines():
        if line.endswith(">:"):
            function = line.split("<", 1)[1][:-2]
        elif pattern.search(line):
            users[function] += 1
    print(f"functions using displacement {hex(offsets[0])}:")
    for name, count in sorted(users.items()):
        print(f"  {count:3d}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
