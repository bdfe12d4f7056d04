"""What every tool preset shares: flags it adds, the tool's version, the command it builds.

A preset turns "start JupyterLab behind the gateway" into a command line. With
no command it starts the tool itself; with one (``studios-connect --tool X --
CMD...``) it keeps what the person wrote and adds only the flags that are
missing. Building the command is pure (no processes): the installed tool's
version and help text are read once by :func:`inspect_tool` and passed in, so
a flag the installed version does not have is found before anything starts.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

VERSION = re.compile(r"[0-9]+(?:\.[0-9]+)+(?:[-+][A-Za-z0-9._]+)?")
INSPECT_TIMEOUT = 120.0  # `jupyter lab --help-all` takes seconds on a busy machine


class PresetError(Exception):
    """The preset cannot start this tool; the message is one line for the person."""


@dataclass(frozen=True)
class Flag:
    """One option a preset adds: ``names[0]=value`` (or the bare switch when value is None)."""

    names: tuple[str, ...]  # every spelling the tool accepts; the first is the one we add
    value: str | None
    why: str  # what it is for, in the failure line ("... has no --x flag (needed to WHY)")
    check: str | None = ""  # text the help output must hold ("" = names[0]; None = not listed)
    port: bool = False  # its value carries the tool's port; a person's own value wins
    optional: bool = False  # a comfort, not a need: left out when the tool does not list it
    #: Added only when this holds of the words after the tool's head, as given (with the
    #: preset's own positional words) and before the preset's flags; None: always.
    only_if: Callable[[Sequence[str]], bool] | None = None
    #: The tool's first version that has it (None: not said): an older version's help
    #: cannot list it, so its absence there says nothing about what was asked.
    since: str | None = None

    def args(self) -> list[str]:
        return [self.names[0]] if self.value is None else [f"{self.names[0]}={self.value}"]

    @property
    def listed_as(self) -> str | None:
        """The text the tool's help must hold for it (None: not looked for)."""
        return self.names[0] if self.check == "" else self.check

    def newer_than(self, version: str) -> bool:
        """Whether the tool's ``version`` predates this flag (:attr:`since`); False when
        either does not begin with numbers (``4.0.0-rc.1``: 4.0.0, so not older than 4.0)."""
        theirs, first = _numbers(version), _numbers(self.since or "")
        return theirs is not None and first is not None and theirs < first


def _numbers(version: str) -> tuple[int, ...] | None:
    """The leading dotted numbers of a version (``3.5.3`` -> (3, 5, 3)), or None."""
    m = re.match(r"[0-9]+(?:\.[0-9]+)*", version)
    return tuple(int(n) for n in m.group(0).split(".")) if m else None


@dataclass(frozen=True)
class Place:
    """Where the tool runs: its loopback port, the public path prefix, its home, its user."""

    port: int
    prefix: str = "/"  # "/" in subdomain mode, "/_studio/<id>/" in path mode
    workdir: str = "/"
    user: str = "root"
    root: bool = False  # running as root (some tools need to be told that is fine)
    display: int = 0  # an X display number of its own (Xpra)

    @property
    def prefix_no_slash(self) -> str:
        return self.prefix.rstrip("/") or "/"


@dataclass(frozen=True)
class Installed:
    """What the installed tool says about itself: its version and its help text."""

    version: str
    help: str = ""


@dataclass
class Launch:
    """The command to run, and what the preset added to it (logged in one line)."""

    argv: list[str]
    port: int
    cwd: str
    added: list[str] = field(default_factory=list)
    stop_argv: list[str] | None = None  # run on shutdown before the tool is signalled
    foreign: bool = False  # the command is not the tool: nothing could be added
    wrapped: bool = False  # the command is not the tool: it runs inside it (Xpra)


