/* manythreads [T] [pages] [mode]: T threads (default 64) that start at once
 * (a barrier) and each map `pages` pages (default 64) of their own, touch
 * them, mprotect them read-only and unmap them, 4 rounds.
 *
 * mode (default "join"):
 *   join  the main thread joins them all, prints RUSAGE, exits 0
 *   exit  the threads keep faulting; the main thread calls exit(0) while
 *         they run (the kernel kills them: exit_group)
 *   exec  the threads keep faulting; thread 0, after its 4 rounds, exec's
 *         this program again as "manythreads 4 16 join" (the kernel kills
 *         the others, thread 0 takes the process id: de_thread)
 */
#include "common.h"

#include <pthread.h>
#include <unistd.h>

static long pages = 64;
static int forever;
static int exec_from_thread0;
static pthread_barrier_t start;
static char self[4096];

static void round_(void)
{
	size_t len = (size_t)pages * MT_PAGE;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	for (size_t off = 0; off < len; off += MT_PAGE)
		((volatile char *)p)[off] = 1;
	if (mprotect(p, len, PROT_READ) != 0)
		die("mprotect");
	if (munmap(p, len) != 0)
		die("munmap");
}

static void *worker(void *arg)
{
	long id = (long)arg;
	pthread_barrier_wait(&start);
	for (int r = 0; r < 4; r++)
		round_();
	if (id == 0 && exec_from_thread0) {
		execl(self, "manythreads", "4", "16", "join", (char *)NULL);
		die("exec self");
	}
	while (forever)
		round_();
	return NULL;
}

int main(int argc, char **argv)
{
	long n = arg_long(argc, argv, 1, 64);
	pages = arg_long(argc, argv, 2, 64);
	const char *mode = argc > 3 ? argv[3] : "join";
	if (strcmp(mode, "join") && strcmp(mode, "exit") && strcmp(mode, "exec")) {
		fprintf(stderr, "bad mode: %s\n", mode);
		return 2;
	}
	forever = strcmp(mode, "join") != 0;
	exec_from_thread0 = strcmp(mode, "exec") == 0;
	ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (len < 0)
		die("readlink");
	self[len] = 0;

	pthread_t *t = calloc(n, sizeof(*t));
	if (!t || pthread_barrier_init(&start, NULL, n + 1) != 0)
		die("setup");
	for (long i = 0; i < n; i++)
		if (pthread_create(&t[i], NULL, worker, (void *)i) != 0)
			die("pthread_create");
	pthread_barrier_wait(&start);
	if (strcmp(mode, "exit") == 0) {
		usleep(50 * 1000);
		fprintf(stderr, "THREADS n=%ld mode=exit\n", n);
		exit(0);
	}
	if (strcmp(mode, "exec") == 0) {
		for (;;)
			pause();   /* until thread 0's exec kills this thread */
	}
	for (long i = 0; i < n; i++)
		pthread_join(t[i], NULL);
	fprintf(stderr, "THREADS n=%ld mode=join\n", n);
	print_rusage();
	return 0;
}
