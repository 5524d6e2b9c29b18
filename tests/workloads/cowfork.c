/* cowfork: copy-on-write after fork.
 *
 *   parent: marker 1; p = mmap 8 private anonymous pages (MADV_NOHUGEPAGE),
 *           write each (8 first-touch faults, rss_anon +1 each);
 *           f = mmap /proc/self/exe (the program's own file) private,
 *           read-write, 1 page, not touched; marker 2; fork
 *   child:  marker 3; reads its RssAnon; writes each of the 8 pages
 *           (copy-on-write faults: error code present|write|user = 7);
 *           marker 4; reads its RssAnon again; reads then writes f's page
 *           (a read fault maps the file page, then a copy-on-write fault
 *           replaces it with an anonymous copy); marker 5; exits
 *   parent: waits for the child; marker 6
 *
 * The child's RssAnon from /proc/self/status before and after its writes
 * goes to stderr as "CHILD anon_before=N anon_after=M" (kB), with
 * "MAP addr=0x... len=32768 file=0x..." and "CHILD pid=N".
 *
 * What the kernel counts: the child's RSS counted the 8 pages at fork (the
 * fork copies the parent's page table entries and adds them to the child's
 * counters), so copying a page on write replaces one counted anonymous page
 * with another: RssAnon does not change. The file page is different: the
 * fork copies no entries of a file mapping without anonymous pages, the
 * child's read fault adds file pages (fault-around may map several), and
 * its write fault swaps one file page for an anonymous one (anon +1,
 * file -1).
 */
#include "common.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGES 8

static char status[16384];

static long rss_anon(void)
{
	int fd = open("/proc/self/status", O_RDONLY);
	if (fd < 0)
		die("open /proc/self/status");
	ssize_t n, got = 0;
	while ((n = read(fd, status + got, sizeof(status) - 1 - got)) > 0)
		got += n;
	status[got > 0 ? got : 0] = 0;
	close(fd);
	char *p = strstr(status, "RssAnon:");
	return p ? strtol(p + 8, NULL, 10) : -1;
}

int main(void)
{
	size_t len = PAGES * MT_PAGE;
	memset(status, 0, sizeof(status));
	(void)rss_anon();
	/* the code the parent runs while its child writes, faulted in now: the
	 * parent then makes no resident change in that time (its own writes
	 * after fork copy pages the fork already counted) */
	(void)waitpid(-1, NULL, WNOHANG);
	marker(1);
	char *p = map_small_pages(len);
	touch_pages(p, len);
	int fd = open("/proc/self/exe", O_RDONLY);
	if (fd < 0)
		die("open /proc/self/exe");
	char *f = mmap(NULL, MT_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (f == MAP_FAILED)
		die("mmap /proc/self/exe");
	close(fd);
	fprintf(stderr, "MAP addr=%p len=%zu file=%p\n", (void *)p, len, (void *)f);
	marker(2);
	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		marker(3);
		long before = rss_anon();
		for (size_t off = 0; off < len; off += MT_PAGE)
			((volatile char *)p)[off] = 2;
		marker(4);
		long after = rss_anon();
		char c = ((volatile char *)f)[0];
		((volatile char *)f)[0] = c + 1;
		marker(5);
		fprintf(stderr, "CHILD anon_before=%ld anon_after=%ld\n", before, after);
		_exit(0);
	}
	int st;
	if (waitpid(child, &st, 0) != child)
		die("waitpid");
	marker(6);
	fprintf(stderr, "CHILD pid=%d\n", (int)child);
	for (size_t off = 0; off < len; off += MT_PAGE)
		if (((volatile char *)p)[off] != 1)
			return 3; /* the child's writes must not show in the parent */
	return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}