def given(argv: Sequence[str], names: Sequence[str]) -> str | None:
    """The value a person gave for any of ``names`` ("" for a bare switch), or None."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name:
                nxt = argv[i + 1] if i + 1 < len(argv) else ""
                return "" if nxt.startswith("-") else nxt
            if arg.startswith(name + "="):
                return arg[len(name) + 1:]
    return None


def port_in(value: str) -> int | None:
    """The port in ``8888``, ``127.0.0.1:8888`` or ``[::1]:8888``; None if there is none."""
    m = re.search(r"(?:^|:)([0-9]{1,5})$", value.strip())
    if m and 1 <= int(m.group(1)) <= 65535:
        return int(m.group(1))
    return None


class Preset:
    """One tool. Subclasses name the tool's executables, flags, probe and default command."""

    tool = "generic"  # canonical name (wire.tools)
    title = "tool"
    executables: tuple[str, ...] = ()
    needs_prefix = False  # the tool must know the public prefix when it starts: bind first
    probe_ok: tuple[int, ...] = (200,)
    #: Python modules hidden from the tool while it is asked for its version and help
    #: (never when it runs): ones that take seconds to import and change neither answer.
    #: An answer without them that lacks an option the preset adds is asked again with them.
    inspect_without: tuple[str, ...] = ()

    # -- what subclasses describe --------------------------------------------------

    def default_command(self, place: Place) -> list[str]:
        raise NotImplementedError

    def head(self, argv: Sequence[str]) -> int | None:
        """How many leading words of ``argv`` name the tool (``jupyter lab`` = 2), or None."""
        if argv and os.path.basename(argv[0]) in self.executables:
            return 1
        return None

    def flags(self, place: Place) -> list[Flag]:
        raise NotImplementedError

    def probe_path(self, place: Place) -> str:
        """The path the readiness probe asks the tool for (on its own loopback port)."""
        return "/"

    def version_argv(self, head: Sequence[str]) -> list[str]:
        return [*head, "--version"]

    def help_argv(self, head: Sequence[str]) -> list[str]:
        return [*head, "--help"]

    def read_version(self, output: str) -> str | None:
        """The tool's version in its ``--version`` output (the first version-like word)."""
        m = VERSION.search(output)
        return m.group(0) if m else None

    def wrap(self, argv: Sequence[str], place: Place) -> list[str] | None:
        """A command that is not the tool, wrapped in it (Xpra runs it); None: run as given."""
        return None

    def positional(self, rest: list[str], place: Place, default: bool) -> tuple[list[str],
                                                                                list[str]]:
        """Words after the head the tool needs besides flags; returns (rest, notes)."""
        return rest, []

    def environment(self, environ: Mapping[str, str], private: Callable[[], Path],
                    argv: Sequence[str] = ()) -> dict[str, str]:
        """Variables to add to the tool's environment when the preset starts the tool
        (``argv``: its command line as built). Files they name go in ``private()``: a
        directory of the launcher's own, removed when the tool has ended. None by
        default."""
        return {}

    def stop_argv(self, head: Sequence[str], rest: Sequence[str]) -> list[str] | None:
        return None

    def lacks(self, command: Sequence[str], place: Place, installed: Installed) -> list[str]:
        """The options (needed or optional) the preset would add to ``command`` that
        ``installed``'s help does not list though its version may have them: an option
        newer than the version (:attr:`Flag.since`) is not looked for, no answer of that
        version lists it."""
        split = self._split(command, place)
        if split is None:
            return []
        return [flag.names[0] for flag in self._added(split.rest, place)
                if flag.listed_as is not None and flag.listed_as not in installed.help
                and not flag.newer_than(installed.version)]

    # -- building -----------------------------------------------------------------

    def _split(self, command: Sequence[str], place: Place) -> _Split | None:
        """``command`` (the default one if empty) as the words that run the tool and the
        rest, with the preset's own positional words; None: it is not the tool, and the
        preset wraps it in none."""
        default = not command
        argv = self.default_command(place) if default else list(command)
        n = self.head(argv)
        wrapped = False
        if n is None:
            inner = self.wrap(argv, place)
            if inner is None:
                return None
            argv, n, wrapped = inner, self.head(inner), True
            assert n is not None
        rest, notes = self.positional(argv[n:], place, default)
        return _Split(argv[:n], rest, notes, wrapped)

    def _added(self, rest: Sequence[str], place: Place) -> Iterator[Flag]:
        """The flags the preset would add after the head's ``rest`` (checked against the
        help or not): those the person did not give whose :attr:`Flag.only_if` holds."""
        words = tuple(rest)  # (what only_if is asked of)
        for flag in self.flags(place):
            if given(rest, flag.names) is None and (flag.only_if is None
                                                    or flag.only_if(words)):
                yield flag

    def tool_head(self, command: Sequence[str], place: Place) -> list[str]:
        """The words that run the tool, for --version and --help (the default's if no command)."""
        split = self._split(command, place)
        return [] if split is None else split.head

    def build(self, command: Sequence[str], place: Place, installed: Installed) -> Launch:
        """The command to run; raises PresetError if the installed tool lacks a needed flag."""
        split = self._split(command, place)
        if split is None:
            return Launch(list(command) or self.default_command(place), place.port,
                          place.workdir, foreign=True)
        head, rest, notes = split.head, list(split.rest), list(split.notes)
        port = place.port
        for flag in self.flags(place):
            value = given(rest, flag.names)
            if flag.port and value is not None:
                port = port_in(value) or port
        for flag in list(self._added(rest, place)):
            check = flag.listed_as
            if check is not None and check not in installed.help:
                if flag.optional:
                    continue
                raise PresetError(f"{self.title} {installed.version or '(version unknown)'} has "
                                  f"no {flag.names[0]} option (needed to {flag.why}); use a "
                                  f"version that has it, or give the command yourself after --")
            rest += flag.args()
            notes.append(" ".join(flag.args()))
        return Launch([*head, *rest], port, place.workdir, notes,
                      stop_argv=self.stop_argv(head, rest), wrapped=split.wrapped)


