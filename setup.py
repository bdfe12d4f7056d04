"""Only the compiled part; everything else is in setup.cfg.

The extension is optional: where no C compiler or Python headers are found, the install
goes on without it and the gateway takes the Python way for every answer
(docs/decisions/compiled-lane.md, "The C way back").
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "studios_gateway.http._answer",
            ["studios_gateway/http/_answer.c"],
            # (-g0: no debug info, which would carry the build's paths into the package)
            extra_compile_args=["-O2", "-g0", "-Wall", "-Wextra", "-Werror=implicit-fallthrough"],
            optional=True,
        ),
    ],
)
