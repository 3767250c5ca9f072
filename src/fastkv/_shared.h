/* fastkv/_shared.h: the C pieces of SharedTable's file format (see the design
 * note at the top of _shared.pxi): the seeded 64-bit hash of a key's canonical
 * bytes, the body/header checksum, little-endian loads and stores, and the
 * generation counter's atomic load and store. fastkv.reference computes the
 * same hash and checksum in Python, bit for bit. */
#ifndef FASTKV_SHARED_H
#define FASTKV_SHARED_H

#include <stdint.h>
#include <string.h>

#define FK_SH_K1 0x9E3779B97F4A7C15ULL
#define FK_SH_K2 0xC2B2AE3D27D4EB4FULL

static inline uint64_t fk_sh_ld64(const unsigned char *p) {
    uint64_t v; memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}
static inline uint32_t fk_sh_ld32(const unsigned char *p) {
    uint32_t v; memcpy(&v, p, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}
static inline void fk_sh_st64(unsigned char *p, uint64_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    memcpy(p, &v, 8);
}
static inline void fk_sh_st32(unsigned char *p, uint32_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    memcpy(p, &v, 4);
}

/* The key hash: words of 8 bytes (LE, the tail zero-padded) folded into a
 * seeded state with multiply-xorshift, then murmur3's fmix64. */
static inline uint64_t fk_sh_hash(uint64_t seed, const unsigned char *p, size_t n) {
    uint64_t h = seed ^ ((uint64_t)n * FK_SH_K1);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        h = (h ^ fk_sh_ld64(p + i)) * FK_SH_K2;
        h ^= h >> 31;
    }
    if (i < n) {
        unsigned char tail[8] = {0};
        memcpy(tail, p + i, n - i);
        h = (h ^ fk_sh_ld64(tail)) * FK_SH_K2;
        h ^= h >> 31;
    }
    h ^= h >> 33; h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* The slot of a short string (n <= 16 bytes) in a short-string cache of
 * mask + 1 slots: its first and last (up to) 8 bytes and its length, mixed
 * once. Not the key hash (no seed, no format): only spreads the slots. */
static inline size_t fk_sh_str_slot(const unsigned char *p, size_t n, size_t mask) {
    uint64_t a, b;
    if (n >= 8) {
        a = fk_sh_ld64(p);
        b = fk_sh_ld64(p + n - 8);
    } else if (n >= 4) {
        a = fk_sh_ld32(p);
        b = fk_sh_ld32(p + n - 4);
    } else {
        a = n ? ((uint64_t)p[0] | ((uint64_t)p[n / 2] << 8) | ((uint64_t)p[n - 1] << 16)) : 0;
        b = 0;
    }
    uint64_t h = (a ^ (b << 1) ^ ((uint64_t)n << 56)) * FK_SH_K1;
    h ^= h >> 29;
    return (size_t)((h * FK_SH_K2) >> 40) & mask;
}

/* 1 if the n bytes at a and b are equal, for n <= 16 (two overlapping
 * loads per side instead of a call to memcmp). */
static inline int fk_sh_eq_short(const unsigned char *a, const unsigned char *b, size_t n) {
    if (n >= 8)
        return fk_sh_ld64(a) == fk_sh_ld64(b) && fk_sh_ld64(a + n - 8) == fk_sh_ld64(b + n - 8);
    if (n >= 4)
        return fk_sh_ld32(a) == fk_sh_ld32(b) && fk_sh_ld32(a + n - 4) == fk_sh_ld32(b + n - 4);
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

/* 1 if the n bytes at p are all ASCII (< 0x80), else 0. */
static inline int fk_sh_is_ascii(const unsigned char *p, size_t n) {
    uint64_t acc = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w; memcpy(&w, p + i, 8);
        acc |= w;
    }
    for (; i < n; i++)
        acc |= p[i];
    return (acc & 0x8080808080808080ULL) == 0;
}

/* The checksum: Fletcher-style sums over LE u64 words (tail zero-padded);
 * every single-bit flip changes ``a``. */
static inline uint64_t fk_sh_checksum(const unsigned char *p, size_t n) {
    uint64_t a = 0, b = 0;
    size_t i = 0, padded = (n + 7) & ~(size_t)7;
    for (; i + 8 <= n; i += 8) {
        a += fk_sh_ld64(p + i);
        b += a;
    }
    if (i < n) {
        unsigned char tail[8] = {0};
        memcpy(tail, p + i, n - i);
        a += fk_sh_ld64(tail);
        b += a;
    }
    return (a * FK_SH_K1) ^ b ^ ((uint64_t)padded * FK_SH_K2);
}

/* The data file's running sums, continued over n more bytes (n % 8 == 0). */
static inline void fk_sh_fletcher(uint64_t *a, uint64_t *b, const unsigned char *p, size_t n) {
    uint64_t x = *a, y = *b;
    for (size_t i = 0; i + 8 <= n; i += 8) {
        x += fk_sh_ld64(p + i);
        y += x;
    }
    *a = x; *b = y;
}

/* The generation counter in the control file: readers load it once per read
 * (acquire: the snapshot file published with it is complete), the writer
 * stores it after the file is written (release). */
static inline uint64_t fk_sh_load_gen(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline void fk_sh_store_gen(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

/* A dict sized for n items up front (a decoded record's fields go in without
 * a resize); what Cython itself uses, available 3.10-3.14. */
#if defined(PYPY_VERSION) || defined(Py_LIMITED_API)
#define fk_sh_dict_presized(n) PyDict_New()
#else
#define fk_sh_dict_presized(n) ((n) <= 5 ? PyDict_New() : _PyDict_NewPresized(n))
#endif

/* Where a closed table's generation pointer points: never equal to a table's
 * cached generation (0 is never stored), so the next read takes the slow path
 * and raises ClosedError. */
static uint64_t fk_sh_closed_gen = 0;

/* The short-string cache of a mapped snapshot (_sh_ascii) is shared by every
 * reader of the map: on the free-threaded build it is off (its slots would be
 * swapped under a reader's feet). */
#ifdef Py_GIL_DISABLED
#define FK_SH_STR_CACHE 0
#else
#define FK_SH_STR_CACHE 1
#endif

#endif
