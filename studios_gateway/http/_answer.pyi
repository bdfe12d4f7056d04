# The C extension's interface (studios_gateway/http/_answer.c), for mypy.

#: sha256 of the _answer.c it was built from, first 16 hex digits (lane.stale())
source: str

def answer(data: bytes, /) -> tuple[bytes, int, int] | None: ...
