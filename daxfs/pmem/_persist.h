/*
 * The persistence primitives shared by the C extensions (daxfs.pmem._native,
 * daxfs.fs._commit): CPU feature detection, cache-line flush (clwb,
 * clflushopt, clflush), the store fence, and non-temporal copy and fill.
 *
 * Each extension includes this header once; everything is static, so each
 * has its own copy of the feature flags, set by its module init through
 * detect_cpu().  The callers choose an instruction from the flags (and the
 * device's persist mode); nothing here checks them.
 *
 * Non-temporal copy and fill take a 64-byte aligned destination and a
 * length that is a multiple of 64; callers handle the unaligned edges.
 */
#ifndef DAXFS_PERSIST_H
#define DAXFS_PERSIST_H

#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) || defined(__i386__)
#define DAXFS_X86 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define DAXFS_X86 0
#endif

#define LINE 64
#define NT_THRESHOLD 256

#define DAXFS_MAYBE_UNUSED __attribute__((unused))

static int have_clwb, have_clflushopt, have_clflush, have_sse2, have_sse42, have_avx2,
    have_avx512f;

static void
detect_cpu(void)
{
#if DAXFS_X86
    unsigned int a, b, c, d;
    if (__get_cpuid(1, &a, &b, &c, &d)) {
        have_clflush = (d >> 19) & 1;
        have_sse2 = (d >> 26) & 1;
        have_sse42 = (c >> 20) & 1;
    }
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        have_clflushopt = (b >> 23) & 1;
        have_clwb = (b >> 24) & 1;
    }
    __builtin_cpu_init();
    have_avx2 = __builtin_cpu_supports("avx2");
    have_avx512f = __builtin_cpu_supports("avx512f");
#endif
}

#if DAXFS_X86
__attribute__((target("clwb"))) DAXFS_MAYBE_UNUSED static void
flush_clwb(char *p, size_t n)
{
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)(LINE - 1), end = (uintptr_t)p + n;
    for (; a < end; a += LINE)
        _mm_clwb((void *)a);
}

__attribute__((target("clflushopt"))) DAXFS_MAYBE_UNUSED static void
flush_clflushopt(char *p, size_t n)
{
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)(LINE - 1), end = (uintptr_t)p + n;
    for (; a < end; a += LINE)
        _mm_clflushopt((void *)a);
}

DAXFS_MAYBE_UNUSED static void
flush_clflush(char *p, size_t n)
{
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)(LINE - 1), end = (uintptr_t)p + n;
    for (; a < end; a += LINE)
        _mm_clflush((void *)a);
}

DAXFS_MAYBE_UNUSED static inline void
fence(void)
{
    _mm_sfence();
}

__attribute__((target("avx2"))) DAXFS_MAYBE_UNUSED static void
nt_copy_avx2(char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i += 64) {
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(src + i));
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(src + i + 32));
        _mm256_stream_si256((__m256i *)(dst + i), x0);
        _mm256_stream_si256((__m256i *)(dst + i + 32), x1);
    }
}

DAXFS_MAYBE_UNUSED static void
nt_copy_sse2(char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i += 64) {
        __m128i x0 = _mm_loadu_si128((const __m128i *)(src + i));
        __m128i x1 = _mm_loadu_si128((const __m128i *)(src + i + 16));
        __m128i x2 = _mm_loadu_si128((const __m128i *)(src + i + 32));
        __m128i x3 = _mm_loadu_si128((const __m128i *)(src + i + 48));
        _mm_stream_si128((__m128i *)(dst + i), x0);
        _mm_stream_si128((__m128i *)(dst + i + 16), x1);
        _mm_stream_si128((__m128i *)(dst + i + 32), x2);
        _mm_stream_si128((__m128i *)(dst + i + 48), x3);
    }
}

DAXFS_MAYBE_UNUSED static void
nt_fill_sse2(char *dst, int c, size_t n)
{
    __m128i v = _mm_set1_epi8((char)c);
    for (size_t i = 0; i < n; i += 64) {
        _mm_stream_si128((__m128i *)(dst + i), v);
        _mm_stream_si128((__m128i *)(dst + i + 16), v);
        _mm_stream_si128((__m128i *)(dst + i + 32), v);
        _mm_stream_si128((__m128i *)(dst + i + 48), v);
    }
}
#else
DAXFS_MAYBE_UNUSED static inline void fence(void) { __sync_synchronize(); }
#endif

#endif /* DAXFS_PERSIST_H */
