"""fastkv.persistent: a process-wide registry with the API of the BEAM's
``:persistent_term``.

The registry is one ``fastkv.FrozenTable`` (the compiled one when it is
built): reads never block and always see one complete registry; every write
(``put``, ``erase``) copies the registry, O(n) in the number of names, and
swaps the copy in. Use it for a few long-lived, rarely written values (
configuration, lookup tables), read from anywhere.

    from fastkv import persistent
    persistent.put("feature_flags", {"new_ui": True})
    persistent.get("feature_flags")["new_ui"]
"""

import sys
import threading

__all__ = ["erase", "get", "info", "items", "put"]

_registry = None  # the FrozenTable, created on first use
_create_lock = threading.Lock()


class _Missing:
    __slots__ = ()

    def __repr__(self):
        return "<missing>"


_MISSING = _Missing()


def _table():
    """The registry's FrozenTable. It is made from ``fastkv.FrozenTable`` at
    first use (not at import: ``fastkv/__init__`` imports this module)."""
    table = _registry
    if table is None:
        table = _create()
    return table


def _create():
    global _registry
    with _create_lock:
        if _registry is None:
            import fastkv

            _registry = fastkv.FrozenTable()
        return _registry


def put(name, value):
    """Store ``value`` under ``name`` (any hashable key), replacing any
    previous value. Copies the registry (O(n) in the number of names) and
    swaps it in atomically; concurrent readers see the registry before or
    after, never in between. Returns None."""
    _table().put(name, value)


def get(name, default=_MISSING):
    """The value stored under ``name``; if there is none, ``default`` when
    given, else ``KeyError(name)``. O(1), never blocks, no copy of the value
    is made (as ``:persistent_term.get``)."""
    if default is _MISSING:
        return _table()[name]
    return _table().get(name, default)


def erase(name):
    """Remove ``name``; True if it was there. Copies the registry when it was
    (O(n)); nothing is copied when it was not."""
    return _table().delete(name)


def items():
    """A list of every ``(name, value)`` pair, in insertion order, read from
    one snapshot of the registry. O(n)."""
    return list(_table().items())


def info():
    """``{"count": number of names, "memory": bytes}``. ``memory`` is
    ``sys.getsizeof`` of the registry's own structure (the table and its hash
    table), not of the names and values it refers to, which may be shared with
    the rest of the program."""
    table = _table()
    return {"count": len(table), "memory": sys.getsizeof(table)}
