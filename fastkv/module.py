"""ModuleTable (placeholder: being written)."""

__all__ = ["ModuleTable"]


class ModuleTable:
    pass
