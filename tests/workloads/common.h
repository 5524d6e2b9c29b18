/* Helpers shared by the memtrace test workloads (the .c files here).
 *
 * Marker convention: a workload marks the boundaries of the steps of its
 * story with
 *
 *     madvise((void *)(MT_MARK_BASE + n * 4096), 0, MADV_NORMAL)
 *
 * A zero length makes madvise a successful no-op (it returns 0 before looking
 * at the address space; the address only has to be page aligned), so a
 * marker changes nothing in the process but is a memory syscall that any
 * tracer sees: a `madvise` row with len 0, flags 0 (MADV_NORMAL), ret 0, and
 * addr MT_MARK_BASE + n * 4096, from which the step number n is read back.
 * tests/conftest.py: markers(events) does exactly that.
 *
 * Counts: a workload that reports fault counts prints, last thing before it
 * returns from main,
 *
 *     RUSAGE minflt=N majflt=M
 *
 * to stderr, from getrusage(RUSAGE_SELF) (all threads of the process, not its
 * children). Faults after that read (the write to stderr, exit) are not in it;
 * faults before the exec that started the program (fork, execve's own work)
 * are. Just before the getrusage call it makes marker MT_MARK_RUSAGE, so a
 * trace can be cut at the point the kernel's count was read (a first,
 * unprinted getrusage call before the marker faults in the code and stack
 * the call needs, so no fault falls between the marker and the count).
 */
#ifndef MT_WORKLOAD_COMMON_H
#define MT_WORKLOAD_COMMON_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#define MT_MARK_BASE 0x7e57000000UL
#define MT_PAGE 4096UL
/* The marker made just before getrusage() in print_rusage(). */
#define MT_MARK_RUSAGE 4095

static inline void marker(unsigned n)
{
	if (madvise((void *)(MT_MARK_BASE + (unsigned long)n * MT_PAGE), 0,
		    MADV_NORMAL) != 0) {
		perror("marker madvise");
		exit(2);
	}
}

static inline void print_rusage(void)
{
	struct rusage ru;
	/* A first call faults in getrusage's code and stack, so that nothing
	 * faults between the marker and the call whose counts are printed. */
	if (getrusage(RUSAGE_SELF, &ru) != 0) {
		perror("getrusage");
		exit(2);
	}
	marker(MT_MARK_RUSAGE);
	if (getrusage(RUSAGE_SELF, &ru) != 0) {
		perror("getrusage");
		exit(2);
	}
	fprintf(stderr, "RUSAGE minflt=%ld majflt=%ld\n", ru.ru_minflt,
		ru.ru_majflt);
}

static inline void die(const char *what)
{
	perror(what);
	exit(1);
}

/* len bytes of private anonymous memory, small pages only (no THP: one
 * fault per 4 KiB page), untouched. */
static inline char *map_small_pages(size_t len)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	if (madvise(p, len, MADV_NOHUGEPAGE) != 0)
		die("madvise");
	return p;
}

/* One write per page of [p, p+len): a write fault on each fresh page. */
static inline void touch_pages(char *p, size_t len)
{
	for (size_t off = 0; off < len; off += MT_PAGE)
		((volatile char *)p)[off] = 1;
}

/* /proc/self/status read whole into buf (a read(2) loop: stdio would
 * allocate, and fault pages, of its own). */
static inline void read_self_status(char *buf, size_t size)
{
	int fd = open("/proc/self/status", O_RDONLY);
	if (fd < 0)
		die("open /proc/self/status");
	ssize_t n, got = 0;
	while ((n = read(fd, buf + got, size - 1 - got)) > 0)
		got += n;
	if (n < 0)
		die("read /proc/self/status");
	buf[got] = 0;
	close(fd);
}

/* The value (kB) of field `name` ("RssAnon:") in a status text, -1 if absent. */
static inline long status_field(const char *status, const char *name)
{
	const char *p = strstr(status, name);
	if (!p)
		return -1;
	p += strlen(name);
	while (*p == ' ' || *p == '\t')
		p++;
	long v = 0;
	while (*p >= '0' && *p <= '9')
		v = v * 10 + (*p++ - '0');
	return v;
}

/* A non-negative integer command-line argument, or dflt if absent. */
static inline long arg_long(int argc, char **argv, int i, long dflt)
{
	if (argc <= i)
		return dflt;
	char *end;
	errno = 0;
	long v = strtol(argv[i], &end, 0);
	if (errno || *end || v < 0) {
		fprintf(stderr, "bad argument: %s\n", argv[i]);
		exit(2);
	}
	return v;
}

#endif
