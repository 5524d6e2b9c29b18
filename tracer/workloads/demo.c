/* memtrace demo: the seed stories as one program (seeds 000 and 003).
 *
 * Each step is marked with madvise(MARK_BASE + n*4096, 0, MADV_NORMAL): a
 * zero-length madvise is a successful no-op that any tracer sees, so the
 * demo can cut the trace into steps (tracer/markers.py).
 * Nothing here uses stdio before the end: printf would malloc its buffer
 * and move the heap in the middle of the story. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MARK_BASE 0x7e57000000UL
#define KiB 1024UL

static void mark(unsigned n)
{
	madvise((void *)(MARK_BASE + n * 4096UL), 0, MADV_NORMAL);
}

static volatile char sink;

/* Keep the compiler from eliding a malloc/free pair it can see through. */
static void *__attribute__((noinline)) use(void *p)
{
	__asm__ volatile("" : : "r"(p) : "memory");
	return p;
}

int main(int argc, char **argv)
{
	const char *file = argc > 1 ? argv[1] : "/tmp/memtrace-demo.dat";

	/* seed 000: the thresholds, set explicitly (glibc's defaults move:
	 * M_MMAP_THRESHOLD grows dynamically after a free of an mmap'ed chunk;
	 * M_TOP_PAD 0 so each heap growth is exactly what was asked) */
	mallopt(M_MMAP_THRESHOLD, 128 * KiB);
	mallopt(M_TRIM_THRESHOLD, 128 * KiB);
	mallopt(M_TOP_PAD, 0);
	mark(1);
	char *a = use(malloc(30 * KiB));
	mark(2);
	char *b = use(malloc(40 * KiB));
	mark(3);
	char *c = use(malloc(200 * KiB));
	mark(4);
	char *d = use(malloc(100 * KiB));
	mark(5);
	free(c);
	mark(6);
	free(b);
	mark(7);
	free(d);
	mark(8);

	/* seed 003: 16 KiB anonymous: read, then write */
	char *p = mmap(NULL, 16 * KiB, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	mark(9);
	for (int i = 0; i < 4; i++)
		sink = p[i * 4096];
	mark(10);
	for (int i = 0; i < 4; i++)
		p[i * 4096] = 1;
	mark(11);
	munmap(p, 16 * KiB);
	mark(12);

	/* seed 000's second program: a shared file mapping, read after the
	 * file left the page cache (major faults), then written */
	int fd = open(file, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		return 1;
	char page[4096];
	memset(page, 'x', sizeof(page));
	for (int i = 0; i < 8; i++)
		if (write(fd, page, sizeof(page)) != sizeof(page))
			return 1;
	fsync(fd);
	posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
	char *f = mmap(NULL, 32 * KiB, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (f == MAP_FAILED)
		return 1;
	madvise(f, 32 * KiB, MADV_RANDOM);   /* one page per fault: no readahead */
	mark(13);
	for (int i = 0; i < 8; i++)
		sink = f[i * 4096];
	mark(14);
	for (int i = 0; i < 8; i++)
		f[i * 4096] = 'y';
	mark(15);
	munmap(f, 32 * KiB);
	close(fd);
	unlink(file);
	mark(16);
	free(a);
	return 0;
}
