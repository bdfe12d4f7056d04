"""Generate the README's configuration table from the variable table.

`python -m studios_gateway.docgen` rewrites the part of README.md between the
config-table markers; `--check` exits 1 when it is out of date.
"""

from __future__ import annotations

import sys
from pathlib import Path

from studios_gateway.config import VARIABLES

START = "<!-- config-table:start -->"
END = "<!-- config-table:end -->"


def config_table() -> str:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for var in VARIABLES:
        default = f"`{var.default}`" if var.default is not None else ""
        notes = []
        if var.secret:
            notes.append("(secret)")
        if not var.seed:
            notes.append("(ours)")
        doc = " ".join([var.doc, *notes])
        lines.append(f"| `{var.name}` | {default} | {doc} |")
    return "\n".join(lines)


def render(readme: str) -> str:
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{config_table()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    path = Path(__file__).resolve().parents[1] / "README.md"
    text = path.read_text()
    new = render(text)
    if "--check" in argv:
        return 0 if new == text else 1
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
