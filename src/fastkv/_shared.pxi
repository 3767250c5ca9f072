# fastkv/_shared.pxi: SharedTable, one snapshot for every process on the
# machine (included by _core.pyx).
#
# Design note
# ===========
#
# A SharedTable is a FrozenTable whose snapshot is an immutable file in shared
# memory (/dev/shm by default), mapped read-only by every process that opens
# it. The files, locks and reclamation are Python (``fastkv/_shm.py``, shared
# with the reference twin); this part is the format's C side: hashing,
# encoding, bounds-checked decoding and lookup, and the table's read path.
#
# Files (little-endian; every offset and size is checked against the real
# file sizes before use, and again at each access):
#
# Index file, one per generation, immutable once published:
#   0    header, 112 bytes: magic "FASTKVSH", version u32, flags u32 (1 =
#        pickle), index_size, count, nslots, seed, data_epoch, data_len,
#        garbage, index_sum, data_a, data_b, reserved (u64 each), head_sum
#        (checksum of bytes 0..104)
#   112  slots: nslots (a power of two >= 8, load < 2/3) u32 = entry index+1,
#        0 empty; linear probing from hash & (nslots-1)
#   ..   entries, insertion order: {u64 hash, u64 data offset, u32 key
#        length, u32 value length}, 24 bytes
# Data file of epoch data_epoch: each entry's key bytes then its value bytes.
# Append-only: the first data_len bytes are immutable once published (a
# publish appends past them; compaction writes the next epoch's file), so a
# publish of one key copies the index (28 bytes a key), never the data.
#
# Checksums (fk_sh_checksum, Fletcher-style over u64 words): index_sum over
# the slots and entries; data_a/data_b, the running sums over the data,
# continued by each append (so a publish never rereads the data). ``open``
# always checks the header (magic, version, head_sum, sizes against both
# files: O(1)); ``open(verify=True)`` also checks index_sum and the data sums
# (O(size)). Either way a corrupt or hostile file can never make a read go out
# of bounds: every slot, entry and encoded byte is bounds-checked where it is
# used, a probe sequence is bounded by nslots, nesting by _SH_MAX_DEPTH, and a
# violation raises ValueError. (Truncating a mapped file under a reader is
# SIGBUS: published files are never truncated, and are mode 0600.)
#
# Encoding (one tag byte, then): None/False/True nothing; int zigzag LEB128
# (|x| < 2**63) or a length-prefixed two's complement (bigger); float 8 bytes;
# str ASCII or UTF-8 (surrogatepass) and bytes, LEB128 length + bytes; list,
# tuple LEB128 count + items; dict count + key/value pairs; pickle (only
# when the table was created with pickle=True) length + pickle bytes. A key's
# canonical bytes are its encoding with dict's equalities folded in (True and
# 1.0 encode as the int 1, any str subclass as str): the lookup encodes the
# probe key into a stack buffer and compares bytes, creating no object.
# The hash is fastkv's own (fk_sh_hash): seeded (a random seed per table, in
# the header), over those bytes, so every process finds the same slot
# whatever its PYTHONHASHSEED.
#
# How a reader notices a new snapshot: the control file (see _shm.py) holds a
# u64 generation counter, mapped by every process. Every read does one
# acquire load of it and compares it with the generation it has mapped; on a
# mismatch (once per publish per process) it maps the new file, checks its
# header, drops the old mapping (unmapped once no iterator holds it) and
# clears the decoded-value cache.
#
# Decoded-value cache: a per-process dict {key: value} for keys of exact type
# str, int, bytes or tuple, bounded by ``cache_size`` entries (cleared whole
# when full: O(1) amortized, hot keys come back at once), cleared on every
# snapshot swap. A hot read is the generation load plus one dict lookup; a
# cold read encodes, hashes, probes the mapping and decodes.
#
# Reclamation: writers unlink the previous generation's file right after
# publishing (readers that still map it keep it until they move on); the last
# process to close the table unlinks every file (liveness is a shared flock on
# the control file). Writers serialize on an exclusive flock (_shm.py).

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from libc.stdint cimport uint64_t, uint32_t, int64_t
from libc.string cimport memcpy, memcmp, memset
from cpython.ref cimport Py_XDECREF, Py_INCREF

import pickle as _pickle
import types as _types
from fastkv import _shm

cdef extern from "_shared.h":
    uint64_t fk_sh_ld64(const unsigned char* p) noexcept nogil
    uint32_t fk_sh_ld32(const unsigned char* p) noexcept nogil
    void fk_sh_st64(unsigned char* p, uint64_t v) noexcept nogil
    void fk_sh_st32(unsigned char* p, uint32_t v) noexcept nogil
    uint64_t fk_sh_hash(uint64_t seed, const unsigned char* p, size_t n) noexcept nogil
    size_t fk_sh_str_slot(const unsigned char* p, size_t n, size_t mask) noexcept nogil
    bint fk_sh_is_ascii(const unsigned char* p, size_t n) noexcept nogil
    bint fk_sh_eq_short(const unsigned char* a, const unsigned char* b, size_t n) noexcept nogil
    uint64_t fk_sh_checksum(const unsigned char* p, size_t n) noexcept nogil
    void fk_sh_fletcher(uint64_t* a, uint64_t* b, const unsigned char* p, size_t n) noexcept nogil
    uint64_t fk_sh_load_gen(const uint64_t* p) noexcept nogil
    void fk_sh_store_gen(uint64_t* p, uint64_t v) noexcept nogil
    uint64_t fk_sh_closed_gen
    object fk_sh_dict_presized(Py_ssize_t n)
    bint FK_SH_STR_CACHE

