# fastkv/_engine.pxi: the hash-table engine (included by _core.pyx).
#
# Design
# ======
#
# One ``Table`` is CPython's compact dict layout, written out as a C struct:
#
#     indices   2**log2 slots of int8/16/32/64 (the width grows with the table,
#               as in CPython): IX_EMPTY (-1), IX_DUMMY (-2, a deleted entry)
#               or the position of an entry in the entry array.
#     entries   ``capacity`` slots, filled in insertion order; the first
#               ``nentries`` have been written, of which ``used`` are live. An
#               entry holds *strong* references to key and value (both NULL
#               once deleted) and the key's hash.
#
# Two entry layouts, as in CPython 3.11+: while every key is an exact ``str``
# (``t.unicode``) an entry is 16 bytes, {key, value}, and the hash is the one
# the str object caches; the first other key converts the table (once, O(n))
# to 24-byte entries {key, value, hash}. So a str-keyed table costs what a
# str-keyed dict costs per entry, and less in total (no growth slack once it is
# a sized snapshot). Code outside the engine reaches entries only through
# ``table_entry``/``table_entry_hash`` (the array is ``_entries``, bytes).
#
# Index slots are tagged: a slot's bits above ``log2`` (its width less the
# sign bit less the log2 bits a position needs: 0-7 bits, 7-10 at 100k-10M
# keys) hold the top bits of a multiplicative mix of the entry's hash
# (``_tag``; ``_ix_put`` writes position | tag << log2, readers mask with
# ``mask``). A probe whose tag differs is rejected without reading the entry
# array, as SwissTable's control bytes do: a miss on a large table costs the
# index lines it reads, not one more cache miss per occupied slot on its way
# (dict reads each such entry to compare hashes). Same memory as untagged.
#
# ``intexact``: every key appended since the table was last empty is an exact
# int whose hash equals its value (0 <= v < 2**61 - 1, and the negatives but
# -1). Two such ints with equal hashes are equal, so an int probe of that kind
# matches an entry on its hash alone, never reading the stored key object
# (dict compares the two ints: a third cache miss per hit on a large table).
#
# Probing is CPython's: i = hash & mask, then i = (5*i + perturb + 1) & mask
# with perturb >>= 5 each step, so every slot is visited. The index is never
# more than 2/3 full (``capacity <= usable(2**log2)``, dummies included), so
# every probe sequence ends on an IX_EMPTY slot. A table that grows gets
# ``usable(next_pow2(3 * used))`` entry slots (dict's growth rate); a table
# sized for n entries (``table_init``/``table_copy``) gets exactly n.
# Deleting leaves a dummy in the index and a hole in the entries; trailing
# holes are trimmed at once (so popitem is O(1) and LIFO), the others go when
# the table is rebuilt (growth, ``table_resize``, ``table_copy``).
#
# Builds from a dict (``table_fill_from_dict``) read its entry array directly
# where CPython's layout is known (3.11-3.14, GIL builds; PyDict_Next
# elsewhere). A dict with no deleted entry whose index has the fresh table's
# size and int32 slots (a dict of 21,846+ keys built by insertion or copied:
# its size is what the engine picks for its length), read into a table of
# its layout (str keys: unicode; else general), lends its index too: the
# dict probes as the engine does, for the same hashes, so the table takes
# the dict's index slot for slot, each position tagged from the hash read
# in the copy pass (``_fill_derived``). No index slot is probed: at 1M
# keys that probing, a cache miss per key, was most of the build.
#
# An empty table points at one static, read-only index of 8 IX_EMPTY slots and
# has no entry array: it costs no allocation, and ``table_clear`` never fails.
#
# Lookup compares identity, then the hash, then equality. Equality of two exact
# ``str`` (length, kind, memcmp) or two exact ``int`` is decided in C and runs
# no Python code; exact str against exact int is "not equal" (and an int is
# never looked for in a str-only table). Anything else calls
# ``PyObject_RichCompareBool(stored_key, key, Py_EQ)``, which can run arbitrary
# Python code -- including code that mutates or empties this very table. The
# lookup holds a reference to the stored key while it compares, and afterwards
# checks ``version`` (bumped by every change): if the table changed it
# restarts, as dict does; after MAX_RESTARTS restarts it raises RuntimeError
# instead of looping forever.
#
# C-level API (for the tables built on the engine)
# ================================================
#
# Every function needs the GIL. "Runs Python" means it can call a key's
# ``__eq__`` (lookups) or a destructor (anything that drops a reference); the
# caller must then hold a strong reference to whatever owns the Table (so the
# struct itself stays alive) and must not keep borrowed pointers into the
# entries across the call. Functions that do not run Python say so.
#
#   table_init(t, n) except -1            t is uninitialised or empty: make it an
#                                         empty table with room for n entries
#                                         (n == 0: no allocation). MemoryError.
#                                         No Python.
#   table_size_hint(hint, extra) noexcept  what to pass table_init for a
#                                         length hint (a user's __len__ may
#                                         lie): clamped to [0, MAX_PRESIZE].
#   table_clear(t) noexcept               drop every entry; t becomes empty (the
#                                         static index, nothing allocated). The
#                                         table is consistent before the DECREFs,
#                                         which run Python. Also the destructor.
#   table_hash(key) except? -1            hash(key); the cached hash of an exact
#                                         str without a call. Runs Python for
#                                         types other than exact str/int.
#   table_lookup(t, key, h) except -2     index (>= 0) of the entry whose key
#                                         equals ``key``, IX_EMPTY (-1) if absent,
#                                         -2 with an exception set. Runs Python.
#   table_lookup_fast(t, key, h) noexcept  for an exact str or int key: index,
#                                         IX_EMPTY if absent, or IX_SLOW (-3) if
#                                         the answer needs Python code (then call
#                                         table_lookup); IX_SLOW for other keys.
#                                         Never runs Python, never raises.
#   table_entry(t, ix) noexcept           Entry* of live entry ix: read .key and
#                                         .value (borrowed); never .hash.
#   table_entry_hash(t, ix) noexcept      the hash of live entry ix.
#   table_insert(t, key, h, value) except -1   set t[key] = value: 1 if key was
#                                         added, 0 if its value was replaced
#                                         (the old key object is kept). INCREFs
#                                         what it stores. Runs Python.
#   table_append(t, key, h, value) except -1   add a key known to be absent (the
#                                         caller looked it up and no Python ran
#                                         since). INCREFs key and value. Grows
#                                         the table if full. No Python.
#   table_fill_from_dict(t, d, &pos) noexcept   bulk append of a dict's items
#                                         from PyDict_Next position pos while
#                                         their keys need no Python (exact str,
#                                         or int in a general table); True when
#                                         d is done, else pos is left on the
#                                         first other key. t has room for all
#                                         and none of d's keys; a fresh t
#                                         may take d's own index (above).
#                                         No Python.
#   table_replace_at(t, ix, value) noexcept  replace entry ix's value (INCREFs the
#                                         new one, then DECREFs the old: runs
#                                         Python after the table is consistent).
#   table_delete(t, key, h) except -1     1 if key was there and is removed, 0 if
#                                         absent. Runs Python.
#   table_pop(t, key, h, &value) except -1  as table_delete, and on 1 *value is a
#                                         NEW reference to the removed value.
#   table_popitem(t, &key, &value) noexcept  remove the last inserted entry: 1 and
#                                         two NEW references, or 0 if empty. No
#                                         Python.
#   table_detach_at(t, ix, &key, &value) noexcept  remove live entry ix, handing
#                                         its two references to the caller. No
#                                         Python.
#   table_resize(t, capacity) except -1   rebuild with room for ``capacity``
#                                         (>= used) entries, holes squeezed out,
#                                         insertion order kept. No Python.
#   table_trim(t) except -1               give back unused entry slots (keeps the
#                                         index). No Python.
#   table_reserve(t) except -1            the opposite: as many entry slots as
#                                         the index allows (realloc, index
#                                         kept). No Python.
#   table_to_dict(t)                      a new dict of the items, presized,
#                                         cached hashes reused. Runs Python
#                                         (__eq__ of colliding keys); t must
#                                         not change meanwhile.
#   table_copy(dst, src, capacity, skip) except -1   dst (uninitialised or
#                                         empty) becomes a copy of src with room
#                                         for ``capacity`` entries, leaving out
#                                         entry ``skip`` (-1: none). INCREFs
#                                         every key and value. No Python.
#   table_next(t, &pos, &key, &value) noexcept   iteration: start with pos = 0;
#                                         True and BORROWED key/value for the
#                                         next live entry, False at the end.
#                                         Borrowed pointers are valid only until
#                                         Python code runs. No Python.
#   table_prev(t, &pos, &key, &value) noexcept   reverse iteration: start with
#                                         pos = t.nentries; as table_next,
#                                         from the last live entry to the first.
#                                         No Python.
#   table_sizeof(t) noexcept              bytes allocated for the arrays.
#   table_traverse(t, visit, arg)         tp_traverse helper (visits keys and
#                                         values).
#
# ``version`` changes whenever the table changes: a caller that ran Python code
# can compare it to know whether an index it holds is still valid.

cimport cython
from cpython.object cimport PyObject, Py_EQ
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.string cimport memcpy, memset, memcmp
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint64_t

