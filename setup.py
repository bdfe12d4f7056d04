"""Only the compiled parts; everything else is in setup.cfg.

The extensions are optional: where no C compiler or Python headers are found, the install
goes on without them and the gateway takes the Python way (docs/decisions/compiled-lane.md,
"The C way back"; docs/decisions/tunnel-tls-path.md, "Records in C").
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup


def extension(name: str, source: str, macro: str) -> Extension:
    # The source's digest, built into the module: a test (and lane.stale()) tells a build
    # older than its source, which would otherwise win the import silently.
    digest = hashlib.sha256((Path(__file__).parent / source).read_bytes()).hexdigest()[:16]
    return Extension(
        name, [source], define_macros=[(macro, f'"{digest}"')],
        # (-g0: no debug info, which would carry the build's paths into the package)
        extra_compile_args=["-O2", "-g0", "-Wall", "-Wextra", "-Werror=implicit-fallthrough"],
        optional=True,
    )


setup(
    ext_modules=[
        extension("studios_gateway.http._answer", "studios_gateway/http/_answer.c",
                  "ANSWER_SOURCE"),
        extension("studios_gateway.wire._records", "studios_gateway/wire/_records.c",
                  "RECORDS_SOURCE"),
    ],
)
