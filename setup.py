"""Only the compiled part; everything else is in setup.cfg.

The extension is optional: where no C compiler or Python headers are found, the install
goes on without it and the gateway takes the Python way for every answer
(docs/decisions/compiled-lane.md, "The C way back").
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

ANSWER_C = "studios_gateway/http/_answer.c"
# The source's digest, built into the module: a test (and lane.stale()) tells a build
# older than its source, which would otherwise win the import silently.
SOURCE = hashlib.sha256((Path(__file__).parent / ANSWER_C).read_bytes()).hexdigest()[:16]

setup(
    ext_modules=[
        Extension(
            "studios_gateway.http._answer",
            [ANSWER_C],
            define_macros=[("ANSWER_SOURCE", f'"{SOURCE}"')],
            # (-g0: no debug info, which would carry the build's paths into the package)
            extra_compile_args=["-O2", "-g0", "-Wall", "-Wextra", "-Werror=implicit-fallthrough"],
            optional=True,
        ),
    ],
)
