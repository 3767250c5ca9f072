"""The compiled core is built and is what `import fastkv` serves."""

import importlib.machinery
import os

import fastkv
import fastkv._core


def test_core_is_a_compiled_extension():
    path = fastkv._core.__file__
    assert path is not None
    assert path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), path
    assert isinstance(fastkv._core.__loader__, importlib.machinery.ExtensionFileLoader)


def test_compiled_marker_is_consistent():
    tables = {"FrozenTable", "LockedTable", "OwnerTable", "Agent", "SharedTable"}
    assert set(fastkv.COMPILED) | set(fastkv.NOT_COMPILED) == tables
    assert not set(fastkv.COMPILED) & set(fastkv.NOT_COMPILED)
    for name in fastkv.COMPILED:
        cls = getattr(fastkv, name)
        assert cls is getattr(fastkv._core, name)
        assert cls.__module__ == "fastkv._core"
    for name in fastkv.NOT_COMPILED:
        assert getattr(fastkv, name) is getattr(fastkv.reference, name)


def test_closed_error_is_shared():
    assert fastkv.ClosedError is fastkv.reference.ClosedError
    assert fastkv._core.ClosedError is fastkv.ClosedError
    assert issubclass(fastkv.ClosedError, RuntimeError)
