"""CPython's own mapping tests (``test.mapping_tests``, from the running
interpreter's ``test`` package) against the fastkv tables, both
implementations (issue 11):

- LockedTable and OwnerTable (private and protected): the whole of
  ``TestHashMappingProtocol`` (the dict protocol, evil keys included);
- FrozenTable: ``BasicTestMappingProtocol``'s read-only part.

Every design difference is a skip with its reason, listed in ``SKIPS``; the
rest runs as written. An interpreter installed without its ``test`` package
skips the whole file, saying so (that is the only skip of the module).

The protected OwnerTable runs without any sync(): the tests write and read
back on one thread, which read-your-writes guarantees. Owner tables made by
the tests are not closed one by one: each stops its owner thread when it is
garbage collected, and the fixture below collects once per test.
"""

import gc
import unittest

import pytest

from _support import IMPLS

pytestmark = pytest.mark.once  # CI runs CPython's mapping tests on the full steps only (README's 3.11, free-threaded 3.13)

mapping_tests = pytest.importorskip(
    "test.mapping_tests",
    reason="this interpreter was installed without its test package (test.mapping_tests)",
)

REPR = (
    "design difference (README, the shared API): repr is TypeName({...}), "
    "not dict's bare {...}"
)
OWNER_THREADS = (
    "design difference (README, OwnerTable): every OwnerTable runs its own "
    "owner thread, and this test keeps the C recursion limit + 1 nested "
    "tables alive at once (10,001 on 3.12+): a free-threaded 3.13 build "
    "cannot start that many threads ('can't start new thread')"
)
FROZEN_WRITES = (
    "design difference (README): FrozenTable is a Mapping; each write copies "
    "the table, so writes are spelled put/put_many/delete, with no "
    "t[k] = v, update, setdefault, pop or popitem"
)

# test method -> reason, per test class kind
SKIPS = {
    "mutable": {"test_repr": REPR},
    "owner": {"test_repr": REPR, "test_repr_deep": OWNER_THREADS},
    "frozen": {
        "test_write": FROZEN_WRITES,
        "test_update": FROZEN_WRITES,
        "test_setdefault": FROZEN_WRITES,
        "test_pop": FROZEN_WRITES,
        "test_popitem": FROZEN_WRITES,
    },
}


@pytest.fixture(autouse=True)
def _collect_owner_tables():
    yield
    gc.collect()  # owner tables the test dropped: their owner threads stop


def _skipped(reason):
    @unittest.skip(reason)
    def test(self):
        pass  # pragma: no cover

    return test


def _case(name, base, table_cls, skips, make=None):
    attrs = {"type2test": table_cls}
    if make is not None:
        attrs["_empty_mapping"] = lambda self: make()
        if base is mapping_tests.BasicTestMappingProtocol:
            attrs["_full_mapping"] = lambda self, data: make(data)
    for test_name, reason in skips.items():
        assert hasattr(base, test_name), test_name  # a renamed test must not hide
        attrs[test_name] = _skipped(reason)
    globals()[name] = type(name, (base,), attrs)


for _impl_name, _impl in sorted(IMPLS.items()):
    _case(f"TestLockedTable_{_impl_name}", mapping_tests.TestHashMappingProtocol,
          _impl.LockedTable, SKIPS["mutable"])
    _case(f"TestOwnerTablePrivate_{_impl_name}", mapping_tests.TestHashMappingProtocol,
          _impl.OwnerTable, SKIPS["owner"])
    # protected: the mappings under test are protected tables; the class-level
    # tests (fromkeys, subclassing) use OwnerTable itself
    _case(f"TestOwnerTableProtected_{_impl_name}", mapping_tests.TestHashMappingProtocol,
          _impl.OwnerTable, SKIPS["owner"],
          make=lambda data=(), _cls=_impl.OwnerTable: _cls(data, access="protected"))
    _case(f"TestFrozenTable_{_impl_name}", mapping_tests.BasicTestMappingProtocol,
          _impl.FrozenTable, SKIPS["frozen"],
          make=lambda data=(), _cls=_impl.FrozenTable: _cls(data))

del _impl_name, _impl