cdef extern from *:
    """
    /* The cached hash of an exact str: public field of PyASCIIObject on every
       CPython 3.x (-1 when not computed yet). */
    #define FASTKV_STR_HASH(op) (((PyASCIIObject *)(op))->hash)
    #define FASTKV_STR_HASH_ADDR(op) (&((PyASCIIObject *)(op))->hash)
    /* The index every empty table shares: 8 slots of IX_EMPTY, never written. */
    static int8_t fastkv_empty_index[8] = {-1, -1, -1, -1, -1, -1, -1, -1};
    /* int == int for two exact ints too big for a long long: long_richcompare
       (C code, no Python); returns a new reference to True or False. */
    /* dict(items) with the hashes known (no key hashed again) where CPython
       exports it (3.10-3.12); PyDict_SetItem (which rehashes) elsewhere. */
    #if PY_VERSION_HEX < 0x030D0000
    #define fastkv_dict_set_known_hash(d, k, v, h) _PyDict_SetItem_KnownHash((d), (k), (v), (h))
    #else
    #define fastkv_dict_set_known_hash(d, k, v, h) PyDict_SetItem((d), (k), (v))
    #endif
    /* The value of an exact int k of at most two 30-bit digits (|v| < 2**60)
       in *v, and 1; 0 for a longer int. Reads the digits as CPython's own
       inline paths do (ob_size and ob_digit before 3.12, lv_tag after).
       Such an int hashes to its value (but -1 to -2): |v| < 2**61 - 1. */
    static inline int fastkv_int_small(PyObject *k, Py_ssize_t *v) {
    #if PyLong_SHIFT == 30 && SIZEOF_SIZE_T == 8
    #if PY_VERSION_HEX >= 0x030C0000
        uintptr_t tag = ((PyLongObject *)k)->long_value.lv_tag;
        const digit *d = ((PyLongObject *)k)->long_value.ob_digit;
        Py_ssize_t a;
        /* tag: digit count << 3 | sign (0 positive, 1 zero, 2 negative) */
        if (tag >= (3 << 3))
            return 0;
        a = (Py_ssize_t)d[0];           /* 0 for zero: CPython keeps it so */
        if (tag >= (2 << 3))
            a |= (Py_ssize_t)d[1] << PyLong_SHIFT;
        *v = (tag & 3) == 2 ? -a : (tag & 3) == 1 ? 0 : a;
        return 1;
    #else
        Py_ssize_t s = Py_SIZE(k);
        const digit *d = ((PyLongObject *)k)->ob_digit;
        switch (s) {
        case 0: *v = 0; return 1;
        case 1: *v = (Py_ssize_t)d[0]; return 1;
        case -1: *v = -(Py_ssize_t)d[0]; return 1;
        case 2: *v = (Py_ssize_t)d[0] | ((Py_ssize_t)d[1] << PyLong_SHIFT); return 1;
        case -2: *v = -((Py_ssize_t)d[0] | ((Py_ssize_t)d[1] << PyLong_SHIFT)); return 1;
        default: return 0;
        }
    #endif
    #else
        /* other digit sizes: one digit only, through the public API */
        (void)k; (void)v;
        return 0;
    #endif
    }
    /* hash(k) of an exact int k, without a call when k has at most two
       digits (|v| < 2**60: its hash is v, but -2 for -1); long_hash (C, no
       Python, never fails) otherwise. */
    static inline Py_hash_t fastkv_int_hash(PyObject *k) {
        Py_ssize_t v;
        if (fastkv_int_small(k, &v))
            return v == -1 ? -2 : (Py_hash_t)v;
        return PyObject_Hash(k);
    }
    /* An exact int k whose hash h is its value (see intexact). */
    static inline int fastkv_int_hash_exact(PyObject *k, Py_hash_t h) {
        Py_ssize_t v;
        long long w;
        int overflow;
        if (fastkv_int_small(k, &v))
            return v == h;
        w = PyLong_AsLongLongAndOverflow(k, &overflow);
        return overflow == 0 && w == h;
    }
    #define fastkv_long_richcompare_eq(a, b) (PyLong_Type.tp_richcompare((a), (b), Py_EQ))
    /* Index slot tags: a multiplicative mix of the hash (all its bits, so
       int keys, whose hash is their value, get varied tags too). */
    #define FASTKV_TAG_MIX(h) (((uint64_t)(h) * 0x9E3779B97F4A7C15ULL) >> 1)
    #if defined(__GNUC__) || defined(__clang__)
    #define FASTKV_PREFETCH(p) __builtin_prefetch((const void *)(p))
    #define FASTKV_PREFETCH_W(p) __builtin_prefetch((const void *)(p), 1)
    #else
    #define FASTKV_PREFETCH(p) ((void)0)
    #define FASTKV_PREFETCH_W(p) ((void)0)
    #endif
    /* Bulk indexing: point a free slot (empty or dummy) of a tagged index
       at each of the entries base .. base + m - 1, whose hashes are
       hashes[0 .. m): _free_slot and _ix_put, with the slot width chosen
       once per call instead of at every slot read and write. Returns how
       many of those slots were empty (the others were dummies). */
    #define FASTKV_INDEX_FILL(T) do {                                         \
            T *slots = (T *)indices;                                          \
            for (j = 0; j < m; j++) {                                         \
                size_t perturb = (size_t)hashes[j], i = perturb & mask;       \
                while (slots[i] >= 0) {                                       \
                    perturb >>= 5;                                            \
                    i = (i * 5 + perturb + 1) & mask;                         \
                }                                                             \
                empties += slots[i] == -1;                                    \
                slots[i] = (T)((base + j) | ((Py_ssize_t)(                    \
                    FASTKV_TAG_MIX(hashes[j]) >> tagshift) << log2));        \
            }                                                                 \
        } while (0)
    /* _fill_derived's second pass: dst[i] = src[i] for every slot of a
       dict's int32 index, the position of a live entry (0 <= ix < n) tagged
       with tag(ix) << log2, empty (-1) and deleted (-2) slots as they are.
       Tags are 2 bytes (``wide``, log2 16-23: 8-15 tag bits) or 1 byte
       (log2 >= 24: at most 7 bits), ``tags`` readable 4 bytes past entry
       n - 1 (the AVX2 gather reads 4 bytes at a tag; what is above the tag
       shifts out of the slot, as log2 >= 16 resp. 24). Returns the number
       of deleted slots, or -1 if src is not an index of exactly the n
       entries (a slot out of range, or not n live ones). Half the slots are
       empty, at random: no branch on a slot. Instruction-bound, not
       memory-bound, in scalar code (about 30 instructions a slot, 2**21
       slots at 1M keys: two thirds of a str build's time in one
       measurement), so where the CPU has AVX2 (checked at run time) eight
       slots go per iteration, the tags gathered. */
    #define FASTKV_DERIVE_TAIL(TAGS)                                          \
        for (; i < size; i++) {                                               \
            int32_t ix = src[i];                                              \
            uint32_t ok = (uint32_t)ix < (uint64_t)n;                         \
            uint32_t okmask = 0u - ok;                                        \
            /* (a slot < 0 has every bit above log2 set: or-ing in the tag  \
               of entry 0 leaves it as it is) */                              \
            dst[i] = (int32_t)((uint32_t)ix                                   \
                               | ((uint32_t)(TAGS)[(uint32_t)ix & okmask] << log2)); \
            nlive += ok;                                                      \
            ndummies += ix == -2;                                             \
            nempties += ix == -1;                                             \
        }
    #if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
    #define FASTKV_HAVE_AVX2_DERIVE 1
    #include <immintrin.h>
    #define FASTKV_DERIVE_AVX2_LOOP(SCALE)                                    \
        for (i = 0; i + 8 <= size; i += 8) {                                  \
            __m256i ix = _mm256_loadu_si256((const __m256i *)(src + i));      \
            __m256i ok = _mm256_andnot_si256(_mm256_cmpgt_epi32(zero, ix),    \
                                             _mm256_cmpgt_epi32(vn, ix));     \
            __m256i tag = _mm256_mask_i32gather_epi32(zero, (const int *)tags, ix, ok, SCALE); \
            tag = _mm256_sll_epi32(tag, shift);                               \
            _mm256_storeu_si256((__m256i *)(dst + i), _mm256_or_si256(ix, tag)); \
            live = _mm256_sub_epi32(live, ok);     /* lanes of -1 count one */ \
            dummies = _mm256_sub_epi32(dummies, _mm256_cmpeq_epi32(ix, m2));  \
            empties = _mm256_sub_epi32(empties, _mm256_cmpeq_epi32(ix, m1));  \
        }
    __attribute__((target("avx2")))
    static Py_ssize_t fastkv_index_derive32_avx2(int32_t *dst, const int32_t *src, size_t size,
                                                 const void *tags, int wide, Py_ssize_t n, int log2) {
        const __m256i zero = _mm256_setzero_si256(), vn = _mm256_set1_epi32((int)n);
        const __m256i m1 = _mm256_set1_epi32(-1), m2 = _mm256_set1_epi32(-2);
        const __m128i shift = _mm_cvtsi32_si128(log2);
        __m256i live = zero, dummies = zero, empties = zero;
        int32_t a[8], b[8], c[8];
        Py_ssize_t nlive = 0, ndummies = 0, nempties = 0;
        size_t i;
        int u;
        if (wide)
            FASTKV_DERIVE_AVX2_LOOP(2)
        else
            FASTKV_DERIVE_AVX2_LOOP(1)
        _mm256_storeu_si256((__m256i *)a, live);
        _mm256_storeu_si256((__m256i *)b, dummies);
        _mm256_storeu_si256((__m256i *)c, empties);
        for (u = 0; u < 8; u++) {   /* (each lane counts at most size / 8 < 2**31) */
            nlive += (uint32_t)a[u];
            ndummies += (uint32_t)b[u];
            nempties += (uint32_t)c[u];
        }
        if (wide)
            FASTKV_DERIVE_TAIL((const uint16_t *)tags)
        else
            FASTKV_DERIVE_TAIL((const uint8_t *)tags)
        return nlive != n || nlive + ndummies + nempties != (Py_ssize_t)size ? -1 : ndummies;
    }
    #else
    #define FASTKV_HAVE_AVX2_DERIVE 0
    #endif
    static Py_ssize_t fastkv_index_derive32_scalar(int32_t *dst, const int32_t *src, size_t size,
                                                   const void *tags, int wide, Py_ssize_t n, int log2) {
        size_t i = 0;
        Py_ssize_t nlive = 0, ndummies = 0, nempties = 0;
        if (wide)
            FASTKV_DERIVE_TAIL((const uint16_t *)tags)
        else
            FASTKV_DERIVE_TAIL((const uint8_t *)tags)
        return nlive != n || nlive + ndummies + nempties != (Py_ssize_t)size ? -1 : ndummies;
    }
    static int fastkv_derive_avx2 = -1;     /* -1 not probed yet; tests set 0 */
    static Py_ssize_t fastkv_index_derive32(int32_t *dst, const int32_t *src, size_t size,
                                            const void *tags, int wide, Py_ssize_t n, int log2) {
    #if FASTKV_HAVE_AVX2_DERIVE
        if (fastkv_derive_avx2 < 0) {
            __builtin_cpu_init();
            fastkv_derive_avx2 = __builtin_cpu_supports("avx2") != 0;
        }
        if (fastkv_derive_avx2)
            return fastkv_index_derive32_avx2(dst, src, size, tags, wide, n, log2);
    #endif
        return fastkv_index_derive32_scalar(dst, src, size, tags, wide, n, log2);
    }
    static Py_ssize_t fastkv_index_fill(void *indices, int ixshift, size_t mask, int log2,
                                        int tagshift, const Py_hash_t *hashes,
                                        Py_ssize_t base, Py_ssize_t m) {
        Py_ssize_t j, empties = 0;
        switch (ixshift) {
        case 0: FASTKV_INDEX_FILL(int8_t); break;
        case 1: FASTKV_INDEX_FILL(int16_t); break;
        case 2: FASTKV_INDEX_FILL(int32_t); break;
        default: FASTKV_INDEX_FILL(int64_t); break;
        }
        return empties;
    }
    /* Install def (with func as its C function) as a method of type: the
       hand-written METH_FASTCALL methods (FrozenTable.get, LockedTable.get,
       OwnerTable.get) become method descriptors, which check self. 0 / -1. */
    static int fastkv_install_method(PyObject *type, PyMethodDef *def, void *func) {
        PyObject *descr;
        int r;
        def->ml_meth = (PyCFunction)(void (*)(void))func;
        descr = PyDescr_NewMethod((PyTypeObject *)type, def);
        if (descr == NULL)
            return -1;
        r = PyDict_SetItemString(((PyTypeObject *)type)->tp_dict, def->ml_name, descr);
        Py_DECREF(descr);
        PyType_Modified((PyTypeObject *)type);
        return r;
    }
    """
    ctypedef struct PyMethodDef:
        pass
    int fastkv_install_method(object type, PyMethodDef* d, void* func) except -1
    void FASTKV_PREFETCH(const void* p) noexcept nogil
    void FASTKV_PREFETCH_W(const void* p) noexcept nogil
    int fastkv_derive_avx2
    bint FASTKV_HAVE_AVX2_DERIVE
    Py_ssize_t fastkv_index_derive32(int32_t* dst, const int32_t* src, size_t size,
                                     const void* tags, int wide, Py_ssize_t n, int log2) noexcept nogil
    Py_ssize_t fastkv_index_fill(void* indices, int ixshift, size_t mask, int log2, int tagshift,
                           const Py_hash_t* hashes, Py_ssize_t base, Py_ssize_t m) noexcept nogil
    uint64_t FASTKV_TAG_MIX(Py_hash_t h) noexcept nogil
    ctypedef int (*visitproc)(PyObject* o, void* arg) noexcept
    PyObject* fastkv_long_richcompare_eq(PyObject* a, PyObject* b) noexcept
    Py_hash_t fastkv_int_hash(PyObject* k) noexcept
    bint fastkv_int_small(PyObject* k, Py_ssize_t* v) noexcept
    bint fastkv_int_hash_exact(PyObject* k, Py_hash_t h) noexcept
    int fastkv_dict_set_known_hash(object d, PyObject* k, PyObject* v, Py_hash_t h) except -1
    dict _PyDict_NewPresized(Py_ssize_t n)
    Py_hash_t FASTKV_STR_HASH(PyObject* op) noexcept nogil
    const void* FASTKV_STR_HASH_ADDR(PyObject* op) noexcept nogil
    int8_t fastkv_empty_index[8]

