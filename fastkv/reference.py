"""The pure-Python reference tables (placeholder: being written)."""

from fastkv._errors import ClosedError

__all__ = ["Agent", "ClosedError", "FrozenTable", "LockedTable", "OwnerTable"]


class FrozenTable:
    pass


class LockedTable:
    pass


class OwnerTable:
    pass


class Agent:
    pass
