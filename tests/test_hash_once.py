"""Each key is hashed once (issue 11, item 12).

- Building a table from a dict (and ``update``/``put_many`` of a dict into
  an empty table) reuses the hashes the dict stored, as ``dict(d)`` does: no
  key is hashed. The compiled core reads them where CPython exposes them
  (``_PyDict_Next``, 3.10-3.12); from 3.13 on it hashes each key once.
- A private OwnerTable hashes a key on the caller (so an unhashable key is a
  TypeError at the call site) and the owner reuses that hash: one ``__hash__``
  call per operation, and a key whose ``__hash__`` breaks after the caller
  queued it is still stored (before: the cast failed on the owner, logged and
  lost). The reference keeps its data in a Python dict, which cannot be handed
  a hash: its owner hashes again (skipped there, with that reason).
"""

import sys

import pytest

STORED_HASHES = sys.version_info < (3, 13)


class CountingKey:
    hashes = 0

    def __init__(self, v):
        self.v = v

    def __hash__(self):
        type(self).hashes += 1
        return hash(self.v)

    def __eq__(self, other):
        return isinstance(other, CountingKey) and other.v == self.v


BUILDERS = {
    "FrozenTable(d)": lambda impl, d: impl.FrozenTable(d),
    "LockedTable(d)": lambda impl, d: impl.LockedTable(d),
    "LockedTable().update(d)": lambda impl, d: impl.LockedTable().update(d),
    "LockedTable().put_many(d)": lambda impl, d: impl.LockedTable().put_many(d),
    "OwnerTable(d)": lambda impl, d: impl.OwnerTable(d),
    "OwnerTable(d, protected)": lambda impl, d: impl.OwnerTable(d, access="protected"),
}


@pytest.mark.parametrize("build", sorted(BUILDERS))
def test_building_from_a_dict_reuses_its_stored_hashes(impl, build):
    keys = [CountingKey(i) for i in range(50)]
    d = {k: i for i, k in enumerate(keys)}
    CountingKey.hashes = 0
    t = BUILDERS[build](impl, d)
    hashes = CountingKey.hashes
    if t is not None and hasattr(t, "close"):
        t.close()
    compiled = impl.__name__ == "fastkv"
    assert hashes == (0 if STORED_HASHES or not compiled else len(keys))


OPS = {
    "put": lambda t, k: t.put(k, 2),
    "t[k] = v": lambda t, k: t.__setitem__(k, 2),
    "get": lambda t, k: t.get(k),
    "t[k]": lambda t, k: t[k],
    "in": lambda t, k: k in t,
    "delete": lambda t, k: t.delete(k),
    "pop": lambda t, k: t.pop(k),
    "del t[k]": lambda t, k: t.__delitem__(k),
}


def _compiled_only(impl):
    if impl.__name__ != "fastkv":
        pytest.skip("the reference's storage is a Python dict, which cannot be handed "
                    "a hash: its owner hashes the key again")


@pytest.mark.parametrize("op", sorted(OPS))
def test_a_private_owner_hashes_each_key_once(impl, op):
    _compiled_only(impl)
    with impl.OwnerTable() as t:
        t.put(CountingKey(5), 1)
        t.sync()
        key = CountingKey(5)        # equal, not identical: a real lookup
        CountingKey.hashes = 0
        OPS[op](t, key)
        t.sync()
        assert CountingKey.hashes == 1


class BreaksLater:
    fail = False

    def __hash__(self):
        if self.fail:
            raise ValueError("hash broken")
        return 42


def test_a_cast_uses_the_hash_its_caller_computed(impl):
    # hashed on the caller when queued; the owner reuses that hash, so the
    # key's later failure does not lose the write (CPython's mapping_tests
    # BadHash case)
    _compiled_only(impl)
    with impl.OwnerTable() as t:
        x = BreaksLater()
        t[x] = 42
        x.fail = True
        t.sync()
        assert t.info()["errors"] == 0
        assert list(t) == [x] and t.call(lambda s: list(s.items())) == [(x, 42)]
        with pytest.raises(ValueError, match="hash broken"):
            t[x]