cdef extern from *:
    """
    /* fk_dict_next: PyDict_Next that also gives the hash the dict stored
       for the key, where this CPython exposes it (_PyDict_Next, 3.10-3.12);
       elsewhere *hash is -1 and the caller hashes the key itself. */
    static inline int fk_dict_next(PyObject *d, Py_ssize_t *pos, PyObject **k,
                                   PyObject **v, Py_hash_t *hash) {
    #if PY_VERSION_HEX < 0x030D0000
        return _PyDict_Next(d, pos, k, v, hash);
    #else
        *hash = -1;
        return PyDict_Next(d, pos, k, v);
    #endif
    }
    """
    int fk_dict_next(object d, Py_ssize_t *pos, PyObject **k, PyObject **v,
                     Py_hash_t *hash) noexcept


cdef extern from *:
    """
    /* fastkv_dict_entries: the entry array of a dict, read directly, as
       CPython's own dict(d) copy does (clone_combined_dict_keys), so that a
       bulk build reads each key and value with two loads instead of a call
       of _PyDict_Next (50 instructions per item on 3.11). The layout of
       PyDictKeysObject is CPython's private one (Include/internal/
       pycore_dict.h), the same on 3.11 to 3.14 with the GIL: mirrored here
       for those versions only, and used only once fastkv_dict_walk_verify
       (run at import) has walked known dicts and found what PyDict_Next
       finds. Elsewhere, or for a split table, it returns NULL and callers
       use fk_dict_next. Entries: unicode {key, value}, general {hash, key,
       value}; a deleted entry has value NULL. */
    #if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030F0000 && !defined(Py_GIL_DISABLED)
    #define FASTKV_DICT_WALK 1
    typedef struct {
        Py_ssize_t dk_refcnt;
        uint8_t dk_log2_size;
        uint8_t dk_log2_index_bytes;
        uint8_t dk_kind;                /* 0 general, 1 unicode, 2 split */
        uint32_t dk_version;
        Py_ssize_t dk_usable;
        Py_ssize_t dk_nentries;
        char dk_indices[];
    } fastkv_dictkeys;
    #else
    #define FASTKV_DICT_WALK 0
    #endif
    static int fastkv_dict_walk_ok = 0;
    static inline const char *fastkv_dict_entries(PyObject *d, int *unicode, Py_ssize_t *n) {
    #if FASTKV_DICT_WALK
        PyDictObject *mp = (PyDictObject *)d;
        const fastkv_dictkeys *dk;
        if (!fastkv_dict_walk_ok || !PyDict_CheckExact(d) || mp->ma_values != NULL)
            return NULL;
        dk = (const fastkv_dictkeys *)mp->ma_keys;
        if (dk->dk_kind > 1)
            return NULL;
        *unicode = dk->dk_kind == 1;
        *n = dk->dk_nentries;
        return dk->dk_indices + ((size_t)1 << dk->dk_log2_index_bytes);
    #else
        (void)d; (void)unicode; (void)n;
        return NULL;
    #endif
    }
    /* fastkv_dict_index: the index of a dict fastkv_dict_entries reads
       (dk_indices: 2**log2 slots of 1 << ixshift bytes, each -1 empty, -2
       deleted, or an entry position), or NULL where that returns NULL. */
    static inline const char *fastkv_dict_index(PyObject *d, int *log2, int *ixshift) {
    #if FASTKV_DICT_WALK
        int unicode = 0;
        Py_ssize_t n = 0;
        const fastkv_dictkeys *dk;
        if (fastkv_dict_entries(d, &unicode, &n) == NULL)
            return NULL;
        dk = (const fastkv_dictkeys *)((PyDictObject *)d)->ma_keys;
        *log2 = dk->dk_log2_size;
        *ixshift = dk->dk_log2_index_bytes - dk->dk_log2_size;
        return dk->dk_indices;
    #else
        (void)d; (void)log2; (void)ixshift;
        return NULL;
    #endif
    }
    static inline Py_ssize_t fastkv_index_slot(const char *ix, int ixshift, size_t i) {
        switch (ixshift) {
        case 0: return ((const int8_t *)ix)[i];
        case 1: return ((const int16_t *)ix)[i];
        case 2: return ((const int32_t *)ix)[i];
        default: return ((const int64_t *)ix)[i];
        }
    }
    /* Walk d directly and compare every live entry with what PyDict_Next
       (and the key's hash) says, and find each entry in d's index on the
       engine's probe sequence for its hash (i = h & mask, then
       i = 5*i + perturb + 1 with perturb >>= 5), past no empty slot, the
       slot width being the engine's for that size: 1 if all agree, 0 if
       not. */
    static int fastkv_dict_walk_matches(PyObject *d) {
        const char *e, *ix;
        int unicode = 0, log2 = 0, ixshift = 0;
        Py_ssize_t n, j, pos = 0, steps, slot;
        size_t mask, i, perturb;
        Py_hash_t h;
        PyObject *k, *v, *const *ep;
        e = fastkv_dict_entries(d, &unicode, &n);
        ix = fastkv_dict_index(d, &log2, &ixshift);
        if (e == NULL || ix == NULL || n != ((PyDictObject *)d)->ma_used + 1)
            return 0;
        if (ixshift != (log2 < 8 ? 0 : log2 < 16 ? 1 : log2 < 32 ? 2 : 3))
            return 0;
        mask = ((size_t)1 << log2) - 1;
        for (j = 0; j < n; j++) {
            ep = (PyObject *const *)(e + j * (unicode ? 16 : 24)) + (unicode ? 0 : 1);
            if (ep[1] == NULL)
                continue;
            if (!PyDict_Next(d, &pos, &k, &v) || k != ep[0] || v != ep[1] || pos != j + 1)
                return 0;
            h = PyObject_Hash(k);
            if (!unicode && ((const Py_hash_t *)ep)[-1] != h)
                return 0;
            perturb = (size_t)h;
            i = (size_t)h & mask;
            for (steps = 0; ; steps++) {
                slot = fastkv_index_slot(ix, ixshift, i);
                if (slot == j)
                    break;
                if (slot == -1 || steps > 64 + (Py_ssize_t)mask)
                    return 0;
                perturb >>= 5;
                i = (i * 5 + perturb + 1) & mask;
            }
        }
        return !PyDict_Next(d, &pos, &k, &v);
    }
    /* Called once at import: enable fastkv_dict_entries if the mirrored
       layout reads two known dicts (str keys, other keys; each with a
       deleted entry) exactly as PyDict_Next does. 0, or -1 with an
       exception set. */
    static int fastkv_dict_walk_verify(void) {
    #if FASTKV_DICT_WALK
        PyObject *u = NULL, *g = NULL, *k = NULL;
        int ok = 0, i;
        u = PyDict_New();
        g = PyDict_New();
        if (u == NULL || g == NULL)
            goto done;
        for (i = 0; i < 12; i++) {
            k = PyUnicode_FromFormat("fastkv-%d", i);
            if (k == NULL || PyDict_SetItem(u, k, Py_None) < 0)
                goto done;
            Py_CLEAR(k);
            k = PyLong_FromLong(i * 7919L - 3);
            if (k == NULL || PyDict_SetItem(g, k, u) < 0)
                goto done;
            Py_CLEAR(k);
        }
        k = PyUnicode_FromString("fastkv-5");
        if (k == NULL || PyDict_DelItem(u, k) < 0)
            goto done;
        Py_CLEAR(k);
        k = PyLong_FromLong(5 * 7919L - 3);
        if (k == NULL || PyDict_DelItem(g, k) < 0)
            goto done;
        fastkv_dict_walk_ok = 1;
        ok = fastkv_dict_walk_matches(u) && fastkv_dict_walk_matches(g);
        fastkv_dict_walk_ok = ok;
    done:
        Py_XDECREF(k);
        Py_XDECREF(u);
        Py_XDECREF(g);
        if (!ok)
            fastkv_dict_walk_ok = 0;
        return PyErr_Occurred() ? -1 : 0;
    #else
        return 0;
    #endif
    }
    """
    const char* fastkv_dict_entries(object d, int* unicode, Py_ssize_t* n) noexcept
    const char* fastkv_dict_index(object d, int* log2, int* ixshift) noexcept
    int fastkv_dict_walk_verify() except -1
    bint fastkv_dict_walk_ok


