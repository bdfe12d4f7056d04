"""glibc's count of the bytes malloc has handed out and not had back (OpenSSL's memory,
which tracemalloc does not see)."""

from __future__ import annotations

import ctypes


def malloc_in_use() -> int:
    """``mallinfo2()``'s ``uordblks + hblkhd``: heap and mmap'd chunks in use."""
    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Mallinfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)
