/*
 * daxfs/fs/_media.h: reading and writing the on-media format from C, and its
 * checksum; one home for what _commit.c (the C commit) and _stat.c (the stat
 * miss path) both need.
 *
 *   get_u16/get_u32/get_u64, put_u32/put_u64: little-endian fields by memcpy
 *     (the format is little-endian, and so is every host daxfs builds on:
 *     the #error below);
 *   crc32c(p, n), crc_update(crc, p, n): CRC-32C (Castagnoli), the checksum
 *     of every structure (daxfs.fs.layout's checksum, the crc32c package),
 *     with SSE4.2's crc32 instruction when the CPU has it (_persist.h's
 *     detect_cpu sets have_sse42: call it before crc_init) and a table else;
 *   crc32c_with_hole(p, n, at): the checksum of a structure whose 4-byte
 *     checksum field at `at` counts as zero (checksum_with_hole in layout.py).
 *
 * The includer includes _persist.h (have_sse42, DAXFS_X86) first, and calls
 * crc_init() once from its module init.
 */
#ifndef DAXFS_MEDIA_H
#define DAXFS_MEDIA_H

#include <stdint.h>
#include <string.h>

#include "../pmem/_persist.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "daxfs reads and writes its little-endian format with memcpy: a little-endian host only"
#endif

__attribute__((unused)) static inline void
put_u32(unsigned char *p, uint32_t v)
{
    memcpy(p, &v, 4); /* the format is little-endian; so is every CPU daxfs runs on */
}

__attribute__((unused)) static inline void
put_u64(unsigned char *p, uint64_t v)
{
    memcpy(p, &v, 8);
}

static inline uint64_t
get_u64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint32_t
get_u32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

__attribute__((unused)) static inline uint16_t
get_u16(const unsigned char *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

/* ------------------------------------------------------------------ crc32c */

static uint32_t crc_table[256];

static void
crc_tables_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
        crc_table[i] = c;
    }
}

static uint32_t
crc_soft(uint32_t crc, const unsigned char *p, size_t n)
{
    while (n--)
        crc = crc_table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return crc;
}

#if DAXFS_X86 && defined(__x86_64__)
/* Three chains of STRIDE bytes run side by side (the crc32 instruction has a
 * latency of 3 cycles and a throughput of 1), then combine:
 *   update(c, A B C) = shift(update(c, A), 2 STRIDE) ^ shift(update(0, B), STRIDE)
 *                      ^ update(0, C)
 * where shift(x, k) = update(x, k zero bytes), a linear map applied with 4
 * table lookups (shift_1 for STRIDE bytes, shift_2 for 2 STRIDE). */
#define STRIDE 256
static uint32_t shift_1[4][256], shift_2[4][256];

static uint32_t
shift_apply(uint32_t t[4][256], uint32_t x)
{
    return t[0][x & 0xFF] ^ t[1][(x >> 8) & 0xFF] ^ t[2][(x >> 16) & 0xFF] ^ t[3][x >> 24];
}

static void
shift_init(void)
{
    static const unsigned char zeros[2 * STRIDE];
    for (int i = 0; i < 4; i++)
        for (uint32_t b = 0; b < 256; b++) {
            shift_1[i][b] = crc_soft(b << (8 * i), zeros, STRIDE);
            shift_2[i][b] = crc_soft(b << (8 * i), zeros, 2 * STRIDE);
        }
}

__attribute__((target("sse4.2"))) static uint32_t
crc_hw(uint32_t crc, const unsigned char *p, size_t n)
{
    uint64_t c = crc;
    while (n && ((uintptr_t)p & 7)) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        n--;
    }
    for (; n >= 3 * STRIDE; n -= 3 * STRIDE, p += 3 * STRIDE) {
        uint64_t c1 = 0, c2 = 0;
        for (size_t i = 0; i < STRIDE; i += 8) {
            uint64_t w0, w1, w2;
            memcpy(&w0, p + i, 8);
            memcpy(&w1, p + STRIDE + i, 8);
            memcpy(&w2, p + 2 * STRIDE + i, 8);
            c = _mm_crc32_u64(c, w0);
            c1 = _mm_crc32_u64(c1, w1);
            c2 = _mm_crc32_u64(c2, w2);
        }
        c = shift_apply(shift_2, (uint32_t)c) ^ shift_apply(shift_1, (uint32_t)c1) ^
            (uint32_t)c2;
    }
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
    }
    while (n--)
        c = _mm_crc32_u8((uint32_t)c, *p++);
    return (uint32_t)c;
}
#endif

/* raw update (no pre/post inversion); crc32c(data, value) = ~update(~value, data) */
static uint32_t
crc_update(uint32_t crc, const void *p, size_t n)
{
#if DAXFS_X86 && defined(__x86_64__)
    if (have_sse42)
        return crc_hw(crc, p, n);
#endif
    return crc_soft(crc, p, n);
}

__attribute__((unused)) static uint32_t
crc32c(const void *p, size_t n)
{
    return ~crc_update(0xFFFFFFFFu, p, n);
}

/* crc32c of n bytes at p with the 4 bytes at `at` taken as zero */
__attribute__((unused)) static uint32_t
crc32c_with_hole(const unsigned char *p, size_t n, size_t at)
{
    static const unsigned char zero[4];
    uint32_t c = crc_update(0xFFFFFFFFu, p, at);
    c = crc_update(c, zero, 4);
    return ~crc_update(c, p + at + 4, n - at - 4);
}

/* the tables; after detect_cpu */
static void
crc_init(void)
{
    crc_tables_init();
#if DAXFS_X86 && defined(__x86_64__)
    shift_init();
#endif
}

#endif /* DAXFS_MEDIA_H */
