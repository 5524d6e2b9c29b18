/* seed003: read faults, then write faults, on 4 fresh anonymous pages.
 *
 *   marker 1; p = mmap(NULL, 16 KiB, PROT_READ|PROT_WRITE,
 *                      MAP_PRIVATE|MAP_ANONYMOUS)
 *   marker 2; read one byte of each of the 4 pages (volatile reads)
 *   marker 3; write one byte of each of the 4 pages
 *   marker 4; munmap(p, 16 KiB); marker 5
 *
 * (markers: madvise(0x7e57000000 + n*4096, 0, MADV_NORMAL), see common.h.)
 * Prints "MAP addr=0x... len=16384" to stderr.
 *
 * A tracer must see, all minor and at addresses inside the mapping:
 *   - between markers 2 and 3, exactly 4 read faults (error code without the
 *     write bit 2: user, not present = 4), one per page in order; each maps
 *     the shared zero page, so no resident page is added (rss_anon 0);
 *   - between markers 3 and 4, exactly 4 write faults (error code with the
 *     write bit and the present bit: 1|2|4 = 7, a write to the zero-page
 *     mapping), each copying to a new anonymous page (rss_anon +1).
 * The mapping has no THP (16 KiB is below any huge page size).
 */
#include "common.h"

#define LEN (16 * 1024)

int main(void)
{
	marker(1);
	char *p = mmap(NULL, LEN, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	marker(2);
	unsigned sum = 0;
	for (size_t off = 0; off < LEN; off += MT_PAGE)
		sum += ((volatile char *)p)[off];
	marker(3);
	for (size_t off = 0; off < LEN; off += MT_PAGE)
		((volatile char *)p)[off] = 1;
	marker(4);
	if (munmap(p, LEN) != 0)
		die("munmap");
	marker(5);
	fprintf(stderr, "MAP addr=%p len=%d\n", (void *)p, LEN);
	return sum != 0; /* a fresh anonymous page reads as zeros */
}
