"""JupyterLab: served under the public prefix (base_url), so it binds first, then starts.

Adds: loopback ip and port, ``base_url`` from the routing, ``allow_remote_access``
(Jupyter's own Host check refuses the studio's host name otherwise; its Origin
check compares Origin with Host, which the gateway passes unchanged, so that
one stays on), token and password off (the gateway authenticates), XSRF kept on
(the browser's ``_xsrf`` cookie and header pass through), the studio's home as
root_dir, no browser, ``--allow-root`` when running as root, and (where the version
has them) no news feed and no update check; and, with the news feed off, no question
about it in the page (its announcements plugin disabled through a page_config.json of
the launcher's own on ``JUPYTER_CONFIG_PATH``). Readiness:
``<prefix>api/status`` answers 200.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from studios_gateway.studio.presets.base import Flag, Place, Preset

#: JupyterLab's front-end part that asks each new user "Would you like to get notified
#: about official Jupyter news?" and shows the news and update notifications. With
#: ``--LabApp.news_url=None`` a Yes brings nothing, so the question goes too.
ANNOUNCEMENTS = "@jupyterlab/apputils-extension:announcements"


class JupyterLab(Preset):
    tool = "jupyterlab"
    title = "JupyterLab"
    executables = ("jupyter", "jupyter-lab")
    needs_prefix = True
    # jsonschema's IRI format check (rfc3987-syntax, which jupyter_events imports through
    # jsonschema[format-nongpl]) compiles its grammars at import: 1.5 s of each of the
    # two answers here (2.5-3 s each with it, 1.0-1.3 s without), and of JupyterLab's own
    # start, which keeps it. Neither the version nor --help-all depends on it.
    inspect_without = ("rfc3987_syntax",)

    def default_command(self, place: Place) -> list[str]:
        return ["jupyter", "lab"]

    def head(self, argv: Sequence[str]) -> int | None:
        name = os.path.basename(argv[0]) if argv else ""
        if name == "jupyter-lab":
            return 1
        if name == "jupyter" and len(argv) > 1 and argv[1] == "lab":
            return 2
        return None

    def help_argv(self, head: Sequence[str]) -> list[str]:
        return [*head, "--help-all"]

    def flags(self, place: Place) -> list[Flag]:
        flags = [
            Flag(("--no-browser", "--ServerApp.open_browser"), None, "not open a browser"),
            Flag(("--ServerApp.ip", "--ip"), "127.0.0.1", "listen on loopback only"),
            Flag(("--ServerApp.port", "--port"), str(place.port), "listen on the tool port",
                 port=True),
            Flag(("--ServerApp.port_retries",), "0", "fail rather than take another port"),
            Flag(("--ServerApp.base_url",), place.prefix, "serve under the studio's prefix"),
            Flag(("--ServerApp.allow_remote_access",), "True",
                 "accept the studio's host name (Jupyter's Host check)"),
            # Jupyter Server 2 reads these from its identity provider (not in --help-all).
            Flag(("--IdentityProvider.token", "--ServerApp.token", "--NotebookApp.token"), "",
                 "turn the token off (the gateway authenticates)", check=None),
            Flag(("--PasswordIdentityProvider.hashed_password", "--ServerApp.password",
                  "--NotebookApp.password"), "",
                 "turn the password off (the gateway authenticates)", check=None),
            Flag(("--ServerApp.disable_check_xsrf",), "False", "keep XSRF checks on"),
            Flag(("--ServerApp.root_dir", "--notebook-dir", "--ServerApp.notebook_dir"),
                 place.workdir, "open the studio's home"),
            # Off, as code-server's update check is: the server would otherwise fetch PyPI's
            # page for JupyterLab at each page load (once the user has answered the news
            # question), and the news feed from GitHub for a user who said yes. A studio
            # often has no way out, and its image is the operator's to update. Versions
            # without the options (before 3.6, which brought the news feed) run without
            # them, and are not asked again for them with nothing hidden (since).
            Flag(("--LabApp.news_url",), "None", "not fetch Jupyter's news feed nor ask about it",
                 optional=True, since="3.6"),
            Flag(("--LabApp.check_for_updates_class",), "jupyterlab.NeverCheckForUpdate",
                 "not check PyPI for a newer JupyterLab", optional=True, since="3.6"),
        ]
        if place.root:
            flags.append(Flag(("--allow-root",), None, "run as root (studios often do)"))
        return flags

    def probe_path(self, place: Place) -> str:
        return place.prefix + "api/status"

    def environment(self, environ: Mapping[str, str], private: Callable[[], Path],
                    argv: Sequence[str] = ()) -> dict[str, str]:
        """JUPYTER_CONFIG_PATH led by a directory whose labconfig/page_config.json disables
        the announcements plugin, when the news feed is off (``--LabApp.news_url=None``
        in the command: the preset's flag, or the person's own), and no page config of
        theirs names that plugin. JUPYTER_CONFIG_PATH's directories come before every
        other on Jupyter's config path, so ours would override their own choice (``jupyter
        labextension enable --level=user`` of it, in ~/.jupyter)."""
        if "--LabApp.news_url=None" not in argv or _page_config_names(environ, ANNOUNCEMENTS):
            return {}
        labconfig = private() / "labconfig"
        labconfig.mkdir(exist_ok=True)
        (labconfig / "page_config.json").write_text(
            json.dumps({"disabledExtensions": {ANNOUNCEMENTS: True}}))
        path = [str(labconfig.parent)]
        if environ.get("JUPYTER_CONFIG_PATH"):
            path.append(environ["JUPYTER_CONFIG_PATH"])
        return {"JUPYTER_CONFIG_PATH": os.pathsep.join(path)}


def _page_config_names(environ: Mapping[str, str], plugin: str) -> bool:
    """Whether a labconfig/page_config.json of the person's (in their Jupyter config
    directory, JUPYTER_CONFIG_DIR or ~/.jupyter, or on a JUPYTER_CONFIG_PATH of theirs)
    says whether `plugin` is disabled, either way."""
    home = environ.get("HOME") or os.path.expanduser("~")
    theirs = [environ.get("JUPYTER_CONFIG_DIR") or os.path.join(home, ".jupyter"),
              *(environ.get("JUPYTER_CONFIG_PATH") or "").split(os.pathsep)]
    for directory in filter(None, theirs):
        try:
            data = json.loads((Path(directory) / "labconfig" / "page_config.json").read_text())
        except (OSError, ValueError):  # none there (or not JSON: Jupyter's to say so)
            continue
        disabled = data.get("disabledExtensions") if isinstance(data, dict) else None
        if isinstance(disabled, dict | list) and plugin in disabled:
            return True
    return False
