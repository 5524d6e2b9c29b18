/* rssstatus OUT DATAFILE [efault]: resident memory at known points, as the kernel
 * itself reports it in /proc/self/status, to check a trace's t.rss against.
 *
 * At each step n (0..5) the workload makes marker n, reads /proc/self/status
 * (RssAnon, RssFile, RssShmem, VmSwap, in kB), makes marker 100 + n, and
 * only then appends "STEP n anon=A file=F shmem=S swap=W" (kB) to OUT.
 * Between markers n and 100 + n it makes no change to its resident set: the
 * status buffer is in .bss and touched before, and a first unmarked reading
 * faults in the code and stack the reading needs.
 *
 *   step 0  the start
 *   step 1  anonymous: mmap 64 private anonymous pages, write each
 *   step 2  file: write DATAFILE (64 pages; it must be on a disk file system,
 *           not tmpfs, whose pages are shmem), fsync, drop its page cache
 *           (posix_fadvise DONTNEED), mmap it private read-only, read each
 *           page (major faults; fault-around maps several pages per fault)
 *   step 3  shared memory: mmap 32 shared anonymous pages (shmem), write each
 *   step 4  MADV_DONTNEED on the first half of each of the three mappings
 *   step 5  munmap all three
 *
 *
 * With a third argument `efault`, two more steps, pinned to one CPU:
 *   step 6  mmap 16 private anonymous pages, write each
 *   step 7  read(2) from /dev/zero into an unmapped address (a kernel-mode
 *           fault with no mapping: EFAULT, a fault that never completes),
 *           then munmap the 16 pages
 * (the change of step 7 is lost by a tracer that keeps a fault "in
 * progress" until the next fault on that CPU; see tests/integration/test_rss_live.py)
 *
 * The mappings are madvise(MADV_NOHUGEPAGE): one page per anonymous fault.
 * (markers: madvise(0x7e57000000 + n*4096, 0, MADV_NORMAL), see common.h.)
 * Prints "MAP anon=0x... file=0x... shmem=0x..." to stderr.
 */
#include "common.h"

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#define ANON_PAGES 64
#define FILE_PAGES 64
#define SHMEM_PAGES 32

static char status[16384];
static char line[256];
static int out_fd;


static void read_status(void)
{
	read_self_status(status, sizeof(status));
}

static void step(unsigned n)
{
	marker(n);
	read_status();
	marker(100 + n);
	int len = snprintf(line, sizeof(line), "STEP %u anon=%ld file=%ld shmem=%ld swap=%ld\n",
			   n, status_field(status, "RssAnon:"), status_field(status, "RssFile:"), status_field(status, "RssShmem:"),
			   status_field(status, "VmSwap:"));
	if (write(out_fd, line, len) != len)
		die("write OUT");
}

static char *map(size_t len, int flags, int fd)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, fd, 0);
	if (p == MAP_FAILED)
		die("mmap");
	if (madvise(p, len, MADV_NOHUGEPAGE) != 0)
		die("madvise NOHUGEPAGE");
	return p;
}

int main(int argc, char **argv)
{
	if (argc != 3 && !(argc == 4 && strcmp(argv[3], "efault") == 0)) {
		fprintf(stderr, "usage: rssstatus OUT DATAFILE [efault]\n");
		return 2;
	}
	out_fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (out_fd < 0)
		die("open OUT");
	memset(status, 0, sizeof(status));
	memset(line, 0, sizeof(line));
	read_status();                  /* code and stack of the reading */
	(void)status_field(status, "RssAnon:");
	step(0);

	/* 1: anonymous */
	size_t alen = ANON_PAGES * MT_PAGE;
	char *a = map(alen, MAP_PRIVATE | MAP_ANONYMOUS, -1);
	for (size_t off = 0; off < alen; off += MT_PAGE)
		((volatile char *)a)[off] = 1;
	step(1);

	/* 2: a file mapping read after its page cache was dropped */
	size_t flen = FILE_PAGES * MT_PAGE;
	int fd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die("open DATAFILE");
	for (size_t off = 0; off < flen; off += MT_PAGE) {
		memset(line, 'a' + (int)(off / MT_PAGE % 26), sizeof(line));
		if (pwrite(fd, line, sizeof(line), off) != (ssize_t)sizeof(line))
			die("pwrite DATAFILE");
	}
	if (ftruncate(fd, flen) != 0)
		die("ftruncate");
	if (fsync(fd) != 0)
		die("fsync");
	if ((errno = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)) != 0)
		die("posix_fadvise DONTNEED");
	char *f = mmap(NULL, flen, PROT_READ, MAP_PRIVATE, fd, 0);
	if (f == MAP_FAILED)
		die("mmap DATAFILE");
	unsigned sum = 0;
	for (size_t off = 0; off < flen; off += MT_PAGE)
		sum += ((volatile char *)f)[off];
	step(2);

	/* 3: shared anonymous memory (shmem) */
	size_t slen = SHMEM_PAGES * MT_PAGE;
	char *s = map(slen, MAP_SHARED | MAP_ANONYMOUS, -1);
	for (size_t off = 0; off < slen; off += MT_PAGE)
		((volatile char *)s)[off] = 1;
	step(3);

	/* 4: MADV_DONTNEED gives the first half of each back */
	if (madvise(a, alen / 2, MADV_DONTNEED) != 0 ||
	    madvise(f, flen / 2, MADV_DONTNEED) != 0 ||
	    madvise(s, slen / 2, MADV_DONTNEED) != 0)
		die("madvise DONTNEED");
	step(4);

	/* 5: munmap the rest */
	if (munmap(a, alen) != 0 || munmap(f, flen) != 0 || munmap(s, slen) != 0)
		die("munmap");
	step(5);

	if (argc == 4) {
		cpu_set_t cpus;
		CPU_ZERO(&cpus);
		CPU_SET(sched_getcpu(), &cpus);
		if (sched_setaffinity(0, sizeof(cpus), &cpus) != 0)
			die("sched_setaffinity");
		int zero = open("/dev/zero", O_RDONLY);
		if (zero < 0)
			die("open /dev/zero");
		char *e = map(16 * MT_PAGE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
		for (size_t off = 0; off < 16 * MT_PAGE; off += MT_PAGE)
			((volatile char *)e)[off] = 1;
		step(6);
		ssize_t got = read(zero, (void *)MT_PAGE, 8);  /* below mmap_min_addr */
		if (got != -1 || errno != EFAULT) {
			fprintf(stderr, "read into an unmapped address: %zd, expected EFAULT\n", got);
			return 2;
		}
		if (munmap(e, 16 * MT_PAGE) != 0)
			die("munmap");
		step(7);
		close(zero);
	}

	close(fd);
	close(out_fd);
	fprintf(stderr, "MAP anon=%p file=%p shmem=%p\n", (void *)a, (void *)f, (void *)s);
	return sum == 0; /* the file's pages are letters */
}
