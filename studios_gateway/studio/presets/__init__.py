"""Tool presets for `studios-connect --tool X`: how each tool starts behind the gateway."""

from __future__ import annotations

from studios_gateway.studio.presets.base import Preset
from studios_gateway.studio.presets.jupyterlab import JupyterLab
from studios_gateway.studio.presets.ride import RStudio
from studios_gateway.studio.presets.vscode import VSCode
from studios_gateway.studio.presets.xpra import Xpra

PRESETS: dict[str, Preset] = {p.tool: p for p in (JupyterLab(), RStudio(), VSCode(), Xpra())}


def preset_for(tool: str) -> Preset | None:
    """The preset of a canonical tool name; None for tools without one (generic)."""
    return PRESETS.get(tool)