cdef extern from "Python.h":
    # PyObject* flavours of the C-API (Cython's own take ``object``).
    void _incref "Py_INCREF"(PyObject* o) noexcept
    void _decref "Py_DECREF"(PyObject* o)
    bint _is_str "PyUnicode_CheckExact"(PyObject* o) noexcept
    bint _is_int "PyLong_CheckExact"(PyObject* o) noexcept
    long long _int_as_ll "PyLong_AsLongLongAndOverflow"(PyObject* o, int* overflow) noexcept
    int _richcompare_bool "PyObject_RichCompareBool"(PyObject* a, PyObject* b, int op) noexcept
    Py_hash_t _object_hash "PyObject_Hash"(PyObject* o) except? -1
    PyObject* Py_True
    void* PyMem_Realloc(void* p, size_t n) noexcept


cdef extern from *:
    """
    /* A miss's slow path (a subclass's __missing__, else KeyError), called
       through a function that is never inlined. Without it gcc inlined that
       cold path into each table's mp_subscript and called the hit path out of
       line instead (callgrind, str t[k] at 100k keys: +31 instructions per
       FrozenTable read, +37 LockedTable, against 74be36b). */
    typedef PyObject *(*fastkv_cold2_fn)(PyObject *, PyObject *);
    #if defined(__GNUC__)
    __attribute__((noinline, cold))
    #endif
    static PyObject *fastkv_cold_call2(fastkv_cold2_fn fn, PyObject *a, PyObject *b) { return fn(a, b); }
    /* The hit paths of t[k]/get: FrozenTable's _lookup and LockedTable's
       _find_ref are `cdef inline`, but grew past gcc's inlining limits
       (tagged slots, the int path, the free-threaded read sections, empty on
       a GIL build) and became a call of their own from every read. Forced
       back into their callers (Cython's names for them; a name that stops
       matching only loses the hint). */
    #if defined(__GNUC__)
    struct __pyx_obj_6fastkv_5_core_FrozenTable;
    struct __pyx_obj_6fastkv_5_core_LockedTable;
    static inline __attribute__((always_inline)) PyObject *__pyx_f_6fastkv_5_core__lookup(
        struct __pyx_obj_6fastkv_5_core_FrozenTable *, PyObject *, PyObject *);
    static inline __attribute__((always_inline)) int __pyx_f_6fastkv_5_core__lookup_ref(
        struct __pyx_obj_6fastkv_5_core_FrozenTable *, PyObject *, PyObject **);
    static inline __attribute__((always_inline)) int __pyx_f_6fastkv_5_core_11LockedTable__find_ref(
        struct __pyx_obj_6fastkv_5_core_LockedTable *, PyObject *, PyObject **);
    #endif
    """
    ctypedef object (*fastkv_cold2_fn)(object, object)
    object fastkv_cold_call2(fastkv_cold2_fn fn, object a, object b)


cdef extern from "_ft.h":
    # free-threaded build: read sections and deferred release of snapshots
    # (the design note at the top of this file); all empty on a GIL build
    void fk_rd_enter() noexcept nogil
    void fk_rd_exit() noexcept nogil
    void fk_rd_synchronize() noexcept nogil
    int fk_rd_init() except -1
    PyObject* FK_LOAD_RELAXED(PyObject** p) noexcept nogil
    # a Py_ssize_t word read by other threads without a lock (counters):
    # relaxed atomics on a free-threaded build, plain accesses on a GIL build
    Py_ssize_t fk_ssize_load "FK_LOAD_RELAXED" (Py_ssize_t* p) noexcept nogil
    void fk_ssize_store "FK_STORE_RELAXED" (Py_ssize_t* p, Py_ssize_t v) noexcept nogil
    Py_ssize_t fk_ssize_load_acquire "FK_LOAD_ACQUIRE" (Py_ssize_t* p) noexcept nogil
    void fk_ssize_store_release "FK_STORE_RELEASE" (Py_ssize_t* p, Py_ssize_t v) noexcept nogil
    double fk_double_load_relaxed(double* p) noexcept nogil
    void fk_double_store_relaxed(double* p, double v) noexcept nogil
    bint FASTKV_FREE_THREADED


ctypedef struct Entry:
    PyObject* key        # strong reference; NULL for a deleted entry
    PyObject* value      # strong reference; NULL for a deleted entry
    Py_hash_t hash       # ONLY in general tables (not t.unicode): read it
                         # through table_entry_hash

ctypedef struct Table:
    Py_ssize_t used      # live entries; the FIRST field (table_move relies on it)
    Py_ssize_t nentries  # entries [0, nentries) written (live or deleted)
    Py_ssize_t capacity  # entry slots allocated
    Py_ssize_t usable    # appends left before a rebuild (dict's dk_usable):
                         # trimming trailing holes lowers nentries but gives
                         # back no budget, their index slots stay dummies
    size_t mask          # 2**log2 - 1
    int log2             # log2 of the number of index slots (>= 3)
    int ixshift          # log2 of the index width in bytes (0..3)
    int unicode          # every key is an exact str: 16-byte entries, no hash
    int intexact         # every key appended since the table was last empty
                         # is an exact int whose hash is its value: an int
                         # probe of that kind matches on the hash alone
    int tagshift         # index slot tag: (mix(hash) >> 1) >> tagshift
    Py_ssize_t stride    # bytes per entry: 16 (unicode) or 24
    uint64_t version     # bumped on every change
    void* indices        # fastkv_empty_index when nothing is allocated
    char* _entries       # the entry array (NULL when capacity == 0)
    Py_ssize_t filled    # index slots that are not IX_EMPTY (entries and
                         # dummies): counted, never derived from the others
                         # (table_trim and table_reserve change capacity and
                         # usable without touching the index); last, so
                         # the read paths' fields keep their offsets


cdef int fk_wrong_self(object self, type cls) except -1:
    """Raise the TypeError of a method of ``cls`` called on another object.

    Cython's methods of a cdef class are cyfunctions, which (unlike CPython's
    method descriptors) do not check ``self`` when taken from the class and
    called on a foreign object (cython/cython#6127): every non-slot method of
    the compiled classes starts with ``if not isinstance(self, cls)`` and
    this, before touching a C field. (Slot methods and the hand-written
    FASTCALL methods are checked by CPython.)"""
    raise TypeError(
        f"{cls.__name__} methods need a fastkv._core.{cls.__name__}, not a "
        f"{type(self).__module__}.{type(self).__qualname__} (a method taken "
        "from the class and called on another object)")


from copyreg import __newobj__ as _fk_newobj   # every __reduce__'s constructor:
    # cls.__new__(cls), as pickle and copy rebuild a dict subclass, so a
    # subclass's own __init__ (whatever arguments it takes) is never called


cdef tuple fk_reduce_state(object self, object data):
    """The state every ``__reduce__`` hands pickle and ``copy``: ``(data,
    attrs)``, ``data`` being the items (a table) or the state (an Agent) and
    ``attrs`` a subclass instance's ``__dict__`` (None when absent or empty).
    The object itself is rebuilt empty by ``cls.__new__(cls)`` (_fk_newobj), then
    memoized, then given this state by ``__setstate__``: as for a dict, items
    that refer back to it find it in the memo. Never fails but for memory."""
    return (data, getattr(self, "__dict__", None) or None)


cdef object fk_setstate_attrs(object self, object state):
    """The first half of every ``__setstate__``: unpack a ``(data, attrs)``
    state (see fk_reduce_state), update ``self.__dict__`` with ``attrs``, and
    return ``data`` for the caller to store. A state of another shape
    raises TypeError or ValueError."""
    data, attrs = state
    if attrs:
        self.__dict__.update(attrs)
    return data


cdef enum:
    IX_EMPTY = -1        # index slot: no entry; lookup result: key absent
    IX_DUMMY = -2        # index slot: a deleted entry
    IX_SLOW = -3         # table_lookup_fast: undecided without Python code
    MIN_LOG2 = 3         # smallest index: 8 slots
    MAX_LOG2 = 60        # largest index _alloc makes (_usable(61) still fits)
    MAX_PRESIZE = 1 << 17  # entries a size hint may reserve up front (dict's
                           # max_presize): a hint is not trusted beyond it
    MAX_RESTARTS = 100   # lookups restarted because __eq__ changed the table
    STRIDE_UNICODE = 16  # sizeof {key, value}
    STRIDE_GENERAL = 24  # sizeof(Entry)
    BUILD_CHUNK = 32     # _build_index: hashes in flight
    BUILD_PREFETCH_BYTES = 1 << 17   # _build_index prefetches past this index size
    BUILD_AHEAD = 16     # _fill_derived: key objects prefetched this far ahead


# --- sizing, entries and the index -------------------------------------------------

cdef inline Py_ssize_t _usable(int log2) noexcept nogil:
    """Entries an index of 2**log2 slots may reference (2/3 load, as dict)."""
    return ((<Py_ssize_t>1 << log2) << 1) // 3


cdef inline int _log2_for(Py_ssize_t n) noexcept nogil:
    """Smallest index size (log2, >= 3) that may reference n entries; past
    MAX_LOG2 (no machine has that memory) MAX_LOG2 + 1, which _alloc refuses
    with MemoryError (never a shift by 63 or more, never an endless loop)."""
    cdef int k = MIN_LOG2
    while _usable(k) < n:
        if k > MAX_LOG2:
            return k
        k += 1
    return k


cdef inline int _ixshift_for(int log2) noexcept nogil:
    if log2 < 8:
        return 0
    if log2 < 16:
        return 1
    if log2 < 32:
        return 2
    return 3


cdef inline int _tagshift_for(int log2, int ixshift) noexcept nogil:
    """63 minus the spare bits of an index slot (its width less the sign
    bit less the log2 bits a position needs): the shift that leaves a tag
    of exactly those spare bits."""
    return 63 - (((8 << ixshift) - 1) - log2)


cdef inline Py_ssize_t _tag(const Table* t, Py_hash_t hash) noexcept nogil:
    """The tag of ``hash`` in t's index: the bits above log2 of a slot."""
    return <Py_ssize_t>(FASTKV_TAG_MIX(hash) >> t.tagshift)


cdef inline bint _int_hash_exact(PyObject* k, Py_hash_t hash) noexcept:
    """k is an exact int whose hash is its value: two such keys with equal
    hashes are equal. No Python."""
    return _is_int(k) and fastkv_int_hash_exact(k, hash)


cdef inline Entry* table_entry(const Table* t, Py_ssize_t ix) noexcept nogil:
    return <Entry*>(t._entries + ix * t.stride)


cdef inline Py_hash_t _entry_hash(const Table* t, const Entry* ep) noexcept nogil:
    if t.unicode:
        return FASTKV_STR_HASH(ep.key)
    return ep.hash


cdef inline Py_hash_t table_entry_hash(const Table* t, Py_ssize_t ix) noexcept nogil:
    return _entry_hash(t, table_entry(t, ix))


cdef inline Py_ssize_t _ix_get(const Table* t, size_t i) noexcept nogil:
    cdef int s = t.ixshift
    if s == 0:
        return (<const int8_t*>t.indices)[i]
    if s == 1:
        return (<const int16_t*>t.indices)[i]
    if s == 2:
        return (<const int32_t*>t.indices)[i]
    return (<const int64_t*>t.indices)[i]


