"""Imported by Python as it starts when this directory leads PYTHONPATH: ``bench.ab
--ceiling``'s gateway only. Loads bench/ceiling.py from beside this directory (not
whatever ``bench`` the tree under test has) and installs it; any failure stops the
process, so a gateway without the ceiling is never measured as one."""

import importlib.util
import pathlib

try:
    _path = pathlib.Path(__file__).resolve().parent.parent / "ceiling.py"
    _spec = importlib.util.spec_from_file_location("bench_ceiling", _path)
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
    _module.install()
except Exception as e:  # (site.py would only print it and go on)
    raise SystemExit(f"bench ceiling: not installed: {e!r}") from e
