# cython: language_level=3, embedsignature=True
# distutils: language = c
"""fastkv._core: the compiled engine and tables of fastkv.

Design note
===========

(Each part of the core documents its own design at the top of its file.)

- ``_engine.pxi``  the hash-table engine: a C struct plus ``table_*`` functions.
- ``_frozen.pxi``  FrozenTable: immutable snapshots of the engine, swapped whole.
- ``_locked.pxi``  LockedTable: one engine table behind one lock.
- ``_owner.pxi``   the owner-thread engine, OwnerTable and Agent.

The parts are textually included into this one extension module, so the C
helpers inline across them and ``fastkv._core`` is a single shared object.
"""

from fastkv._errors import ClosedError

include "_engine.pxi"
include "_frozen.pxi"
include "_locked.pxi"
include "_owner.pxi"
