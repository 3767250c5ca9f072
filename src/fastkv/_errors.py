"""Exceptions shared by the compiled core and the reference implementation."""

__all__ = ["ClosedError", "RedisConnectionError"]


class ClosedError(RuntimeError):
    """Raised when a table or agent is used after ``close()`` (or after a
    ``fork()`` left its owner thread behind in the parent)."""


class RedisConnectionError(ConnectionError):
    """Raised by ``fastkv.RedisTable`` when the server cannot be reached or
    does not answer within the table's timeout (the redis-py error is its
    ``__cause__``). Importable without redis-py installed."""
