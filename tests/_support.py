"""Test support shared by the behaviour suite (imported by conftest and tests).

- ``IMPLS``: the two implementations, ``fastkv`` (compiled core) and
  ``fastkv.reference``.
- ``Kind``: one table kind of one implementation, with a factory that builds a
  table like ``dict(...)`` and closes owner tables at the end of the test.
- ``HashKey`` and ``crashing``: keys with a chosen hash whose ``__hash__`` or
  ``__eq__`` raise on demand (after immutables' ``HashKeyCrasher``).
- ``Key``: a plain key with a Python ``__hash__``/``__eq__`` (the compiled
  engine's slow path), optionally with a chosen hash; subclassed by tests.
- ``assert_same``: compare a table against a dict oracle, order included.
- ``run_python``: run a script in a fresh interpreter that imports the same
  fastkv as the test process (fork and interpreter-exit tests).
- ``no_immortalization``: free-threaded 3.13 only, keep CPython from making
  new modules and functions immortal (tests of what ModuleTable releases).
"""

import collections.abc as cabc
import contextlib
import gc
import os
import subprocess
import sys
import sysconfig
import textwrap
import threading
import weakref

import fastkv
import fastkv.module
import fastkv.reference

# FASTKV_TEST_SCOPE: how much of the suite a run covers (CI sets it per step,
# see .ci/run; conftest.py applies it and says so in the summary):
#   full      (default) every test, every hypothesis example: what the README's
#             test command and a bare `pytest` run;
#   interp    on a further interpreter: the tests marked `once` (their outcome
#             does not depend on the interpreter: mypy, the bench CLI and
#             README prose, CPython's mapping tests) are deselected and
#             hypothesis runs a quarter of its examples;
#   compiled  for instrumented builds of the C code (debug, ASan): as interp,
#             and the reference implementation's parametrizations are
#             deselected (pure Python: nothing there for the build to check).
TEST_SCOPES = ("full", "interp", "compiled")
TEST_SCOPE = os.environ.get("FASTKV_TEST_SCOPE", "") or "full"


