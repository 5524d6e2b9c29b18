/* seed000: malloc's story in syscalls: the heap (brk) for small requests,
 * mmap for large ones, and what free() gives back.
 *
 * With mallopt(M_MMAP_THRESHOLD, 128 KiB), mallopt(M_TRIM_THRESHOLD, 128 KiB)
 * (fixed: no dynamic threshold) and mallopt(M_TOP_PAD, 0) (glibc's default
 * pad is 128 KiB: the heap would grow by request + 128 KiB, so the first brk
 * would also cover B and D below and the story would lose its brk calls):
 *
 *   step 0: free(malloc(16))     malloc's set-up: brk(NULL) (where is the
 *                                break?) and a brk for the per-thread cache
 *   step 1: A = malloc(30 KiB)   heap grows: brk (+30 KiB, page rounded)
 *   step 2: B = malloc(40 KiB)   heap grows: brk
 *   step 3: C = malloc(200 KiB)  >= 128 KiB: its own mmap of >= 200 KiB
 *   step 4: D = malloc(100 KiB)  heap grows: brk
 *   step 5: touch A, B, C, D     (a volatile write to every 4 KiB of each:
 *                                faults, no syscall)
 *   step 6: free(C)              munmap of exactly C's mapping
 *   step 7: free(B)              no syscall (B is not at the top of the heap)
 *   step 8: free(D)              D merges with B and the top: top > 128 KiB,
 *                                so the heap is trimmed: brk that shrinks
 *   step 9: end
 *
 * Marker n (madvise(0x7e57000000 + n*4096, 0, MADV_NORMAL), see common.h) is
 * made at the start of step n (n >= 1), so the syscalls of step n are those
 * between markers n and n+1. A tracer must see: exactly one brk, with a ret
 * (the new break) higher than the one before, in each of steps 1, 2 and 4;
 * one mmap (len >= 200 KiB, ret = address p) in step 3; no syscall in steps
 * 5 and 7 (step 5 has the faults of the memsets); one munmap(p, same len) in
 * step 6; one brk whose ret is lower than step 4's in step 8.
 */
#include "common.h"

#include <malloc.h>

#define KiB 1024

/* Writes one byte of every 4 KiB (and the last byte) of [p, p+n). volatile:
 * gcc removes a memset of memory that is freed without being read. */
static void touch(char *p, size_t n)
{
	for (size_t off = 0; off < n; off += MT_PAGE)
		((volatile char *)p)[off] = 1;
	((volatile char *)p)[n - 1] = 1;
}

int main(void)
{
	if (!mallopt(M_MMAP_THRESHOLD, 128 * KiB) ||
	    !mallopt(M_TRIM_THRESHOLD, 128 * KiB) || !mallopt(M_TOP_PAD, 0)) {
		fprintf(stderr, "seed000: mallopt failed\n");
		return 1;
	}
	void *volatile warm = malloc(16); /* volatile: gcc drops a bare malloc/free pair */
	free(warm);
	marker(1);
	char *a = malloc(30 * KiB);
	marker(2);
	char *b = malloc(40 * KiB);
	marker(3);
	char *c = malloc(200 * KiB);
	marker(4);
	char *d = malloc(100 * KiB);
	if (!a || !b || !c || !d)
		die("malloc");
	marker(5);
	touch(a, 30 * KiB);
	touch(b, 40 * KiB);
	touch(c, 200 * KiB);
	touch(d, 100 * KiB);
	marker(6);
	free(c);
	marker(7);
	free(b);
	marker(8);
	free(d);
	marker(9);
	(void)a; /* A stays allocated to the end */
	return 0;
}
