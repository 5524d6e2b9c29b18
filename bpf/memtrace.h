/* memtrace event layout: the one definition both sides read.
 *
 * The BPF program (bpf/memtrace.bpf.c) includes this file; the Python side
 * (tracer/layout.py) parses it into numpy dtypes. Keep it parseable:
 *   - only `#define NAME value` constants and `struct name { type field; };`
 *   - only fixed-width types (__u8.. __u64, __s8.. __s64, char arrays), or a
 *     struct defined above it (`struct mt_x name;`)
 *   - no implicit padding: every struct spells out its padding and is a
 *     multiple of 8 bytes (ring buffer records are 8-byte aligned, so a
 *     fixed-size record gives a fixed stride and a numpy view of the ring).
 */
#ifndef MEMTRACE_H
#define MEMTRACE_H

#define MT_FORMAT_VERSION 1

/* Ring buffer sizes in pages (power of two). Faults, events and summary
 * runs go to a ring of the CPU's own (`fault_rings`, `event_rings`,
 * `run_rings`, filled by user space: tracer/cpu_rings.py; past 16 CPUs,
 * CPUs share 16 rings): those of a kind share MT_*_RING_PAGES, at least
 * MT_CPU_RING_MIN_PAGES each; `faults`, `events` and `summary_runs` serve a
 * CPU without one. */
#define MT_FAULT_RING_PAGES 8192
#define MT_EVENT_RING_PAGES 8192
#define MT_CPU_RING_MIN_PAGES 2048
#define MT_SHARED_RING_PAGES 4096   /* faults, events: a CPU without a ring, and
				       what a CPU's full ring cannot take */
#define MT_FALLBACK_RING_PAGES 512   /* summary_runs: a CPU without a ring */
#define MT_RING_CPUS 4096     /* entries of the *_rings arrays: CPU ids */
#define MT_EXEC_RING_PAGES 512   /* exec and open records: -a sees every process's */
#define MT_RUN_RING_PAGES 8192   /* --faults=summary: runs not in the map (mt_summary_run,
				    112 bytes with the header: 300k in all) */

/* Event kinds (mt_event.kind, and the `kind` column of the trace). */
#define MT_EV_BRK 1
#define MT_EV_MMAP 2
#define MT_EV_MUNMAP 3
#define MT_EV_MREMAP 4
#define MT_EV_MPROTECT 5
#define MT_EV_MADVISE 6
#define MT_EV_FORK 7
#define MT_EV_THREAD 8
#define MT_EV_EXIT 9
#define MT_EV_RENAME 10
#define MT_EV_RSS 11
#define MT_EV_EXEC 12
#define MT_EV_FAULT 13
#define MT_EV_OPEN 14

/* State of a traced process (value of the `traced` map). */
#define MT_STATE_PRE_EXEC 1
#define MT_STATE_TRACED 2
#define MT_STATE_IGNORED 3    /* -a: seen, and not matching the filters (decided again
				 at exec, and at a rename with --comm) */
#define MT_STATE_EXCLUDED 4   /* -a: memtrace and the processes it forks: never traced */
#define MT_STATE_MASK 0xff    /* the state's bits of a `traced` value */
#define MT_GEN_ONE 0x100      /* one layout change in the bits above them */

/* mt_fault.flags */
#define MT_FAULT_MAJOR 1
#define MT_FAULT_NO_ENTRY 2
#define MT_FAULT_KERNEL_MODE 4
#define MT_FAULT_NO_END 8     /* the end was not followed (minor faults without
				 --fault-latency): sent when the thread's next fault,
				 syscall, signal or exit showed it had ended; ts is
				 the entry's, latency unknown */

/* mt_event.flags */
#define MT_EXIT_GROUP_DEAD 1
#define MT_EXIT_LEFT 16       /* exit (with GROUP_DEAD): with -a, the process runs on but
				 no longer matches the filters (exec, rename): untraced */
#define MT_RSS_BASELINE 2     /* rss: an absolute value, no change (args[1] 0) */
#define MT_RSS_NEW_MM 4       /* rss baseline: the process now runs on another mm
				 (fork's child, exec's new image, vfork) */
#define MT_RSS_OTHER_TASK 8   /* rss: made by another task (reclaim, a foreign
				 write), not by the process itself */
#define MT_RSS_SAMPLED 32     /* rss baseline: read by user space from /proc/PID/status
				 at an interval (--rss sampled), never set by BPF */

/* Page allocations counted in mt_fault.alloc: gfp flags with __GFP_MOVABLE
 * (user and page-cache memory; page tables and slab have it clear). Bit 3
 * since ___GFP_MOVABLE became a bit number (include/linux/gfp_types.h). */
#define MT_GFP_MOVABLE 8

