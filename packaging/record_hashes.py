"""Bring the RECORD files of a virtualenv's installed distributions up to date.

    python3 packaging/record_hashes.py VENV           rewrite what no longer matches
    python3 packaging/record_hashes.py --check VENV   exit 1 when something does not

pip writes, for each distribution, ``*.dist-info/RECORD``: every file it installed with
its sha256 and size (the wheel spec's "path,sha256=<urlsafe base64, unpadded>,size").
build-deb then rewrites the staging path in the console scripts' shebangs (bin/twistd,
bin/studios-gateway, ...), after which their lines no longer matched the files. A line
whose file is there and differs gets the file's hash and size; lines without a hash
(RECORD itself, byte code) and files no longer there are kept as they are. Only the
standard library: build-deb runs it with Debian's python3.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import sys
from pathlib import Path


def digest(data: bytes, algorithm: str = "sha256") -> str:
    """The RECORD form of a file's hash: ``sha256=`` and the unpadded urlsafe base64."""
    raw = hashlib.new(algorithm, data).digest()
    return f"{algorithm}=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def current_line(line: str, base: Path) -> str | None:
    """`line` (one RECORD row, its line ending kept) as it should be now, or None when it
    still matches its file or is not one to check; paths are relative to `base`."""
    body = line.rstrip("\r\n")
    (row,) = csv.reader([body]) if body else [[]]
    if len(row) != 3 or not row[1] or not (base / row[0]).is_file():
        return None
    data = (base / row[0]).read_bytes()
    wanted = [row[0], digest(data, row[1].partition("=")[0]), str(len(data))]
    if row == wanted:
        return None
    text = io.StringIO()
    csv.writer(text, lineterminator="").writerow(wanted)
    return text.getvalue() + line[len(body):]


def lines_of(record: Path) -> list[str]:
    """The lines of `record`, each with its own ending (pip writes CRLF)."""
    return [line.decode("utf-8") for line in record.read_bytes().splitlines(keepends=True)]


def stale(record: Path) -> dict[int, str]:
    """index -> new line, for the lines of `record` that no longer match their files."""
    base = record.parent.parent
    out = {}
    for index, line in enumerate(lines_of(record)):
        new = current_line(line, base)
        if new is not None:
            out[index] = new
    return out


def rewrite(record: Path) -> list[str]:
    """Rewrite the stale lines of `record` in place (the others byte for byte as they
    were); the paths of those lines."""
    changes = stale(record)
    if changes:
        lines = lines_of(record)
        for index, line in changes.items():
            lines[index] = line
        record.write_bytes("".join(lines).encode("utf-8"))
    return [next(csv.reader([line]))[0] for line in changes.values()]


def records(venv: Path) -> list[Path]:
    return sorted(venv.glob("lib/python*/site-packages/*.dist-info/RECORD"))


def main(argv: list[str]) -> int:
    check = argv[:1] == ["--check"]
    args = argv[1:] if check else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    found = records(Path(args[0]))
    if not found:
        print(f"record_hashes: no *.dist-info/RECORD under {args[0]}", file=sys.stderr)
        return 2
    changed = 0
    for record in found:
        if not check:
            changed += len(rewrite(record))
            continue
        for line in stale(record).values():
            print(f"{record.parent.name}: {next(csv.reader([line]))[0]} does not match")
            changed += 1
    if check:
        return 1 if changed else 0
    print(f"record_hashes: {changed} RECORD line(s) brought up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