cdef inline void _ix_put(Table* t, size_t i, Py_ssize_t ix, Py_hash_t hash) noexcept nogil:
    """Point slot i at entry ix (whose key has this hash), tagged."""
    _ix_set(t, i, ix | (_tag(t, hash) << t.log2))


cdef inline void _ix_set(Table* t, size_t i, Py_ssize_t ix) noexcept nogil:
    cdef int s = t.ixshift
    if s == 0:
        (<int8_t*>t.indices)[i] = <int8_t>ix
    elif s == 1:
        (<int16_t*>t.indices)[i] = <int16_t>ix
    elif s == 2:
        (<int32_t*>t.indices)[i] = <int32_t>ix
    else:
        (<int64_t*>t.indices)[i] = <int64_t>ix


cdef inline size_t _index_bytes(const Table* t) noexcept nogil:
    return (<size_t>1 << t.log2) << t.ixshift


cdef inline void table_move(Table* dst, const Table* src) noexcept nogil:
    """``dst[0] = src[0]``, with ``used`` (the first field) stored as a relaxed
    atomic: a LockedTable's len() without the lock (OwnerTable.info()) reads it
    while the lock holder replaces the whole table. A plain struct copy would be
    a data race on a free-threaded build (harmless on x86, undefined in C)."""
    memcpy(<char*>dst + sizeof(Py_ssize_t), <const char*>src + sizeof(Py_ssize_t),
           sizeof(Table) - sizeof(Py_ssize_t))
    fk_ssize_store(&dst.used, src.used)


cdef inline void _set_empty(Table* t, int unicode) noexcept nogil:
    fk_ssize_store(&t.used, 0)          # len() without the lock reads it
    t.nentries = 0
    t.capacity = 0
    t.usable = 0
    t.filled = 0
    t.log2 = MIN_LOG2
    t.mask = (1 << MIN_LOG2) - 1
    t.ixshift = 0
    t.tagshift = _tagshift_for(MIN_LOG2, 0)
    t.intexact = True
    t.unicode = unicode
    t.stride = STRIDE_UNICODE if unicode else STRIDE_GENERAL
    t.indices = <void*>fastkv_empty_index
    t._entries = NULL


cdef int _alloc(Table* t, Py_ssize_t capacity) except -1:
    """Give the empty, unallocated table t (its layout already chosen) fresh
    arrays for ``capacity`` entries, the index all IX_EMPTY. MemoryError, t
    unchanged, on failure."""
    cdef int log2 = _log2_for(capacity)
    cdef int ixshift = _ixshift_for(log2)
    cdef size_t nbytes
    cdef void* indices
    cdef char* entries = NULL
    if capacity < 0 or <size_t>capacity > (<size_t>0x7fffffffffffffff) // <size_t>t.stride or log2 > MAX_LOG2:
        raise MemoryError()
    nbytes = (<size_t>1 << log2) << ixshift
    indices = PyMem_Malloc(nbytes)
    if indices == NULL:
        raise MemoryError()
    if capacity > 0:
        entries = <char*>PyMem_Malloc(<size_t>capacity * <size_t>t.stride)
        if entries == NULL:
            PyMem_Free(indices)
            raise MemoryError()
    memset(indices, 0xff, nbytes)       # -1 == IX_EMPTY at every width
    fk_ssize_store(&t.used, 0)          # len() without the lock reads it
    t.nentries = 0
    t.capacity = capacity
    t.usable = capacity
    t.filled = 0
    t.log2 = log2
    t.mask = (<size_t>1 << log2) - 1
    t.ixshift = ixshift
    t.tagshift = _tagshift_for(log2, ixshift)
    t.indices = indices
    t._entries = entries
    return 0


cdef inline void _free_arrays(void* indices, char* entries) noexcept:
    # free-threaded build: a lock-free reader of a LockedTable may still be
    # probing these arrays; wait for its read section to end (_ft.h)
    if indices == <void*>fastkv_empty_index and entries == NULL:
        return
    fk_rd_synchronize()
    if indices != <void*>fastkv_empty_index:
        PyMem_Free(indices)
    if entries != NULL:
        PyMem_Free(entries)


cdef inline size_t _free_slot(const Table* t, Py_hash_t hash, Py_ssize_t* held) noexcept nogil:
    """First index slot on hash's probe sequence that holds no entry; what it
    holds (IX_EMPTY or IX_DUMMY) in *held."""
    cdef size_t mask = t.mask
    cdef size_t perturb = <size_t>hash
    cdef size_t i = <size_t>hash & mask
    cdef Py_ssize_t cur = _ix_get(t, i)
    while cur >= 0:
        perturb >>= 5
        i = (i * 5 + perturb + 1) & mask
        cur = _ix_get(t, i)
    held[0] = cur
    return i


cdef inline size_t _slot_of(const Table* t, Py_hash_t hash, Py_ssize_t ix) noexcept nogil:
    """The index slot that points at live entry ix (which has this hash)."""
    cdef size_t mask = t.mask
    cdef size_t perturb = <size_t>hash
    cdef size_t i = <size_t>hash & mask
    cdef Py_ssize_t raw = _ix_get(t, i)
    while raw < 0 or <size_t>raw & mask != <size_t>ix:
        perturb >>= 5
        i = (i * 5 + perturb + 1) & mask
        raw = _ix_get(t, i)
    return i


cdef inline void _index_fill(Table* t, const Py_hash_t* hashes, Py_ssize_t base, Py_ssize_t m) noexcept nogil:
    """Index the m entries from ``base`` on, whose hashes are ``hashes[0..m)``
    (each gets the first free slot of its probe sequence). No Python."""
    t.filled += fastkv_index_fill(t.indices, t.ixshift, t.mask, t.log2, t.tagshift,
                                  hashes, base, m)


cdef void _build_index(Table* t) noexcept nogil:
    """Point the (all IX_EMPTY) index at entries [0, nentries), all live.
    Past the caches, BUILD_CHUNK hashes are read and their first slots
    prefetched before any is written, so the cache misses overlap."""
    cdef Py_ssize_t j, base, m
    cdef Py_hash_t hashes[BUILD_CHUNK]
    cdef size_t mask = t.mask
    cdef bint prefetch = _index_bytes(t) > BUILD_PREFETCH_BYTES
    t.filled = 0
    base = 0
    while base < t.nentries:
        m = min(<Py_ssize_t>BUILD_CHUNK, t.nentries - base)
        if prefetch and t.unicode:
            for j in range(m):
                FASTKV_PREFETCH(table_entry(t, base + j).key)
        for j in range(m):
            hashes[j] = table_entry_hash(t, base + j)
            if prefetch:
                FASTKV_PREFETCH(<char*>t.indices + ((<size_t>hashes[j] & mask) << t.ixshift))
        _index_fill(t, hashes, base, m)
        base += m


# --- equality without Python -------------------------------------------------

cdef extern from *:
    """
    #include "_shared.h"   /* fk_sh_eq_short: n <= 16 bytes, no call */
    /* Two exact, ready str objects: equal contents? Compact ASCII strs (most
       keys) have their bytes right after the header; up to 16 of them are
       compared with two overlapping loads a side (byte order does not matter
       to an equality), more by memcmp. */
    static inline int fastkv_str_eq(PyObject *a, PyObject *b) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(a);
        int kind;
        if (n != PyUnicode_GET_LENGTH(b))
            return 0;
        if (PyUnicode_IS_COMPACT_ASCII(a) && PyUnicode_IS_COMPACT_ASCII(b)) {
            const unsigned char *x = (const unsigned char *)((PyASCIIObject *)a + 1);
            const unsigned char *y = (const unsigned char *)((PyASCIIObject *)b + 1);
            if (n <= 16)
                return fk_sh_eq_short(x, y, (size_t)n);
            return memcmp(x, y, (size_t)n) == 0;
        }
        kind = PyUnicode_KIND(a);
        if (kind != PyUnicode_KIND(b))
            return 0;
        return memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n * kind) == 0;
    }
    """
    bint _str_eq "fastkv_str_eq"(PyObject* a, PyObject* b) noexcept


cdef inline bint _int_eq(PyObject* a, PyObject* b) noexcept:
    """Two exact int objects: equal values? (long_richcompare, no Python.)"""
    cdef int ova, ovb
    cdef Py_ssize_t sa, sb
    cdef long long x, y
    cdef PyObject* r
    if fastkv_int_small(a, &sa) and fastkv_int_small(b, &sb):
        return sa == sb
    x = _int_as_ll(a, &ova)
    y = _int_as_ll(b, &ovb)
    if ova == 0 and ovb == 0:
        return x == y
    if ova != ovb:
        return False
    r = fastkv_long_richcompare_eq(a, b)
    _decref(r)
    return r == Py_True


cdef inline int _fast_eq(PyObject* a, PyObject* b) noexcept:
    """1 equal, 0 not equal, -1 undecided without Python code."""
    if _is_str(a):
        if _is_str(b):
            return _str_eq(a, b)
        if _is_int(b):
            return 0
        return -1
    if _is_int(a):
        if _is_int(b):
            return _int_eq(a, b)
        if _is_str(b):
            return 0
    return -1


# --- the API -------------------------------------------------------------------

cdef inline Py_hash_t table_hash(object key) except? -1:
    """hash(key), reading an exact str's cached hash directly."""
    cdef Py_hash_t h
    if _is_str(<PyObject*>key):
        h = FASTKV_STR_HASH(<PyObject*>key)
        if h != -1:
            return h
    elif _is_int(<PyObject*>key):
        return fastkv_int_hash(<PyObject*>key)
    return _object_hash(<PyObject*>key)


cdef int table_init(Table* t, Py_ssize_t n) except -1:
    _set_empty(t, True)
    t.version = 0
    if n > 0:
        _alloc(t, n)
    return 0


cdef void table_clear(Table* t) noexcept:
    cdef void* indices = t.indices
    cdef char* entries = t._entries
    cdef Py_ssize_t n = t.nentries, stride = t.stride, j
    cdef Entry* ep
    _set_empty(t, True)
    t.version += 1
    # The table is now consistent (and empty): destructors may run.
    for j in range(n):
        ep = <Entry*>(entries + j * stride)
        if ep.key != NULL:
            _decref(ep.key)
            _decref(ep.value)
    _free_arrays(indices, entries)


