"""Tool presets for `studios-connect --tool X`: how each tool starts behind the gateway."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from studios_gateway.studio.presets.base import Place, Preset
from studios_gateway.studio.presets.jupyterlab import JupyterLab
from studios_gateway.studio.presets.ride import RStudio
from studios_gateway.studio.presets.vscode import OpenVSCode, VSCode
from studios_gateway.studio.presets.xpra import Xpra

PRESETS: dict[str, Preset] = {p.tool: p for p in (JupyterLab(), RStudio(), VSCode(), Xpra())}


#: Other programs for the same tool, chosen by the command (or, with none, by what is installed).
ALTERNATIVES: dict[str, tuple[Preset, ...]] = {"vscode": (OpenVSCode(),)}


def preset_for(tool: str) -> Preset | None:
    """The preset of a canonical tool name; None for tools without one (generic)."""
    return PRESETS.get(tool)


def pick(tool: str, command: Sequence[str], installed: Callable[[str], bool]) -> Preset | None:
    """The preset for ``command`` (the program it runs), or for the tool's default program;
    an alternative (openvscode-server) when only that is installed."""
    first = PRESETS.get(tool)
    if first is None:
        return None
    others = ALTERNATIVES.get(tool, ())
    if command:
        return next((p for p in others if p.head(command) is not None), first)
    if installed(first.default_command(Place(0))[0]):
        return first
    return next((p for p in others if installed(p.default_command(Place(0))[0])), first)
