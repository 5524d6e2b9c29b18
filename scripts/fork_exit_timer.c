/* fork_exit_timer CMD [ARGS]: runs CMD and prints, on stderr, the time from
 * its fork to its exit as "FORK_EXIT_NS <ns>", then exits with its status.
 * Under a tracer it measures the workload alone: the tracer's start-up is
 * over before this program runs. Also "WORKLOAD_CPU_NS <ns>": the CPU time
 * (user + system, wait4's rusage) of CMD and its children, which includes
 * the BPF programs that ran in its context and is less disturbed than the
 * elapsed time by other work on the machine. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct timespec a, b;
	int status;
	if (argc < 2)
		return 2;
	clock_gettime(CLOCK_MONOTONIC, &a);
	pid_t pid = fork();
	if (pid == 0) {
		execvp(argv[1], argv + 1);
		_exit(127);
	}
	struct rusage ru;
	wait4(pid, &status, 0, &ru);
	clock_gettime(CLOCK_MONOTONIC, &b);
	fprintf(stderr, "FORK_EXIT_NS %lld\n",
		(long long)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec));
	fprintf(stderr, "WORKLOAD_CPU_NS %lld\n",
		(long long)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000LL
		+ (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000LL);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
