/* neighbour [seconds] [fork] [rate]: maps, faults, mprotects and unmaps
 * continuously, for `seconds` (default 0: until killed).
 *
 * Each round maps 1 MiB of anonymous memory (MADV_NOHUGEPAGE), writes one
 * byte per page (256 minor faults) and mprotects it read-only; maps 16 pages
 * more, grows them to 32 with mremap and touches them; unmaps both. With `fork` 1 it also forks a child each round
 * that touches 16 pages and _exit(0)s (the parent waits for it). `rate`
 * limits the faults per second (default 0: as fast as it can).
 *
 * It prints "READY pid=N" to stderr when it starts and, when its time is
 * up, "NEIGHBOUR rounds=R" and the RUSAGE line (common.h), and exits 0.
 * Used as an untraced busy neighbour (isolation tests), as a process to
 * attach to (-p, --no-follow), and by scripts/soak.
 */
#include "common.h"

#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LEN (1024 * 1024)

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void touch(char *p, size_t len)
{
	for (size_t off = 0; off < len; off += MT_PAGE)
		((volatile char *)p)[off] = 1;
}

int main(int argc, char **argv)
{
	long seconds = arg_long(argc, argv, 1, 0);
	long do_fork = arg_long(argc, argv, 2, 0);
	long rate = arg_long(argc, argv, 3, 0);
	fprintf(stderr, "READY pid=%d\n", (int)getpid());
	double t0 = now();
	long rounds = 0;
	while (seconds == 0 || now() - t0 < seconds) {
		char *p = mmap(NULL, LEN, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			die("mmap");
		if (madvise(p, LEN, MADV_NOHUGEPAGE) != 0)
			die("madvise");
		touch(p, LEN);
		if (mprotect(p, LEN, PROT_READ) != 0)
			die("mprotect");
		char *q = mmap(NULL, 16 * MT_PAGE, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (q == MAP_FAILED)
			die("mmap");
		q = mremap(q, 16 * MT_PAGE, 32 * MT_PAGE, MREMAP_MAYMOVE);
		if (q == MAP_FAILED)
			die("mremap");
		touch(q, 32 * MT_PAGE);
		if (do_fork) {
			pid_t pid = fork();
			if (pid < 0)
				die("fork");
			if (pid == 0) {
				touch(q, 16 * MT_PAGE);   /* copy-on-write faults */
				_exit(0);
			}
			waitpid(pid, NULL, 0);
		}
		munmap(q, 32 * MT_PAGE);
		munmap(p, LEN);
		rounds++;
		if (rate > 0) {
			/* (256 + 32) faults per round: sleep until on schedule */
			double due = t0 + rounds * (LEN / MT_PAGE + 32) / (double)rate;
			double wait = due - now();
			if (wait > 0)
				usleep((useconds_t)(wait * 1e6));
		}
	}
	fprintf(stderr, "NEIGHBOUR rounds=%ld\n", rounds);
	print_rusage();
	return 0;
}
