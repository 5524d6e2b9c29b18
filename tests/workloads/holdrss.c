/* holdrss OUT MiB MS: a resident set held still for MS milliseconds, for a
 * tracer that reads the counters at an interval (--rss sampled) to be
 * checked against what the process itself reads.
 *
 * Maps MiB of anonymous private memory (MADV_NOHUGEPAGE: one page per
 * fault) and writes one byte per page; then marker 1, reads
 * /proc/self/status (RssAnon, RssFile, RssShmem, kB), sleeps MS ms and
 * makes marker 101; munmaps and only then writes "HOLD anon=A file=F
 * shmem=S" (kB) to OUT. Between markers 1 and 101 nothing changes its
 * resident set: the status buffer is in .bss and a first unmarked reading
 * faults in the code and stack the reading needs (as in peakrss.c), and
 * nanosleep touches nothing new. So every value read from outside between
 * the two markers is A, F and S exactly.
 */
#include "common.h"

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

static char status[16384];
static char line[256];

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: holdrss OUT MiB MS\n");
		return 2;
	}
	long mib = atol(argv[2]), ms = atol(argv[3]);
	if (mib <= 0 || ms < 0) {
		fprintf(stderr, "holdrss: MiB must be positive, MS not negative\n");
		return 2;
	}
	int out = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (out < 0)
		die("open OUT");
	struct timespec hold = {ms / 1000, (ms % 1000) * 1000000L};
	memset(status, 0, sizeof(status));
	read_self_status(status, sizeof(status));   /* code, stack, buffers: touched */
	long anon = status_field(status, "RssAnon:");
	int len = snprintf(line, sizeof(line), "HOLD anon=%ld file=%ld shmem=%ld\n",
			   anon, anon, anon);
	(void)len;
	struct timespec z = {0, 0};
	nanosleep(&z, NULL);

	size_t size = (size_t)mib << 20;
	char *p = map_small_pages(size);
	touch_pages(p, size);
	marker(1);
	read_self_status(status, sizeof(status));
	nanosleep(&hold, NULL);
	marker(101);
	if (munmap(p, size) != 0)
		die("munmap");
	len = snprintf(line, sizeof(line), "HOLD anon=%ld file=%ld shmem=%ld\n",
		       status_field(status, "RssAnon:"), status_field(status, "RssFile:"),
		       status_field(status, "RssShmem:"));
	if (write(out, line, len) != len)
		die("write OUT");
	close(out);
	return 0;
}
