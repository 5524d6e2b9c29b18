/* faults [MiB] [rounds]: many anonymous minor page faults (default 256 MiB x 8).
 *
 * Each round: mmap MiB of anonymous private memory, madvise(MADV_NOHUGEPAGE)
 * (no transparent huge pages, so one fault per 4 KiB page), write one byte
 * per page, munmap. Each page is a first touch of anonymous memory: exactly
 * one minor fault, write (error code 2|4 = 6, no present bit), adding one
 * anonymous resident page (rss_anon +1). Anonymous memory has no fault-around
 * and no readahead.
 *
 * A tracer must see MiB*256*rounds minor faults (524288 by default) in the
 * mapped ranges, one per page, in address order within a round, plus the few
 * faults of the program's start and exit; the RUSAGE line on stderr gives the
 * kernel's count for the process up to just before exit.
 */
#include "common.h"

int main(int argc, char **argv)
{
	long mib = arg_long(argc, argv, 1, 256);
	long rounds = arg_long(argc, argv, 2, 8);
	size_t len = (size_t)mib << 20;

	for (long r = 0; r < rounds; r++) {
		char *p = map_small_pages(len);
		touch_pages(p, len);
		if (munmap(p, len) != 0)
			die("munmap");
	}
	print_rusage();
	return 0;
}
