/*
 * The persistence primitives shared by the C extensions (daxfs.pmem._native,
 * daxfs.fs._commit): CPU feature detection, cache-line flush (clwb,
 * clflushopt, clflush), the store fence, non-temporal copy and fill, and the
 * persist modes built on them (the one home of each: names, flush, drain, copy
 * and fill with flush).
 *
 * Each extension includes this header once; everything is static, so each
 * has its own copy of the feature flags, set by its module init through
 * detect_cpu().  A persist mode is checked against the flags once, when it is
 * chosen (persist_mode_find); the primitives below check nothing.
 *
 * Non-temporal copy and fill take a 64-byte aligned destination and a
 * length that is a multiple of 64; callers handle the unaligned edges.
 * persist_copy and persist_fill do, for any range, in a persist mode.
 */
#ifndef DAXFS_PERSIST_H
#define DAXFS_PERSIST_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

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
/* msync's granule (persist_flush in M_MSYNC) */
static long page_size = 4096;

/* The machine's features: CPU flags and the page size. */
static void
detect_cpu(void)
{
    long ps = sysconf(_SC_PAGESIZE);
    if (ps > 0)
        page_size = ps;
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

/* Non-temporal 8-byte stores (movnti): dst 8-byte aligned, n a multiple of 8.
 * For a small range in a line that was flushed recently: a cached store there
 * would first read the line back from memory. */
DAXFS_MAYBE_UNUSED static void
nt_store_u64(char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i += 8) {
#if defined(__x86_64__)
        long long x;
        memcpy(&x, src + i, 8);
        _mm_stream_si64((long long *)(dst + i), x);
#else
        int x[2];
        memcpy(x, src + i, 8);
        _mm_stream_si32((int *)(dst + i), x[0]);
        _mm_stream_si32((int *)(dst + i + 4), x[1]);
#endif
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

/* ------------------------------------------------------------ persist modes
 * How a region makes its stores durable (daxfs.pmem.detect's region_mode): one
 * home for the mode names, the flush, the drain and the copy and fill with
 * flush that Region (daxfs.pmem._native) and Committer (daxfs.fs._commit) use.
 */
enum persist_mode { M_CLWB, M_CLFLUSHOPT, M_CLFLUSH, M_NONE, M_MSYNC, PERSIST_MODES };
DAXFS_MAYBE_UNUSED static const char *const persist_mode_names[PERSIST_MODES] = {
    "clwb", "clflushopt", "clflush", "none", "msync"};

/* The mode called `name`, or -1 if there is none.  *why is NULL, or the reason
 * this machine cannot use it (a printf format taking the name). */
DAXFS_MAYBE_UNUSED static int
persist_mode_find(const char *name, const char **why)
{
    int mode = -1;
    *why = NULL;
    for (int i = 0; i < PERSIST_MODES; i++)
        if (strcmp(name, persist_mode_names[i]) == 0)
            mode = i;
#if DAXFS_X86
    if ((mode == M_CLWB && !have_clwb) || (mode == M_CLFLUSHOPT && !have_clflushopt) ||
        (mode == M_CLFLUSH && !have_clflush))
        *why = "this CPU has no %s instruction";
#else
    if (mode >= 0 && mode <= M_CLFLUSH)
        *why = "cache flush instructions are x86 only, %s unavailable";
#endif
    return mode;
}

/* Flush [p, p+n) in `mode`, no fence; -1 with errno set if msync fails. */
DAXFS_MAYBE_UNUSED static int
persist_flush(int mode, char *p, size_t n)
{
    if (n == 0)
        return 0;
    switch (mode) {
#if DAXFS_X86
    case M_CLWB:
        flush_clwb(p, n);
        return 0;
    case M_CLFLUSHOPT:
        flush_clflushopt(p, n);
        return 0;
    case M_CLFLUSH:
        flush_clflush(p, n);
        return 0;
#endif
    case M_MSYNC: {
        uintptr_t a = (uintptr_t)p & ~(uintptr_t)(page_size - 1);
        return msync((void *)a, (uintptr_t)p + n - a, MS_SYNC);
    }
    default:
        return 0;
    }
}

/* The fence of `mode`: every flush before it is durable on return (msync: already). */
DAXFS_MAYBE_UNUSED static inline void
persist_drain(int mode)
{
    if (mode != M_MSYNC)
        fence();
}

/* n bytes at dst: copied from src, or (src NULL) n bytes of c */
DAXFS_MAYBE_UNUSED static inline void
persist_put(char *dst, const char *src, int c, size_t n)
{
    if (src != NULL)
        memcpy(dst, src, n);
    else
        memset(dst, c, n);
}

/* Store n bytes at dst (persist_put's) and flush them, no fence: non-temporal
 * stores for the 64-byte lines inside from NT_THRESHOLD bytes, cached and
 * flushed ends.  -1 with errno set if msync fails. */
DAXFS_MAYBE_UNUSED static int
persist_store(int mode, char *dst, const char *src, int c, size_t n)
{
#if DAXFS_X86
    if (mode != M_MSYNC && n >= NT_THRESHOLD && have_sse2) {
        size_t head = (size_t)(-(uintptr_t)dst & (LINE - 1));
        size_t body = (n - head) & ~(size_t)(LINE - 1);
        size_t tail = n - head - body;
        if (head) {
            persist_put(dst, src, c, head);
            persist_flush(mode, dst, head);
        }
        if (src == NULL)
            nt_fill_sse2(dst + head, c, body);
        else if (have_avx2)
            nt_copy_avx2(dst + head, src + head, body);
        else
            nt_copy_sse2(dst + head, src + head, body);
        if (tail) {
            persist_put(dst + head + body, src != NULL ? src + head + body : NULL, c, tail);
            persist_flush(mode, dst + head + body, tail);
        }
        return 0;
    }
#endif
    persist_put(dst, src, c, n);
    return persist_flush(mode, dst, n);
}

/* Copy n bytes to dst and flush them, no fence. */
DAXFS_MAYBE_UNUSED static inline int
persist_copy(int mode, char *dst, const char *src, size_t n)
{
    return persist_store(mode, dst, src, 0, n);
}

/* Fill n bytes at dst with c and flush them, no fence. */
DAXFS_MAYBE_UNUSED static inline int
persist_fill(int mode, char *dst, int c, size_t n)
{
    return persist_store(mode, dst, NULL, c, n);
}

/* The next run of differing lines of a and b (len bytes each, compared `line`
 * bytes at a time; the last line may be short) at or after `from`: its start, and
 * in *end where it stops (adjacent differing lines merged; at most len); len if
 * none differs.  The journal logs only these (diff_lines, block_records). */
DAXFS_MAYBE_UNUSED static inline size_t
diff_run(const unsigned char *a, const unsigned char *b, size_t len, size_t line, size_t from,
         size_t *end)
{
    size_t pos = from;
    while (pos < len && memcmp(a + pos, b + pos, len - pos < line ? len - pos : line) == 0)
        pos += line;
    if (pos >= len) {
        *end = len;
        return len;
    }
    size_t stop = pos + line;
    while (stop < len && memcmp(a + stop, b + stop, len - stop < line ? len - stop : line) != 0)
        stop += line;
    *end = stop < len ? stop : len;
    return pos;
}

#endif /* DAXFS_PERSIST_H */
