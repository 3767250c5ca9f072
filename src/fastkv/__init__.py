"""fastkv: the BEAM's in-memory storage strategies for Python.

The public tables come from the compiled extension ``fastkv._core``; importing
fastkv without it built is an ImportError, never a silent fallback. The pure
Python twins live in :mod:`fastkv.reference` and are imported explicitly.

``COMPILED`` names the tables served by the compiled core. A table whose
compiled version has not landed yet is exported from the reference and is
absent from ``COMPILED`` (and listed in ``NOT_COMPILED``): visible, never silent.
"""

from typing import TYPE_CHECKING

from fastkv import _core  # a missing build must fail here, loudly
from fastkv import reference as _reference
from fastkv._errors import ClosedError, RedisConnectionError

_TABLES = ("FrozenTable", "LockedTable", "OwnerTable", "Agent", "SharedTable")

COMPILED = tuple(name for name in _TABLES if hasattr(_core, name))
NOT_COMPILED = tuple(name for name in _TABLES if name not in COMPILED)

if TYPE_CHECKING:  # the stubs in _core.pyi describe the public classes
    from fastkv._core import Agent, FrozenTable, LockedTable, OwnerTable, SharedTable
    from fastkv.redis import RedisTable
else:
    FrozenTable = getattr(_core, "FrozenTable", None) or _reference.FrozenTable
    LockedTable = getattr(_core, "LockedTable", None) or _reference.LockedTable
    OwnerTable = getattr(_core, "OwnerTable", None) or _reference.OwnerTable
    Agent = getattr(_core, "Agent", None) or _reference.Agent
    SharedTable = getattr(_core, "SharedTable", None) or _reference.SharedTable

from fastkv.module import ModuleTable  # noqa: E402  (built on the names above)
from fastkv import persistent  # noqa: E402

__version__ = "0.1.0"


def __getattr__(name):
    # RedisTable needs redis-py (the [redis] extra): imported on first use, so
    # that ``import fastkv`` works without it
    if name == "RedisTable":
        try:
            from fastkv.redis import RedisTable
        except ModuleNotFoundError as exc:
            if exc.name != "redis":
                raise
            raise ImportError("fastkv.RedisTable needs redis-py: pip install 'fastkv[redis]'") from exc
        return RedisTable
    raise AttributeError(f"module 'fastkv' has no attribute {name!r}")


# RedisTable is left out of __all__: ``from fastkv import *`` must not need redis-py
__all__ = [
    "Agent",
    "COMPILED",
    "ClosedError",
    "FrozenTable",
    "LockedTable",
    "ModuleTable",
    "NOT_COMPILED",
    "OwnerTable",
    "SharedTable",
    "RedisConnectionError",
    "persistent",
]
if TYPE_CHECKING:  # for type checkers, fastkv.RedisTable is exported like the rest
    __all__ += ["RedisTable"]
