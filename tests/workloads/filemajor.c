/* filemajor PATH [MiB]: one major page fault per page of a file (default 64 MiB).
 *
 * Makes PATH a file of MiB MiB (written in full, not sparse, if its size is
 * not already that), fsync()s it and drops it from the page cache with
 * posix_fadvise(POSIX_FADV_DONTNEED) (clean pages, so they do leave; it
 * checks with mincore() and says "CACHED pages=N" if any stayed). Then it
 * maps it MAP_PRIVATE PROT_READ, madvise(MADV_RANDOM)s the mapping and reads
 * one byte per 4 KiB page, in order, between markers 1 and 2 (see common.h).
 *
 * MADV_RANDOM turns off the mmap readahead (filemap_fault reads just the
 * faulting page) and, since nothing else of the file is cached, fault-around
 * maps nothing extra: every page is its own major fault (a read, error code
 * 4: user, not present, not write). PATH must be on a disk file system: on
 * tmpfs there is nothing to drop and every fault is minor (it refuses).
 *
 * A tracer must see MiB*256 major faults, each at an address inside
 * [addr, addr+len) of the line "MAP addr=0x... len=N" printed to stderr;
 * the "RUSAGE minflt=N majflt=M" line gives the kernel's count (M == pages).
 */
#include "common.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#ifndef TMPFS_MAGIC
#define TMPFS_MAGIC 0x01021994
#endif

static size_t cached_pages(void *p, size_t len)
{
	size_t pages = len / MT_PAGE, n = 0;
	unsigned char *vec = malloc(pages);
	if (!vec)
		die("malloc");
	if (mincore(p, len, vec) != 0)
		die("mincore");
	for (size_t i = 0; i < pages; i++)
		n += vec[i] & 1;
	free(vec);
	return n;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: filemajor PATH [MiB]\n");
		return 2;
	}
	const char *path = argv[1];
	size_t len = (size_t)arg_long(argc, argv, 2, 64) << 20;
	if (len == 0) {
		fprintf(stderr, "filemajor: MiB must be > 0\n");
		return 2;
	}

	int fd = open(path, O_RDWR | O_CREAT, 0644);
	if (fd < 0)
		die(path);
	struct statfs sfs;
	if (fstatfs(fd, &sfs) != 0)
		die("fstatfs");
	if (sfs.f_type == TMPFS_MAGIC) {
		fprintf(stderr, "filemajor: %s is on tmpfs: no major faults there\n", path);
		return 3;
	}
	struct stat st;
	if (fstat(fd, &st) != 0)
		die("fstat");
	if ((size_t)st.st_size != len) {
		static char buf[1 << 20];
		if (ftruncate(fd, 0) != 0)
			die("ftruncate");
		for (size_t i = 0; i < sizeof buf; i++)
			buf[i] = (char)(i * 7 + 1);
		for (size_t off = 0; off < len;) {
			ssize_t n = write(fd, buf, sizeof buf);
			if (n <= 0)
				die("write");
			off += (size_t)n;
		}
	}
	if (fsync(fd) != 0)
		die("fsync");

	char *p = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
	if (p == MAP_FAILED)
		die("mmap");
	if (madvise(p, len, MADV_RANDOM) != 0)
		die("madvise");
	/* Drop the file's pages; retry a little if some were still busy. */
	size_t cached = 0;
	for (int tries = 0; tries < 50; tries++) {
		int e = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
		if (e != 0) {
			errno = e;
			die("posix_fadvise");
		}
		cached = cached_pages(p, len);
		if (cached == 0)
			break;
		usleep(10000);
	}
	if (cached)
		fprintf(stderr, "CACHED pages=%zu\n", cached);

	marker(1);
	unsigned sum = 0;
	for (size_t off = 0; off < len; off += MT_PAGE)
		sum += ((volatile char *)p)[off];
	marker(2);

	fprintf(stderr, "MAP addr=%p len=%zu\n", (void *)p, len);
	print_rusage();
	if (munmap(p, len) != 0)
		die("munmap");
	close(fd);
	return sum == 0xdeadbeef; /* keep the reads; never true */
}
