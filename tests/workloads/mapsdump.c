/* mapsdump OUTFILE: builds an address space with every kind of change a
 * tracer must follow, then copies /proc/self/maps verbatim to OUTFILE.
 *
 * In order (P = 4 KiB page; each line REGION... is printed to stderr):
 *   anon   mmap 64 P anonymous RW, touched
 *   file   mmap /etc/passwd (1 P, PROT_READ, MAP_PRIVATE)
 *   exe    mmap its own binary (/proc/self/exe: 1 P, PROT_READ, MAP_PRIVATE)
 *   fixed  mmap 8 P anonymous PROT_READ, MAP_FIXED at anon + 16 P: splits
 *          anon in three (RW | R | RW)
 *   prot   mmap 16 P anonymous RW; mprotect(prot + 4 P, 4 P, PROT_READ):
 *          splits it in three
 *   hole   mmap 32 P anonymous RW; munmap(hole + 8 P, 8 P): two pieces
 *   grow   mmap 8 P anonymous RW; mremap to 16 P (MREMAP_MAYMOVE: in place
 *          or moved, whichever the kernel does)
 *   moved  reserve 64 P PROT_NONE; mremap grow (16 P) to 32 P with
 *          MREMAP_MAYMOVE|MREMAP_FIXED at reserve + 16 P: moved into the
 *          middle of the reservation (PROT_NONE | RW | PROT_NONE)
 *   brk    sbrk(64 KiB) twice, touched: the heap grows by brk
 *   thread pthread_create (default attributes): an 8 MiB stack with a
 *          PROT_NONE guard page below it; the thread waits until the end
 * Then, at the known point: marker 1; copy /proc/self/maps to OUTFILE
 * (open/read/write into a static buffer: no memory syscall, no new
 * mapping); marker 2; release the thread and join it; exit 0.
 *
 * (markers: madvise(0x7e57000000 + n*4096, 0, MADV_NORMAL), see common.h.)
 * A tracer that rebuilds the address space from the exec's initial maps
 * and the memory syscalls must get, at marker 1, what OUTFILE says (the
 * marker's own ts is a point where nothing changes).
 * stderr: "REGION name addr=0x... len=N" per region above (for grow/moved
 * the final address and length), nothing else; exits 0.
 */
#include "common.h"

#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#define P MT_PAGE

static pthread_barrier_t go;
static char buf[1 << 20];

static void region(const char *name, void *addr, size_t len)
{
	fprintf(stderr, "REGION %s addr=%p len=%zu\n", name, addr, len);
}

static char *map_anon(size_t len, int prot)
{
	char *p = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	return p;
}

static void *map_file(const char *path)
{
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		die(path);
	void *p = mmap(NULL, P, PROT_READ, MAP_PRIVATE, fd, 0);
	if (p == MAP_FAILED)
		die("mmap file");
	close(fd);
	return p;
}

static void touch(char *p, size_t len)
{
	for (size_t off = 0; off < len; off += P)
		((volatile char *)p)[off] = 1;
}

static void *thread_main(void *arg)
{
	(void)arg;
	pthread_barrier_wait(&go); /* started */
	pthread_barrier_wait(&go); /* maps copied */
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: mapsdump OUTFILE\n");
		return 2;
	}

	char *anon = map_anon(64 * P, PROT_READ | PROT_WRITE);
	touch(anon, 64 * P);
	region("anon", anon, 64 * P);
	region("file", map_file("/etc/passwd"), P);
	region("exe", map_file("/proc/self/exe"), P);

	char *fixed = mmap(anon + 16 * P, 8 * P, PROT_READ,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	if (fixed != anon + 16 * P)
		die("mmap MAP_FIXED");
	region("fixed", fixed, 8 * P);

	char *prot = map_anon(16 * P, PROT_READ | PROT_WRITE);
	if (mprotect(prot + 4 * P, 4 * P, PROT_READ) != 0)
		die("mprotect");
	region("prot", prot, 16 * P);

	char *hole = map_anon(32 * P, PROT_READ | PROT_WRITE);
	if (munmap(hole + 8 * P, 8 * P) != 0)
		die("munmap");
	region("hole", hole, 32 * P);

	char *grow = map_anon(8 * P, PROT_READ | PROT_WRITE);
	touch(grow, 8 * P);
	grow = mremap(grow, 8 * P, 16 * P, MREMAP_MAYMOVE);
	if (grow == MAP_FAILED)
		die("mremap grow");
	region("grow", grow, 16 * P);

	char *reserve = map_anon(64 * P, PROT_NONE);
	char *moved = mremap(grow, 16 * P, 32 * P, MREMAP_MAYMOVE | MREMAP_FIXED,
			     reserve + 16 * P);
	if (moved != reserve + 16 * P)
		die("mremap move");
	touch(moved, 32 * P);
	region("reserve", reserve, 64 * P);
	region("moved", moved, 32 * P);

	char *b0 = sbrk(0);
	if (sbrk(64 * 1024) == (void *)-1 || sbrk(64 * 1024) == (void *)-1)
		die("sbrk");
	touch(b0, 128 * 1024);
	region("brk", b0, 128 * 1024);

	pthread_t th;
	if (pthread_barrier_init(&go, NULL, 2) != 0)
		die("pthread_barrier_init");
	int e = pthread_create(&th, NULL, thread_main, NULL);
	if (e) {
		errno = e;
		die("pthread_create");
	}
	pthread_barrier_wait(&go);

	marker(1);
	int in = open("/proc/self/maps", O_RDONLY);
	if (in < 0)
		die("/proc/self/maps");
	int out = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (out < 0)
		die(argv[1]);
	for (;;) {
		ssize_t n = read(in, buf, sizeof buf);
		if (n < 0)
			die("read /proc/self/maps");
		if (n == 0)
			break;
		for (ssize_t done = 0; done < n;) {
			ssize_t w = write(out, buf + done, (size_t)(n - done));
			if (w <= 0)
				die("write");
			done += w;
		}
	}
	if (close(out) != 0)
		die("close");
	close(in);
	marker(2);

	pthread_barrier_wait(&go);
	e = pthread_join(th, NULL);
	if (e) {
		errno = e;
		die("pthread_join");
	}
	return 0;
}
