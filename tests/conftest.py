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

import pytest

from _support import (
    IMPLS,
    KIND_PARAMS,
    MAPPING_ONLY_KIND_PARAMS,
    MUTABLE_KIND_PARAMS,
    OWNER_KIND_PARAMS,
    Kind,
    kind_id,
)


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