/* x86 page fault error code bits (arch/x86/include/asm/trap_pf.h). */
#define MT_PF_PROT 1
#define MT_PF_WRITE 2
#define MT_PF_USER 4
#define MT_PF_INSTR 16

/* Counters (index into the `counters` per-CPU array). */
#define MT_CNT_FAULT_NO_ENTRY 0
#define MT_CNT_LOST_FAULT 2
#define MT_CNT_LOST_EVENT 3
#define MT_CNT_LOST_EXEC 4
#define MT_CNT_PRE_EXEC_FAULT 5
#define MT_CNT_MAP_FULL 6
#define MT_CNT_SYSCALLS 8
#define MT_CNT_RSS 9
#define MT_CNT_PROC 10
#define MT_CNT_LOST_RSS 11
#define MT_CNT_FAULT_UNFINISHED 12
#define MT_CNT_RSS_STRANDED 13
#define MT_CNT_STACK_LOST 14  /* --stacks: a stack not stored (map full, collision) */
#define MT_CNT_RESERVE_RETRIED 15  /* a record its CPU's ring could not take (full, or
				      its lock failed), taken by the shared ring */
#define MT_CNT_SUMMARY_FULL 16     /* --faults=summary: a fault not counted (the map was full) */
#define MT_CNT_SUMMARY_FAULTS 17   /* --faults=summary: faults counted in the map */
#define MT_CNT_SUMMARY_LATE_MAJOR 18  /* --faults=summary: a major fault whose entry was
				      drained before its end (in a row as minor) */
#define MT_CNT_FAULT_FAILED 19  /* a fault whose thread was then given SIGSEGV or
				   SIGBUS by the kernel (the fault failed: the kernel
				   does not count it): not sent */
#define MT_CNT_FAULT_KILLED 20  /* a fault open when its thread was killed (SIGKILL),
				   which had slept and changed nothing: the fatal
				   signal interrupted it, the kernel does not count
				   it: not sent */
#define MT_CNT_LOST_FAULT_MAJOR 21  /* of lost_fault, the major faults (the kernel
				       counts them apart: the cross-check needs both) */
#define MT_CNT_PRE_EXEC_MAJOR 22  /* of pre_exec_fault, the major ones (a page of
				     memtrace's own code that the kernel had dropped
				     from the page cache, read back by its child) */
#define MT_CNT_SUMMARY_UNTIMED 23  /* --faults=summary: major faults without latency
				      (mt_summary.untimed) */
#define MT_CNT_SUMMARY_RING 24  /* --faults=summary: runs sent to the `summary_runs` ring,
				   rows of their own: one fault of a key the map did not
				   hold, or a run the full map could not take */
#define MT_NR_COUNTERS 25

/* Configuration (index into the `config` array, set from user space). */
#define MT_CFG_FOLLOW 0
#define MT_CFG_SPAWNER_TID 1
#define MT_CFG_FAULT_MODE 2
#define MT_CFG_STOP_AT_EXEC 3
#define MT_CFG_STACKS 4         /* 0 off; else record user stacks of memory syscalls
				   and of one fault in this many per CPU */
#define MT_CFG_ALL 5            /* -a: MT_ALL_* bits; 0 without -a */
#define MT_CFG_UID 6            /* -a --uid: the real uid + 1; 0 no filter */
#define MT_CFG_CGROUP 7         /* -a --cgroup: cgroup v2 id (the directory's inode) of
				   the cgroup or one of its ancestors; 0 no filter */
#define MT_CFG_COMM 8           /* -a --comm: 1 if the names are in `comm_filter` */
#define MT_CFG_FAULT_END 9       /* 1: minor faults' ends followed (PAGE_FAULTS_MIN
				   attached, --fault-latency); 0: a fault ends when the
				   thread's next fault, syscall, signal or exit shows it */
#define MT_CFG_FROZEN 10         /* 1: tracing has stopped: the fault slots are left as
				   they are, for user space to read the faults still
				   open (tracer/pending_faults.py) */
#define MT_CFG_SUMMARY_HOLD 11   /* --faults=summary: 1 while user space reads the
				   `summary_acc` runs at the end (no flush at a task switch) */
#define MT_CFG_SUMMARY_FAST 12   /* --faults=summary with no resident-set hook (rss not
				   exact): a fault that continues its CPU's run takes the
				   short path (summary_continue) */
#define MT_NR_CONFIG 16

#define MT_ALL_FILTERS 1        /* the filters apply: decided again at exec, fork, rename */
#define MT_ALL_NEW 2            /* a process not in `traced` is decided when first seen */

#define MT_COMM_FILTERS 64      /* --comm names at most */
#define MT_CGROUP_DEPTH 32      /* cgroup levels looked at for --cgroup */

