/* segvpage [pages]: faults that fail, as user-level paging and garbage
 * collectors make them (default 64 pages).
 *
 * Maps `pages` pages of anonymous memory PROT_NONE, with a SIGSEGV handler
 * that mprotects the faulting page read-write. Between markers 1 and 2 it
 * writes one byte per page: each write first faults and fails (SIGSEGV,
 * si_code SEGV_ACCERR: the kernel does not count it in ru_minflt), the
 * handler opens the page, and the write faults again and succeeds (one
 * minor fault, counted, anon +1 page). So the kernel counts `pages` faults
 * in the range and a tracer must show exactly those, and no failed one.
 * Prints "MAP addr=0x... len=N" and "RUSAGE minflt=N majflt=M" to stderr.
 */
#include "common.h"

#include <signal.h>

static void open_page(int sig, siginfo_t *info, void *uc)
{
	(void)sig;
	(void)uc;
	void *page = (void *)((unsigned long)info->si_addr & ~(MT_PAGE - 1));
	if (mprotect(page, MT_PAGE, PROT_READ | PROT_WRITE) != 0)
		_exit(3);
}

int main(int argc, char **argv)
{
	long pages = arg_long(argc, argv, 1, 64);
	size_t len = (size_t)pages * MT_PAGE;
	struct sigaction sa = {0};
	sa.sa_sigaction = open_page;
	sa.sa_flags = SA_SIGINFO;
	if (sigaction(SIGSEGV, &sa, NULL) != 0)
		die("sigaction");
	char *p = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	if (madvise(p, len, MADV_NOHUGEPAGE) != 0)
		die("madvise");
	marker(1);
	for (long i = 0; i < pages; i++)
		((volatile char *)p)[i * MT_PAGE] = 1;
	marker(2);
	fprintf(stderr, "MAP addr=%p len=%zu\n", (void *)p, len);
	print_rusage();
	return 0;
}