cdef Py_ssize_t _lookup_str(const Table* t, PyObject* key, Py_hash_t hash) noexcept:
    """table_lookup_fast for an exact str key."""
    cdef size_t mask = t.mask
    cdef size_t perturb = <size_t>hash
    cdef size_t i = <size_t>hash & mask
    cdef int log2 = t.log2
    cdef Py_ssize_t tag = _tag(t, hash)
    cdef Py_ssize_t ix
    cdef const Entry* ep
    cdef PyObject* k
    if t.unicode:
        # every stored key is an exact str: dict's unicode_eq loop
        while True:
            ix = _ix_get(t, i)
            if ix >= 0:
                if (ix >> log2) == tag:
                    ix &= <Py_ssize_t>mask
                    k = (<const Entry*>(t._entries + (ix << 4))).key
                    if k == key or (FASTKV_STR_HASH(k) == hash and _str_eq(k, key)):
                        return ix
            elif ix == IX_EMPTY:
                return IX_EMPTY
            perturb >>= 5
            i = (i * 5 + perturb + 1) & mask
    while True:
        ix = _ix_get(t, i)
        if ix >= 0:
            if (ix >> log2) == tag:
                ix &= <Py_ssize_t>mask
                ep = table_entry(t, ix)
                k = ep.key
                if k == key:
                    return ix
                if ep.hash == hash:
                    if _is_str(k):
                        if _str_eq(k, key):
                            return ix
                    elif not _is_int(k):
                        return IX_SLOW
        elif ix == IX_EMPTY:
            return IX_EMPTY
        perturb >>= 5
        i = (i * 5 + perturb + 1) & mask


cdef Py_ssize_t _lookup_int(const Table* t, PyObject* key, Py_hash_t hash) noexcept:
    """table_lookup_fast for an exact int key in a general table."""
    cdef size_t mask = t.mask
    cdef size_t perturb = <size_t>hash
    cdef size_t i = <size_t>hash & mask
    cdef int log2 = t.log2
    cdef Py_ssize_t tag = _tag(t, hash)
    cdef Py_ssize_t ix
    cdef const Entry* ep
    cdef PyObject* k
    # Every stored key a hash-exact int (t.intexact) and so is this one: an
    # equal hash is an equal key, and the stored key object is never read
    # (one cache miss less than dict's compare on a large table). Asked only
    # at an equal hash: an absent key (an insert, a miss) never decodes its
    # digits here.
    cdef int exact = -1
    while True:
        ix = _ix_get(t, i)
        if ix >= 0:
            if (ix >> log2) == tag:
                ix &= <Py_ssize_t>mask
                ep = table_entry(t, ix)
                k = ep.key
                if k == key:
                    return ix
                if ep.hash == hash:
                    if exact < 0:
                        exact = t.intexact and fastkv_int_hash_exact(key, hash)
                    if exact:
                        return ix
                    if _is_int(k):
                        if _int_eq(k, key):
                            return ix
                    elif not _is_str(k):
                        return IX_SLOW
        elif ix == IX_EMPTY:
            return IX_EMPTY
        perturb >>= 5
        i = (i * 5 + perturb + 1) & mask


cdef inline Py_ssize_t table_lookup_fast(const Table* t, PyObject* key, Py_hash_t hash) noexcept:
    if _is_str(key):
        return _lookup_str(t, key, hash)
    if not _is_int(key):
        return IX_SLOW
    if t.unicode:
        return IX_EMPTY          # an int never equals a str
    return _lookup_int(t, key, hash)


cdef Py_ssize_t table_lookup(Table* t, PyObject* key, Py_hash_t hash) except -2:
    cdef size_t mask, perturb, i
    cdef Py_ssize_t ix, tag
    cdef Entry* ep
    cdef PyObject* startkey
    cdef uint64_t version
    cdef int cmp
    cdef int restarts = 0
    if _is_str(key) or _is_int(key):
        ix = table_lookup_fast(t, key, hash)
        if ix != IX_SLOW:
            return ix
    while True:
        mask = t.mask
        perturb = <size_t>hash
        i = <size_t>hash & mask
        tag = _tag(t, hash)
        while True:
            ix = _ix_get(t, i)
            if ix >= 0 and (ix >> t.log2) == tag:
                ix &= <Py_ssize_t>mask
                ep = table_entry(t, ix)
                startkey = ep.key
                if startkey == key:
                    return ix
                if _entry_hash(t, ep) == hash:
                    cmp = _fast_eq(startkey, key)
                    if cmp == 1:
                        return ix
                    if cmp < 0:
                        version = t.version
                        _incref(startkey)
                        cmp = _richcompare_bool(startkey, key, Py_EQ)
                        _decref(startkey)
                        if cmp < 0:
                            return -2
                        if t.version != version:
                            break                     # changed: restart
                        if cmp:
                            return ix
            elif ix == IX_EMPTY:
                return IX_EMPTY
            perturb >>= 5
            i = (i * 5 + perturb + 1) & mask
        restarts += 1
        if restarts > MAX_RESTARTS:
            raise RuntimeError(
                "fastkv: the table kept changing during a lookup "
                "(a key's __eq__ mutates the table it is looked up in)")


cdef int _rebuild(Table* t, Py_ssize_t capacity, int unicode) except -1:
    """t's live entries, in order, into fresh arrays for ``capacity`` entries
    in the given layout (general -> unicode only if every key is an exact str
    with its hash cached). No Python."""
    cdef Table n
    cdef Py_ssize_t j, k = 0
    cdef Entry* src
    cdef Entry* dst
    if capacity < t.used:
        capacity = t.used
    _set_empty(&n, unicode)
    _alloc(&n, capacity)
    for j in range(t.nentries):
        src = table_entry(t, j)
        if src.key != NULL:
            dst = table_entry(&n, k)
            dst.key = src.key
            dst.value = src.value
            if not unicode:
                dst.hash = _entry_hash(t, src)
            k += 1
    n.nentries = n.used = k
    n.usable = n.capacity - k
    n.intexact = t.intexact
    _build_index(&n)
    _free_arrays(t.indices, t._entries)
    n.version = t.version + 1
    table_move(t, &n)
    return 0


cdef int table_resize(Table* t, Py_ssize_t capacity) except -1:
    return _rebuild(t, capacity, t.unicode)


cdef int table_trim(Table* t) except -1:
    cdef char* entries
    if t.capacity == t.used:
        return 0
    if t.used == 0:
        table_clear(t)
        return 0
    if t.nentries != t.used:
        return _rebuild(t, t.used, t.unicode)
    fk_rd_synchronize()          # realloc may move (and free) the entries
    entries = <char*>PyMem_Realloc(t._entries, <size_t>t.used * <size_t>t.stride)
    if entries == NULL:
        raise MemoryError()
    t._entries = entries
    t.capacity = t.used
    t.usable = 0
    return 0


cdef inline Py_ssize_t _grow_capacity(Py_ssize_t used) noexcept nogil:
    """dict's GROWTH_RATE: an index of next_pow2(3 * used) slots, full use
    (past MAX_LOG2: a capacity _alloc refuses with MemoryError)."""
    cdef int k = MIN_LOG2
    while (<Py_ssize_t>1 << k) < used * 3:
        if k > MAX_LOG2:
            return used * 2
        k += 1
    return _usable(k)


cdef inline Py_ssize_t table_size_hint(Py_ssize_t hint, Py_ssize_t extra) noexcept nogil:
    """Entries to reserve for a hint of ``hint`` plus ``extra`` more (both
    from ``len()`` or ``__length_hint__`` of an argument, which may lie):
    clamped to [0, MAX_PRESIZE]; the table grows past it as entries come."""
    if hint < 0:
        hint = 0
    if extra < 0:
        extra = 0
    if hint > MAX_PRESIZE or extra > MAX_PRESIZE - hint:
        return MAX_PRESIZE
    return hint + extra


cdef int table_append(Table* t, PyObject* key, Py_hash_t hash, PyObject* value) except -1:
    cdef Py_ssize_t j, held
    cdef size_t i
    cdef Entry* ep
    if t.unicode and not (_is_str(key) and FASTKV_STR_HASH(key) == hash):
        _rebuild(t, t.capacity if t.used < t.capacity else _grow_capacity(t.used), False)
    elif t.usable <= 0:
        _rebuild(t, _grow_capacity(t.used), t.unicode)
    j = t.nentries
    i = _free_slot(t, hash, &held)
    if held == IX_EMPTY:
        t.filled += 1           # (a dummy slot taken over stays counted)
    _ix_put(t, i, j, hash)
    if t.intexact and not _int_hash_exact(key, hash):
        t.intexact = False
    ep = table_entry(t, j)
    ep.key = key
    ep.value = value
    if not t.unicode:
        ep.hash = hash
    _incref(key)
    _incref(value)
    t.nentries = j + 1
    t.usable -= 1
    fk_ssize_store(&t.used, t.used + 1)   # len() without the lock reads it
    t.version += 1
    return 0


cdef int _build_fault = 0     # tests only (_core._build_checked): 1 makes
                              # _fill_derived stop halfway as at a key that
                              # needs Python, 2 find the source index corrupt
cdef int _build_path = 0      # tests only: how _fill_derived last indexed
                              # (1 derived, 2 stopped, 3 rebuilt)