#define MT_FAULT_MODE_EVENTS 0
#define MT_FAULT_MODE_SUMMARY 1

/* --faults=summary: faults are counted in the `fault_summary` hash, one
 * entry per (process, 64 KiB block, access, major, time slot, layout
 * generation), through a per-CPU run (`summary_acc`: the CPU's consecutive
 * faults of one key); user space drains the slots no fault can reach any more. */
#define MT_SUMMARY_BLOCK_SHIFT 16     /* 64 KiB blocks: 16 pages, a u16 bitmap */
#define MT_SUMMARY_SLOT_SHIFT 26      /* time slots of 2^26 ns (67 ms) */
/* mt_summary_acc.jiffies when the run cannot be continued: no jiffy (64-bit
 * jiffies start at 2^32 less 300 s of ticks: include/linux/jiffies.h,
 * INITIAL_JIFFIES) */
#define MT_NO_FAST (~0ULL)
#define MT_SUMMARY_ENTRIES 131072
/* x86-64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl: the
 * ABI, fixed) of the calls memtrace follows, from raw sys_enter's `id`. */
#define MT_SYS_OPEN 2
#define MT_SYS_MMAP 9
#define MT_SYS_MPROTECT 10
#define MT_SYS_MUNMAP 11
#define MT_SYS_BRK 12
#define MT_SYS_MREMAP 25
#define MT_SYS_MADVISE 28
#define MT_SYS_OPENAT 257
#define MT_USER_CS 0x33   /* pt_regs.cs of a 64-bit syscall (arch/x86/include/asm/segment.h
			     __USER_CS); a 32-bit one has 0x23 and other numbers */
#define MT_USER_ADDR_END 0x100000000000000  /* x86-64: user addresses are below (5-level paging: 2^56) */
/* Kernel functions the BPF side calls through a helper pointer of this
 * number, a marker the loader links to the kfunc of that name
 * (tracer/bpf_kfunc.py); far above any helper's number. */
#define MT_KFUNC_RDONLY_CAST 0x6d740001

#define MT_COMM_LEN 16
#define MT_PATH_LEN 256

/* One page fault of a traced task, sent at fault end (the PAGE_FAULTS_MIN/MAJ
 * perf event), joined with its entry (exceptions:page_fault_user/kernel) and
 * with the resident-set changes (kmem:rss_stat) the kernel made inside it. */
struct mt_fault {
	__u64 ts;          /* ns, bpf_ktime_get_ns() (CLOCK_MONOTONIC), at fault end */
	__u64 addr;        /* faulting address */
	__u64 ip;          /* instruction pointer (kernel address for kernel-mode faults) */
	__u32 pid;         /* tgid */
	__u32 tid;
	__u32 latency;     /* ns from fault entry to end, 0 if the entry was not seen */
	__u16 error_code;  /* x86 error code (MT_PF_*) */
	__u16 flags;       /* MT_FAULT_* */
	__s16 rss_anon;    /* resident pages added (or removed) by this fault */
	__s16 rss_file;
	__s16 rss_shmem;
	__s16 rss_swap;
	__u32 alloc;       /* pages the kernel allocated inside the fault for user or
			      page-cache memory (a copy-on-write copy, a zeroed page,
			      read-ahead), from kmem:mm_page_alloc */
	__s32 stack_id;    /* user stack in the `stacks` map (--stacks), -1 none */
};

/* The fault in progress on a CPU (or ended and not yet sent, when ends
 * are not followed), as the BPF side's `fault_slot` begins (it adds the
 * summary key after these fields). User space reads the slots left at
 * the end of a run (tracer/pending_faults.py). */
struct mt_fault_slot {
	/* first the fields summary mode's short path writes at every fault
	 * (bpf/memtrace.bpf.c, summary_continue): the slot's first 32 bytes */
	__u64 ts;          /* entry time (traced processes only) */
	__u64 addr;
	__u32 error_code;
	__u32 active;      /* a fault of `tid` is open in this slot */
	__u32 timed;       /* --faults=summary: `ts` is exact (the run's first fault,
			      or taken where the fault reached the file's fault
			      handler); else the CPU's tick time (tick_ns) */
	__u32 tid;
	__u64 ip;          /* the faulting instruction, read at entry when the
			      end is not followed; else 0 */
	__u32 pid;
	__u32 state;       /* the process's MT_STATE_*, 0 if not traced */
	__s32 rss[4];      /* pages, by kmem:rss_stat member */
	__u32 alloc;       /* pages allocated (kmem:mm_page_alloc) */
	__u32 summary;     /* --faults=summary: counted at entry */
	__u32 gen;         /* the process's layout generation at entry */
	__s32 stack_id;    /* taken at entry when the end is not followed */
	__u32 busy;        /* BPF is reading user memory on this CPU: a fault
			      now is that read's, not the thread's */
	__u32 slept;       /* the thread slept (not preempted) while it was open */
};

