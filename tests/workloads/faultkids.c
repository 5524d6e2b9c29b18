/* faultkids [N] [pages] [wait]: forks N children one after another, each
 * doing known page faults; waits for each with wait4 and prints the
 * kernel's own counts of it (its whole life: fork to exit):
 *
 *     KID i=I pid=P how=H minflt=M majflt=J
 *
 * Child i maps (i % 5 + 1) * pages anonymous pages (MADV_NOHUGEPAGE),
 * writes a byte in each, then by how = i % 5:
 *   0: _exit(0)
 *   1: starts a thread that touches `pages` more pages; joins it; _exit(0)
 *   2: exec's this program as "faultkids leaf P" (same name: touches P more)
 *   3: exec's "true" (from PATH: another name)
 *   4: renames itself "faultkids-gone" (prctl), touches `pages` more, _exit(0)
 * Default N 10, pages 64. With wait 1 it first prints "READY pid=P" and
 * reads one byte from stdin before the first fork (so a tracer can be
 * started between). At the end: "KIDS n=N".
 * Used by tests/integration/test_system_live.py (memtrace -a).
 */
#include "common.h"

#include <pthread.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static void touch(long pages)
{
	size_t len = (size_t)pages * MT_PAGE;
	char *p = map_small_pages(len);
	touch_pages(p, len);
	munmap(p, len);
}

static void *toucher(void *arg)
{
	touch((long)arg);
	return NULL;
}

static void child(long i, long pages, const char *self)
{
	touch((i % 5 + 1) * pages);
	switch (i % 5) {
	case 1: {
		pthread_t t;
		if (pthread_create(&t, NULL, toucher, (void *)pages) != 0)
			_exit(1);
		pthread_join(t, NULL);
		_exit(0);
	}
	case 2: {
		char arg[32];
		snprintf(arg, sizeof(arg), "%ld", pages);
		execl(self, "faultkids", "leaf", arg, (char *)NULL);
		die("exec self");
	}
	case 3:
		execlp("true", "true", (char *)NULL);
		die("exec true");
	case 4:
		if (prctl(PR_SET_NAME, "faultkids-gone", 0, 0, 0) != 0)
			die("prctl");
		touch(pages);
		_exit(0);
	default:
		_exit(0);
	}
}

int main(int argc, char **argv)
{
	if (argc > 2 && strcmp(argv[1], "leaf") == 0) {
		touch(arg_long(argc, argv, 2, 1));
		return 0;
	}
	long n = arg_long(argc, argv, 1, 10);
	long pages = arg_long(argc, argv, 2, 64);
	long wait_go = arg_long(argc, argv, 3, 0);
	char self[4096];
	ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (len < 0)
		die("readlink");
	self[len] = 0;
	if (wait_go) {
		char c;
		fprintf(stderr, "READY pid=%d\n", (int)getpid());
		if (read(0, &c, 1) != 1)
			die("read stdin");
	}
	for (long i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0)
			die("fork");
		if (pid == 0)
			child(i, pages, self);
		int status;
		struct rusage ru;
		if (wait4(pid, &status, 0, &ru) != pid)
			die("wait4");
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			fprintf(stderr, "kid %ld failed: status %d\n", i, status);
			return 1;
		}
		fprintf(stderr, "KID i=%ld pid=%d how=%ld minflt=%ld majflt=%ld\n", i,
			(int)pid, i % 5, ru.ru_minflt, ru.ru_majflt);
	}
	fprintf(stderr, "KIDS n=%ld\n", n);
	return 0;
}
