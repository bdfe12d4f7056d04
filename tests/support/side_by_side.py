"""Several slow set-ups entered at once, one thread each, and left at once.

A module fixture with one studio per routing mode started them one after the other:
each start is seconds of waiting on other processes (the preset asking the tool about
itself, the tool's own start, its first answer through the gateway), and so is each stop
(`xpra stop`, a kernel shut down). Entered side by side, the second mode's studio starts
while the first one's does; the tests then use each as before, and both stop at the end.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

K = TypeVar("K")
V = TypeVar("V")


@contextmanager
def side_by_side(starts: Mapping[K, Callable[[], AbstractContextManager[V]]]
                 ) -> Iterator[dict[K, V]]:
    """What each context manager gave, by key, once every one has been entered (each
    in a thread of its own). All are left at the end, at once, also when one failed to
    start; a failure to start is raised as it is, else the first failure to stop."""
    stacks = {key: ExitStack() for key in starts}
    with ThreadPoolExecutor(max_workers=len(stacks)) as pool:
        entering = {key: pool.submit(lambda key=key: stacks[key].enter_context(starts[key]()))
                    for key in starts}
        try:
            yield {key: future.result() for key, future in entering.items()}
        finally:
            wait(entering.values())  # (a start still going on is left once it has ended)
            leaving = [pool.submit(stack.close) for stack in stacks.values()]
            failures = [e for e in (f.exception() for f in leaving) if e is not None]
            if failures and sys.exc_info()[1] is None:
                raise failures[0]


#: The routing modes a tool's module tests it in, each against a studio of its own.
MODES = ("subdomain", "path")


def studio_per_mode(name: str, start: Callable[[Path, str], AbstractContextManager[V]]
                    ) -> tuple[Any, Any]:
    """Two module fixtures: `<name>s`, a studio for each of MODES, made by `start(tmp,
    mode)` side by side and stopped at the module's end; and `<name>`, parametrized over
    MODES, the studio of the test's mode. Assign both in the test module:
    ``labs, lab = studio_per_mode("lab", lab_studio)``."""

    @pytest.fixture(scope="module", name=f"{name}s")
    def studios(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, V]]:
        with side_by_side({mode: lambda mode=mode: start(
                tmp_path_factory.mktemp(f"{name}-{mode}"), mode) for mode in MODES}) as made:
            yield made

    @pytest.fixture(scope="module", name=name, params=MODES)
    def studio(request: pytest.FixtureRequest) -> V:
        made: dict[str, V] = request.getfixturevalue(f"{name}s")
        return made[request.param]

    return studios, studio