cdef extern from "Python.h":
    bint _sh_PyUnicode_IS_ASCII "PyUnicode_IS_ASCII"(object o)
    void* _sh_PyUnicode_DATA "PyUnicode_DATA"(object o)
    Py_ssize_t _sh_PyUnicode_GET_LENGTH "PyUnicode_GET_LENGTH"(object o)
    const char* PyUnicode_AsUTF8AndSize(object o, Py_ssize_t* size) except? NULL
    object _sh_PyUnicode_DecodeASCII "PyUnicode_DecodeASCII"(const char* s, Py_ssize_t n, const char* errors)
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t n, const char* errors)
    object _sh_PyUnicode_AsEncodedString "PyUnicode_AsEncodedString"(object o, const char* enc, const char* errors)
    long long _sh_PyLong_AsLongLongAndOverflow "PyLong_AsLongLongAndOverflow"(object o, int* overflow) except? -1
    object _sh_PyLong_FromLongLong "PyLong_FromLongLong"(long long v)
    double _sh_PyFloat_AS_DOUBLE "PyFloat_AS_DOUBLE"(object o)
    object _sh_PyFloat_FromDouble "PyFloat_FromDouble"(double v)
    bint _sh_PyUnicode_Check "PyUnicode_Check"(object o)
    bint _sh_PyLong_Check "PyLong_Check"(object o)
    bint _sh_PyBytes_Check "PyBytes_Check"(object o)
    bint _sh_PyTuple_Check "PyTuple_Check"(object o)
    bint _sh_PyFloat_Check "PyFloat_Check"(object o)
    char* _sh_PyBytes_AS_STRING "PyBytes_AS_STRING"(object o)
    Py_ssize_t _sh_PyBytes_GET_SIZE "PyBytes_GET_SIZE"(object o)
    Py_ssize_t _sh_PyTuple_GET_SIZE "PyTuple_GET_SIZE"(object o)
    PyObject* _sh_PyTuple_GET_ITEM "PyTuple_GET_ITEM"(object o, Py_ssize_t i)
    void _sh_PyTuple_SET_ITEM "PyTuple_SET_ITEM"(object t, Py_ssize_t i, object o)
    Py_ssize_t _sh_PyList_GET_SIZE "PyList_GET_SIZE"(object o)
    PyObject* _sh_PyList_GET_ITEM "PyList_GET_ITEM"(object o, Py_ssize_t i)
    void _sh_PyList_SET_ITEM "PyList_SET_ITEM"(object l, Py_ssize_t i, object o)
    object _sh_PyTuple_New "PyTuple_New"(Py_ssize_t n)
    object _sh_PyList_New "PyList_New"(Py_ssize_t n)
    PyObject* _sh_PyDict_GetItemWithError "PyDict_GetItemWithError"(object d, object k) except? NULL
    int _sh_PyDict_SetItem "PyDict_SetItem"(object d, object k, object v) except -1
    int _sh_PyDict_SetItem_nocheck "PyDict_SetItem"(object d, object k, object v) noexcept
    object _sh_PyUnicode_New "PyUnicode_New"(Py_ssize_t n, Py_UCS4 maxchar)
    bint _sh_PyErr_ExceptionMatches "PyErr_ExceptionMatches"(object exc) noexcept
    void _sh_PyErr_Clear "PyErr_Clear"() noexcept
    Py_ssize_t _sh_PyDict_GET_SIZE "PyDict_GET_SIZE"(object d)
    void _sh_Py_INCREF "Py_INCREF"(object o)

cdef enum:
    _SH_HEADER = 112     # _shm.HEADER_SIZE
    _SH_ENTRY = 24
    _SH_MAX_DEPTH = 100
    _SH_GEN_OFFSET = 16   # _shm.GEN_OFFSET
    # tags (mirrored by fastkv.reference)
    T_NONE = 0
    T_FALSE = 1
    T_TRUE = 2
    T_INT = 3
    T_BIGINT = 4
    T_FLOAT = 5
    T_ASCII = 6
    T_UTF8 = 7
    T_BYTES = 8
    T_LIST = 9
    T_TUPLE = 10
    T_DICT = 11
    T_PICKLE = 12

cdef uint64_t _SH_CLOSED = <uint64_t>-1   # a closed table's cached generation


cdef inline object _sh_corrupt(str what):
    raise ValueError("corrupt SharedTable snapshot: " + what)


# -- a growable byte buffer, on the stack for small keys --------------------------

cdef struct ShBuf:
    unsigned char* p
    Py_ssize_t n
    Py_ssize_t cap
    unsigned char stack[192]


cdef inline void shbuf_init(ShBuf* b) noexcept:
    b.p = b.stack
    b.n = 0
    b.cap = 192


cdef inline void shbuf_free(ShBuf* b) noexcept:
    if b.p != b.stack:
        PyMem_Free(b.p)
    b.p = b.stack


cdef int shbuf_grow(ShBuf* b, Py_ssize_t extra) except -1:
    """Make room for ``extra`` more bytes (MemoryError on failure)."""
    cdef Py_ssize_t cap = b.cap
    cdef unsigned char* p
    if b.n + extra <= cap:
        return 0
    while cap < b.n + extra:
        cap *= 2
    if b.p == b.stack:
        p = <unsigned char*>PyMem_Malloc(cap)
        if p != NULL:
            memcpy(p, b.stack, b.n)
    else:
        p = <unsigned char*>PyMem_Realloc(b.p, cap)
    if p == NULL:
        raise MemoryError()
    b.p = p
    b.cap = cap
    return 0


cdef inline int shbuf_put(ShBuf* b, const void* src, Py_ssize_t n) except -1:
    if b.n + n > b.cap:
        shbuf_grow(b, n)
    memcpy(b.p + b.n, src, n)
    b.n += n
    return 0


cdef inline int shbuf_byte(ShBuf* b, unsigned char c) except -1:
    if b.n + 1 > b.cap:
        shbuf_grow(b, 1)
    b.p[b.n] = c
    b.n += 1
    return 0


cdef inline int shbuf_varint(ShBuf* b, uint64_t v) except -1:
    if b.n + 10 > b.cap:
        shbuf_grow(b, 10)
    while v >= 0x80:
        b.p[b.n] = <unsigned char>(v | 0x80)
        b.n += 1
        v >>= 7
    b.p[b.n] = <unsigned char>v
    b.n += 1
    return 0


cdef inline int shbuf_lenbytes(ShBuf* b, unsigned char tag, const void* src, Py_ssize_t n) except -1:
    shbuf_byte(b, tag)
    shbuf_varint(b, <uint64_t>n)
    return shbuf_put(b, src, n)


# -- encoding -------------------------------------------------------------------


cdef int _sh_encode_str(ShBuf* b, object s) except -1:
    cdef Py_ssize_t n
    cdef const char* u
    if _sh_PyUnicode_IS_ASCII(s):
        return shbuf_lenbytes(b, T_ASCII, _sh_PyUnicode_DATA(s), _sh_PyUnicode_GET_LENGTH(s))
    try:
        u = PyUnicode_AsUTF8AndSize(s, &n)
    except UnicodeEncodeError:   # lone surrogates
        raw = _sh_PyUnicode_AsEncodedString(s, "utf-8", "surrogatepass")
        return shbuf_lenbytes(b, T_UTF8, _sh_PyBytes_AS_STRING(raw), _sh_PyBytes_GET_SIZE(raw))
    return shbuf_lenbytes(b, T_UTF8, u, n)


