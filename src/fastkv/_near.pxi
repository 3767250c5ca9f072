# fastkv/_near.pxi: the read path of RedisTable's near cache (included by _core.pyx).
#
# Design
# ======
#
# ``fastkv.redis.RedisTable`` is Python over redis-py; only its hits are
# compiled, here, so that ``t[k]``, ``t.get(k)`` and ``k in t`` served from the
# near cache cost about what a LockedTable read costs. ``_NearReads`` is the
# compiled base class RedisTable derives from (``fastkv.reference._NearReads``
# is its twin, line for line in Python). It holds:
#
# - ``_near``: a plain dict, user key -> value (or ``_near_absent``, a cached
#   "no such key"). Only the Python side (``fastkv/redis.py``) writes it, under
#   its own lock; the hit path only reads it (a dict lookup, no write to any
#   shared state, so readers on many threads do not contend).
# - ``_lease``: a CLOCK_MONOTONIC_COARSE time (seconds) until which the entries
#   may be served. The invalidation listener extends it each time it hears from
#   the server; when it stops hearing (a silent network fault, a paused server)
#   the lease runs out and every read goes to ``_near_load``, which flushes the
#   near cache before anything is cached again. The coarse clock is read in
#   ~5 ns (vDSO) and ticks every 1-4 ms, far below a lease.
#   The listener thread writes it while readers read it: relaxed atomic
#   accesses on a free-threaded build (``fk_double_*_relaxed``, ``_ft.h``;
#   plain ones on a GIL build, where they compile to what they were). Relaxed
#   is enough: the lease only says whether to look in ``_near``, and the
#   dict's own synchronization orders its entries against a flush; a reader
#   that sees a lease a moment late serves what it would have served a
#   moment earlier.
#
# A read: if the lease holds and the key is in ``_near``, return its value (or
# KeyError / the default / False for a cached absence); otherwise call the
# Python method ``self._near_load(key)``, which returns the value or
# ``_near_absent`` (and raises for network faults, bad keys, a closed table).
# An unhashable key raises TypeError from the dict lookup, as in a dict.

from cpython.ref cimport Py_DECREF

cdef extern from *:
    """
    #include <time.h>
    static double fk_coarse_now(void) {
        struct timespec ts;
    #ifdef CLOCK_MONOTONIC_COARSE
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    #else
        clock_gettime(CLOCK_MONOTONIC, &ts);
    #endif
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    }
    /* A new reference to d[key], or NULL with no error set (absent) or with an
       error set (unhashable key, a key whose __eq__ raised). */
    static PyObject *fk_dict_get_ref(PyObject *d, PyObject *key) {
    #if PY_VERSION_HEX >= 0x030D0000
        PyObject *v = NULL;
        if (PyDict_GetItemRef(d, key, &v) < 0) return NULL;
        return v;
    #else
        PyObject *v = PyDict_GetItemWithError(d, key);
        Py_XINCREF(v);
        return v;
    #endif
    }
    """
    double fk_coarse_now() nogil
    PyObject *fk_dict_get_ref(object d, object key) except? NULL


def _near_now():
    """The clock of the near cache's lease (CLOCK_MONOTONIC_COARSE, seconds)."""
    return fk_coarse_now()


cdef object _NEAR_ABSENT = object()


cdef class _NearReads:
    """The near-cache read path of RedisTable (see fastkv.redis)."""

    cdef readonly dict _near
    cdef readonly object _near_absent
    cdef double _lease_until    # the lease (see the design note), atomic

    def __cinit__(self, *args, **kwargs):
        self._near = {}
        self._near_absent = _NEAR_ABSENT
        self._lease_until = 0.0

    @property
    def _lease(self):
        """Until when near-cache hits are served (``_near_now()`` seconds)."""
        return fk_double_load_relaxed(&self._lease_until)

    def _near_set_lease(self, double until):
        """Serve near-cache hits until ``until`` (``_near_now()`` seconds); 0 stops them."""
        if not isinstance(self, _NearReads):
            fk_wrong_self(self, _NearReads)
        fk_double_store_relaxed(&self._lease_until, until)

    def _near_now(self):
        """The lease's clock."""
        if not isinstance(self, _NearReads):
            fk_wrong_self(self, _NearReads)
        return fk_coarse_now()

    def __getitem__(self, key):
        cdef PyObject *v = NULL
        if fk_double_load_relaxed(&self._lease_until) > fk_coarse_now():
            v = fk_dict_get_ref(self._near, key)
        if v != NULL:
            value = <object>v
            Py_DECREF(value)  # <object> added its own reference
            if value is self._near_absent:
                raise KeyError(key)
            return value
        value = self._near_load(key)
        if value is self._near_absent:
            raise KeyError(key)
        return value

    def get(self, key, default=None):
        """The value for ``key``, or ``default``; served from the near cache
        when it holds the key (a local dict read), else one GET."""
        cdef PyObject *v = NULL
        if not isinstance(self, _NearReads):
            fk_wrong_self(self, _NearReads)
        if fk_double_load_relaxed(&self._lease_until) > fk_coarse_now():
            v = fk_dict_get_ref(self._near, key)
        if v != NULL:
            value = <object>v
            Py_DECREF(value)
        else:
            value = self._near_load(key)
        if value is self._near_absent:
            return default
        return value

    def __contains__(self, key):
        cdef PyObject *v = NULL
        if fk_double_load_relaxed(&self._lease_until) > fk_coarse_now():
            v = fk_dict_get_ref(self._near, key)
        if v != NULL:
            value = <object>v
            Py_DECREF(value)
        else:
            value = self._near_load(key)
        return value is not self._near_absent