cdef Py_ssize_t _fill_derived(Table* t, const char* de, Py_ssize_t dn,
                              const char* dix) noexcept:
    """table_fill_from_dict's path for a big dict into a fresh table of the
    same layout (str dict and str table, or general and general) and of the
    dict's own index geometry (same log2, int32 slots; the dict has no
    holes, dn entries all live): the entries are copied in one sequential
    pass that keeps each key's index tag aside (2 bytes a key, 1 from 2**24
    slots on; PyMem, freed at once), then the index is the dict's own, read
    in order, each entry position tagged from that array -- instead of one
    random read-and-write of an index slot per key (at 1M keys most of a
    build's time: the slots miss every cache). Valid because the dict probes
    as the engine does, for the same hashes (checked at import,
    fastkv_dict_walk_verify), and entry j of the table is entry j of the
    dict. Returns the dict position reached (dn when done; t's counters
    updated, every entry indexed), or -1 with t unchanged when the tag array
    cannot be had. A key table_fill_from_dict leaves to Python (other than
    an exact str or int; in a str dict: an exact str with its hash cached,
    always) stops the copy there: what was copied is indexed by hash and its
    position returned; a dict index that does not account for exactly
    entries [0, dn) (never) is rebuilt by hash. No Python."""
    global _build_path
    cdef bint wide = t.log2 < 24, unicode = t.unicode, intexact = t.intexact
    cdef char* tags = <char*>PyMem_Malloc(<size_t>dn * (2 if wide else 1) + 8)
    cdef Py_ssize_t j, n = 0, dummies, stop = dn, ahead
    cdef int tagshift = t.tagshift
    cdef PyObject* const* dp
    cdef PyObject** up
    cdef Entry* ep
    cdef PyObject* k
    cdef PyObject* v
    cdef Py_hash_t h
    cdef uint64_t tag
    if tags == NULL:
        return -1
    memset(tags + dn * (2 if wide else 1), 0, 8)   # (read by the AVX2 gather, shifted out)
    if _build_fault == 1:
        stop = dn // 2
    for j in range(dn):
        ahead = j + BUILD_AHEAD
        if unicode:
            if ahead < dn:
                # the key object BUILD_AHEAD entries on: its refcount (written
                # here) and hash (read) are what this loop waits for
                k = (<PyObject* const*>(de + (ahead << 4)))[0]
                FASTKV_PREFETCH_W(k)
                FASTKV_PREFETCH(FASTKV_STR_HASH_ADDR(k))
            dp = <PyObject* const*>(de + (j << 4))
            k = dp[0]
            v = dp[1]
            if v == NULL or not _is_str(k) or j == stop:
                break
            h = FASTKV_STR_HASH(k)
            if h == -1:
                break
            up = <PyObject**>(t._entries + (j << 4))
            up[0] = k
            up[1] = v
        else:
            if ahead < dn:
                # its refcount (written) and, for an int, its digits (read)
                k = (<PyObject* const*>(de + ahead * 24))[1]
                FASTKV_PREFETCH_W(k)
                FASTKV_PREFETCH(<char*>k + 24)
            dp = <PyObject* const*>(de + j * 24)
            h = (<const Py_hash_t*>dp)[0]
            k = dp[1]
            v = dp[2]
            if v == NULL or j == stop:
                break
            if _is_int(k):
                if intexact and not fastkv_int_hash_exact(k, h):
                    intexact = False
            elif _is_str(k):
                intexact = False
            else:
                break
            ep = table_entry(t, j)
            ep.key = k
            ep.value = v
            ep.hash = h
        _incref(k)
        _incref(v)
        tag = FASTKV_TAG_MIX(h) >> tagshift
        if wide:
            (<uint16_t*>tags)[j] = <uint16_t>tag
        else:
            (<uint8_t*>tags)[j] = <uint8_t>tag
        n += 1
    t.nentries = n
    t.usable -= n
    fk_ssize_store(&t.used, n)          # len() without the lock reads it
    t.intexact = intexact and not unicode or n == 0
    t.version += 1
    if n < dn:
        PyMem_Free(tags)
        _build_index(t)
        _build_path = 2
        return n
    dummies = fastkv_index_derive32(<int32_t*>t.indices, <const int32_t*>dix, t.mask + 1,
                                    tags, wide, n, t.log2)
    PyMem_Free(tags)
    if dummies < 0 or _build_fault == 2:
        memset(t.indices, 0xff, _index_bytes(t))
        _build_index(t)
        _build_path = 3
        return n
    _build_path = 1
    t.filled = n + dummies
    if t.usable > _usable(t.log2) - t.filled:
        t.usable = max(0, _usable(t.log2) - t.filled)
    return n


cdef bint table_fill_from_dict(Table* t, object d, Py_ssize_t* pos) noexcept:
    """Bulk building from a dict: append its items from ``*pos`` on (a
    PyDict_Next position) while their keys need no Python code to hash and
    compare -- exact str, or exact int in a general table -- then stop at
    the first other key, ``*pos`` left on it. True when the dict is done.
    Requires: every key of d absent from t (a fresh table, or keys of one
    dict), and room for all of them (nentries + len(d) <= capacity, so no
    rebuild). Each key keeps the hash the dict stored for it where
    fk_dict_next gives it (dict(d) does the same), else the str's cached
    hash or the inline int hash: nothing is hashed by a call. One pass:
    BUILD_CHUNK items are copied, their hashes kept and their first index
    slots prefetched, then indexed, while each key object is still in cache
    from its INCREF (indexing in a second pass read every str again for
    its hash: at 1M keys more than dict(d) costs whole). A fresh table
    from a dict of its layout and index geometry takes the dict's index
    instead (_fill_derived: str keys 3.1x -> 1.0x dict(d) at 1M). No
    Python."""
    cdef Py_hash_t hashes[BUILD_CHUNK]
    cdef Py_ssize_t m, prev, base, n = t.nentries, dn = 0
    cdef bint prefetch = _index_bytes(t) > BUILD_PREFETCH_BYTES
    cdef bint unicode = t.unicode, intexact = t.intexact, done = False
    cdef size_t mask = t.mask
    cdef PyObject* k
    cdef PyObject* v
    cdef Py_hash_t h
    cdef Entry* ep
    cdef int dunicode = 0
    cdef const char* de = fastkv_dict_entries(d, &dunicode, &dn)
    cdef PyObject* const* dp
    cdef PyObject** up
    cdef Py_ssize_t dstride = 16 if dunicode else 24, j
    cdef const char* dix
    cdef int dlog2 = 0, dixshift = 0
    if (de != NULL and dunicode == unicode and pos[0] == 0 and t.nentries == 0
            and t.ixshift == 2 and dn > 0 and dn == len(<dict>d)):
        # a fresh table with the dict's layout and index geometry: derive
        # the index
        dix = fastkv_dict_index(d, &dlog2, &dixshift)
        if dix != NULL and dlog2 == t.log2 and dixshift == 2:
            j = _fill_derived(t, de, dn, dix)
            if j >= 0:
                pos[0] = j
                n = t.nentries
                intexact = t.intexact
                done = j == dn
    if de != NULL and dunicode and unicode and not done:
        # str keys into a str table, the common case, in a loop of its own:
        # no hash to copy, no layout to choose, no intexact to track
        j = pos[0]
        while not done:
            m = 0
            base = n
            while m < BUILD_CHUNK:
                if j >= dn:
                    done = True
                    break
                dp = <PyObject* const*>(de + (j << 4))
                v = dp[1]
                if v == NULL:
                    j += 1
                    continue
                k = dp[0]
                if not _is_str(k):
                    break
                h = FASTKV_STR_HASH(k)
                if h == -1:
                    break
                up = <PyObject**>(t._entries + (n << 4))
                up[0] = k
                up[1] = v
                _incref(k)
                _incref(v)
                n += 1
                j += 1
                hashes[m] = h
                if prefetch:
                    FASTKV_PREFETCH(<char*>t.indices + ((<size_t>h & mask) << t.ixshift))
                m += 1
            if m:
                _index_fill(t, hashes, base, m)
            if m < BUILD_CHUNK and not done:
                break               # the general loop below takes entry j
        pos[0] = j
        if n != t.nentries:
            intexact = False
    while not done:
        m = 0
        base = n
        while m < BUILD_CHUNK:
            prev = pos[0]
            if de != NULL:
                # the entries directly (a PyDict_Next position is an entry
                # index there); a deleted entry has no value
                while prev < dn:
                    dp = <PyObject* const*>(de + prev * dstride)
                    if dunicode:
                        v = dp[1]
                        if v != NULL:
                            k = dp[0]
                            h = -1
                            break
                    else:
                        v = dp[2]
                        if v != NULL:
                            k = dp[1]
                            h = (<const Py_hash_t*>dp)[0]
                            break
                    prev += 1
                if prev >= dn:
                    pos[0] = prev
                    done = True
                    break
                pos[0] = prev + 1
            elif not fk_dict_next(d, pos, &k, &v, &h):
                done = True
                break
            if _is_str(k):
                if h == -1:
                    h = FASTKV_STR_HASH(k)
                    if h == -1:             # (never in a dict) needs a call
                        pos[0] = prev
                        break
            elif _is_int(k) and not unicode:
                if h == -1:
                    h = fastkv_int_hash(k)
                if intexact and not fastkv_int_hash_exact(k, h):
                    intexact = False
            else:
                pos[0] = prev
                break
            if intexact and not _is_int(k):
                intexact = False
            ep = table_entry(t, n)
            ep.key = k
            ep.value = v
            if not unicode:
                ep.hash = h
            _incref(k)
            _incref(v)
            n += 1
            hashes[m] = h
            if prefetch:
                FASTKV_PREFETCH(<char*>t.indices + ((<size_t>h & mask) << t.ixshift))
            m += 1
        if m:
            _index_fill(t, hashes, base, m)
        if m < BUILD_CHUNK and not done:
            break
    t.intexact = intexact
    t.usable -= n - t.nentries
    fk_ssize_store(&t.used, t.used + (n - t.nentries))   # len() without the lock reads it
    t.nentries = n
    t.version += 1
    return done


cdef void table_replace_at(Table* t, Py_ssize_t ix, PyObject* value) noexcept:
    cdef Entry* ep = table_entry(t, ix)
    cdef PyObject* old = ep.value
    _incref(value)
    ep.value = value
    t.version += 1
    _decref(old)


cdef int table_insert(Table* t, PyObject* key, Py_hash_t hash, PyObject* value) except -1:
    cdef Py_ssize_t ix = table_lookup(t, key, hash)
    if ix >= 0:
        table_replace_at(t, ix, value)
        return 0
    table_append(t, key, hash, value)
    return 1


cdef void table_detach_at(Table* t, Py_ssize_t ix, PyObject** key, PyObject** value) noexcept:
    cdef Entry* ep = table_entry(t, ix)
    _ix_set(t, _slot_of(t, _entry_hash(t, ep), ix), IX_DUMMY)
    key[0] = ep.key
    value[0] = ep.value
    ep.key = NULL
    ep.value = NULL
    fk_ssize_store(&t.used, t.used - 1)
    t.version += 1
    while t.nentries > 0 and table_entry(t, t.nentries - 1).key == NULL:
        t.nentries -= 1


cdef int table_pop(Table* t, PyObject* key, Py_hash_t hash, PyObject** value) except -1:
    cdef Py_ssize_t ix = table_lookup(t, key, hash)
    cdef PyObject* k
    if ix < 0:
        return 0
    table_detach_at(t, ix, &k, value)
    _decref(k)
    return 1


cdef int table_delete(Table* t, PyObject* key, Py_hash_t hash) except -1:
    cdef PyObject* v
    if table_pop(t, key, hash, &v):
        _decref(v)
        return 1
    return 0


cdef int table_popitem(Table* t, PyObject** key, PyObject** value) noexcept:
    if t.used == 0:
        return 0
    table_detach_at(t, t.nentries - 1, key, value)   # trailing holes are trimmed
    return 1


cdef int table_copy(Table* dst, const Table* src, Py_ssize_t capacity, Py_ssize_t skip) except -1:
    cdef Py_ssize_t j, k = 0
    cdef Entry* ep
    cdef Entry* dp
    _set_empty(dst, src.unicode)
    dst.intexact = src.intexact
    dst.version = 0
    if capacity < src.used:
        capacity = src.used
    if capacity == 0:
        return 0
    _alloc(dst, capacity)
    if (skip < 0 and src.nentries == src.used and dst.log2 == src.log2
            and src.filled == src.nentries):
        # Same index, no holes, no dummies (every filled index slot points
        # at a live entry): two memcpy and the INCREFs (dict.copy's way).
        k = src.used
        if k == 0:
            return 0        # (src has no entry array: memcpy from NULL is UB)
        memcpy(dst.indices, src.indices, _index_bytes(src))
        memcpy(dst._entries, src._entries, <size_t>k * <size_t>src.stride)
        for j in range(k):
            ep = table_entry(dst, j)
            _incref(ep.key)
            _incref(ep.value)
        dst.nentries = dst.used = dst.filled = k
        dst.usable = dst.capacity - k
        return 0
    for j in range(src.nentries):
        ep = table_entry(src, j)
        if ep.key == NULL or j == skip:
            continue
        memcpy(table_entry(dst, k), ep, <size_t>src.stride)
        _incref(ep.key)
        _incref(ep.value)
        k += 1
    dst.nentries = dst.used = k
    dst.usable = dst.capacity - k
    _build_index(dst)
    return 0


