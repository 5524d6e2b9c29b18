/* callsites: memory calls and faults made by distinct functions, for the
 * call sites of `memtrace --stacks` (built with -fno-omit-frame-pointer, as
 * tests/conftest.py builds every workload).
 *
 * main -> run(), which calls, each a separate non-inlined function (noipa:
 * no clone with another name, no inlining):
 *   grow_heap()      sbrk(64 KiB) before any malloc: a brk growing the break
 *                    by 64 KiB (the break starts page-aligned)
 *   map_arena()      mmap of 3 MiB, anonymous private, MADV_NOHUGEPAGE
 *   touch_arena()    a write to each of its 768 pages: 768 minor faults,
 *                    whose instruction is in touch_arena
 *   grow_region()    mmap of 64 KiB, then mremap to 256 KiB (MAYMOVE): a
 *                    growth of 192 KiB
 *   grab_block()     malloc(1 MiB), four times: above the mmap threshold,
 *                    each an mmap of 1 MiB + 4 KiB made inside malloc
 *   fill_block()     a write to every 4 KiB of each block: 256 pages, one
 *                    already touched by malloc's header: 255 faults a block
 *   release_arena()  munmap of the arena
 * Markers 1 and 2 (see common.h) bracket the calls of run().
 */
#include "common.h"

#include <unistd.h>

#define NOINLINE __attribute__((noinline, noipa))
#define KiB 1024UL
#define MiB (1024 * KiB)
#define ARENA (3 * MiB)
#define BLOCK MiB
#define BLOCKS 4

NOINLINE void grow_heap(void)
{
	if (sbrk(64 * KiB) == (void *)-1)
		die("sbrk");
}

NOINLINE char *map_arena(size_t len)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	return p;
}

NOINLINE void touch_arena(char *p, size_t len)
{
	for (size_t off = 0; off < len; off += MT_PAGE)
		((volatile char *)p)[off] = 1;
}

NOINLINE char *grow_region(void)
{
	char *p = mmap(NULL, 64 * KiB, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	p = mremap(p, 64 * KiB, 256 * KiB, MREMAP_MAYMOVE);
	if (p == MAP_FAILED)
		die("mremap");
	return p;
}

NOINLINE char *grab_block(size_t len)
{
	char *b = malloc(len);
	if (b == NULL)
		die("malloc");
	return b;
}

NOINLINE void fill_block(char *b, size_t len)
{
	for (size_t off = 0; off < len; off += MT_PAGE)
		((volatile char *)b)[off] = 2;
}

NOINLINE void release_arena(char *p, size_t len)
{
	if (munmap(p, len) != 0)
		die("munmap");
}

NOINLINE void run(void)
{
	grow_heap();
	char *arena = map_arena(ARENA);
	if (madvise(arena, ARENA, MADV_NOHUGEPAGE) != 0)
		die("madvise");
	touch_arena(arena, ARENA);
	char *region = grow_region();
	char *blocks[BLOCKS];
	for (int i = 0; i < BLOCKS; i++) {
		blocks[i] = grab_block(BLOCK);
		fill_block(blocks[i], BLOCK);
	}
	release_arena(arena, ARENA);
	fprintf(stderr, "ARENA len=%lu REGION addr=%p BLOCK0 addr=%p\n", ARENA,
		(void *)region, (void *)blocks[0]);
}

int main(void)
{
	marker(1);
	run();
	marker(2);
	return 0;
}
