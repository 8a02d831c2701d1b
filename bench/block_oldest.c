/* The floor of the QD32 Futures rows (bench/block_ab.py --bio, --fs), in bare C.
 *
 *     block_oldest PATH SECONDS DEPTH oldest|any
 *
 * 4 KiB random O_DIRECT reads of PATH through one io_uring (no setup flags, as
 * daxfs's BioRing), DEPTH in flight, each SQE submitted in its own io_uring_enter
 * (as fio and the BioRing do).  "oldest" is the Futures rows' pattern: the loop
 * waits for the OLDEST read in flight (reaping every CQE that comes meanwhile),
 * then submits the next one in its place -- a read that completes before the
 * oldest waits to be replaced.  "any" is fio's: every completion is replaced at
 * once.  Prints "ops N" and "seconds S".  No Python: what the pattern itself
 * allows on this machine.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BS 4096

static double
now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t state = 88172645463325252ULL;

static uint64_t
next_rand(void)
{
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

static void
submit(struct io_uring *ring, int fd, void *buf, long long blocks, unsigned slot)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    io_uring_prep_read(sqe, fd, buf, BS, (long long)(next_rand() % blocks) * BS);
    io_uring_sqe_set_data64(sqe, slot);
    int ret = io_uring_submit(ring);
    if (ret < 0) {
        fprintf(stderr, "io_uring_submit: %s\n", strerror(-ret));
        exit(1);
    }
}

int
main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s PATH SECONDS DEPTH oldest|any\n", argv[0]);
        return 2;
    }
    double seconds = atof(argv[2]);
    unsigned depth = (unsigned)atoi(argv[3]);
    int oldest = strcmp(argv[4], "oldest") == 0;
    if (depth < 1 || depth > 1024 || seconds <= 0) {
        fprintf(stderr, "bad depth or seconds\n");
        return 2;
    }
    int fd = open(argv[1], O_RDONLY | O_DIRECT);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        perror(argv[1]);
        return 1;
    }
    long long blocks = st.st_size / BS;
    if (blocks < 1) {
        fprintf(stderr, "%s: smaller than a block\n", argv[1]);
        return 1;
    }
    struct io_uring ring;
    struct io_uring_params params;
    memset(&params, 0, sizeof params);
    params.flags = IORING_SETUP_CQSIZE;
    params.cq_entries = 4 * depth;
    int ret = io_uring_queue_init_params(depth, &ring, &params);
    if (ret < 0) {
        fprintf(stderr, "io_uring_queue_init: %s\n", strerror(-ret));
        return 1;
    }
    char *bufs;
    if (posix_memalign((void **)&bufs, BS, (size_t)depth * BS) != 0)
        return 1;
    char *done = calloc(depth, 1);
    for (unsigned i = 0; i < depth; i++)
        submit(&ring, fd, bufs + (size_t)i * BS, blocks, i);
    unsigned long long ops = 0;
    unsigned head = 0; /* the oldest slot in flight */
    double start = now(), stop = start + seconds;
    int stopping = 0;
    unsigned left = depth;
    while (left > 0) {
        if (oldest && done[head]) { /* the oldest is done: its slot takes the next read */
            done[head] = 0;
            ops++;
            if (!stopping && now() >= stop)
                stopping = 1;
            if (stopping)
                left--;
            else
                submit(&ring, fd, bufs + (size_t)head * BS, blocks, head);
            head = (head + 1) % depth;
            continue;
        }
        struct io_uring_cqe *cqe;
        ret = io_uring_wait_cqe(&ring, &cqe);
        if (ret < 0) {
            if (ret == -EINTR)
                continue;
            fprintf(stderr, "io_uring_wait_cqe: %s\n", strerror(-ret));
            return 1;
        }
        unsigned count = 0, seen = 0;
        io_uring_for_each_cqe(&ring, seen, cqe)
        {
            count++;
            if (cqe->res != BS) {
                fprintf(stderr, "read: %d\n", cqe->res);
                return 1;
            }
            unsigned slot = (unsigned)cqe->user_data;
            if (oldest) {
                done[slot] = 1;
                continue;
            }
            ops++;
            if (!stopping && now() >= stop)
                stopping = 1;
            if (stopping)
                left--;
            else
                submit(&ring, fd, bufs + (size_t)slot * BS, blocks, slot);
        }
        io_uring_cq_advance(&ring, count);
    }
    double elapsed = now() - start;
    printf("ops %llu\nseconds %.6f\n", ops, elapsed);
    io_uring_queue_exit(&ring);
    close(fd);
    return 0;
}
