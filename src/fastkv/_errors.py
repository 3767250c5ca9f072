"""Exceptions shared by the compiled core and the reference implementation."""

__all__ = ["ClosedError"]


class ClosedError(RuntimeError):
    """Raised when a table or agent is used after ``close()`` (or after a
    ``fork()`` left its owner thread behind in the parent)."""