def examples(n):
    """A hypothesis example budget ``n``, cut to a quarter outside a full run."""
    return n if TEST_SCOPE == "full" else max(10, n // 4)


IMPLS = {"compiled": fastkv, "reference": fastkv.reference}

# (impl name, kind name): every table kind of both implementations; ModuleTable
# exists once (it is Python by nature), listed with the public package.
KIND_NAMES = ("frozen", "locked", "owner-private", "owner-protected", "module")
KIND_PARAMS = [
    (impl, kind)
    for impl in ("compiled", "reference")
    for kind in KIND_NAMES
    if not (kind == "module" and impl != "compiled")
]
MUTABLE_KIND_PARAMS = [p for p in KIND_PARAMS if p[1] in ("locked", "owner-private", "owner-protected")]
MAPPING_ONLY_KIND_PARAMS = [p for p in KIND_PARAMS if p[1] in ("frozen", "module")]
OWNER_KIND_PARAMS = [p for p in KIND_PARAMS if p[1].startswith("owner")]


def kind_id(param):
    impl, kind = param
    return kind if kind == "module" else f"{impl}-{kind}"


class Kind:
    """One table kind of one implementation.

    ``make(data=(), /, **kwargs)`` builds a table as ``dict(data, **kwargs)``
    would be built (passing ``access=`` for owner tables); ``make_as(cls, ...)``
    does the same with a subclass. Every table made is closed by ``close_all``
    (the fixture finalizer). ``settle(t)`` waits until writes are visible to
    direct readers (``sync()`` on a protected owner table, where reads bypass
    the owner queue; nothing elsewhere: a private owner's reads are FIFO with
    the caller's writes).
    """

    def __init__(self, impl_name, name):
        self.impl_name = impl_name
        self.impl = IMPLS[impl_name]
        self.name = name
        self.id = kind_id((impl_name, name))
        if name == "frozen":
            self.cls = self.impl.FrozenTable
        elif name == "locked":
            self.cls = self.impl.LockedTable
        elif name.startswith("owner"):
            self.cls = self.impl.OwnerTable
        elif name == "module":
            self.cls = fastkv.module.ModuleTable
        else:
            raise ValueError(name)
        self.owner = name.startswith("owner")
        self.access = name.split("-")[1] if self.owner else None
        self.mutable = name in ("locked", "owner-private", "owner-protected")
        # O(n) writes (a copy, or a module compiled per write): keep sizes small
        self.copy_on_write = name in ("frozen", "module")
        self._made = []
        self._lock = threading.Lock()

    def __repr__(self):
        return f"<Kind {self.id}>"

    def extra_kwargs(self):
        return {"access": self.access} if self.owner else {}

    def make(self, /, *args, **kwargs):
        return self.make_as(self.cls, *args, **kwargs)

    def make_as(self, cls, /, *args, **kwargs):
        table = cls(*args, **kwargs, **self.extra_kwargs())
        self.track(table)
        return table

    def track(self, obj):
        """Close ``obj`` (a table or an agent) when the test ends."""
        with self._lock:
            self._made.append(obj)
        return obj

    def untrack(self, obj):
        with self._lock:
            self._made = [o for o in self._made if o is not obj]

    def settle(self, table):
        if self.access == "protected":
            table.sync()

    def close_all(self):
        with self._lock:
            made, self._made = self._made, []
        errors = []
        owners = tuple(getattr(impl, name) for impl in IMPLS.values() for name in ("OwnerTable", "Agent"))
        for obj in made:
            try:
                if isinstance(obj, owners):
                    obj.close(timeout=10)  # a test that deadlocked an owner must not hang the run
                else:
                    obj.close()
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
        if errors:
            raise errors[0]


@contextlib.contextmanager
def closing_kind(param):
    kind = Kind(*param)
    try:
        yield kind
    finally:
        kind.close_all()


# -- keys -------------------------------------------------------------------


class HashError(Exception):
    """Raised by a HashKey's __hash__ while hashing errors are armed."""


class EqError(Exception):
    """Raised by a HashKey's __eq__ while equality errors are armed."""


_CRASH = {"hash": False, "eq": False}


@contextlib.contextmanager
def crashing(hash=False, eq=False):
    """Arm HashKey errors for the duration of the block (process-wide: the
    owner thread of an OwnerTable sees them too)."""
    saved = dict(_CRASH)
    _CRASH["hash"] = hash
    _CRASH["eq"] = eq
    try:
        yield
    finally:
        _CRASH.update(saved)


class HashKey:
    """A key with a chosen hash and equality by ``name``: equal names are one
    key, and many names can share one hash (forced collisions). Raises
    HashError/EqError from __hash__/__eq__ while ``crashing`` arms them."""

    __slots__ = ("hash", "name")

    def __init__(self, hash, name):
        self.hash = hash
        self.name = name

    def __hash__(self):
        if _CRASH["hash"]:
            raise HashError(f"hash of {self!r}")
        return self.hash

    def __eq__(self, other):
        if _CRASH["eq"]:
            raise EqError(f"eq of {self!r}")
        if not isinstance(other, HashKey):
            return NotImplemented
        return self.name == other.name

    def __ne__(self, other):
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __repr__(self):
        return f"HashKey({self.hash}, {self.name!r})"


class Key:
    """A key with a Python __hash__/__eq__ (the engine's slow path)."""

    def __init__(self, name, h=None):
        self.name = name
        self.h = hash(name) if h is None else h

    def __hash__(self):
        return self.h

    def __eq__(self, other):
        return isinstance(other, Key) and other.name == self.name

    def __repr__(self):
        return f"Key({self.name!r})"


# -- oracle comparison ------------------------------------------------------


def _same(x, y):
    return x is y or (type(x) is type(y) and x == y)


def assert_same(table, oracle):
    """``table`` holds exactly ``oracle``'s items, in ``oracle``'s order, with
    keys and values of the same types (the first key inserted is kept) and
    equal or identical to the oracle's."""
    items = list(table.items())
    expected = list(oracle.items())
    assert len(table) == len(oracle)
    assert [k for k, _ in items] == [k for k, _ in expected]
    for (k, v), (ek, ev) in zip(items, expected):
        assert _same(k, ek), (k, ek)
        assert _same(v, ev), (k, v, ev)
    assert list(table) == list(oracle)
    assert table.to_dict() == oracle


# The directory holding the fastkv package the tests import (site-packages when
# installed). Scripts run there: `python -c` puts the cwd first on sys.path, and
# a clean clone's source tree has no built _core.
FASTKV_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastkv.__file__)))


