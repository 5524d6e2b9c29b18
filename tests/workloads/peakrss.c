/* peakrss OUT MiB: a known peak of resident memory, and the kernel's own
 * figures of it as the process reads them itself.
 *
 * Maps MiB of anonymous private memory (MADV_NOHUGEPAGE: one page per
 * fault), writes one byte per page, then reads /proc/self/status between
 * markers 1 and 101 (VmRSS and VmHWM at the peak), munmaps the memory and
 * reads it again between markers 2 and 102 (VmRSS and VmHWM after), and
 * only then writes to OUT
 *
 *     PEAK rss=A hwm=B
 *     END rss=C hwm=D
 *
 * (kB). Its resident set is largest at the first reading: the status and
 * line buffers (in .bss) and the code and stack of a reading and of the
 * formatting are touched by an unmarked first round before the mapping,
 * so nothing after it adds a page before the munmap, and what the exit
 * path may touch after is far less than MiB. So the process's peak RSS is
 * A, exactly; B is the kernel's high-water mark then (VmHWM), D after the
 * munmap lowered the RSS (the kernel updates its mark when RSS is about to
 * go down).
 */
#include "common.h"

#include <fcntl.h>
#include <unistd.h>

static char status[16384];
static char line[256];

static void read_status(long *rss, long *hwm)
{
	read_self_status(status, sizeof(status));
	*rss = status_field(status, "VmRSS:");
	*hwm = status_field(status, "VmHWM:");
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: peakrss OUT MiB\n");
		return 2;
	}
	long mib = atol(argv[2]);
	if (mib <= 0) {
		fprintf(stderr, "peakrss: MiB must be positive\n");
		return 2;
	}
	int out = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (out < 0)
		die("open OUT");
	long rss, hwm, end_rss, end_hwm;
	memset(status, 0, sizeof(status));
	read_status(&rss, &hwm);        /* code, stack and buffers of what follows */
	int len = snprintf(line, sizeof(line), "PEAK rss=%ld hwm=%ld\nEND rss=%ld hwm=%ld\n",
			   rss, hwm, rss, hwm);
	(void)len;

	size_t size = (size_t)mib << 20;
	char *p = map_small_pages(size);
	touch_pages(p, size);
	marker(1);
	read_status(&rss, &hwm);
	marker(101);
	if (munmap(p, size) != 0)
		die("munmap");
	marker(2);
	read_status(&end_rss, &end_hwm);
	marker(102);
	len = snprintf(line, sizeof(line), "PEAK rss=%ld hwm=%ld\nEND rss=%ld hwm=%ld\n",
		       rss, hwm, end_rss, end_hwm);
	if (write(out, line, len) != len)
		die("write OUT");
	close(out);
	return 0;
}
