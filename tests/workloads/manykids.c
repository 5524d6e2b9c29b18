/* manykids [N] [parallel]: fork N short-lived children (default 300), at
 * most `parallel` (default 16) alive at once, each ending a different way.
 *
 * Child i does, by i % 6:
 *   0: maps 16 pages, touches them, _exit(0)
 *   1: exec's this program again as "manykids leaf" (touches 8 pages, exits 0)
 *   2: touches 4 pages, then kills itself with SIGKILL
 *   3: starts a thread that touches 4 pages and calls exit(3): exit_group
 *      from a thread other than the leader, while the leader is in join
 *   4: forks a grandchild that touches 8 pages and _exit(0)s; waits for it
 *   5: exec's a file that does not exist (the exec fails), then _exit(127)
 *
 * The parent waits for every child (so wait4's rusage of the parent covers
 * the whole tree) and prints "KIDS n=N execs=E" to stderr, E the successful
 * execs of children (kind 1). With N=0 it forks until killed.
 */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void touch(long pages)
{
	size_t len = (size_t)pages * MT_PAGE;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	for (size_t off = 0; off < len; off += MT_PAGE)
		((volatile char *)p)[off] = 1;
	munmap(p, len);
}

static void *exiter(void *arg)
{
	(void)arg;
	touch(4);
	exit(3);
}

static void child(long i, const char *self)
{
	switch (i % 6) {
	case 0:
		touch(16);
		_exit(0);
	case 1:
		execl(self, "manykids", "leaf", (char *)NULL);
		die("exec self");
	case 2:
		touch(4);
		raise(SIGKILL);
		_exit(1);
	case 3: {
		pthread_t t;
		if (pthread_create(&t, NULL, exiter, NULL) != 0)
			_exit(1);
		pthread_join(t, NULL);
		_exit(1);
	}
	case 4: {
		pid_t g = fork();
		if (g < 0)
			_exit(1);
		if (g == 0) {
			touch(8);
			_exit(0);
		}
		waitpid(g, NULL, 0);
		_exit(0);
	}
	default:
		execl("/nonexistent/manykids-no-such-file", "x", (char *)NULL);
		_exit(127);
	}
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "leaf") == 0) {
		touch(8);
		return 0;
	}
	long n = arg_long(argc, argv, 1, 300);
	long parallel = arg_long(argc, argv, 2, 16);
	if (parallel < 1)
		parallel = 1;
	char self[4096];
	ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (len < 0)
		die("readlink");
	self[len] = 0;

	long alive = 0, execs = 0;
	for (long i = 0; n == 0 || i < n; i++) {
		if (alive >= parallel) {
			if (wait(NULL) > 0)
				alive--;
		}
		pid_t pid = fork();
		if (pid < 0)
			die("fork");
		if (pid == 0)
			child(i, self);
		alive++;
		if (i % 6 == 1)
			execs++;
	}
	while (wait(NULL) > 0)
		;
	fprintf(stderr, "KIDS n=%ld execs=%ld\n", n, execs);
	return 0;
}