def run_python(code, timeout=60, flags=()):
    """Run ``code`` (dedented) in a fresh interpreter importing the tested
    fastkv; returns the CompletedProcess. A hang fails the test by timeout."""
    env = dict(os.environ, PYTHONPATH=FASTKV_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, *flags, "-c", textwrap.dedent(code)],
        env=env,
        cwd=FASTKV_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_script(impl, body, timeout=60):
    """Run ``body`` (dedented) in a fresh interpreter with ``m`` bound to
    ``impl`` (fastkv or fastkv.reference), warnings ignored; returns the
    CompletedProcess (never hangs: a timeout fails the test). Functions
    appended to ``AT_EXIT`` run at exit after fastkv's own atexit hook (they
    are registered before fastkv is imported; atexit is LIFO)."""
    script = (
        "import atexit, importlib\n"
        "AT_EXIT = []\n"
        "atexit.register(lambda: [fn() for fn in AT_EXIT])\n"
        f"m = importlib.import_module({impl.__name__!r})\n"
    ) + textwrap.dedent(body)
    return run_python(script, timeout=timeout, flags=("-W", "ignore"))


def assert_dropping_stops_the_owner(make, owner_ident):
    """``make()`` builds an owner (OwnerTable, Agent), ``owner_ident(obj)``
    asks it for its owner thread's ident: dropping the last reference frees
    the object and ends that thread."""
    obj = make()
    ident = owner_ident(obj)
    ref = weakref.ref(obj)
    del obj
    gc.collect()
    assert ref() is None
    for thread in threading.enumerate():
        if thread.ident == ident:
            thread.join(10)
            assert not thread.is_alive()


def run_fork_while_held(table, hold, after_fork, timeout=60):
    """Run, in a fresh interpreter, ``t = table(k=1)`` (``table`` a dotted
    name) with a thread ``a`` running ``hold`` (an expression over ``t`` and
    ``Slow()``, a key whose ``__eq__`` blocks until ``go`` is set) and held
    inside that ``__eq__``, under the table's lock; then ``after_fork``
    (dedented code that forks, and must ``go.set()`` and join ``a``). The
    fork-while-locked tests of test_locked.py and test_hardening.py."""
    module, _, name = table.rpartition(".")
    prologue = f"""
        import os, threading, warnings
        import {module} as m
        warnings.simplefilter("ignore", DeprecationWarning)   # fork with threads

        inside, go = threading.Event(), threading.Event()

        class Slow:
            def __hash__(self):
                return hash("k")
            def __eq__(self, other):
                inside.set()
                go.wait()
                return False

        t = m.{name}(k=1)
        a = threading.Thread(target=lambda: {hold})
        a.start()
        inside.wait()            # A holds the table's lock, in __eq__
    """
    return run_python(textwrap.dedent(prologue) + textwrap.dedent(after_fork), timeout=timeout)


class PlainMapping(cabc.Mapping):
    """A Mapping that is no dict and has no ``|`` of its own."""

    def __init__(self, data=()):
        self._data = dict(data)

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)


JOIN_TIMEOUT = 60  # seconds: only reached when something deadlocked


def run_threads(target, n, args=()):
    """Run ``target(i, *args)`` in ``n`` threads started together (a barrier);
    re-raise the first exception a thread raised; fail on a deadlock (a
    thread still alive after JOIN_TIMEOUT)."""
    barrier = threading.Barrier(n)
    errors = []

    def run(i):
        try:
            barrier.wait(JOIN_TIMEOUT)
            target(i, *args)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "threads deadlocked"
    if errors:
        raise errors[0]


@contextlib.contextmanager
def no_immortalization():
    """Free-threaded CPython 3.13 immortalizes every object that would use
    deferred reference counting -- module objects, their ``__dict__``,
    top-level functions, heap types -- once the first non-main thread has
    started, and every such object created afterwards (gh-117783; removed in
    3.14). A ModuleTable's generated module and its dict are such objects:
    after any thread started (the suite starts many), they and the data the
    dict holds are never freed, whatever fastkv does. Tests of what
    ModuleTable itself keeps alive run their body under CPython's own switch
    for its refleak tests (what ``test.support.suppress_immortalization``
    does): new objects get deferred refcounts, which ``gc.collect()`` frees.
    A no-op on every other build."""
    if not (sysconfig.get_config_var("Py_GIL_DISABLED") and sys.version_info[:2] == (3, 13)):
        yield
        return
    try:
        import _testinternalcapi
    except ImportError:
        import pytest

        pytest.xfail("free-threaded 3.13 without _testinternalcapi: generated modules are "
                     "immortal once a thread has started (gh-117783) and cannot be released")
    _testinternalcapi.suppress_immortalization(True)
    try:
        yield
    finally:
        _testinternalcapi.suppress_immortalization(False)
