"""Shared fixtures: every behaviour test runs against the compiled tables and
the reference tables alike, through the ``impl`` fixture.

``impl`` is a namespace with the four table classes (FrozenTable, LockedTable,
OwnerTable, Agent) and ClosedError: ``fastkv`` itself (the compiled core) or
``fastkv.reference``. A missing compiled build makes ``import fastkv`` fail,
which fails the whole suite: it is never a skip.
"""

import pytest

import fastkv
import fastkv.reference

IMPLS = {"compiled": fastkv, "reference": fastkv.reference}


@pytest.fixture(params=sorted(IMPLS), ids=sorted(IMPLS))
def impl(request):
    return IMPLS[request.param]
