# The C extension's interface (studios_gateway/wire/_records.c), for mypy.

#: sha256 of the _records.c it was built from, first 16 hex digits (compiled.stale())
source: str

def init(ssl_write: int, ssl_read: int, ssl_pending: int, ssl_get_error: int,
         bio_read: int, bio_get_mem_data: int, want_read: int, /) -> None: ...
def seal(ssl: int, wbio: int, data: bytes, done: int, chunk: int, tail: int,
         /) -> tuple[list[bytes], int, int]: ...
def open(ssl: int, rbio: int, limit: int, /) -> tuple[bytes | None, int, int]: ...
