"""Build fastkv._core from Cython.

FASTKV_DEBUG=1 builds with assertions on (NDEBUG undefined), -O0 -g and
Cython line tracing; FASTKV_ANNOTATE=1 also writes the `cython -a` HTML.
"""
import glob
import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTKV_DEBUG", "") == "1"
ANNOTATE = os.environ.get("FASTKV_ANNOTATE", "") == "1"

directives = {
    "language_level": 3,
    "embedsignature": True,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "linetrace": DEBUG,
}

macros = []
if sys.platform == "win32":
    cflags = ["/O2"]
elif DEBUG:
    cflags = ["-O0", "-g", "-Wall", "-UNDEBUG"]
    macros += [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1"), ("FASTKV_DEBUG", "1")]
else:
    cflags = ["-O2", "-Wall", "-Wno-unused-function", "-Wno-unreachable-code"]

ext = Extension(
    "fastkv._core",
    ["src/fastkv/_core.pyx"],
    define_macros=macros,
    extra_compile_args=cflags,
    depends=sorted(glob.glob("src/fastkv/*.pxi") + glob.glob("src/fastkv/*.pxd") + glob.glob("src/fastkv/*.h")),
)

# The generated C depends on the directives (linetrace in debug): regenerate it
# whenever the build mode changes, or a release build would reuse debug C.
MODE = "debug" if DEBUG else "release"
STAMP = os.path.join("build", "fastkv-cython-mode")
try:
    with open(STAMP) as f:
        mode_changed = f.read().strip() != MODE
except OSError:
    mode_changed = True

modules = cythonize(
    [ext],
    compiler_directives=directives,
    annotate=ANNOTATE,
    force=mode_changed,
)
os.makedirs("build", exist_ok=True)
with open(STAMP, "w") as f:
    f.write(MODE)

setup(ext_modules=modules)