cdef int _sh_encode_int(ShBuf* b, object x) except -1:
    cdef int overflow = 0
    cdef long long v = _sh_PyLong_AsLongLongAndOverflow(x, &overflow)
    cdef uint64_t z
    if not overflow:
        z = (<uint64_t>v << 1) ^ <uint64_t>(v >> 63)
        shbuf_byte(b, T_INT)
        return shbuf_varint(b, z)
    x = int(x)
    raw = x.to_bytes((x.bit_length() + 8) // 8, "little", signed=True)
    return shbuf_lenbytes(b, T_BIGINT, _sh_PyBytes_AS_STRING(raw), _sh_PyBytes_GET_SIZE(raw))


cdef int _sh_encode_key(ShBuf* b, object k, bint strict, int depth) except -2:
    """Append ``k``'s canonical bytes: 0 done, 1 not a possible key (a lookup
    reports it absent; ``strict`` put raises TypeError instead)."""
    cdef Py_ssize_t i, n
    cdef double d
    if _sh_PyUnicode_Check(k):
        return _sh_encode_str(b, k)
    if _sh_PyLong_Check(k):          # bool too: True is the key 1
        return _sh_encode_int(b, k)
    if _sh_PyBytes_Check(k):
        return shbuf_lenbytes(b, T_BYTES, _sh_PyBytes_AS_STRING(k), _sh_PyBytes_GET_SIZE(k))
    if _sh_PyTuple_Check(k):
        if depth >= _SH_MAX_DEPTH:
            raise ValueError(f"SharedTable: key nested deeper than {_SH_MAX_DEPTH}")
        n = _sh_PyTuple_GET_SIZE(k)
        shbuf_byte(b, T_TUPLE)
        shbuf_varint(b, <uint64_t>n)
        for i in range(n):
            if _sh_encode_key(b, <object>_sh_PyTuple_GET_ITEM(k, i), strict, depth + 1):
                return 1
        return 0
    if _sh_PyFloat_Check(k) and not strict:
        d = _sh_PyFloat_AS_DOUBLE(k)
        if d == d and d - d == 0 and d == <double>int(k):   # finite and integral: 1.0 is the key 1
            return _sh_encode_int(b, int(k))
        return 1
    if strict:
        raise TypeError(
            f"SharedTable keys are str, bytes, int or tuples of them, not {type(k).__name__!r}")
    hash(k)                      # an unhashable key is a TypeError, as for dict
    return 1


cdef int _sh_encode_value(ShBuf* b, object v, bint allow_pickle, int depth) except -1:
    """Append the encoding of ``v`` (TypeError for what the format cannot hold)."""
    cdef type t = type(v)
    cdef Py_ssize_t i, n, pos
    cdef double d
    if v is None:
        return shbuf_byte(b, T_NONE)
    if v is True:
        return shbuf_byte(b, T_TRUE)
    if v is False:
        return shbuf_byte(b, T_FALSE)
    if t is int:
        return _sh_encode_int(b, v)
    if t is str:
        return _sh_encode_str(b, v)
    if t is float:
        d = _sh_PyFloat_AS_DOUBLE(v)
        shbuf_byte(b, T_FLOAT)
        shbuf_put(b, &d, 8)
        return 0
    if t is bytes:
        return shbuf_lenbytes(b, T_BYTES, _sh_PyBytes_AS_STRING(v), _sh_PyBytes_GET_SIZE(v))
    if t is list or t is tuple or t is dict:
        if depth >= _SH_MAX_DEPTH:
            raise ValueError(f"SharedTable: value nested deeper than {_SH_MAX_DEPTH} (or cyclic)")
        if t is dict:
            shbuf_byte(b, T_DICT)
            shbuf_varint(b, <uint64_t>len(<dict>v))
            for key, item in (<dict>v).items():
                _sh_encode_value(b, key, allow_pickle, depth + 1)
                _sh_encode_value(b, item, allow_pickle, depth + 1)
            return 0
        n = len(v)
        shbuf_byte(b, T_LIST if t is list else T_TUPLE)
        shbuf_varint(b, <uint64_t>n)
        for item in (<list>v if t is list else <tuple>v):
            _sh_encode_value(b, item, allow_pickle, depth + 1)
        return 0
    if allow_pickle:
        raw = _pickle.dumps(v, protocol=_pickle.HIGHEST_PROTOCOL)
        return shbuf_lenbytes(b, T_PICKLE, _sh_PyBytes_AS_STRING(raw), _sh_PyBytes_GET_SIZE(raw))
    raise TypeError(
        f"SharedTable values are None, bool, int, float, str, bytes and lists, tuples, "
        f"dicts of them, not {type(v).__name__!r} (create the table with pickle=True to pickle others)")


cpdef bytes _sh_key_bytes(object key):
    cdef ShBuf b
    shbuf_init(&b)
    try:
        _sh_encode_key(&b, key, True, 0)
        return PyBytes_FromStringAndSize(<char*>b.p, b.n)
    finally:
        shbuf_free(&b)


cpdef bytes _sh_value_bytes(object value, bint allow_pickle):
    cdef ShBuf b
    shbuf_init(&b)
    try:
        _sh_encode_value(&b, value, allow_pickle, 0)
        return PyBytes_FromStringAndSize(<char*>b.p, b.n)
    finally:
        shbuf_free(&b)


# -- decoding (every byte bounds-checked) ---------------------------------------


cdef inline int _sh_varint(const unsigned char** pp, const unsigned char* end, uint64_t* out) except -1:
    cdef const unsigned char* p = pp[0]
    cdef uint64_t v = 0
    cdef int shift = 0
    cdef unsigned char c
    while True:
        if p >= end:
            _sh_corrupt("truncated length")
        c = p[0]
        p += 1
        if shift == 63 and c > 1:
            _sh_corrupt("length overflows 64 bits")
        v |= <uint64_t>(c & 0x7F) << shift
        if c < 0x80:
            break
        shift += 7
        if shift > 63:
            _sh_corrupt("length overflows 64 bits")
    pp[0] = p
    out[0] = v
    return 0


cdef inline int _sh_need(const unsigned char* p, const unsigned char* end, uint64_t n) except -1:
    if n > <uint64_t>(end - p):
        _sh_corrupt("an item runs past its entry")
    return 0


cdef enum:
    _SH_STRS = 512          # slots of each half of a map's short-string cache
    _SH_STR_MAX = 16        # longest string it holds


cdef inline object _sh_new_ascii(const unsigned char* p, Py_ssize_t n):
    """A new str of the n bytes at p (ValueError unless they are all ASCII):
    checked a word at a time and copied into a fresh compact str."""
    if not fk_sh_is_ascii(p, <size_t>n):
        _sh_corrupt("non-ASCII bytes in an ASCII string")
    s = _sh_PyUnicode_New(n, 127)
    if n:
        memcpy(_sh_PyUnicode_DATA(s), p, <size_t>n)
    return s


cdef inline object _sh_ascii(const unsigned char* p, Py_ssize_t n, PyObject** strs):
    """The str of n ASCII bytes (ValueError if they are not ASCII). Short ones
    come from a direct-mapped cache (``strs``: _SH_STRS slots, or NULL) of the
    strings this snapshot decoded last: record field names and small values
    repeat, and a cached str also brings its cached hash to the dict it is put
    in. Dict keys have their own half of the map's cache (_sh_decode), so the
    field names are not evicted by the values of every record read."""
    cdef size_t slot
    cdef PyObject* o
    if strs == NULL or n > _SH_STR_MAX:
        return _sh_new_ascii(p, n)
    slot = fk_sh_str_slot(p, <size_t>n, _SH_STRS - 1)
    o = strs[slot]
    if o != NULL and _sh_PyUnicode_GET_LENGTH(<object>o) == n and fk_sh_eq_short(
            <const unsigned char*>_sh_PyUnicode_DATA(<object>o), p, <size_t>n):
        return <object>o
    s = _sh_new_ascii(p, n)
    Py_XDECREF(o)
    Py_INCREF(s)
    strs[slot] = <PyObject*>s
    return s


cdef int _sh_setitem_failed() except -1:
    """PyDict_SetItem of a decoded pair failed (its error set): an unhashable
    key is the file's fault (ValueError); anything else propagates."""
    if _sh_PyErr_ExceptionMatches(TypeError):
        _sh_PyErr_Clear()
        _sh_corrupt("an unhashable dict key")
    return -1


cdef object _sh_decode(const unsigned char** pp, const unsigned char* end, bint allow_pickle, int depth,
                       PyObject** strs=NULL, int half=0):
    """Decode one item at pp[0] (advanced past it), never reading at or past
    ``end``; ValueError for anything malformed. ``strs``: a map's short-string
    cache (2 * _SH_STRS slots) or NULL; ``half`` 1 for what is inside a dict
    key (the second half of the cache), else 0."""
    cdef const unsigned char* p = pp[0]
    cdef unsigned char tag
    cdef uint64_t n, z, i
    cdef double d
    cdef object out
    cdef Py_ssize_t ln
    cdef PyObject** kstrs
    if p >= end:
        _sh_corrupt("truncated item")
    tag = p[0]
    p += 1
    if tag == T_ASCII and p < end and p[0] < 0x80:   # the common case: a short str
        n = p[0]
        p += 1
        if <Py_ssize_t>n > end - p:
            _sh_corrupt("an item runs past its entry")
        out = _sh_ascii(p, <Py_ssize_t>n, strs + half * _SH_STRS if strs != NULL else NULL)
        pp[0] = p + n
        return out
    if tag == T_NONE:
        out = None
    elif tag == T_TRUE:
        out = True
    elif tag == T_FALSE:
        out = False
    elif tag == T_INT:
        _sh_varint(&p, end, &z)
        out = _sh_PyLong_FromLongLong(<long long>((z >> 1) ^ (-(z & 1))))
    elif tag == T_ASCII or tag == T_UTF8 or tag == T_BYTES or tag == T_BIGINT or tag == T_PICKLE:
        _sh_varint(&p, end, &n)
        _sh_need(p, end, n)
        if tag == T_ASCII:
            out = _sh_ascii(p, <Py_ssize_t>n, strs + half * _SH_STRS if strs != NULL else NULL)
        elif tag == T_UTF8:
            try:
                out = PyUnicode_DecodeUTF8(<const char*>p, <Py_ssize_t>n, "surrogatepass")
            except UnicodeDecodeError:
                _sh_corrupt("invalid UTF-8")
        elif tag == T_BYTES:
            out = PyBytes_FromStringAndSize(<const char*>p, <Py_ssize_t>n)
        elif tag == T_BIGINT:
            out = int.from_bytes(PyBytes_FromStringAndSize(<const char*>p, <Py_ssize_t>n), "little", signed=True)
        else:
            if not allow_pickle:
                _sh_corrupt("a pickled value in a table opened without pickle=True")
            out = _pickle.loads(PyBytes_FromStringAndSize(<const char*>p, <Py_ssize_t>n))
        p += n
    elif tag == T_FLOAT:
        _sh_need(p, end, 8)
        memcpy(&d, p, 8)
        p += 8
        out = _sh_PyFloat_FromDouble(d)
    elif tag == T_LIST or tag == T_TUPLE or tag == T_DICT:
        if depth >= _SH_MAX_DEPTH:
            _sh_corrupt("nesting too deep")
        _sh_varint(&p, end, &n)
        _sh_need(p, end, n * 2 if tag == T_DICT else n)   # every item takes a byte at least
        if tag == T_DICT:
            # a record: short str keys and values are decoded here, without
            # a call per item (the rest through _sh_decode)
            kstrs = strs + _SH_STRS if strs != NULL else NULL
            out = fk_sh_dict_presized(<Py_ssize_t>n)
            for i in range(n):
                if end - p > 1 and p[0] == T_ASCII and p[1] < 0x80:
                    ln = p[1]
                    p += 2
                    if ln > end - p:
                        _sh_corrupt("an item runs past its entry")
                    k = _sh_ascii(p, ln, kstrs)
                    p += ln
                else:
                    k = _sh_decode(&p, end, allow_pickle, depth + 1, strs, 1)
                if end - p > 1 and p[0] == T_ASCII and p[1] < 0x80:
                    ln = p[1]
                    p += 2
                    if ln > end - p:
                        _sh_corrupt("an item runs past its entry")
                    v = _sh_ascii(p, ln, strs)
                    p += ln
                else:
                    v = _sh_decode(&p, end, allow_pickle, depth + 1, strs, 0)
                if _sh_PyDict_SetItem_nocheck(out, k, v) < 0:
                    _sh_setitem_failed()
        elif tag == T_LIST:
            out = _sh_PyList_New(<Py_ssize_t>n)
            for i in range(n):
                v = _sh_decode(&p, end, allow_pickle, depth + 1, strs, half)
                _sh_Py_INCREF(v)
                _sh_PyList_SET_ITEM(out, <Py_ssize_t>i, v)
        else:
            out = _sh_PyTuple_New(<Py_ssize_t>n)
            for i in range(n):
                v = _sh_decode(&p, end, allow_pickle, depth + 1, strs, half)
                _sh_Py_INCREF(v)
                _sh_PyTuple_SET_ITEM(out, <Py_ssize_t>i, v)
    else:
        _sh_corrupt(f"unknown tag {tag}")
    pp[0] = p
    return out


# -- one mapped snapshot ----------------------------------------------------------


@cython.final
@cython.auto_pickle(False)
cdef class _SharedMap:
    """One mapped snapshot file, its header validated; unmapped when the last
    holder (the table, an iterator, a writer) drops it."""
    cdef readonly object mm          # the index
    cdef readonly object dmm         # the data (None when empty)
    cdef readonly object hdr
    cdef readonly uint64_t gen
    cdef Py_buffer view
    cdef Py_buffer dview
    cdef bint has_view, has_dview
    cdef const unsigned char* base   # index
    cdef const unsigned char* dbase  # data
    cdef uint64_t size, count, nslots, mask, seed, entries_off, data_len
    cdef bint allow_pickle
    cdef PyObject* strs[2 * _SH_STRS]   # _sh_ascii's cache (owned references; dict keys in the second half)
    # the decoded values of this snapshot (the table's bounded cache): a cache
    # that belongs to its map cannot be filled with another snapshot's values
    # by a thread that decoded them before a refresh
    cdef dict cache

    def __dealloc__(self):
        cdef int i
        for i in range(2 * _SH_STRS):
            Py_XDECREF(self.strs[i])
            self.strs[i] = NULL
        if self.has_view:
            PyBuffer_Release(&self.view)
            self.has_view = False
        if self.has_dview:
            PyBuffer_Release(&self.dview)
            self.has_dview = False


cdef _SharedMap _sh_map_new(object mm, object dmm, Py_ssize_t dsize, uint64_t gen, bint allow_pickle,
                            bint verify):
    cdef _SharedMap m = _SharedMap.__new__(_SharedMap)
    cdef uint64_t a = 0, b = 0
    m.cache = {}
    PyObject_GetBuffer(mm, &m.view, PyBUF_SIMPLE)
    m.has_view = True
    m.base = <const unsigned char*>m.view.buf
    hdr = _shm.Header(mm, m.view.len, dsize, _sh_checksum)
    if dmm is not None:
        PyObject_GetBuffer(dmm, &m.dview, PyBUF_SIMPLE)
        m.has_dview = True
        m.dbase = <const unsigned char*>m.dview.buf
        if <uint64_t>m.dview.len < hdr.data_len:
            _sh_corrupt("the data mapping is shorter than the header says")
    elif hdr.data_len:
        _sh_corrupt("no data file for a table with data")
    if verify:
        if fk_sh_checksum(m.base + _SH_HEADER, m.view.len - _SH_HEADER) != hdr.index_sum:
            raise ValueError("corrupt SharedTable snapshot: index checksum mismatch")
        if hdr.data_len:
            fk_sh_fletcher(&a, &b, m.dbase, hdr.data_len)
        if a != hdr.data_a or b != hdr.data_b:
            raise ValueError("corrupt SharedTable snapshot: data checksum mismatch")
    if hdr.flags & _shm.FLAG_PICKLE and not allow_pickle:
        raise ValueError(
            "this SharedTable was created with pickle=True: open it with pickle=True "
            "(unpickling executes code from whoever can write the file)")
    m.mm = mm
    m.dmm = dmm
    m.hdr = hdr
    m.gen = gen
    m.size = hdr.size
    m.count = hdr.count
    m.nslots = hdr.nslots
    m.mask = hdr.nslots - 1
    m.seed = hdr.seed
    m.entries_off = hdr.entries_off
    m.data_len = hdr.data_len
    m.allow_pickle = allow_pickle
    return m


cdef inline int _sh_entry(_SharedMap m, uint64_t idx, uint64_t* off, uint32_t* kl, uint32_t* vl) except -1:
    """The bounds-checked data offset, key and value length of entry idx."""
    cdef const unsigned char* e = m.base + m.entries_off + _SH_ENTRY * idx
    cdef uint64_t o = fk_sh_ld64(e + 8)
    kl[0] = fk_sh_ld32(e + 16)
    vl[0] = fk_sh_ld32(e + 20)
    if o > m.data_len or <uint64_t>kl[0] + vl[0] > m.data_len - o:
        _sh_corrupt("an entry points outside the data")
    off[0] = o
    return 0


cdef Py_ssize_t _sh_probe(_SharedMap m, const unsigned char* key, Py_ssize_t n, uint64_t h) except -2:
    """The entry index of the key with these canonical bytes and hash, -1 if absent."""
    cdef uint64_t i = h & m.mask, probes, s, off
    cdef uint32_t kl, vl
    cdef const unsigned char* e
    if m.count == 0:
        return -1
    for probes in range(m.nslots):
        s = fk_sh_ld32(m.base + _SH_HEADER + 4 * i)
        if s == 0:
            return -1
        if s > m.count:
            _sh_corrupt("a slot points past the entries")
        e = m.base + m.entries_off + _SH_ENTRY * (s - 1)
        if fk_sh_ld64(e) == h and fk_sh_ld32(e + 16) == <uint32_t>n:
            _sh_entry(m, s - 1, &off, &kl, &vl)
            if memcmp(m.dbase + off, key, n) == 0:
                return <Py_ssize_t>(s - 1)
        i = (i + 1) & m.mask
    return -1


cdef Py_ssize_t _sh_find(_SharedMap m, object key) except -2:
    """Entry index of ``key`` in m, -1 if absent (or not a possible key)."""
    cdef ShBuf b
    cdef Py_ssize_t r
    shbuf_init(&b)
    try:
        if _sh_encode_key(&b, key, False, 0):
            return -1
        return _sh_probe(m, b.p, b.n, fk_sh_hash(m.seed, b.p, b.n))
    finally:
        shbuf_free(&b)


cdef object _sh_value_at(_SharedMap m, Py_ssize_t idx):
    cdef uint64_t off
    cdef uint32_t kl, vl
    cdef const unsigned char* p
    cdef const unsigned char* end
    _sh_entry(m, idx, &off, &kl, &vl)
    p = m.dbase + off + kl
    end = p + vl
    v = _sh_decode(&p, end, m.allow_pickle, 0, m.strs if FK_SH_STR_CACHE else NULL)
    if p != end:
        _sh_corrupt("trailing bytes after a value")
    return v


cdef object _sh_key_at(_SharedMap m, Py_ssize_t idx):
    cdef uint64_t off
    cdef uint32_t kl, vl
    cdef const unsigned char* p
    cdef const unsigned char* end
    _sh_entry(m, idx, &off, &kl, &vl)
    p = m.dbase + off
    end = p + kl
    k = _sh_decode(&p, end, False, 0, m.strs if FK_SH_STR_CACHE else NULL)
    if p != end:
        _sh_corrupt("trailing bytes after a key")
    return k


# -- the codec _shm.write_snapshot builds files with --------------------------------


cdef class _Buf:
    """A buffer held for a with-block (writable when asked)."""
    cdef Py_buffer view
    cdef bint held

    def __dealloc__(self):
        if self.held:
            PyBuffer_Release(&self.view)


cdef _Buf _sh_buf(object obj, bint writable):
    cdef _Buf b = _Buf.__new__(_Buf)
    PyObject_GetBuffer(obj, &b.view, PyBUF_WRITABLE if writable else PyBUF_SIMPLE)
    b.held = True
    return b


def _sh_hash(uint64_t seed, bytes kb):
    """fastkv's seeded 64-bit hash of canonical key bytes."""
    return fk_sh_hash(seed, <const unsigned char*>_sh_PyBytes_AS_STRING(kb), _sh_PyBytes_GET_SIZE(kb))


def _sh_checksum(data):
    """The format's checksum of a bytes-like object."""
    cdef _Buf b = _sh_buf(data, False)
    cdef uint64_t r
    with nogil:
        r = fk_sh_checksum(<const unsigned char*>b.view.buf, b.view.len)
    return r


def _sh_lookup(_SharedMap m, bytes kb, uint64_t h):
    """Entry index of canonical key bytes ``kb`` (hash ``h``) in m, -1 if absent."""
    return _sh_probe(m, <const unsigned char*>_sh_PyBytes_AS_STRING(kb), _sh_PyBytes_GET_SIZE(kb), h)


def _sh_rebuild_slots(mv, uint64_t nslots, uint64_t entries_off, uint64_t count):
    """Rebuild the slot array of a file being written from its entries' hashes."""
    cdef _Buf b = _sh_buf(mv, True)
    cdef unsigned char* base = <unsigned char*>b.view.buf
    cdef uint64_t mask = nslots - 1, j, i
    if count >= nslots or entries_off + _SH_ENTRY * count > <uint64_t>b.view.len \
            or _SH_HEADER + 4 * nslots > entries_off:
        raise ValueError("SharedTable: slots do not fit")
    with nogil:
        memset(base + _SH_HEADER, 0, 4 * nslots)
        for j in range(count):
            i = fk_sh_ld64(base + entries_off + _SH_ENTRY * j) & mask
            while fk_sh_ld32(base + _SH_HEADER + 4 * i):
                i = (i + 1) & mask
            fk_sh_st32(base + _SH_HEADER + 4 * i, <uint32_t>(j + 1))


def _sh_compact(mv, uint64_t entries_off, uint64_t count, old, out):
    """Copy the key/value bytes of the ``count`` entries (copied from the old
    index, old offsets) from the old data to ``out``, repointing each entry;
    returns the bytes written. ValueError if an old entry is out of bounds."""
    cdef _Buf b = _sh_buf(mv, True)
    cdef _Buf ob
    cdef _Buf outb = _sh_buf(out, True)
    cdef unsigned char* base = <unsigned char*>b.view.buf
    cdef const unsigned char* obase = NULL
    cdef unsigned char* dst = <unsigned char*>outb.view.buf
    cdef uint64_t old_len = 0, room = <uint64_t>outb.view.len
    cdef uint64_t j, o, n, cursor = 0
    cdef unsigned char* e
    if old is not None:
        ob = _sh_buf(old, False)
        obase = <const unsigned char*>ob.view.buf
        old_len = <uint64_t>ob.view.len
    if entries_off + _SH_ENTRY * count > <uint64_t>b.view.len:
        raise ValueError("SharedTable: entries do not fit")
    for j in range(count):
        e = base + entries_off + _SH_ENTRY * j
        o = fk_sh_ld64(e + 8)
        n = <uint64_t>fk_sh_ld32(e + 16) + fk_sh_ld32(e + 20)
        if o > old_len or n > old_len - o or n > room - cursor:
            _sh_corrupt("an entry points outside the data")
        if n:
            memcpy(dst + cursor, obase + o, n)
        fk_sh_st64(e + 8, cursor)
        cursor += n
    return cursor


def _sh_fletcher(uint64_t a, uint64_t b, data):
    """Continue the data sums (a, b) over ``data`` (a multiple of 8 bytes)."""
    cdef _Buf buf = _sh_buf(data, False)
    if buf.view.len % 8:
        raise ValueError("SharedTable: data appended in multiples of 8 bytes")
    with nogil:
        fk_sh_fletcher(&a, &b, <const unsigned char*>buf.view.buf, buf.view.len)
    return a, b


_SH_CODEC = _types.SimpleNamespace(
    hash=_sh_hash, checksum=_sh_checksum, lookup=_sh_lookup,
    rebuild_slots=_sh_rebuild_slots, compact=_sh_compact, fletcher=_sh_fletcher)


# -- iteration over one snapshot ------------------------------------------------------


@cython.final
@cython.auto_pickle(False)
cdef class _SharedIter:
    """Iterator over one snapshot: keys (0), values (1) or items (2), in
    insertion order, or in reverse (``rev``, for reversed())."""
    cdef _SharedMap m
    cdef Py_ssize_t i
    cdef int what
    cdef bint rev

    def __iter__(self):
        return self

    def __next__(self):
        cdef Py_ssize_t i = self.i
        if self.m is None or <uint64_t>i >= self.m.count:
            self.m = None
            raise StopIteration
        self.i = i + 1
        if self.rev:
            i = <Py_ssize_t>self.m.count - 1 - i
        if self.what == 0:
            return _sh_key_at(self.m, i)
        if self.what == 1:
            return _sh_value_at(self.m, i)
        return (_sh_key_at(self.m, i), _sh_value_at(self.m, i))

    def __length_hint__(self):
        if not isinstance(self, _SharedIter):
            fk_wrong_self(self, _SharedIter)
        return 0 if self.m is None else <Py_ssize_t>self.m.count - self.i


# -- the table ------------------------------------------------------------------------


@cython.final
@cython.auto_pickle(False)
cdef class SharedTable:
    """A read-mostly table shared by every process on the machine: its
    snapshot is an immutable file in shared memory (``/dev/shm`` by default),
    mapped read-only by each process that opens it.

    Made with ``SharedTable.create(name, data)`` and opened elsewhere with
    ``SharedTable.open(name)``. Reads (``t[k]``, ``get``, ``in``, ``len``,
    iteration, ``keys/values/items``, ``get_many``, ``to_dict``) never block
    and see one complete snapshot; a read notices a newer snapshot with one
    shared-memory load. ``put``, ``delete`` and ``put_many`` publish a new
    snapshot file (O(n) copy, as FrozenTable's writes) under a cross-process
    file lock: writers from any process serialize and lose nothing.

    Keys: str, bytes, int (bool and integral floats are the int) and tuples of
    them. Values: None, bool, int, float, str, bytes and lists, tuples, dicts
    of these; anything else is a TypeError, unless the table was created with
    ``pickle=True``, which pickles it: opening such a table executes code from
    whoever can write its file. Values come back as new objects per process,
    and stay the same object while cached (treat them as read-only).

    Each process keeps a bounded cache of decoded values (``cache_size``
    entries, cleared when a new snapshot arrives). The last process to close
    the table removes its files. Files are created with mode 0600 unless
    ``mode`` says otherwise.
    """
    cdef object _seg
    cdef const uint64_t* _genp
    cdef uint64_t* _genw
    cdef uint64_t _gen
    cdef _SharedMap _map
    cdef Py_ssize_t _cache_max
    cdef bint _pickle
    cdef bint _verify
    cdef Py_buffer _ctlview
    cdef bint _has_ctlview
    cdef object __weakref__

    def __cinit__(self):
        self._genp = &fk_sh_closed_gen
        self._gen = _SH_CLOSED

    def __init__(self, *args, **kwargs):
        raise TypeError("use SharedTable.create(name, data) or SharedTable.open(name)")

    def __dealloc__(self):
        if self._has_ctlview:
            PyBuffer_Release(&self._ctlview)
            self._has_ctlview = False

    @classmethod
    def create(cls, name, data=(), *, pickle=False, mode=0o600, cache_size=65536):
        """Create the table ``name`` (a bare name lives in /dev/shm; a path is
        used as given) holding ``data`` (a mapping or pairs). FileExistsError
        if a table of this name is open somewhere; the files of one whose
        users all exited without closing are swept first."""
        changes = _sh_changes(data, {}, pickle)
        flags = _shm.FLAG_PICKLE if pickle else 0

        def write_first(path):
            _shm.write_snapshot(path, mode, _SH_CODEC, None, changes, flags)

        seg = _shm.Segment.create(name, mode, write_first)
        return _sh_attach(seg, pickle, False, cache_size)

    @classmethod
    def open(cls, name, *, pickle=False, verify=False, cache_size=65536):
        """Open the table ``name`` created by any process. ``verify=True``
        also checks the whole file's checksum (O(size)); the header is always
        checked, and every read is bounds-checked. ValueError for a corrupt or
        foreign file, FileNotFoundError if there is no such table."""
        seg = _shm.Segment.open(name)
        return _sh_attach(seg, pickle, verify, cache_size)

    @staticmethod
    def unlink(name):
        """Remove the files of table ``name`` if no process has it open
        (after all its users were killed). True if nothing is left."""
        return _shm.sweep_if_dead(_shm.control_path(name))

    # -- the read path -------------------------------------------------------------

    cdef int _refresh(self) except -1:
        """Map the current snapshot (the generation moved, or closed)."""
        seg = self._seg
        if seg is None:
            raise ClosedError("SharedTable is closed")
        try:
            gen, mm, dmm, dsize = seg.load(self._generation)
        except (OSError, ValueError):
            if seg.closed:  # closed by another thread meanwhile: its files may be gone
                raise ClosedError("SharedTable is closed") from None
            raise
        if self._seg is not seg:  # closed meanwhile: a closed table keeps nothing mapped
            raise ClosedError("SharedTable is closed")
        m = _sh_map_new(mm, dmm, dsize, gen, self._pickle, self._verify)
        # _map and _gen change together: the old map (and its cache) is
        # released only after both are stored (unmapping releases the GIL: a
        # thread that ran in between saw a map with another snapshot's
        # generation, and a writer that trusted that pair published over a
        # live snapshot)
        old = self._map
        self._map = m
        self._gen = gen
        old = None
        return 0

    def _generation(self):
        if not isinstance(self, SharedTable):
            fk_wrong_self(self, SharedTable)
        return fk_sh_load_gen(self._genp)

    cdef inline _SharedMap _current(self):
        # free-threaded build: the table's per-process state (the mapped
        # snapshot, the cache) changes under the object's critical section
        # (nothing on a GIL build)
        # A refresh's load does I/O, and on the free-threaded build the
        # critical section is suspended while a thread blocks: another thread
        # may install a newer map meanwhile, and this one then an older one
        # over it. So the check is repeated until the map installed is the
        # current generation's; between that check and the return nothing
        # blocks. (A writer, holding the writers' lock, thus always publishes
        # from the current snapshot: the stale map tripped Segment.publish's
        # guard, 4 runs in 200 of test_threads_share_one_table[compiled].)
        with cython.critical_section(self):
            while fk_sh_load_gen(self._genp) != self._gen:
                self._refresh()
            return self._map

    cdef object _lookup(self, object key, object default, bint raise_missing):
        with cython.critical_section(self):
            return self._lookup_locked(key, default, raise_missing)

    cdef inline object _lookup_locked(self, object key, object default, bint raise_missing):
        cdef _SharedMap m
        cdef PyObject* hit
        cdef type t = type(key)
        cdef bint cacheable = t is str or t is int or t is bytes or t is tuple
        if fk_sh_load_gen(self._genp) != self._gen:
            self._refresh()
        m = self._map
        if cacheable:
            hit = _sh_PyDict_GetItemWithError(m.cache, key)
            if hit != NULL:
                return <object>hit
        idx = _sh_find(m, key)
        if idx < 0:
            if raise_missing:
                raise KeyError(key)
            return default
        value = _sh_value_at(m, idx)
        if cacheable and self._cache_max:
            if _sh_PyDict_GET_SIZE(m.cache) >= self._cache_max:
                m.cache.clear()
            _sh_PyDict_SetItem(m.cache, key, value)
        return value

    def __getitem__(self, key):
        return self._lookup(key, None, True)

    def get(self, key, default=None):
        """The value for ``key``, else ``default``. O(1); never blocks."""
        if not isinstance(self, SharedTable):
            fk_wrong_self(self, SharedTable)
        return self._lookup(key, default, False)

    def __contains__(self, key):
        cdef type t = type(key)
        cdef _SharedMap m
        with cython.critical_section(self):
            m = self._current()
            if (t is str or t is int or t is bytes) and _sh_PyDict_GetItemWithError(m.cache, key) != NULL:
                return True
        return _sh_find(m, key) >= 0

    def __len__(self):
        return <Py_ssize_t>self._current().count

    def __iter__(self):
        return _sh_iter(self._current(), 0)

    def __reversed__(self):
        """``reversed(t)``: the keys of one snapshot, last inserted first."""
        if not isinstance(self, SharedTable):
            fk_wrong_self(self, SharedTable)
        return _sh_iter(self._current(), 3)

    def _iter_snapshot(self, int what):
        if not isinstance(self, SharedTable):
            fk_wrong_self(self, SharedTable)
        return _sh_iter(self._current(), what)

    def keys(self):
        """A view of the keys (iteration walks one snapshot)."""
        if not isinstance(self, SharedTable):
            fk_wrong_self(self, SharedTable)
        return _shm.SharedKeysView(self)

    def values(self):
        """A view of the values (iteration walks one snapshot)."""
        if not isinstance(self, SharedTable):
            fk_wrong_self(self, SharedTable)
        return _shm.SharedValuesView(self)

    def items(self):
        """A view of the (key, value) pairs (iteration walks one snapshot)."""
        if not isinstance(self, SharedTable):
            fk_wrong_self(self, SharedTable)
        return _shm.SharedItemsView(self)

    def get_many(self, keys, default=None):
        """[self.get(k, default) for k in keys], all from one snapshot."""
        if not isinstance(self, SharedTable):
            fk_wrong_self(self, SharedTable)
        cdef _SharedMap m = self._current()
        out = []
        for key in keys:
            idx = _sh_find(m, key)
            out.append(default if idx < 0 else _sh_value_at(m, idx))
        return out

    def to_dict(self):
        """A dict copy of one snapshot (O(n) decode)."""
        if not isinstance(self, SharedTable):
            fk_wrong_self(self, SharedTable)
        cdef _SharedMap m = self._current()
        cdef Py_ssize_t i
        out = {}
        for i in range(<Py_ssize_t>m.count):
            out[_sh_key_at(m, i)] = _sh_value_at(m, i)
        return out

    def __eq__(self, other):
        if isinstance(other, (SharedTable, Mapping)):
            return self.to_dict() == (other.to_dict() if isinstance(other, SharedTable) else dict(other.items()))
        return NotImplemented

    def copy(self):
        """A ``dict`` with one snapshot's items (O(n) decode). A SharedTable
        is named by its files: ``SharedTable.create(name, t)`` makes another."""
        if not isinstance(self, SharedTable):
            fk_wrong_self(self, SharedTable)
        return self.to_dict()

    def __or__(self, other):
        """``t | other``: a new ``dict`` with one snapshot's items, then those
        of ``other`` (a mapping; its values win). O(n + m); t is unchanged.
        ``NotImplemented`` for anything but a mapping."""
        if not isinstance(other, (dict, SharedTable, Mapping)):
            return NotImplemented
        out = self.to_dict()
        out.update(other)
        return out

    def __ror__(self, other):
        """``other | t`` for a mapping ``other`` that does not handle it (a
        dict): a new ``dict`` with other's items, then t's (t's values win)."""
        if not isinstance(other, (dict, SharedTable, Mapping)):
            return NotImplemented
        out = dict(other)
        out.update(self.to_dict())
        return out

    def __ior__(self, other):
        """``t |= other``: ``t.put_many(other)`` (a mapping or pairs): one
        publish, seen by every process; t itself is the result (the name is
        not rebound to a dict)."""
        if not isinstance(self, SharedTable):
            fk_wrong_self(self, SharedTable)
        self.put_many(other)
        return self

    @classmethod
    def fromkeys(cls, iterable, value=None, /):
        """Not supported: a SharedTable is created with a name. TypeError;
        use ``SharedTable.create(name, dict.fromkeys(iterable, value))``."""
        raise TypeError(
            "SharedTable.fromkeys: a SharedTable needs a name; use "
            "SharedTable.create(name, dict.fromkeys(iterable, value))")

    def __ne__(self, other):
        r = self.__eq__(other)
        return r if r is NotImplemented else not r

    __hash__ = None
    __class_getitem__ = classmethod(GenericAlias)

    def __repr__(self):
        if self._seg is None:
            return "<SharedTable (closed)>"
        m = self._map  # what this process has mapped: repr never remaps
        return f"<SharedTable {self._seg.path!r} generation={m.gen} len={m.count}>"

    @property
    def path(self):
        """The control file's path."""
        if not isinstance(self, SharedTable):
            fk_wrong_self(self, SharedTable)
        if self._seg is None:
            raise ClosedError("SharedTable is closed")
        return self._seg.path

    def info(self):
        """{"path", "generation", "count", "index_size", "data_size", "garbage", "cached"}."""
        if not isinstance(self, SharedTable):
            fk_wrong_self(self, SharedTable)
        cdef _SharedMap m = self._current()
        return {"path": self._seg.path, "generation": m.gen, "count": m.count, "index_size": m.size,
                "data_size": m.data_len, "garbage": m.hdr.garbage, "cached": len(m.cache)}

    # -- writes --------------------------------------------------------------------

    def put(self, key, value):
        """Publish a snapshot with ``key`` set to ``value``. O(n) copy, under
        the cross-process writers' lock."""
        if not isinstance(self, SharedTable):
            fk_wrong_self(self, SharedTable)
        self._publish({_sh_key_bytes(key): _sh_value_bytes(value, self._pickle)})

    def put_many(self, data=(), /, **kwargs):
        """Publish one snapshot with every pair of ``data`` (a mapping or
        pairs) and ``kwargs`` set: one copy for many keys."""
        if not isinstance(self, SharedTable):
            fk_wrong_self(self, SharedTable)
        self._publish(_sh_changes(data, kwargs, self._pickle))

    def delete(self, key):
        """Publish a snapshot without ``key``; True if it was there."""
        if not isinstance(self, SharedTable):
            fk_wrong_self(self, SharedTable)
        cdef ShBuf b
        shbuf_init(&b)
        try:
            if _sh_encode_key(&b, key, False, 0):
                self._current()
                return False
            kb = PyBytes_FromStringAndSize(<char*>b.p, b.n)
        finally:
            shbuf_free(&b)
        return self._publish({kb: None}) > 0

    cdef object _publish(self, dict changes):
        cdef _SharedMap m
        if self._seg is None:
            raise ClosedError("SharedTable is closed")
        seg = self._seg
        fd = seg.lock()  # ClosedError if closed meanwhile; holds seg open until unlock
        try:
            m = self._current()
            if self._genw == NULL:
                raise PermissionError("SharedTable opened read-only")
            flags = m.hdr.flags
            result = [0]

            def write(path):
                r = _shm.write_snapshot(path, seg.mode, _SH_CODEC, m, changes, flags)
                result[0] = r[0]
                return r

            seg.publish(m.gen, write, self._store_gen)
            return result[0]
        finally:
            seg.unlock(fd)  # a close() meanwhile: the cleanup runs here

    def _store_gen(self, uint64_t gen):
        if not isinstance(self, SharedTable):
            fk_wrong_self(self, SharedTable)
        # closed by another thread during the publish: _genw is NULL (the
        # mapping itself stays valid while the publishing frame holds seg)
        cdef uint64_t *genw = self._genw
        if genw == NULL:
            raise ClosedError("SharedTable is closed")
        fk_sh_store_gen(genw, gen)

    # -- lifetime -------------------------------------------------------------------

    def close(self):
        """Unmap and drop this process's hold; the last process to close
        removes the table's files. Idempotent."""
        if not isinstance(self, SharedTable):
            fk_wrong_self(self, SharedTable)
        with cython.critical_section(self):
            seg = self._seg
            if seg is None:
                return
            self._close_locked()
        seg.close()

    cdef _close_locked(self):
        self._seg = None
        self._genp = &fk_sh_closed_gen
        self._genw = NULL
        self._gen = _SH_CLOSED
        self._map = None
        if self._has_ctlview:
            PyBuffer_Release(&self._ctlview)
            self._has_ctlview = False

    def __enter__(self):
        if not isinstance(self, SharedTable):
            fk_wrong_self(self, SharedTable)
        return self

    def __exit__(self, *exc):
        if not isinstance(self, SharedTable):
            fk_wrong_self(self, SharedTable)
        self.close()
        return False

    def __reduce__(self):
        if not isinstance(self, SharedTable):
            fk_wrong_self(self, SharedTable)
        if self._seg is None:
            raise ClosedError("SharedTable is closed")
        return (_sh_reopen, (self._seg.path, self._pickle, self._cache_max))


import os as _os


def _sh_reopen(path, pickle, cache_size):
    return SharedTable.open(path, pickle=pickle, cache_size=cache_size)


cdef _SharedIter _sh_iter(_SharedMap m, int what):
    """An iterator over m: keys (0), values (1), items (2); 3-5 the same in
    reverse insertion order."""
    cdef _SharedIter it = _SharedIter.__new__(_SharedIter)
    if what < 0 or what > 5:
        raise ValueError(f"SharedTable: no iteration {what}")
    it.m = m
    it.what = what % 3
    it.rev = what >= 3
    return it


cdef dict _sh_changes(object data, dict kwargs, bint allow_pickle):
    """Encode a put_many's input (a mapping, anything with keys(), or pairs)
    into {canonical key bytes: value bytes}, later keys winning."""
    cdef dict out = {}
    if isinstance(data, (dict, SharedTable, Mapping)) or hasattr(data, "keys"):
        for key in data.keys():
            out[_sh_key_bytes(key)] = _sh_value_bytes(data[key], allow_pickle)
    else:
        for n, item in enumerate(data):
            try:
                pair = tuple(item)
            except TypeError:
                raise TypeError(f"cannot convert update sequence element #{n} to a sequence") from None
            if len(pair) != 2:
                raise ValueError(f"update sequence element #{n} has length {len(pair)}; 2 is required")
            out[_sh_key_bytes(pair[0])] = _sh_value_bytes(pair[1], allow_pickle)
    for key, value in kwargs.items():
        out[_sh_key_bytes(key)] = _sh_value_bytes(value, allow_pickle)
    return out


cdef SharedTable _sh_attach(object seg, bint allow_pickle, bint verify, Py_ssize_t cache_size):
    cdef SharedTable t = SharedTable.__new__(SharedTable)
    if cache_size < 0:
        seg.close()
        raise ValueError("cache_size must be >= 0")
    try:
        PyObject_GetBuffer(seg.ctl, &t._ctlview, PyBUF_WRITABLE if seg.writable else PyBUF_SIMPLE)
        t._has_ctlview = True
        t._seg = seg
        t._genp = <const uint64_t*>(<char*>t._ctlview.buf + _SH_GEN_OFFSET)
        t._genw = <uint64_t*>(<char*>t._ctlview.buf + _SH_GEN_OFFSET) if seg.writable else NULL
        t._pickle = allow_pickle
        t._verify = verify
        t._cache_max = cache_size
        t._refresh()
    except BaseException:
        t.close()
        raise
    return t


Mapping.register(SharedTable)