cdef dict table_to_dict(const Table* t):
    """A new dict of t's live items in insertion order, presized, each key
    stored with its cached hash (nothing rehashed on 3.10-3.12). t must not
    change meanwhile (a snapshot or a private table): a dict insert may run a
    key's __eq__ when two keys' hashes collide."""
    cdef dict d = _PyDict_NewPresized(t.used)
    cdef Py_ssize_t j
    cdef const Entry* ep
    for j in range(t.nentries):
        ep = table_entry(t, j)
        if ep.key != NULL:
            fastkv_dict_set_known_hash(d, ep.key, ep.value, _entry_hash(t, ep))
    return d


cdef int table_reserve(Table* t) except -1:
    """Give t every entry slot its index allows (dict's growth room), by
    growing the entry array in place: the next appends need no rebuild. The
    index is kept (``filled`` says how much of it is taken, dummies
    included), so any table will do. No Python."""
    cdef Py_ssize_t room, cap
    cdef char* entries
    if t.capacity == 0:
        return 0
    room = _usable(t.log2) - t.filled
    if room <= t.usable:
        return 0
    cap = t.nentries + room
    entries = <char*>PyMem_Realloc(t._entries, <size_t>cap * <size_t>t.stride)
    if entries == NULL:
        raise MemoryError()
    t._entries = entries
    t.capacity = cap
    t.usable = room
    return 0


cdef inline bint table_next(const Table* t, Py_ssize_t* pos, PyObject** key, PyObject** value) noexcept:
    cdef Py_ssize_t i = pos[0]
    cdef const Entry* ep
    while i < t.nentries:
        ep = table_entry(t, i)
        i += 1
        if ep.key != NULL:
            key[0] = ep.key
            value[0] = ep.value
            pos[0] = i
            return True
    pos[0] = i
    return False


cdef inline bint table_prev(const Table* t, Py_ssize_t* pos, PyObject** key, PyObject** value) noexcept:
    cdef Py_ssize_t i = pos[0]
    cdef const Entry* ep
    if i > t.nentries:
        i = t.nentries
    while i > 0:
        i -= 1
        ep = table_entry(t, i)
        if ep.key != NULL:
            key[0] = ep.key
            value[0] = ep.value
            pos[0] = i
            return True
    pos[0] = 0
    return False


cdef inline Py_ssize_t table_sizeof(const Table* t) noexcept:
    cdef Py_ssize_t n = t.capacity * t.stride
    if t.indices != <void*>fastkv_empty_index:
        n += <Py_ssize_t>_index_bytes(t)
    return n


cdef int table_traverse(const Table* t, visitproc visit, void* arg) noexcept:
    cdef Py_ssize_t j
    cdef int r
    cdef const Entry* ep
    for j in range(t.nentries):
        ep = table_entry(t, j)
        if ep.key != NULL:
            r = visit(ep.key, arg)
            if r:
                return r
            r = visit(ep.value, arg)
            if r:
                return r
    return 0


# --- a thin wrapper, for the engine's own tests only ---------------------------

cdef object _NO_KEY = object()


def _str_equal(str a, str b):
    """The engine's str compare (fastkv_str_eq) on two exact strs, for tests
    (tests/test_frozen_core.py): a look-up reaches it only at an equal hash and
    tag, so its "not equal" answers cannot be driven through a table. Not
    public API."""
    if type(a) is not str or type(b) is not str:
        raise TypeError("_str_equal takes two exact str")
    return _str_eq(<PyObject*>a, <PyObject*>b)


@cython.final
@cython.auto_pickle(False)
cdef class _EngineTable:
    """The engine's mutable operations exposed one to one, so tests can drive
    them against a dict (tests/test_frozen_core.py). Not public API."""
    cdef Table tab

    def __cinit__(self, Py_ssize_t n=0):
        table_init(&self.tab, n)

    def __dealloc__(self):
        table_clear(&self.tab)

    def insert(self, key, value):
        if not isinstance(self, _EngineTable):
            fk_wrong_self(self, _EngineTable)
        return table_insert(&self.tab, <PyObject*>key, table_hash(key), <PyObject*>value)

    def lookup(self, key):
        if not isinstance(self, _EngineTable):
            fk_wrong_self(self, _EngineTable)
        cdef Py_ssize_t ix = table_lookup(&self.tab, <PyObject*>key, table_hash(key))
        if ix < 0:
            raise KeyError(key)
        return <object>table_entry(&self.tab, ix).value

    def lookup_fast(self, key):
        """The entry index, -1 (absent) or -3 (needs Python)."""
        if not isinstance(self, _EngineTable):
            fk_wrong_self(self, _EngineTable)
        return table_lookup_fast(&self.tab, <PyObject*>key, table_hash(key))

    def delete(self, key):
        if not isinstance(self, _EngineTable):
            fk_wrong_self(self, _EngineTable)
        return table_delete(&self.tab, <PyObject*>key, table_hash(key))

    def pop(self, key):
        if not isinstance(self, _EngineTable):
            fk_wrong_self(self, _EngineTable)
        cdef PyObject* v
        if not table_pop(&self.tab, <PyObject*>key, table_hash(key), &v):
            raise KeyError(key)
        value = <object>v
        _decref(v)
        return value

    def popitem(self):
        if not isinstance(self, _EngineTable):
            fk_wrong_self(self, _EngineTable)
        cdef PyObject* k
        cdef PyObject* v
        if not table_popitem(&self.tab, &k, &v):
            raise KeyError("popitem(): table is empty")
        item = (<object>k, <object>v)
        _decref(k)
        _decref(v)
        return item

    def clear(self):
        if not isinstance(self, _EngineTable):
            fk_wrong_self(self, _EngineTable)
        table_clear(&self.tab)

    def resize(self, Py_ssize_t capacity):
        if not isinstance(self, _EngineTable):
            fk_wrong_self(self, _EngineTable)
        table_resize(&self.tab, capacity)

    def trim(self):
        if not isinstance(self, _EngineTable):
            fk_wrong_self(self, _EngineTable)
        table_trim(&self.tab)

    def reserve(self):
        if not isinstance(self, _EngineTable):
            fk_wrong_self(self, _EngineTable)
        table_reserve(&self.tab)

    def copy(self, Py_ssize_t capacity=-1, skip_key=_NO_KEY):
        if not isinstance(self, _EngineTable):
            fk_wrong_self(self, _EngineTable)
        cdef _EngineTable new = _EngineTable()
        cdef Py_ssize_t skip = -1
        if skip_key is not _NO_KEY:
            skip = table_lookup(&self.tab, <PyObject*>skip_key, table_hash(skip_key))
        table_copy(&new.tab, &self.tab, capacity, skip)
        return new

    def items(self):
        if not isinstance(self, _EngineTable):
            fk_wrong_self(self, _EngineTable)
        cdef Py_ssize_t pos = 0
        cdef PyObject* k
        cdef PyObject* v
        out = []
        while table_next(&self.tab, &pos, &k, &v):
            out.append((<object>k, <object>v))
        return out

    def __len__(self):
        return self.tab.used

    def info(self):
        if not isinstance(self, _EngineTable):
            fk_wrong_self(self, _EngineTable)
        return {"used": self.tab.used, "nentries": self.tab.nentries,
                "capacity": self.tab.capacity, "log2": self.tab.log2,
                "unicode": bool(self.tab.unicode), "stride": self.tab.stride,
                "intexact": bool(self.tab.intexact), "filled": self.tab.filled,
                "version": self.tab.version, "sizeof": table_sizeof(&self.tab)}

    cdef bint _indexed(self, Py_ssize_t j):
        cdef Py_hash_t h = table_entry_hash(&self.tab, j)
        cdef size_t perturb = <size_t>h
        cdef size_t i = <size_t>h & self.tab.mask
        cdef Py_ssize_t ix
        while True:
            ix = _ix_get(&self.tab, i)
            if ix >= 0 and <size_t>ix & self.tab.mask == <size_t>j:
                if (ix >> self.tab.log2) != _tag(&self.tab, h):
                    raise AssertionError("wrong tag")
                return True
            if ix == IX_EMPTY:
                return False
            perturb >>= 5
            i = (i * 5 + perturb + 1) & self.tab.mask

    def check(self):
        """Verify the invariants; AssertionError-free means consistent."""
        if not isinstance(self, _EngineTable):
            fk_wrong_self(self, _EngineTable)
        cdef Py_ssize_t j, live = 0, ix, filled = 0
        cdef size_t i
        cdef Entry* ep
        if self.tab.capacity > _usable(self.tab.log2):
            raise AssertionError("capacity exceeds the index's usable size")
        for j in range(self.tab.nentries):
            ep = table_entry(&self.tab, j)
            if ep.key == NULL:
                continue
            live += 1
            if self.tab.unicode and not _is_str(ep.key):
                raise AssertionError("non-str key in a unicode table")
            if self.tab.intexact and not _int_hash_exact(ep.key, table_entry_hash(&self.tab, j)):
                raise AssertionError("intexact with another key")
            if table_entry_hash(&self.tab, j) != hash(<object>ep.key):
                raise AssertionError("stale hash")
            if not self._indexed(j):
                raise AssertionError("entry not indexed")
        if live != self.tab.used:
            raise AssertionError("used miscounted")
        if self.tab.nentries and table_entry(&self.tab, self.tab.nentries - 1).key == NULL:
            raise AssertionError("trailing hole")
        for i in range(self.tab.mask + 1):
            ix = _ix_get(&self.tab, i)
            if ix >= 0:
                ix &= <Py_ssize_t>self.tab.mask
            if ix >= self.tab.nentries or ix < IX_DUMMY:
                raise AssertionError("bad index slot")
            if ix >= 0 and table_entry(&self.tab, ix).key == NULL:
                raise AssertionError("index points at a hole")
            if ix != IX_EMPTY:
                filled += 1
        if filled != self.tab.filled:
            raise AssertionError("filled miscounted")
        if self.tab.usable < 0 or self.tab.usable > self.tab.capacity - self.tab.nentries:
            raise AssertionError("usable out of range")
        if filled + self.tab.usable > _usable(self.tab.log2):
            raise AssertionError("appends left could fill the index past 2/3")
        return True

