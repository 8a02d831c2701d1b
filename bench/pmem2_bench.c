/*
 * bench/pmem2_bench.c: the libpmem2 anchor for bench/pmem.py.
 *
 * Maps FILE with PMDK's libpmem2 at CACHE_LINE granularity and times the same
 * operations, on the same offsets, as bench/pmem.py times for daxfs:
 *
 *   persist_64_ns              dirty one byte of a line, persist_fn(line, 64)
 *   memcpy_persist_64_ns       memcpy_fn(dst, src, 64, 0)
 *   memcpy_persist_4096_ns     memcpy_fn(dst, src, 4096, 0)
 *   seq_write_gib_s            memcpy_fn of PIECE-byte pieces over SEQ bytes
 *
 * The small operations cycle through the lines (or 4 KiB blocks) of the "hot"
 * range [HOT_OFFSET, HOT_OFFSET + HOT_SIZE); the sequential writes cover
 * [0, SEQ).  Latencies are the median over BATCHES batches of ns per
 * operation; each batch runs enough operations to last BATCH_NS (found by
 * doubling, which is also the warm-up).  Bandwidth is the median of PASSES
 * passes after one untimed pass (which also takes the page faults).
 *
 * On a file that is not on a DAX filesystem (e.g. /dev/shm) libpmem2 detects
 * PAGE granularity and refuses a CACHE_LINE mapping; run with
 * PMEM2_FORCE_GRANULARITY=CACHE_LINE (libpmem2(7)) to get CPU flushes, as
 * daxfs does with persist="cpu".
 *
 * Output: one "name value" line per result, for bench/pmem.py to parse.
 * Exit status 2 on bad usage, 1 when libpmem2 refuses the file.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libpmem2.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LINE 64
#define MAX_BATCHES 1000

struct bench {
	char *base; /* mapping of the whole file */
	size_t map_size;
	pmem2_persist_fn persist;
	pmem2_memcpy_fn memcpy_fn;
	char *src; /* source buffer, PIECE bytes, 64-byte aligned */
	size_t hot_offset, hot_size, seq_size, piece;
	long long batch_ns;
	int batches, passes;
	/* the operation being timed */
	size_t len;    /* bytes per operation */
	size_t step;   /* distance between successive offsets */
	size_t cursor; /* next offset, relative to hot_offset */
};

typedef void (*op_loop)(struct bench *b, size_t n);

static long long
now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double
median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static inline size_t
next_offset(struct bench *b)
{
	size_t off = b->hot_offset + b->cursor;
	b->cursor += b->step;
	if (b->cursor + b->len > b->hot_size)
		b->cursor = 0;
	return off;
}

static void
loop_persist(struct bench *b, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		size_t off = next_offset(b);
		b->base[off] = 1; /* dirty the line, as bench/pmem.py does */
		b->persist(b->base + off, b->len);
	}
}

static void
loop_memcpy(struct bench *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		b->memcpy_fn(b->base + next_offset(b), b->src, b->len, 0);
}

/* Median ns per operation of `loop`, as common.median_ns_per_op does it. */
static double
time_op(struct bench *b, op_loop loop, size_t len)
{
	double per_op[MAX_BATCHES];
	size_t n = 1;
	long long dt;

	b->len = len;
	b->step = len < LINE ? LINE : len;
	b->cursor = 0;
	for (;;) { /* warm up and find a batch that lasts batch_ns */
		long long t0 = now_ns();
		loop(b, n);
		dt = now_ns() - t0;
		if (dt >= b->batch_ns)
			break;
		n *= 2;
	}
	for (int i = 0; i < b->batches; i++) {
		long long t0 = now_ns();
		loop(b, n);
		per_op[i] = (double)(now_ns() - t0) / (double)n;
	}
	return median(per_op, b->batches);
}

static long long
seq_pass(struct bench *b)
{
	long long t0 = now_ns();
	for (size_t off = 0; off + b->piece <= b->seq_size; off += b->piece)
		b->memcpy_fn(b->base + off, b->src, b->piece, 0);
	return now_ns() - t0;
}

static double
seq_write_gib_s(struct bench *b)
{
	double gib_s[MAX_BATCHES];
	size_t written = b->seq_size - b->seq_size % b->piece;

	seq_pass(b); /* page faults, warm-up */
	for (int i = 0; i < b->passes; i++)
		gib_s[i] = (double)written / (double)seq_pass(b) * 1e9 / (double)(1 << 30);
	return median(gib_s, b->passes);
}

static const char *
granularity_name(enum pmem2_granularity g)
{
	switch (g) {
	case PMEM2_GRANULARITY_BYTE:
		return "BYTE";
	case PMEM2_GRANULARITY_CACHE_LINE:
		return "CACHE_LINE";
	case PMEM2_GRANULARITY_PAGE:
		return "PAGE";
	}
	return "?";
}

