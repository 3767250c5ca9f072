# cython: language_level=3, embedsignature=True, freethreading_compatible=True
# distutils: language = c
"""fastkv._core: the compiled engine and tables of fastkv.

Design note
===========

The engine (``_engine.pxi``) is CPython's compact dict written out as a C
struct: an index of 2**k small ints (int8..int64, widened with the table) over
an insertion-ordered entry array. While every key is an exact ``str`` an entry
is 16 bytes, {key, value}, the hash being the one the str caches; the first
other key converts the table once to 24-byte {key, value, hash} entries.
Probing is dict's (``i = 5*i + perturb + 1``, ``perturb >>= 5``) at a load of
at most 2/3; growth is dict's (next power of two of 3 * used). A deletion
leaves a dummy in the index and a hole in the entries; trailing holes are
trimmed at once (O(1) LIFO popitem), the rest go at the next rebuild. Lookups
compare identity, hash, then equality -- in C for exact str and int keys, so
those never run Python code; any other comparison holds a reference to the
stored key and re-checks the table's version afterwards (a key's ``__eq__``
may have changed the table: the lookup restarts, and gives up with
RuntimeError after 100 restarts). Every lookup is three-state: found (the
entry index), absent, error. Arrays come from PyMem_Malloc (seen by
tracemalloc, counted by ``__sizeof__``); failures raise MemoryError.

FrozenTable (``_frozen.pxi``) points at one immutable snapshot: an engine
table sized exactly for its entries, never changed once published. Writes
read and hash their input first, then, under a per-table writers' lock (waited
for without the GIL; re-entry from the writing thread raises RuntimeError),
copy the snapshot (memcpy of index and entries plus INCREFs when the layout
allows), apply the change, and swap the pointer; the old snapshot is released
after the lock. A read of an exact str/int key runs no Python code, so under
the GIL it needs no reference to the snapshot; any other read holds one for
its duration, as iterators and views do.

Free-threaded CPython (``Py_GIL_DISABLED``): the module declares
``freethreading_compatible``, so importing it leaves the GIL off. What the GIL
used to serialize is protected explicitly there, and nothing of it is
compiled on a GIL build (``_ft.h``: empty macros): LockedTable's lock word is
a compare-and-swap; the owner engine's free list, cast chain, status and call
count take a PyMutex; FrozenTable readers look at a snapshot inside a read
section and writers release an old snapshot only after every section open at
the swap has closed (the scheme is in ``_ft.h`` and ``_frozen.pxi``).

Each part documents its own design at the top of its file:

- ``_engine.pxi``  the hash-table engine: a C struct plus ``table_*`` functions.
- ``_frozen.pxi``  FrozenTable: immutable snapshots of the engine, swapped whole.
- ``_locked.pxi``  LockedTable: one engine table behind one lock.
- ``_owner.pxi``   the owner-thread engine, OwnerTable and Agent.
- ``_shared.pxi``  SharedTable: one snapshot file in shared memory for every
  process (its file protocol is Python, in ``_shm.py``).
- ``_near.pxi``    the read path of RedisTable's near cache (fastkv/redis.py).

The parts are textually included into this one extension module, so the C
helpers inline across them and ``fastkv._core`` is a single shared object.
"""

from fastkv._errors import ClosedError

include "_engine.pxi"
include "_frozen.pxi"
include "_locked.pxi"
include "_owner.pxi"
include "_shared.pxi"
include "_near.pxi"
