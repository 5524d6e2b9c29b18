/* ids: prints "IDS uid=U gid=G euid=E egid=F groups=N home=H" to stderr (the
 * user and groups it runs as, and $HOME) and exits 0. */
#include "common.h"

#include <unistd.h>

int main(void)
{
	gid_t groups[256];
	int n = getgroups(256, groups);
	const char *home = getenv("HOME");
	fprintf(stderr, "IDS uid=%d gid=%d euid=%d egid=%d groups=%d home=%s\n",
		(int)getuid(), (int)getgid(), (int)geteuid(), (int)getegid(), n,
		home ? home : "");
	return 0;
}