static int
fail(const char *what)
{
	fprintf(stderr, "pmem2_bench: %s: %s\n", what, pmem2_errormsg());
	return 1;
}

static void
usage(FILE *out)
{
	fprintf(out,
		"usage: pmem2_bench [--hot-offset N] [--hot-size N] [--seq-size N] "
		"[--piece N]\n"
		"                   [--batch-ns N] [--batches N] [--passes N] FILE\n"
		"defaults: hot range [1 GiB, 1 GiB + 1 MiB), sequential 1 GiB in 2 MiB "
		"pieces,\n"
		"          15 batches of 20 ms, 7 passes\n");
}

static int
parse_size(const char *s, size_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno || end == s || *end || s[0] == '-')
		return -1;
	*out = (size_t)v;
	return 0;
}

int
main(int argc, char **argv)
{
	struct bench b = {
		.hot_offset = 1ULL << 30,
		.hot_size = 1 << 20,
		.seq_size = 1ULL << 30,
		.piece = 2 << 20,
		.batch_ns = 20000000,
		.batches = 15,
		.passes = 7,
	};
	static const struct option opts[] = {
		{"hot-offset", required_argument, NULL, 'o'},
		{"hot-size", required_argument, NULL, 'h'},
		{"seq-size", required_argument, NULL, 's'},
		{"piece", required_argument, NULL, 'p'},
		{"batch-ns", required_argument, NULL, 't'},
		{"batches", required_argument, NULL, 'b'},
		{"passes", required_argument, NULL, 'n'},
		{"help", no_argument, NULL, '?'},
		{NULL, 0, NULL, 0},
	};
	int c;
	size_t v;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c == '?' || !optarg || parse_size(optarg, &v) < 0) {
			usage(stderr);
			return 2;
		}
		switch (c) {
		case 'o': b.hot_offset = v; break;
		case 'h': b.hot_size = v; break;
		case 's': b.seq_size = v; break;
		case 'p': b.piece = v; break;
		case 't': b.batch_ns = (long long)v; break;
		case 'b': b.batches = (int)v; break;
		case 'n': b.passes = (int)v; break;
		}
	}
	if (optind != argc - 1 || b.batches < 1 || b.batches > MAX_BATCHES || b.passes < 1 ||
	    b.passes > MAX_BATCHES || b.piece == 0 || b.piece > b.seq_size ||
	    b.hot_size < 4096 || b.hot_offset % LINE) {
		usage(stderr);
		return 2;
	}

	int fd = open(argv[optind], O_RDWR);
	if (fd < 0) {
		fprintf(stderr, "pmem2_bench: %s: %s\n", argv[optind], strerror(errno));
		return 1;
	}
	struct pmem2_config *cfg;
	struct pmem2_source *source;
	struct pmem2_map *map;
	if (pmem2_config_new(&cfg))
		return fail("pmem2_config_new");
	if (pmem2_source_from_fd(&source, fd))
		return fail("pmem2_source_from_fd");
	if (pmem2_config_set_required_store_granularity(cfg, PMEM2_GRANULARITY_CACHE_LINE))
		return fail("pmem2_config_set_required_store_granularity");
	if (pmem2_map_new(&map, cfg, source))
		return fail("pmem2_map_new (on a non-DAX file set "
			    "PMEM2_FORCE_GRANULARITY=CACHE_LINE)");

	b.base = pmem2_map_get_address(map);
	b.map_size = pmem2_map_get_size(map);
	b.persist = pmem2_get_persist_fn(map);
	b.memcpy_fn = pmem2_get_memcpy_fn(map);
	if (b.seq_size > b.map_size || b.hot_offset > b.map_size ||
	    b.hot_size > b.map_size - b.hot_offset) {
		fprintf(stderr, "pmem2_bench: %s holds %zu bytes, too few for the ranges asked\n",
			argv[optind], b.map_size);
		return 2;
	}
	size_t src_size = b.piece < 4096 ? 4096 : b.piece;
	b.src = aligned_alloc(LINE, (src_size + LINE - 1) / LINE * LINE);
	if (!b.src) {
		perror("pmem2_bench: aligned_alloc");
		return 1;
	}
	for (size_t i = 0; i < src_size; i++)
		b.src[i] = (char)(i * 131 + 7);

	printf("granularity %s\n", granularity_name(pmem2_map_get_store_granularity(map)));
	printf("persist_64_ns %.2f\n", time_op(&b, loop_persist, 64));
	printf("memcpy_persist_64_ns %.2f\n", time_op(&b, loop_memcpy, 64));
	printf("memcpy_persist_4096_ns %.2f\n", time_op(&b, loop_memcpy, 4096));
	printf("seq_write_gib_s %.3f\n", seq_write_gib_s(&b));

	free(b.src);
	pmem2_map_delete(&map);
	pmem2_source_delete(&source);
	pmem2_config_delete(&cfg);
	close(fd);
	return 0;
}
