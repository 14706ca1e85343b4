"""Build the Cython core. Metadata lives in pyproject.toml.

SWARM_DEBUG=1 builds with bounds checks, line tracing, -O0 -g, -Wall and
annotated HTML next to each .pyx.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("SWARM_DEBUG", "") not in ("", "0")
MODULES = ["frame", "shm", "recvbuf", "sock", "taskqueue", "reorder", "runner"]

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}
if DEBUG:
    directives["linetrace"] = True

cflags = ["-O0", "-g", "-Wall"] if DEBUG else ["-O2"]
macros = [("CYTHON_TRACE_NOGIL", "1")] if DEBUG else []

extensions = [
    Extension(
        f"swarm._core.{name}",
        [f"swarm/_core/{name}.pyx"],
        extra_compile_args=cflags,
        define_macros=macros,
    )
    for name in MODULES
    if os.path.exists(f"swarm/_core/{name}.pyx")
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives,
                            annotate=DEBUG))