/* Key of a fault_summary entry. `gen` counts the process's layout changes
 * (memory syscalls, execs): the faults of one entry all met one layout. */
struct mt_summary_key {
	__u64 block;       /* faulting address >> MT_SUMMARY_BLOCK_SHIFT */
	__u32 pid;
	__u32 gen;
	__u32 slot;        /* fault end time >> MT_SUMMARY_SLOT_SHIFT */
	__u16 error_code;  /* MT_PF_* */
	__u16 flags;       /* MT_FAULT_* */
};

/* Value of a fault_summary entry, shared by the CPUs: counts and sums are
 * added atomically; last_ts and pages are not (two CPUs adding to one entry
 * at the same instant may leave the earlier time or lose a page's bit). */
struct mt_summary {
	__s64 count;
	__u16 pages;       /* bit i: the block's page i took a fault */
	__u16 pad;
	__u32 untimed;     /* major faults not in `latency`: their start was not taken
			      exactly (they did not pass the file's fault handler:
			      swap-in, shmem); summed */
	__u64 first_ts;    /* the first fault: its time, address, ip, thread */
	__u64 last_ts;
	__u64 addr;
	__u64 ip;
	__u64 latency;     /* ns, summed */
	__s32 rss_anon;    /* summed */
	__s32 rss_file;
	__s32 rss_shmem;
	__s32 rss_swap;
	__u32 alloc;       /* summed */
	__u32 tid;
};

/* Value of the `summary_acc` per-CPU array (one entry): the CPU's current
 * run of faults of one key, counted with plain per-CPU writes and added to
 * the key's fault_summary entry (flushed) when a fault of another key comes
 * on this CPU, or at a task switch; at the end user space reads the runs
 * not flushed. A fault counted in it has fault_slot.summary == seq. */
struct mt_summary_acc {
	/* the fields summary mode's short path reads or writes at every fault
	 * (bpf/memtrace.bpf.c, summary_continue) come first, within 64 bytes:
	 * the key's block and error code, the three below, the run's count and
	 * pages */
	struct mt_summary_key key;
	/* the run's continuation (MT_CFG_SUMMARY_FAST): while `jiffies` is the
	 * current jiffy, the CPU's fault slot still describes the last fault of
	 * the run, which took the tick time `tick` of that jiffy, with
	 * traced_epoch at `epoch`; MT_NO_FAST (no jiffy) stops it */
	__u64 epoch;
	__u64 jiffies;
	__u64 tick;
	struct mt_summary v;     /* as a fault_summary value; latency and alloc 0 (a
				    major fault is moved to the hash at its end) */
	__u32 seq;         /* which run: one more at each start (>= 2) */
	__u32 live;        /* 1: holds faults not flushed yet */
};

/* --faults=summary: a run sent to the `summary_runs` ring instead of the
 * `fault_summary` map: one fault of a key the map did not hold (a load whose
 * every fault is a new key: each memory syscall is a new layout generation),
 * or a run the full map could not take. */
struct mt_summary_run {
	struct mt_summary_key key;
	struct mt_summary v;
};

/* A memory syscall (entry and exit joined), or a process event. */
struct mt_event {
	__u64 ts;          /* ns, at syscall exit / at the process event */
	__u64 duration;    /* ns from syscall entry to exit */
	__u32 pid;         /* tgid */
	__u32 tid;
	__u16 kind;        /* MT_EV_* */
	__u16 flags;       /* MT_EXIT_*, MT_RSS_* */
	__s32 aux;         /* fork/thread: child pid/tid; rss: member;
			      syscalls: user stack id (--stacks), -1 none */
	__s64 ret;         /* syscall return value (negative errno on error) */
	__u64 args[6];     /* syscall arguments; fork: clone flags; rss: new size, delta, cause */
	char comm[MT_COMM_LEN];
};

/* The records that carry a path: an exec (sent with a wake-up so user space
 * reads /proc/PID/maps at once), or a successful open/openat (so a file
 * mapped later by fd can be named). */
struct mt_exec {
	__u64 ts;
	__u32 pid;
	__u32 tid;
	__u32 old_tid;     /* exec: the tid before exec */
	__u16 kind;        /* MT_EV_EXEC or MT_EV_OPEN */
	__u16 pad;
	__s64 ret;         /* open: the file descriptor */
	__u64 flags;       /* open: the open flags */
	char comm[MT_COMM_LEN];
	char filename[MT_PATH_LEN];
};

#endif /* MEMTRACE_H */
