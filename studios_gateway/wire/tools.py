"""The studio tools both ends know: their names, and how each sits behind a path prefix.

The gateway and the connect client read the same table. Seqera Platform spells
the tools ``jupyter``, ``rstudio``, ``vscode`` and ``xpra``; ours are
``jupyterlab``, ``ride``, ``vscode``, ``xpra`` and ``generic``. Both are
accepted wherever a tool is named; :func:`canonical` gives the one name that
is stored, sent in the bind and shown.

In path mode (``/_studio/<id>/``) a tool either serves under the prefix itself
(``strip_prefix=False``: the gateway passes the path unchanged and the tool is
started with its base path) or cannot (``strip_prefix=True``: the gateway
removes the prefix before the tool and puts it back on ``Location``,
``Set-Cookie`` paths and ``Refresh`` on the way out). ``proxy_headers`` names
request headers the tool expects from its proxy; the gateway sets them (any
copy a client sent is dropped) from templates: ``{prefix}`` is the public path
prefix (``/_studio/<id>/``; ``/`` in subdomain mode), ``{prefix_no_slash}`` the
same without its trailing slash (``/_studio/<id>``; still ``/`` in subdomain
mode). ``unavailable`` lists the routing modes (``subdomain``, ``path``) a tool
cannot work in, with the reason the gateway's page gives instead of the tool's
answer; today every tool works in both. ``logout_path`` is the tool's own logout
page under its prefix (JupyterLab's File > Log Out opens ``<prefix>logout``): its
login is off behind the gateway, so the gateway sends a page load of it to its own
logout page, whose button ends the login the person meant to end.

RStudio Server serves at ``/`` whatever its ``www-root-path``: that setting and
the ``X-RStudio-Root-Path`` header only tell it which prefix its proxy removed
(RStudio's proxy guide strips the path; so does jupyter-rsession-proxy). So
``ride`` is stripped, and told its root path by the header.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ToolSpec:
    name: str  # canonical name
    title: str  # what a person reads
    aliases: tuple[str, ...] = ()
    strip_prefix: bool = False
    proxy_headers: tuple[tuple[str, str], ...] = field(default=())
    unavailable: tuple[tuple[str, str], ...] = field(default=())  # (mode, why)
    logout_path: str = ""  # the tool's logout page, relative to its prefix ("" = none)

    def unavailable_in(self, mode: str) -> str | None:
        """Why this tool cannot work in routing mode ``mode``; None when it can."""
        return next((why for m, why in self.unavailable if m == mode), None)


TOOL_SPECS: tuple[ToolSpec, ...] = (
    ToolSpec("jupyterlab", "JupyterLab", aliases=("jupyter",), logout_path="logout"),
    ToolSpec("ride", "R-IDE (RStudio Server)", aliases=("rstudio",), strip_prefix=True,
             proxy_headers=(("X-RStudio-Root-Path", "{prefix_no_slash}"),)),
    ToolSpec("vscode", "VS Code (code-server)", aliases=("code-server",), strip_prefix=True),
    ToolSpec("xpra", "Xpra", strip_prefix=True),
    ToolSpec("generic", "web application"),
)

_BY_NAME: dict[str, ToolSpec] = {}
for _spec in TOOL_SPECS:
    for _name in (_spec.name, *_spec.aliases):
        _BY_NAME[_name] = _spec

TOOLS: tuple[str, ...] = tuple(s.name for s in TOOL_SPECS)
"""Canonical names, in the order they are listed to people."""

TOOL_NAMES: tuple[str, ...] = tuple(_BY_NAME)
"""Every accepted spelling (canonical names and the Platform's)."""


def canonical(name: str) -> str | None:
    """The canonical name for ``name`` (any accepted spelling, any case), or None."""
    spec = _BY_NAME.get(name.strip().lower()) if isinstance(name, str) else None
    return spec.name if spec else None


def spec_for(name: str) -> ToolSpec:
    """The tool's spec; unknown names get the generic one (a tool passed through as is)."""
    return _BY_NAME.get(name.strip().lower(), _BY_NAME["generic"])


def accepted() -> str:
    """For error messages: 'jupyterlab (or jupyter), ride (or rstudio), ...'."""
    parts = []
    for s in TOOL_SPECS:
        parts.append(f"{s.name} (or {', '.join(s.aliases)})" if s.aliases else s.name)
    return ", ".join(parts)
