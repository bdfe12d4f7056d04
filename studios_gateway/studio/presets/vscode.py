"""VS Code as code-server: it has no base-path option, so the gateway strips the prefix.

Adds: ``--bind-addr 127.0.0.1:PORT``, ``--auth none`` (the gateway
authenticates), telemetry and update checks off, workspace trust off (the
studio's files are its owner's; Restricted Mode would turn extensions such as
Nextflow's off), (with no command) the studio's home as the folder to open, and
``--ignore-last-opened``, so that the folder on its command line wins over the one
it last opened (otherwise a folder remembered in its data directory, such as another
studio's on the same home, is opened instead); not to a command of the person's own
that names no folder last, which it would give an empty window. Its
Origin check compares Origin with Host, which the gateway passes unchanged, so no
trusted origins are added.
Readiness: ``/healthz`` answers 200. The version it announces is VS Code's (the
one the image templates' tags carry), not code-server's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from studios_gateway.studio.presets.base import Flag, Place, Preset

WITH_CODE = re.compile(r"with Code ([0-9]+(?:\.[0-9]+)+)")


def names_a_folder(rest: Sequence[str]) -> bool:
    """Whether code-server's words end with a folder (or workspace) to open: a last word
    that is neither an option nor, as far as can be told without its option table, an
    option's value (``--extensions-dir /x``). In doubt, no."""
    if not rest or rest[-1].startswith("-"):
        return False
    before = rest[-2] if len(rest) > 1 else ""
    return not before.startswith("-") or "=" in before


class VSCode(Preset):
    tool = "vscode"
    title = "code-server (VS Code)"
    executables = ("code-server",)

    def default_command(self, place: Place) -> list[str]:
        return ["code-server"]

    def read_version(self, output: str) -> str | None:
        """VS Code's version ("4.93.1 <commit> with Code 1.93.1" -> 1.93.1), as the image tags
        name it; code-server's own when it does not say."""
        m = WITH_CODE.search(output)
        return m.group(1) if m else super().read_version(output)

    def positional(self, rest: list[str], place: Place, default: bool) -> tuple[list[str],
                                                                                list[str]]:
        if default:
            return [*rest, place.workdir], [place.workdir]
        return rest, []

    def flags(self, place: Place) -> list[Flag]:
        return [
            Flag(("--bind-addr",), f"127.0.0.1:{place.port}", "listen on loopback only",
                 port=True),
            Flag(("--auth",), "none", "turn its password off (the gateway authenticates)"),
            Flag(("--disable-telemetry",), None, "send no telemetry"),
            Flag(("--disable-update-check",), None, "not check for updates"),
            Flag(("--disable-workspace-trust",), None,
                 "trust the studio's own files, so extensions stay on"),
            # code-server opens the folder it last opened (kept in its data directory,
            # under the studio's home) in place of the one on its command line, unless told;
            # told so with none there, it opens an empty window.
            Flag(("--ignore-last-opened", "-e"), None,
                 "open the studio's folder rather than the one it last opened", optional=True,
                 only_if=names_a_folder),
        ]

    def probe_path(self, place: Place) -> str:
        return "/healthz"


class OpenVSCode(Preset):
    """openvscode-server, where an image has it instead of code-server (not installable here,
    so checked by unit tests only). The gateway strips the prefix for it as for code-server."""

    tool = "vscode"
    title = "openvscode-server (VS Code)"
    executables = ("openvscode-server",)

    def default_command(self, place: Place) -> list[str]:
        return ["openvscode-server"]

    def flags(self, place: Place) -> list[Flag]:
        return [
            Flag(("--host",), "127.0.0.1", "listen on loopback only"),
            Flag(("--port",), str(place.port), "listen on the tool port", port=True),
            Flag(("--without-connection-token",), None,
                 "turn its connection token off (the gateway authenticates)"),
            Flag(("--telemetry-level",), "off", "send no telemetry"),
            Flag(("--default-folder",), place.workdir, "open the studio's home"),
        ]
