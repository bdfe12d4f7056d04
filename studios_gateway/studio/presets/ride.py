"""R-IDE as RStudio Server (``rserver``), the Platform's ``rstudio`` tool.

RStudio serves at ``/`` and builds its URLs from its root path, which it
learns from ``--www-root-path`` (given at start, so this preset binds first)
and from the ``X-RStudio-Root-Path`` header the gateway sends. Adds: no
daemon (it stays our child), ``--www-address 127.0.0.1``, the port,
``--auth-none 1`` (the gateway authenticates), ``--server-user`` (the user we
run as), the root path. Readiness: ``/`` answers 200 or a redirect.
"""

from __future__ import annotations

from studios_gateway.studio.presets.base import Flag, Place, Preset


class RStudio(Preset):
    tool = "ride"
    title = "RStudio Server"
    executables = ("rserver",)
    needs_prefix = True
    probe_ok = (200, 301, 302, 303, 307)

    def default_command(self, place: Place) -> list[str]:
        return ["rserver"]

    def flags(self, place: Place) -> list[Flag]:
        return [
            Flag(("--server-daemonize",), "0", "stay in the foreground as our child"),
            Flag(("--www-address",), "127.0.0.1", "listen on loopback only"),
            Flag(("--www-port",), str(place.port), "listen on the tool port", port=True),
            Flag(("--auth-none",), "1", "turn its login off (the gateway authenticates)"),
            Flag(("--server-user",), place.user, "run sessions as the studio's user"),
            Flag(("--www-root-path",), place.prefix_no_slash,
                 "build its URLs under the studio's prefix"),
        ]
