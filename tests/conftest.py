"""Shared fixtures: every behaviour test runs against the compiled tables and
the reference tables alike.

``impl`` is a namespace with the four table classes (FrozenTable, LockedTable,
OwnerTable, Agent) and ClosedError: ``fastkv`` itself (the compiled core) or
``fastkv.reference``. A missing compiled build makes ``import fastkv`` fail,
which fails the whole suite: it is never a skip.

``kind`` is one table kind of one implementation (see ``_support.Kind``):
FrozenTable, LockedTable, OwnerTable(access="private"),
OwnerTable(access="protected") of each implementation, and ModuleTable (which
exists once). ``kind.make(data, **kwargs)`` builds a table like ``dict(...)``;
owner tables made through it are closed when the test ends. ``mutable_kind``
is restricted to the MutableMapping kinds (LockedTable, OwnerTable),
``mapping_kind`` to the Mapping-only kinds (FrozenTable, ModuleTable),
``owner_kind`` to the OwnerTable kinds.
"""

import re
import sys

import pytest

from _support import (
    IMPLS,
    KIND_PARAMS,
    MAPPING_ONLY_KIND_PARAMS,
    MUTABLE_KIND_PARAMS,
    OWNER_KIND_PARAMS,
    TEST_SCOPE,
    TEST_SCOPES,
    Kind,
    kind_id,
    no_immortalization,
)


# -- FASTKV_TEST_SCOPE (see _support.py): what CI deselects on some steps ------

_REFERENCE_ID = re.compile(r"(?:^|[-_.\[])reference(?:[-_.\]]|$)")
_DESELECTED = {}


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "once: the outcome does not depend on the interpreter or build (mypy, the bench "
        "CLI, README prose, CPython's mapping tests); FASTKV_TEST_SCOPE=interp/compiled "
        "deselects it, CI runs it on one interpreter")
    if TEST_SCOPE not in TEST_SCOPES:
        raise pytest.UsageError(f"FASTKV_TEST_SCOPE={TEST_SCOPE!r}: one of {', '.join(TEST_SCOPES)}")


def _reference_only(item):
    callspec = getattr(item, "callspec", None)
    if callspec is not None and _REFERENCE_ID.search(callspec.id):
        return True
    cls = getattr(item, "cls", None)  # unittest classes per implementation
    return cls is not None and cls.__name__.endswith("_reference")


def pytest_collection_modifyitems(config, items):
    if TEST_SCOPE == "full":
        return
    keep, dropped = [], []
    for item in items:
        if item.get_closest_marker("once") is not None:
            why = "once"
        elif TEST_SCOPE == "compiled" and _reference_only(item):
            why = "reference"
        else:
            keep.append(item)
            continue
        dropped.append(item)
        _DESELECTED[why] = _DESELECTED.get(why, 0) + 1
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(params=sorted(IMPLS), ids=sorted(IMPLS))
def impl(request):
    return IMPLS[request.param]


def _kind(request):
    kind = Kind(*request.param)
    request.addfinalizer(kind.close_all)
    return kind


@pytest.fixture(params=KIND_PARAMS, ids=[kind_id(p) for p in KIND_PARAMS])
def kind(request):
    return _kind(request)


@pytest.fixture(params=MUTABLE_KIND_PARAMS, ids=[kind_id(p) for p in MUTABLE_KIND_PARAMS])
def mutable_kind(request):
    return _kind(request)


@pytest.fixture(params=MAPPING_ONLY_KIND_PARAMS, ids=[kind_id(p) for p in MAPPING_ONLY_KIND_PARAMS])
def mapping_kind(request):
    return _kind(request)


@pytest.fixture(params=OWNER_KIND_PARAMS, ids=[kind_id(p) for p in OWNER_KIND_PARAMS])
def owner_kind(request):
    return _kind(request)


@pytest.fixture
def released_modules():
    """Modules made during the test can be freed: free-threaded 3.13 makes
    them immortal otherwise (``_support.no_immortalization``)."""
    with no_immortalization():
        yield


@pytest.fixture
def fast_switching():
    """Hand the GIL over every 10 us (sys.setswitchinterval) for the test, so
    that thread interleavings actually happen: Python code under a table's
    lock (a key's __eq__) is interrupted while other threads want the lock.
    Thread-stress files use it for every test (pytestmark usefixtures)."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(old)


# -- RedisTable: a real redis-server for the session ----------------------------
#
# ``redis_server`` starts one redis-server on a free loopback port for the whole
# session (no persistence, a temporary directory) and stops it at the end. When
# none can be started (no redis-server binary, no redis-py) the Redis tests are
# skipped and the terminal summary says so loudly -- except under CI=true,
# where they fail: CI must run them (.ci/redis installs redis-server).

import os  # noqa: E402

import _redis_support  # noqa: E402

REDIS_KIND_PARAMS = [(impl, near) for impl in ("compiled", "reference") for near in (True, False)]


def _redis_unavailable(reason):
    _redis_support._UNAVAILABLE.append(reason)
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the RedisTable tests, but: {reason}", pytrace=False)
    pytest.skip(f"RedisTable tests need a redis-server: {reason}")


@pytest.fixture(scope="session")
def redis_server():
    reason = _redis_support.redis_py_missing()
    if reason is None and _redis_support.redis_server_binary() is None:
        reason = "redis-server is not installed (apt-get install redis-server, or run .ci/redis)"
    if reason is not None:
        _redis_unavailable(reason)
    try:
        server = _redis_support.RedisServer().start()
    except Exception as exc:  # noqa: BLE001 - reported in the summary
        _redis_unavailable(f"could not start redis-server: {exc}")
    yield server
    server.stop()


@pytest.fixture
def own_redis_server(redis_server):
    """A redis-server of the test's own (it may be killed, restarted, paused)."""
    server = _redis_support.RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(
    params=REDIS_KIND_PARAMS,
    ids=[f"{impl}-{'near' if near else 'plain'}" for impl, near in REDIS_KIND_PARAMS],
)
def redis_kind(request, redis_server):
    kind = _redis_support.RedisKind(redis_server.url, *request.param)
    request.addfinalizer(kind.close_all)
    return kind


def pytest_terminal_summary(terminalreporter):
    if TEST_SCOPE != "full":
        what = ", ".join(f"{n} {k}" for k, n in sorted(_DESELECTED.items())) or "nothing"
        terminalreporter.write_sep(
            "-", f"FASTKV_TEST_SCOPE={TEST_SCOPE}: deselected {what}; hypothesis at 1/4 of its examples")
    if _redis_support._UNAVAILABLE:
        reason = _redis_support._UNAVAILABLE[0]
        terminalreporter.write_sep("!", "RedisTable tests SKIPPED: no redis-server", red=True, bold=True)
        terminalreporter.write_line(f"  {reason}", red=True, bold=True)
        terminalreporter.write_line("  (CI installs one with .ci/redis; set CI=true to make this a failure)", red=True)
