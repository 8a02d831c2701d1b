/*
 * bench/stat_floor.c: the memory work of a stat miss among N names, in bare C, with the
 * directory index laid out in several ways (docs/ARCHITECTURE.md, "The stat miss path").
 *
 *   stat_floor FILE [N [NAME]]
 *
 * FILE: at least 1 GiB, on /dev/shm (the inode records: tmpfs, 4 KiB pages, as the
 * daxfs image there; shmem THP is off on the development VM).  Each lookup waits for
 * the one before (as a stat waits for the stat before it: the interpreter runs between
 * them; a loop of independent lookups lets the CPU overlap them, and measures less).  Prints
 * "name value" lines, ns a lookup, median of 7 rounds of 400,000:
 *
 *   interp_{4k,2m}[_rec]        DirIndex's three arrays (keys 8 B, values 8 B, names
 *                               16 B) searched as before: 4 interpolation steps, then
 *                               binary
 *   fence_{4k,2m}[_rec]         the same arrays, searched as _stat.c did before the
 *                               guess layout: the bucket array (a quarter as many
 *                               buckets as keys), the value's and name's lines
 *                               prefetched, the bucket's keys
 *   packed_{4k,2m}[_rec]        one array of 32-byte entries (key, value, name), the
 *                               interpolation search
 *   packed_fence_{4k,2m}[_rec]  32-byte entries and the bucket array
 *   guess_{4k,2m}[_rec]         the three arrays as _stat.c searches them now: a
 *                               bucket array of 64-128 keys a bucket (FENCE_KEYS),
 *                               the key's place in its bucket guessed from its next
 *                               32 bits, the lines of keys, values and names
 *                               GUESS_SPAN keys either side of the guess prefetched,
 *                               a gallop from the guess
 *
 * 4k: the arrays malloc'd (4 KiB pages, as Python's array and bytes); 2m: on 2 MiB
 * pages (MADV_HUGEPAGE on an aligned anonymous mapping; anonymous THP is "madvise").
 * _rec: then a 256-byte copy from a random place of FILE (the inode record); without
 * it, the index alone.  With NAME (e.g. guess_4k_rec_ns, bench/floors.py's row), only
 * that line is measured and printed.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define GIB (1ULL << 30)
#define LAYOUTS 5
#define ROUNDS 7
#define OPS 400000

static uint64_t rng = 88172645463325252ULL;
static uint64_t xorshift(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }
static double now_ns(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
static int cmp_u64(const void *a, const void *b) { uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b; return x < y ? -1 : x > y; }
static int cmp_d(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }

static void *alloc(size_t size, int huge) {
    if (!huge) { void *p = malloc(size); memset(p, 0, size); return p; }
    size_t al = 2ULL << 20, len = size + al;
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(1); }
    char *q = (char *)(((uintptr_t)p + al - 1) & ~(al - 1));
    madvise(q, size, MADV_HUGEPAGE);
    memset(q, 0, size);
    return q;
}

typedef struct { uint64_t key, value; unsigned char name[16]; } Entry;

static size_t n;
static uint64_t *keys, *values; static unsigned char *names;
static Entry *packed; static uint32_t *fence; static int fbits;
static uint32_t *gfence; static int gbits; /* the guess layout's bucket array */
#define FENCE_KEYS 64 /* as _stat.c */
#define GUESS_SPAN 8  /* as _stat.c */
static const unsigned char *records;
static volatile uint64_t sink;

static size_t search(const uint64_t *k, size_t stride, size_t lo, size_t hi, uint64_t key, int interp) {
#define K(i) (*(const uint64_t *)((const char *)k + (i) * stride))
    uint64_t klo = 0, khi = UINT64_MAX;
    for (int step = 0; interp && step < 4 && hi - lo > 8; step++) {
        size_t mid = lo + (size_t)((unsigned __int128)(key - klo) * (hi - lo) / ((unsigned __int128)(khi - klo) + 1));
        if (mid >= hi) mid = hi - 1;
        if (K(mid) < key) { lo = mid + 1; klo = K(mid); } else { hi = mid; khi = K(mid); }
    }
    while (lo < hi) { size_t mid = lo + (hi - lo) / 2; if (K(mid) < key) lo = mid + 1; else hi = mid; }
    return lo;
}

/* as _stat.c's probe with a bucket array: the position of the first key >= key */
static size_t guess_search(uint64_t key) {
    size_t b = key >> (64 - gbits), lo = gfence[b], hi = gfence[b + 1];
    if (hi <= lo) return lo;
    size_t g = lo + (size_t)((((key << gbits) >> 32) * (hi - lo)) >> 32);
    if (g >= hi) g = hi - 1;
    size_t first = g >= lo + GUESS_SPAN ? g - GUESS_SPAN : lo;
    size_t last = g + GUESS_SPAN < hi ? g + GUESS_SPAN : hi - 1;
    for (size_t i = first; i <= last + 7; i += 8) {
        size_t at = i < last ? i : last;
        __builtin_prefetch(keys + at);
        __builtin_prefetch(values + at);
    }
    for (size_t i = first; i <= last + 3; i += 4) __builtin_prefetch(names + 16 * (i < last ? i : last));
    if (keys[g] < key) {
        size_t step = 1;
        lo = g + 1;
        while (lo + step - 1 < hi && keys[lo + step - 1] < key) { lo += step; step <<= 1; }
        if (lo + step - 1 < hi) hi = lo + step - 1;
    } else {
        size_t step = 1, top = g;
        while (top >= lo + step && keys[top - step] >= key) { top -= step; step <<= 1; }
        if (top + 1 > lo + step) lo = top - step + 1;
        hi = top;
    }
    return search(keys, 8, lo, hi, key, 0);
}