@dataclass(frozen=True)
class _Split:
    """A command as a preset reads it (:meth:`Preset._split`)."""

    head: list[str]  # the words that run the tool
    rest: list[str]  # the words after them, with the preset's own positional words
    notes: list[str]  # those positional words, for the line that says what was added
    wrapped: bool  # the command was not the tool: it runs inside it (Xpra)


#: Runs a command (with these variables added to the environment, when given) and
#: returns what it printed.
Runner = Callable[[Sequence[str], Mapping[str, str] | None], str]


def run_for_text(argv: Sequence[str], more_env: Mapping[str, str] | None = None) -> str:
    """A command's stdout and stderr together ("" if it cannot run). It runs without the
    session's token, as the tool does (it had it: a person's packages the tool imports to
    answer ran with it)."""
    from studios_gateway.studio.entrypoint import without_secrets

    env = {**without_secrets(os.environ), **(more_env or {})}
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, env=env,
                              timeout=INSPECT_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (done.stdout or "") + (done.stderr or "")


@contextmanager
def hidden_modules(names: Sequence[str]) -> Iterator[dict[str, str]]:
    """Variables under which a Python program cannot import ``names`` (each one's import
    raises ImportError, as if it were not installed): a directory of stand-ins put first
    on PYTHONPATH, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="studios-connect-inspect-") as d:
        for name in names:
            Path(d, f"{name}.py").write_text(
                f"raise ImportError('{name} is left out while studios-connect asks the tool "
                f"for its version and options')\n")
        yield {"PYTHONPATH": os.pathsep.join(
            p for p in (d, os.environ.get("PYTHONPATH", "")) if p)}


def _ask(preset: Preset, head: Sequence[str], run: Runner,
         more_env: Mapping[str, str] | None) -> tuple[str | None, str]:
    # Both at once: each is the tool's own start-up (`jupyter lab --version` took 5.8 s
    # on a slow 2-core machine), and a studio waits for them before it dials.
    with ThreadPoolExecutor(max_workers=2) as pool:
        asked = pool.submit(run, preset.version_argv(head), more_env)
        helped = pool.submit(run, preset.help_argv(head), more_env)
        out, help_text = asked.result(), helped.result()
    return preset.read_version(out), help_text


def inspect_tool(preset: Preset, head: Sequence[str], run: Runner = run_for_text,
                 enough: Callable[[Installed], bool] = lambda installed: True) -> Installed:
    """Ask the installed tool for its version and help text (before anything starts).

    A preset's ``inspect_without`` modules are hidden the first time; that answer is
    taken when it has a version and is ``enough`` (lists every option the preset adds).
    Hiding a module can only take options out of the help, never put one in, so such
    an answer is the tool's own; any other is asked again with nothing hidden."""
    if not head:
        return Installed("")
    if preset.inspect_without:
        try:
            with hidden_modules(preset.inspect_without) as more_env:
                version, help_text = _ask(preset, head, run, more_env)
        except OSError:  # no temporary directory to be had: ask as it is
            version = None
        if version is not None and enough(Installed(version[:64], help_text)):
            return Installed(version[:64], help_text)
    version, help_text = _ask(preset, head, run, None)
    if version is None:
        raise PresetError(f"{preset.title}: `{' '.join(preset.version_argv(head))}` did not "
                          f"print a version; is {head[0]} installed and on PATH?")
    return Installed(version[:64], help_text)
