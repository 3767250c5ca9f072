"""Every method of every compiled class refuses a foreign ``self``.

Cython makes the ``def`` methods of a cdef class cyfunctions, which do not
check ``self`` when a method is taken from the class and called on another
object (cython/cython#6127): ``fastkv._core.FrozenTable.copy({})`` read C
fields of a dict and crashed. Each method now starts with a type check; this
sweeps them all (public and private classes, found by introspection, so a new
method is covered the day it is written). Each class runs in a subprocess, so
a crash fails its test and names the method instead of killing the run.
"""

import inspect

import pytest

import fastkv._core
from _support import run_python

_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: Python classes; cdef classes are static


def _compiled_classes():
    return sorted(
        name for name, obj in vars(fastkv._core).items()
        if isinstance(obj, type) and obj.__module__ == "fastkv._core"
        and not obj.__flags__ & _HEAPTYPE
    )


def test_the_sweep_sees_every_compiled_class():
    names = _compiled_classes()
    for public in ("FrozenTable", "LockedTable", "OwnerTable", "Agent"):
        assert public in names
    assert len(names) >= 8  # and the engine's private ones (snapshots, iterators, the owner)


SWEEP = r"""
import inspect, sys
import fastkv._core, fastkv.reference

cls = getattr(fastkv._core, CLASS)
swept = 0
for name, attr in sorted(vars(cls).items()):
    if isinstance(attr, (classmethod, staticmethod)) or not callable(attr):
        continue
    if type(attr).__name__ == "builtin_function_or_method":   # bound to the class
        continue
    try:
        params = list(inspect.signature(attr).parameters.values())[1:]
        args = [1 for p in params if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        args = []
    cython_method = "cython_function" in type(attr).__name__
    for foreign in ({}, None, 7, object(), fastkv.reference.FrozenTable(a=1)):
        print(name, type(foreign).__name__, flush=True)   # names a crash
        try:
            attr(foreign, *args)
        except TypeError as exc:
            if cython_method and "methods need a fastkv._core." not in str(exc):
                sys.exit(f"{CLASS}.{name}: TypeError before the self check: {exc}")
        except BaseException as exc:
            sys.exit(f"{CLASS}.{name}({type(foreign).__name__}): {type(exc).__name__}: {exc}")
        else:
            sys.exit(f"{CLASS}.{name}({type(foreign).__name__}) returned")
    swept += 1
print("swept", swept)
"""


@pytest.mark.parametrize("name", _compiled_classes())
def test_every_method_refuses_a_foreign_self(name):
    proc = run_python(f"CLASS = {name!r}\n" + SWEEP)
    last = proc.stdout.strip().splitlines()[-1:] or ["(nothing)"]
    assert proc.returncode == 0, f"{proc.stderr.strip()} (last call: {last[0]})"
    assert last[0].startswith("swept ")


def test_slot_methods_are_checked_by_cpython():
    # the operator slots (t[k], iter, ==, |...) go through CPython's wrappers,
    # which check self; the sweep above calls them too
    wrapper = vars(fastkv._core.FrozenTable)["__getitem__"]
    assert not inspect.isfunction(wrapper)
    with pytest.raises(TypeError, match="doesn't apply|requires"):
        wrapper({}, "k")
