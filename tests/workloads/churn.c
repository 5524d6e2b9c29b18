/* churn [iterations]: malloc/free churn in three actors (default 10000
 * iterations each), so that every memory syscall kind occurs, many times.
 *
 * Actors: the main thread, a second thread (named "churn-thread") and a
 * forked child process ("churn-child"). The child is forked first, while
 * the process has one thread; then the thread is created; the thread and
 * the main thread meet at a barrier once the thread has made its first
 * malloc, and then all three churn at once. The thread exits only after the
 * main thread has finished (a second barrier): its exit frees its tcache
 * into the main heap, which would otherwise change when the main thread
 * calls brk.
 *
 * malloc is set up with mallopt so that which syscall each call makes is
 * fixed: M_MMAP_THRESHOLD 128 KiB and M_TRIM_THRESHOLD 128 KiB (fixed, no
 * dynamic adjustment), M_TOP_PAD 0 (the heap grows by what is asked only, so
 * brk is frequent) and M_ARENA_MAX 1 (one arena: the thread's first malloc,
 * its per-thread cache, comes from the main heap while the main thread waits
 * at the barrier, so it never needs a heap of its own).
 *
 * Each iteration i of an actor:
 *   - heap actors (main thread, child) only: malloc a "small" chunk of 1100 to
 *     8100 bytes (above the tcache and fastbin sizes, below the mmap
 *     threshold: from the heap, growing it with brk), kept on a stack; when
 *     48 are live, free them all, newest first, so each merges with the top
 *     of the heap and the heap is trimmed (brk down) whenever its top
 *     reaches 128 KiB. Nothing is ever left in malloc's bins, so the small
 *     chunks never change where the large ones go;
 *   - every 8th: malloc 256 to 704 KiB (mmap), write a byte, free (munmap);
 *   - every 32nd: malloc 256 KiB (mmap), realloc to 512 KiB then 1 MiB
 *     (mremap, MREMAP_MAYMOVE), free (munmap);
 *   - every 128th: malloc 1 MiB (mmap), mprotect 64 KiB inside it read-only
 *     and back (splits the mapping in three and merges it again),
 *     madvise(MADV_DONTNEED) the same range, free (munmap).
 * Sizes come from a fixed-seed generator per actor.
 *
 * The thread never calls brk (all its requests are >= 256 KiB: mmap'd, as
 * the heap's top never exceeds 128 KiB + one small chunk and the bins stay
 * empty), so each actor's sequence of memory syscalls is the same from run
 * to run (only the addresses differ, with ASLR; checked over repeated runs
 * under strace). A tracer must see, per thread, exactly the calls strace -f
 * sees.
 * Counts (strace -f -c -e trace=%memory, glibc 2.36), all three actors:
 *   churn 10000 (default): ~23000 calls: brk 10531, mmap 4936,
 *     munmap 4928, mremap 1878, mprotect 478, madvise 238;
 *   churn 100000: ~230000 calls (brk 105522, mmap 49231, munmap 49223,
 *     mremap 18750, mprotect 4696, madvise 2347).
 * Prints nothing; exits 0.
 */
#include "common.h"

#include <malloc.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define KiB 1024UL
#define STACK_MAX 48

/* Keeps the compiler from proving an allocation unused (it may drop a
 * malloc/free pair whose memory is only written). */
#define ESCAPE(p) __asm__ volatile("" : : "r"(p) : "memory")

static long iterations;
static pthread_barrier_t barrier;

static unsigned long next_rand(unsigned long *s)
{
	/* xorshift64 */
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static char *xmalloc(size_t n)
{
	char *p = malloc(n);
	if (!p)
		die("malloc");
	p[0] = 1;
	ESCAPE(p);
	return p;
}

static void churn(int actor, int heap)
{
	unsigned long seed = 0x9e3779b97f4a7c15UL * (unsigned long)(actor + 1);
	char *stack[STACK_MAX];
	int depth = 0;

	for (long i = 0; i < iterations; i++) {
		if (heap) {
			stack[depth++] = xmalloc(1100 + next_rand(&seed) % 7000);
			if (depth == STACK_MAX)
				while (depth > 0)
					free(stack[--depth]);
		}
		if (i % 8 == 0) {
			char *p = xmalloc(256 * KiB + (next_rand(&seed) % 8) * 64 * KiB);
			free(p);
		}
		if (i % 32 == 0) {
			char *p = xmalloc(256 * KiB);
			char *q = realloc(p, 512 * KiB);
			if (!q)
				die("realloc");
			q[512 * KiB - 1] = 1;
			p = realloc(q, 1024 * KiB);
			if (!p)
				die("realloc");
			p[1024 * KiB - 1] = 1;
			ESCAPE(p);
			free(p);
		}
		if (i % 128 == 0) {
			char *p = xmalloc(1024 * KiB);
			/* a page-aligned range well inside the mapping */
			char *r = (char *)(((unsigned long)p + 16 * KiB) & ~(MT_PAGE - 1));
			r[0] = 2;
			if (mprotect(r, 64 * KiB, PROT_READ) != 0)
				die("mprotect");
			if (mprotect(r, 64 * KiB, PROT_READ | PROT_WRITE) != 0)
				die("mprotect");
			if (madvise(r, 64 * KiB, MADV_DONTNEED) != 0)
				die("madvise");
			free(p);
		}
	}
	while (depth > 0)
		free(stack[--depth]);
}

static void *thread_main(void *arg)
{
	(void)arg;
	prctl(PR_SET_NAME, "churn-thread");
	/* first malloc of this thread: its tcache, from the main heap */
	free(xmalloc(256 * KiB));
	pthread_barrier_wait(&barrier);
	churn(1, 0);
	/* Exit (which frees this thread's tcache into the main heap) only once
	 * the main thread is done: that free changes the heap under the main
	 * thread's feet, and so when it calls brk. */
	pthread_barrier_wait(&barrier);
	return NULL;
}

int main(int argc, char **argv)
{
	iterations = arg_long(argc, argv, 1, 10000);
	if (!mallopt(M_MMAP_THRESHOLD, 128 * KiB) ||
	    !mallopt(M_TRIM_THRESHOLD, 128 * KiB) || !mallopt(M_TOP_PAD, 0) ||
	    !mallopt(M_ARENA_MAX, 1)) {
		fprintf(stderr, "churn: mallopt failed\n");
		return 1;
	}
	free(xmalloc(16)); /* malloc's set-up (tcache), before the fork */

	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		prctl(PR_SET_NAME, "churn-child");
		churn(2, 1);
		_exit(0);
	}

	if (pthread_barrier_init(&barrier, NULL, 2) != 0)
		die("pthread_barrier_init");
	pthread_t th;
	int e = pthread_create(&th, NULL, thread_main, NULL);
	if (e) {
		errno = e;
		die("pthread_create");
	}
	pthread_barrier_wait(&barrier);
	churn(0, 1);
	pthread_barrier_wait(&barrier);
	e = pthread_join(th, NULL);
	if (e) {
		errno = e;
		die("pthread_join");
	}
	int status;
	if (waitpid(child, &status, 0) != child)
		die("waitpid");
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "churn: child failed (status %#x)\n", status);
		return 1;
	}
	return 0;
}
