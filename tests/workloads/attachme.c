/* attachme: a process to attach to (memtrace -p PID) while it runs.
 *
 * Before it waits it maps 64 KiB of anonymous memory and touches it, and
 * maps /etc/passwd read-only; it prints "READY pid=N pre=0x..." to stderr
 * (pre: the 64 KiB mapping) and waits, up to 60 s (else it exits 1), for
 * SIGUSR1 (blocked before READY is printed, so none is lost). While it waits
 * it makes marker 0 every 20 ms: a heartbeat, so a test can see in the
 * trace being written (PATH.partial) that the tracer is attached. Then:
 *
 *   marker 1; mmap 1 MiB anonymous private RW, madvise(MADV_NOHUGEPAGE);
 *   write one byte per 4 KiB page (256 minor write faults); marker 2
 *
 * (markers: madvise(0x7e57000000 + n*4096, 0, MADV_NORMAL), see common.h)
 * and prints "MAP addr=0x... len=1048576" and "RUSAGE minflt=N majflt=M"
 * to stderr, and exits 0.
 *
 * `attachme spin`: after the signal, marker 1, the mmap and madvise, prints
 * the MAP line first, writes the 256 pages, then computes without a syscall
 * or a fault for up to 60 s (until killed): its last fault is followed by
 * nothing that would show a tracer it has ended.
 *
 * A tracer attached while it waits must see the mappings that existed before
 * (the binary, libc, stack, the 64 KiB region, /etc/passwd) as its state at
 * attach (memtrace: `map` rows with cause `attach`), and after the signal
 * the 1 MiB mmap (ret = addr) and exactly 256 faults inside it. */
#include "common.h"

#include <fcntl.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#define PRE_LEN (64 * 1024)
#define LEN (1024 * 1024)

static void spin(void)
{
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);   /* the vDSO: no syscall */
	for (volatile unsigned long i = 0;; i++) {
		if (i % (1UL << 20) == 0) {
			clock_gettime(CLOCK_MONOTONIC, &t);
			if (t.tv_sec - t0.tv_sec > 60)
				_exit(1);
		}
	}
}

int main(int argc, char **argv)
{
	int spinning = argc > 1 && strcmp(argv[1], "spin") == 0;
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
		die("sigprocmask");

	char *pre = mmap(NULL, PRE_LEN, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (pre == MAP_FAILED)
		die("mmap");
	for (size_t off = 0; off < PRE_LEN; off += MT_PAGE)
		((volatile char *)pre)[off] = 1;
	int fd = open("/etc/passwd", O_RDONLY);
	if (fd < 0)
		die("/etc/passwd");
	void *f = mmap(NULL, MT_PAGE, PROT_READ, MAP_PRIVATE, fd, 0);
	if (f == MAP_FAILED)
		die("mmap /etc/passwd");
	close(fd);

	fprintf(stderr, "READY pid=%d pre=%p\n", (int)getpid(), (void *)pre);
	for (int waited_ms = 0;; waited_ms += 20) {
		struct timespec tick = {0, 20 * 1000 * 1000};
		int sig = sigtimedwait(&set, NULL, &tick);
		if (sig == SIGUSR1)
			break;
		if (sig < 0 && errno != EAGAIN && errno != EINTR)
			die("sigtimedwait");
		if (waited_ms >= 60 * 1000) {
			fprintf(stderr, "attachme: no SIGUSR1 within 60 s\n");
			return 1;
		}
		marker(0); /* heartbeat */
	}

	marker(1);
	char *p = mmap(NULL, LEN, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	if (madvise(p, LEN, MADV_NOHUGEPAGE) != 0)
		die("madvise");
	if (spinning) {
		fprintf(stderr, "MAP addr=%p len=%d\n", (void *)p, LEN);
		struct timespec t;
		clock_gettime(CLOCK_MONOTONIC, &t);     /* its code faulted in now */
		for (size_t off = 0; off < LEN; off += MT_PAGE)
			((volatile char *)p)[off] = 1;
		spin();
	}
	for (size_t off = 0; off < LEN; off += MT_PAGE)
		((volatile char *)p)[off] = 1;
	marker(2);
	fprintf(stderr, "MAP addr=%p len=%d\n", (void *)p, LEN);
	print_rusage();
	return 0;
}