static double run(int layout, int rec) {
    double r[ROUNDS];
    uint64_t dep = 0;
    for (int round = 0; round < ROUNDS; round++) {
        double t0 = now_ns();
        for (int i = 0; i < OPS; i++) {
            uint64_t key = keys[(xorshift() ^ dep) % n];
            uint64_t v; const unsigned char *nm;
            if (layout == 0) {
                size_t at = search(keys, 8, 0, n, key, 1);
                v = values[at]; nm = names + 16 * at;
            } else if (layout == 1) {
                size_t b = key >> (64 - fbits);
                size_t lo = fence[b];
                __builtin_prefetch(values + lo);
                __builtin_prefetch(names + 16 * lo);
                __builtin_prefetch(names + 16 * lo + 64);
                size_t at = search(keys, 8, lo, fence[b + 1], key, 0);
                v = values[at]; nm = names + 16 * at;
            } else if (layout == 2) {
                size_t at = search(&packed[0].key, 32, 0, n, key, 1);
                v = packed[at].value; nm = packed[at].name;
            } else if (layout == 3) {
                size_t b = key >> (64 - fbits);
                size_t at = search(&packed[0].key, 32, fence[b], fence[b + 1], key, 0);
                v = packed[at].value; nm = packed[at].name;
            } else {
                size_t at = guess_search(key);
                v = values[at]; nm = names + 16 * at;
            }
            uint64_t got = v + nm[0];
            if (rec) {
                unsigned char buf[256];
                memcpy(buf, records + 256 * (v % (GIB / 256)), 256);
                got += buf[0] + buf[255];
            }
            dep = got & 1; /* the next lookup waits for this one */
            sink += got;
        }
        r[round] = (now_ns() - t0) / OPS;
    }
    qsort(r, ROUNDS, sizeof r[0], cmp_d);
    return r[ROUNDS / 2];
}

static void build(int huge) {
    keys = alloc(8 * n, huge); values = alloc(8 * n, huge); names = alloc(16 * n, huge);
    packed = alloc(32 * n, huge);
    fbits = 1; while ((1ULL << (fbits + 1)) <= n / 4) fbits++; /* as _stat.c */
    fence = alloc(4 * ((1ULL << fbits) + 1), huge);
    gbits = 1; while ((1ULL << (gbits + 1)) <= n / FENCE_KEYS) gbits++; /* as _stat.c */
    gfence = alloc(4 * ((1ULL << gbits) + 1), huge);
    rng = 88172645463325252ULL;
    for (size_t i = 0; i < n; i++) keys[i] = xorshift();
    qsort(keys, n, 8, cmp_u64);
    for (size_t i = 0; i < n; i++) {
        values[i] = xorshift();
        memset(names + 16 * i, (int)i, 16);
        packed[i].key = keys[i]; packed[i].value = values[i]; memcpy(packed[i].name, names + 16 * i, 16);
    }
    size_t at = 0;
    for (size_t b = 0; b <= (1ULL << fbits); b++) {
        uint64_t start = b == (1ULL << fbits) ? UINT64_MAX : (uint64_t)b << (64 - fbits);
        while (at < n && keys[at] < start) at++;
        fence[b] = b == (1ULL << fbits) ? n : at;
    }
    at = 0;
    for (size_t b = 0; b <= (1ULL << gbits); b++) {
        uint64_t start = b == (1ULL << gbits) ? UINT64_MAX : (uint64_t)b << (64 - gbits);
        while (at < n && keys[at] < start) at++;
        gfence[b] = b == (1ULL << gbits) ? n : at;
    }
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: stat_floor FILE [N [NAME]]\n"); return 2; }
    const char *only = argc > 3 ? argv[3] : NULL;
    n = argc > 2 ? strtoull(argv[2], NULL, 10) : 1000000;
    if (n < 1) { fprintf(stderr, "N: at least 1\n"); return 2; }
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) { perror(argv[1]); return 1; }
    records = mmap(NULL, GIB, PROT_READ, MAP_SHARED, fd, 0);
    if (records == MAP_FAILED) { perror("mmap"); return 1; }
    for (size_t i = 0; i < GIB; i += 4096) sink += records[i];
    const char *names_[] = {"interp", "fence", "packed", "packed_fence", "guess"};
    int found = 0;
    for (int huge = 0; huge < 2; huge++) {
        char name[LAYOUTS][2][48];
        int wanted = 0;
        for (int layout = 0; layout < LAYOUTS; layout++)
            for (int rec = 0; rec < 2; rec++) {
                snprintf(name[layout][rec], sizeof name[0][0], "%s_%s%s_ns", names_[layout],
                         huge ? "2m" : "4k", rec ? "_rec" : "");
                wanted += !only || strcmp(only, name[layout][rec]) == 0;
            }
        if (!wanted) continue;
        build(huge);
        for (int layout = 0; layout < LAYOUTS; layout++)
            for (int rec = 0; rec < 2; rec++)
                if (!only || strcmp(only, name[layout][rec]) == 0)
                    printf("%s %.1f\n", name[layout][rec], run(layout, rec));
        found += wanted;
    }
    if (!found) { fprintf(stderr, "stat_floor: no measurement named %s\n", only); return 2; }
    return 0;
}
