/*
 * bench/floors.c: the unavoidable memory work of three daxfs operations, in bare C
 * (no Python, no filesystem), on a /dev/shm file: the floors that docs/ARCHITECTURE.md
 * and bench/floors.py compare daxfs's figures with.
 *
 *   floors FILE
 *
 * FILE must hold at least 512 MiB (floors.py creates and fills it).  Prints
 * "name value" lines, each a median over 7 rounds, in ns per operation:
 *
 *   overwrite_ns    a durable 4 KiB overwrite as the journal's C commit does it: the
 *                   log (4 KiB of data + a 256-byte inode record + 64 bytes of headers)
 *                   stored non-temporally with its CRC-32C (daxfs/fs/_media.h's crc32c,
 *                   the C commit's own), fence; the 64-byte header,
 *                   fence; the data and the record in place, fence; applied_seq, fence
 *   one_copy_ns     a 4 KiB non-temporal copy and one fence (what copy-on-write of a
 *                   whole block, data written once, would cost at least)
 *   cow_2m_ns       a 2 MiB non-temporal copy and a fence, to a destination that moves
 *                   through 320 MiB (new blocks each time, as copy-on-write does)
 *   inplace_2m_ns   the same copy, always to one place (as fio's libpmem engine does)
 *
 * The stat miss's floor is bench/stat_floor.c's (floors.py runs it for its third row):
 * there each lookup waits for the one before, as consecutive stats do.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../daxfs/fs/_media.h" /* crc32c: the C commit's own (3-way interleaved) */

#define KIB 1024ULL
#define MIB (1024 * KIB)
#define ROUNDS 7

static double
now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static int
cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* non-temporal copy of n bytes (n a multiple of 16; dst 16-byte aligned) */
static void
nt_copy(void *dst, const void *src, size_t n)
{
    __m128i *d = dst;
    const __m128i *s = src;
    for (size_t i = 0; i < n / 16; i++)
        _mm_stream_si128(d + i, _mm_loadu_si128(s + i));
}

/* the journal's protocol for one 4 KiB overwrite; log, home, record, header in `pm` */
static void
overwrite(unsigned char *pm, const unsigned char *data, const unsigned char *rec, uint64_t seq)
{
    unsigned char *log = pm, *header = pm + 8 * KIB, *home = pm + 16 * KIB;
    unsigned char *inode = pm + 24 * KIB, *applied = header + 64;
    nt_copy(log, data, 4096);
    nt_copy(log + 4096, rec, 256);
    uint32_t crc = crc32c(data, 4096) ^ crc32c(rec, 256);
    _mm_sfence(); /* fence 1: the log */
    uint64_t words[8] = {seq, 2, 4096 + 256, crc};
    nt_copy(header, words, 64);
    _mm_sfence(); /* fence 2: the commit point */
    nt_copy(home, data, 4096);
    nt_copy(inode, rec, 256);
    _mm_sfence(); /* fence 3: applied */
    _mm_stream_si64((long long *)applied, (long long)seq);
    _mm_sfence();
}

static double
median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

static double
time_overwrite(unsigned char *pm, int one_copy)
{
    static unsigned char data[4096] __attribute__((aligned(64))), rec[256];
    memset(data, 0xA5, sizeof data);
    memset(rec, 0x5A, sizeof rec);
    double rounds[ROUNDS];
    const int ops = 200000;
    for (int r = 0; r < ROUNDS; r++) {
        double t0 = now_ns();
        for (int i = 0; i < ops; i++) {
            if (one_copy) {
                nt_copy(pm + 32 * KIB, data, 4096);
                _mm_sfence();
            } else {
                overwrite(pm, data, rec, (uint64_t)i);
            }
        }
        rounds[r] = (now_ns() - t0) / ops;
    }
    return median(rounds, ROUNDS);
}

static double
time_copy_2m(unsigned char *pm, const unsigned char *src, int moving)
{
    double rounds[ROUNDS];
    const int ops = 400;
    size_t span = 320 * MIB, at = 0;
    for (int r = 0; r < ROUNDS; r++) {
        double t0 = now_ns();
        for (int i = 0; i < ops; i++) {
            nt_copy(pm + at, src, 2 * MIB);
            _mm_sfence();
            if (moving)
                at = (at + 2 * MIB) % span;
        }
        rounds[r] = (now_ns() - t0) / ops;
    }
    return median(rounds, ROUNDS);
}

int
main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: floors FILE (at least 512 MiB, on /dev/shm)\n");
        return 2;
    }
    int fd = open(argv[1], O_RDWR);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        perror(argv[1]);
        return 1;
    }
    size_t size = 512 * MIB;
    if ((size_t)st.st_size < size) {
        fprintf(stderr, "%s: %lld bytes, need %zu\n", argv[1], (long long)st.st_size, size);
        return 1;
    }
    unsigned char *map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    unsigned char *pm = map;
    unsigned char *src = aligned_alloc(64, 2 * MIB);
    if (src == NULL) {
        perror("aligned_alloc");
        return 1;
    }
    memset(src, 0x3C, 2 * MIB);
    detect_cpu();
    crc_init();
    printf("overwrite_ns %.1f\n", time_overwrite(pm, 0));
    printf("one_copy_ns %.1f\n", time_overwrite(pm, 1));
    printf("cow_2m_ns %.1f\n", time_copy_2m(pm, src, 1));
    printf("inplace_2m_ns %.1f\n", time_copy_2m(pm, src, 0));
    return 0;
}
