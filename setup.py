"""Build fastkv._core from Cython.

FASTKV_DEBUG=1 builds with assertions on (NDEBUG undefined), -O0 -g and
Cython line tracing; FASTKV_ANNOTATE=1 also writes the `cython -a` HTML.
"""
import glob
import os
import re
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


def check_inline_hints(c_file):
    """Fail the build if an always_inline hint of _engine.pxi names a C
    function the generated C does not define. The hints name Cython's
    mangled C names of cdef methods (FrozenTable's _lookup, LockedTable's
    _find_ref: the hit path of every t[k]/get); a rename on either side
    would leave a prototype of nothing, which gcc accepts without a word
    (-Wno-unused-function), and every read would quietly call the hit path
    out of line again (callgrind: +10-14 instructions per str t[k])."""
    with open(c_file, encoding="utf-8") as f:
        text = f.read()
    names = re.findall(r"always_inline\)\)\s+[^(;]*?\b(__pyx_\w+)\(", text)
    missing = [n for n in names
               if not re.search(r"^[^\n;]*\b%s\([^;{]*\)\s*\{" % re.escape(n), text, re.M)]
    if missing:
        sys.exit(f"{c_file}: always_inline hint(s) name no function defined in the "
                 f"generated C: {', '.join(missing)} (renamed by Cython, or the method "
                 "moved?): update the hint in src/fastkv/_engine.pxi")
    return names


for module in modules:
    for source in module.sources:
        if source.endswith(".c"):
            check_inline_hints(source)

setup(ext_modules=modules)
