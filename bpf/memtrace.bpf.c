/* memtrace kernel side: memory syscalls, page faults and process events of
 * the traced process trees, into ring buffers (layout: memtrace.h): faults
 * and events each into a ring of the CPU's own, execs and opens into one.
 *
 * Reads only tracepoint arguments, perf-event context and BPF helpers: no
 * kernel struct layouts, so any recent header tree compiles it correctly and
 * it needs neither kprobes nor fentry. */
#include <uapi/linux/bpf_perf_event.h>
#include <uapi/linux/sched.h>
#include "memtrace.h"

/* user space may size the fault rings (a validated power of two) */
#ifndef FAULT_RING_PAGES
#define FAULT_RING_PAGES MT_SHARED_RING_PAGES
#endif

/* Faults and events, the records of every fault and memory syscall, go to
 * a ring of the CPU's own: CPUs writing one ring contend for its lock and
 * its producer position. With one ring for all, `churn 100000` (three
 * actors on two CPUs) had runs where sys_exit cost 340-384 ns and sys_enter
 * 256-295 (bpf_stats) instead of 236-254 and 174-187: 9 runs of 30 here;
 * with a ring per CPU none of 26 (sys_exit 227-256 ns; docs/benchmarks.md,
 * fifteenth session). A CPU whose entry user space did not fill uses the
 * shared ring, `faults` or `events` (also the template of the CPUs' rings),
 * as does a record its CPU's full ring cannot take: a single-threaded burst
 * has its CPU's ring and the shared one (with only the CPU's 16 MiB, `faults
 * 256 8` lost a fault in 3 runs of 17; docs/benchmarks.md). */
BPF_RINGBUF_OUTPUT(faults, FAULT_RING_PAGES);
BPF_RINGBUF_OUTPUT(events, MT_SHARED_RING_PAGES);
BPF_ARRAY_OF_MAPS(fault_rings, "faults", MT_RING_CPUS);
BPF_ARRAY_OF_MAPS(event_rings, "events", MT_RING_CPUS);
BPF_RINGBUF_OUTPUT(execs, MT_EXEC_RING_PAGES);
/* --faults=summary: runs likewise (user space fills run_rings in that mode) */
BPF_RINGBUF_OUTPUT(summary_runs, MT_FALLBACK_RING_PAGES);
BPF_ARRAY_OF_MAPS(run_rings, "summary_runs", MT_RING_CPUS);

/* tgid -> MT_STATE_* in the low byte (MT_STATE_MASK); filled by user space
 * (-p, the spawned CMD, -a's processes at start) and by fork; with -a also
 * by BPF, the first time a process is seen (so each is decided once, not at
 * every fault). The bits above count the process's layout changes
 * (MT_GEN_ONE per memory syscall entry and exit, and exec): the faults of
 * one fault_summary entry all met one layout. */
BPF_HASH(traced, u32, u32, 65536);
/* Every change of `traced` (BPF's and user space's) moves `traced_epoch`;
 * each CPU keeps the last process it looked up with the epoch it read
 * before the lookup: a fault (or syscall) of the same process on the same
 * CPU, with nothing changed since, skips the hash lookup (about 35 ns of a
 * fault's entry, bpf_stats, docs/benchmarks.md). User space adds 2^32 to
 * the epoch (tracer/probes.py), BPF adds 1 atomically. */
BPF_ARRAY(traced_epoch, u64, 1);
struct state_cache {
	u64 epoch;
	u32 tgid;
	u32 word;
};
BPF_PERCPU_ARRAY(state_cache, struct state_cache, 1);
BPF_PERCPU_ARRAY(counters, u64, MT_NR_COUNTERS);
BPF_ARRAY(config, u64, MT_NR_CONFIG);

/* -a --comm: the names (zero-padded, as bpf_get_current_comm gives them). */
struct comm_key {
	char name[MT_COMM_LEN];
};
BPF_HASH(comm_filter, struct comm_key, u8, MT_COMM_FILTERS);

/* A memory syscall (or open) in progress: its entry's time and arguments. */
struct syscall_entry {
	u64 ts;
	u64 args[6];
	u32 kind;
	s32 stack_id;      /* --stacks: the caller's user stack, -1 none */
};
/* ... in this CPU's slot from raw sys_enter to raw sys_exit, as faults are:
 * a per-CPU slot costs an array index where a per-thread hash cost an
 * update, a lookup and a delete (about 200 ns a syscall, docs/benchmarks.md).
 * A syscall whose thread is switched out meanwhile (it sleeps on mmap_lock,
 * or is preempted) is parked in `inflight` by sched_switch; `inflight_n`
 * counts its entries, so an exit with nothing parked skips the hash. */
struct syscall_slot {
	struct syscall_entry e;
	u32 tid;
	u32 active;
};
BPF_PERCPU_ARRAY(syscall_slot, struct syscall_slot, 1);
/* Per-thread; deleted when the thread exits, so a reused tid never
 * inherits it. */
BPF_HASH(inflight, u32, struct syscall_entry, 16384);
BPF_ARRAY(inflight_n, s64, 1);

/* The fault in progress on this CPU: filled at fault entry, read by
 * kmem:rss_stat inside the fault and by the perf event at its end (or, when
 * ends are not followed, kept until the thread's next fault, syscall,
 * signal or exit shows it has ended, and sent then). A fault starts and
 * ends on one CPU unless its task is switched out meanwhile: then
 * sched_switch parks it (below). A per-CPU slot costs an array index where
 * a per-thread hash costs a hash lookup, three times per fault. Its fields
 * are struct mt_fault_slot's (memtrace.h: user space reads the slots left
 * at the end of a run), then the summary key. */
struct fault_slot {
	u64 ts;
	u64 addr;
	u32 error_code;
	u32 active;
	u32 timed;
	u32 tid;
	u64 ip;
	u32 pid;
	u32 state;
	s32 rss[4];
	u32 alloc;
	u32 summary;
	u32 gen;
	s32 stack_id;
	u32 busy;
	u32 slept;
	struct mt_summary_key key;
};
_Static_assert(__builtin_offsetof(struct fault_slot, key) == sizeof(struct mt_fault_slot),
	       "fault_slot must begin as struct mt_fault_slot");
_Static_assert(__builtin_offsetof(struct fault_slot, busy) == __builtin_offsetof(struct mt_fault_slot, busy),
	       "fault_slot must begin as struct mt_fault_slot");
BPF_PERCPU_ARRAY(fault_slot, struct fault_slot, 1);

/* A fault whose thread is switched out before the fault ends (it sleeps on
 * I/O, or is preempted) is parked here by sched:sched_switch, and brought
 * back into the slot of whichever CPU the thread resumes on: only faults
 * that sleep pay for a hash update. `parked_n` counts the entries, so the
 * common case (nothing parked) skips the hash entirely. */
BPF_HASH(parked, u32, struct fault_slot, 16384);
BPF_ARRAY(parked_n, s64, 1);


/* parent tid -> clone flags, from task:task_newtask to sched:sched_process_fork */
BPF_HASH(clone_flags, u32, u64, 4096);

/* The resident-set counters of one address space, by kmem:rss_stat's mm_id
 * (a hash of the mm): the last value of each, to turn the tracepoint's
 * absolute sizes into per-fault changes, and the process whose series they
 * are. Keyed by mm, not by process, so that the counters a fork gives a
 * child and the ones an exec's new image starts with (both made with
 * curr=0, by the parent or by execve before the switch) are known exactly
 * when the process starts running on them. */
struct rss_state {
	s64 last[4];
	u32 known;         /* bit per member whose last value is known */
	u32 owner;         /* tgid running on this mm (0: none yet, or gone) */
};
BPF_HASH(rss_mm, u32, struct rss_state, 65536);

/* tid -> mm_id of the address space the thread is building: the child's
 * (fork's copy_page_range) or the new image's (execve's argument pages),
 * taken over at sched_process_fork / sched_process_exec. */
BPF_HASH(building, u32, u32, 16384);

/* --faults=summary: faults counted, not sent (layout: memtrace.h). One
 * value shared by the CPUs, added to atomically: a per-CPU hash would need
 * entries x CPUs x 80 bytes preallocated, and without preallocation its
 * inserts (one fault in 16 on a first touch) cost more than the ring. */
BPF_HASH(fault_summary, struct mt_summary_key, struct mt_summary, MT_SUMMARY_ENTRIES);
/* ... reached through this CPU's run of faults of one key: plain per-CPU
 * writes per fault, the hash only when the key changes (layout: memtrace.h) */
BPF_PERCPU_ARRAY(summary_acc, struct mt_summary_acc, 1);

/* --stacks: user stacks of memory syscalls and of sampled faults. */
BPF_STACK_TRACE(stacks, 16384);
BPF_PERCPU_ARRAY(stack_tick, u64, 1);

static __always_inline void count(int idx)
{
	u64 *c = counters.lookup(&idx);
	if (c)
		(*c)++;
}

/* The saved user registers of a fault or syscall (a tracepoint's struct
 * pt_regs *), read in place through the kernel's bpf_rdonly_cast when the
 * loader links it (MT_PT_REGS_BTF_ID: tracer/bpf_kfunc.py): plain loads the
 * verifier checks against the kernel's BTF and makes fault-safe. Else copied
 * with bpf_probe_read_kernel, which cost about 35 ns a call on a fault's
 * path where the load costs about 5 (docs/benchmarks.md). */
#ifdef MT_PT_REGS_BTF_ID
static struct pt_regs *(*mt_rdonly_cast)(void *obj, u32 btf_id) = (void *)MT_KFUNC_RDONLY_CAST;
#endif

/* `regs` readable: in place, or copied into `copy`; NULL if unreadable */
static __always_inline struct pt_regs *user_regs(struct pt_regs *regs, struct pt_regs *copy)
{
#ifdef MT_PT_REGS_BTF_ID
	return mt_rdonly_cast(regs, MT_PT_REGS_BTF_ID);
#else
	return bpf_probe_read_kernel(copy, sizeof(*copy), regs) ? 0 : copy;
#endif
}

/* the faulting instruction */
static __always_inline u64 regs_ip(struct pt_regs *regs)
{
#ifdef MT_PT_REGS_BTF_ID
	return mt_rdonly_cast(regs, MT_PT_REGS_BTF_ID)->ip;
#else
	u64 ip = 0;
	bpf_probe_read_kernel(&ip, sizeof(ip), &regs->ip);
	return ip;
#endif
}

static __always_inline u64 cfg(int idx)
{
	u64 *v = config.lookup(&idx);
	return v ? *v : 0;
}

/* PRE_EXEC or TRACED: a process whose address space memtrace follows
 * (IGNORED and EXCLUDED, like 0, are not). */
static __always_inline int watched(u32 st)
{
	return st == MT_STATE_PRE_EXEC || st == MT_STATE_TRACED;
}

/* `traced` has changed: every CPU's cached lookup is stale. */
static __always_inline void traced_changed(void)
{
	int zero = 0;
	u64 *e = traced_epoch.lookup(&zero);
	if (e)
		__sync_fetch_and_add(e, 1);
}

/* State of process `pid` (any process), 0 if it has none. */
static __always_inline u32 state_of(u32 pid)
{
	u32 *st = traced.lookup(&pid);
	return st ? *st & MT_STATE_MASK : 0;
}

/* -a: whether the current task's process matches the filters (AND of
 * those given), `comm` its name zero-padded. The uid is the real one;
 * --cgroup matches the cgroup and everything below it. */
static __always_inline u32 decide(struct comm_key *comm)
{
	u64 uid = cfg(MT_CFG_UID);
	if (uid && (u32)bpf_get_current_uid_gid() != (u32)(uid - 1))
		return MT_STATE_IGNORED;
	u64 cg = cfg(MT_CFG_CGROUP);
	if (cg) {
		int in = 0;
#pragma unroll
		for (int level = 0; level < MT_CGROUP_DEPTH; level++) {
			u64 id = bpf_get_current_ancestor_cgroup_id(level);
			if (id == cg)
				in = 1;
			if (!id || in)
				break;
		}
		if (!in)
			return MT_STATE_IGNORED;
	}
	if (cfg(MT_CFG_COMM) && !comm_filter.lookup(comm))
		return MT_STATE_IGNORED;
	return MT_STATE_TRACED;
}

static __always_inline u32 decide_current(void)
{
	struct comm_key k = {};
	bpf_get_current_comm(&k.name, sizeof(k.name));
	return decide(&k);
}

/* State and layout generation of the current process (`tgid` is the
 * current task's), 0 if it is not traced. With -a, a process not seen yet
 * is decided here, once: the decision is kept in `traced` (TRACED or
 * IGNORED), so a fault still costs one hash lookup. */
static __always_inline u32 state_word_lookup(u32 tgid)
{
	u32 *st = traced.lookup(&tgid);
	if (st)
		return *st;
	if (!(cfg(MT_CFG_ALL) & MT_ALL_NEW))
		return 0;
	u32 now = decide_current();
	if (traced.insert(&tgid, &now)) {
		st = traced.lookup(&tgid);   /* decided meanwhile on another CPU */
		if (st)
			return *st;
		count(MT_CNT_MAP_FULL);
		return now;
	}
	traced_changed();
	return now;
}

static __always_inline u32 state_word(u32 tgid)
{
	int zero = 0;
	u64 *ep = traced_epoch.lookup(&zero);
	struct state_cache *c = state_cache.lookup(&zero);
	if (!ep || !c)
		return state_word_lookup(tgid);
	/* the epoch before the lookup: a change during it makes the entry stale */
	u64 epoch = *(volatile u64 *)ep;
	if (c->epoch == epoch && c->tgid == tgid && epoch)
		return c->word;
	u32 word = state_word_lookup(tgid);
	c->epoch = epoch;
	c->tgid = tgid;
	c->word = word;
	return word;
}

/* State of a process, 0 if it is not traced. */
static __always_inline u32 current_state(u32 tgid)
{
	return state_word(tgid) & MT_STATE_MASK;
}

/* The process's layout changes: one more. */
static __always_inline void bump_layout_gen(u32 tgid)
{
	/* only summary entries are keyed by it: events mode spares the two
	 * lookups and atomic adds per memory syscall */
	if (cfg(MT_CFG_FAULT_MODE) != MT_FAULT_MODE_SUMMARY)
		return;
	u32 *st = traced.lookup(&tgid);
	if (st) {
		__sync_fetch_and_add(st, MT_GEN_ONE);
		traced_changed();
	}
}

/* Marks this CPU's slot busy while BPF reads user memory (a stack walk, a
 * path): a page fault taken by that read enters fault_enter nested, and is
 * the read's own, not the thread's (it is fixed up, never counted). */
static __always_inline void set_busy(u32 busy)
{
	int zero = 0;
	struct fault_slot *fs = fault_slot.lookup(&zero);
	if (fs)
		fs->busy = busy;
	/* a fault of the read is not the run's: summary_continue does not
	 * look at `busy` */
	struct mt_summary_acc *acc = summary_acc.lookup(&zero);
	if (acc && busy)
		acc->jiffies = MT_NO_FAST;
}

/* The user stack of this event in `stacks` (--stacks), or -1: off, not
 * sampled (faults: one in MT_CFG_STACKS per CPU), or not stored (counted).
 * bpf_get_stackid walks frame pointers: code built without them (most
 * distribution libraries) cuts the walk short. */
static __always_inline s32 user_stack(void *ctx, int sampled)
{
	u64 every = cfg(MT_CFG_STACKS);
	if (!every)
		return -1;
	if (sampled && every > 1) {
		int zero = 0;
		u64 *tick = stack_tick.lookup(&zero);
		if (!tick || (++*tick % every) != 0)
			return -1;
	}
	set_busy(1);
	int id = stacks.get_stackid(ctx, BPF_F_USER_STACK);
	set_busy(0);
	if (id < 0) {
		count(MT_CNT_STACK_LOST);
		return -1;
	}
	return id;
}

static __always_inline s64 *parked_count(void)
{
	int zero = 0;
	return parked_n.lookup(&zero);
}

/* This CPU's slot, holding the current thread's fault in progress if it has
 * one: a fault parked when the thread was switched out is brought back. */
static __always_inline struct fault_slot *my_slot(u32 tid)
{
	int zero = 0;
	struct fault_slot *fs = fault_slot.lookup(&zero);
	if (!fs || (fs->tid == tid && fs->active))
		return fs;
	s64 *n = parked_count();
	if (!n || *n <= 0)
		return fs;
	struct fault_slot *p = parked.lookup(&tid);
	if (p) {
		struct mt_summary_acc *acc = summary_acc.lookup(&zero);
		if (acc)
			acc->jiffies = MT_NO_FAST;    /* the slot is another fault's now */
		__builtin_memcpy(fs, p, sizeof(*fs));
		if (parked.delete(&tid) == 0)
			__sync_fetch_and_add(n, -1);
	}
	return fs;
}

/* A record in this CPU's ring (bpf_get_smp_processor_id is inlined by the
 * verifier), or in the shared one if user space gave the CPU none. */
static __always_inline struct mt_fault *fault_reserve(void)
{
	u32 cpu = bpf_get_smp_processor_id();
	void *rb = fault_rings.lookup(&cpu);
	if (rb)
		return bpf_ringbuf_reserve(rb, sizeof(struct mt_fault), 0);
	return faults.ringbuf_reserve(sizeof(struct mt_fault));
}

/* A failed reservation is tried once more, in the shared ring: the CPU's
 * ring may be full, and on 6.x a ring buffer's lock is a resilient spinlock
 * whose acquisition can fail with the ring far from full (rare: 10-minute
 * soaks lost 1-2 faults with the ring nearly empty). A retry that succeeds
 * is counted (reserve_retried); what is still lost is counted as lost.
 * (One function per ring: bcc rewrites map calls, not inside macros.) */
static __always_inline struct mt_fault *reserve_fault(u16 flags)
{
	struct mt_fault *f = fault_reserve();
	if (f)
		return f;
	/* the CPU's ring full (or its lock failed): the shared one, so that a
	 * burst on one CPU has that ring's room too */
	f = faults.ringbuf_reserve(sizeof(struct mt_fault));
	if (f)
		count(MT_CNT_RESERVE_RETRIED);
	else {
		count(MT_CNT_LOST_FAULT);
		if (flags & MT_FAULT_MAJOR)
			count(MT_CNT_LOST_FAULT_MAJOR);
	}
	return f;
}

/* One fault record from its slot (entry seen): `end` its end time, or 0
 * when the end was not followed (flag NO_END: the entry's time, no
 * latency); `ip` the faulting instruction. */
static __always_inline void send_fault(struct fault_slot *fs, u64 end, u16 flags, u64 ip)
{
	struct mt_fault *f = reserve_fault(flags);
	if (!f)
		return;
	f->ts = end ? end : fs->ts;
	f->addr = fs->addr;
	f->ip = ip;
	f->pid = fs->pid;
	f->tid = fs->tid;
	f->latency = end ? end - fs->ts : 0;
	f->error_code = fs->error_code;
	f->flags = flags | (end ? 0 : MT_FAULT_NO_END) |
		   ((fs->error_code & MT_PF_USER) ? 0 : MT_FAULT_KERNEL_MODE);
	f->rss_file = fs->rss[0];
	f->rss_anon = fs->rss[1];
	f->rss_swap = fs->rss[2];
	f->rss_shmem = fs->rss[3];
	f->alloc = fs->alloc;
	f->stack_id = fs->stack_id;
	bpf_ringbuf_submit(f, BPF_RB_NO_WAKEUP);
}

/* The fault open in `fs` has ended: the thread entered another fault, a
 * syscall, a signal or exit (nothing changes a process's own resident
 * counters outside those: see kmem:rss_stat). When ends are not followed,
 * this is where a minor fault is sent. When they are (--fault-latency), a
 * fault still open here never reached its end (it failed: EFAULT in
 * copy_to_user, a SIGSEGV): counted, and the resident-set changes gathered
 * into it, which cannot be sent as a fault, too. */
static __always_inline void close_slot(struct fault_slot *fs)
{
	if (!fs->active || cfg(MT_CFG_FROZEN))
		return;
	fs->active = 0;
	/* summary mode: counted at entry */
	if (fs->state != MT_STATE_TRACED || fs->summary)
		return;
	if (!cfg(MT_CFG_FAULT_END)) {
		send_fault(fs, 0, 0, fs->ip);
		return;
	}
	count(MT_CNT_FAULT_UNFINISHED);
	if (fs->rss[0] || fs->rss[1] || fs->rss[2] || fs->rss[3])
		count(MT_CNT_RSS_STRANDED);
}

/* The fault `tid` had open when it was switched out (parked), now ended:
 * sent as close_slot would (or forgotten, when ends are followed: it
 * ended elsewhere, or never will). */
static __always_inline void close_parked(u32 tid)
{
	s64 *n = parked_count();
	if (!n || *n <= 0 || cfg(MT_CFG_FROZEN))
		return;
	struct fault_slot *p = parked.lookup(&tid);
	if (!p)
		return;
	if (p->state == MT_STATE_TRACED && !p->summary && !cfg(MT_CFG_FAULT_END))
		send_fault(p, 0, 0, p->ip);
	if (parked.delete(&tid) == 0)
		__sync_fetch_and_add(n, -1);
}

/* The current thread's open fault (in this CPU's slot, or parked) has ended. */
static __always_inline void close_thread_fault(u32 tid)
{
	int zero = 0;
	struct fault_slot *fs = fault_slot.lookup(&zero);
	if (fs && fs->active && fs->tid == tid)
		close_slot(fs);
	else
		close_parked(tid);
}

static __always_inline void summary_switch(void);
static __always_inline void park_syscall(u32 tid);

/* A raw tracepoint: no perf trace buffer filled with both tasks' names,
 * pids and priorities at every switch of the machine. TP_PROTO(bool
 * preempt, struct task_struct *prev, struct task_struct *next, unsigned int
 * prev_state) (include/trace/events/sched.h, prev_state last since 5.18):
 * __schedule calls it before context_switch, so the current task is still
 * prev (its pid is bpf_get_current_pid_tgid's: no task_struct read), and
 * prev_state is an integer. */
RAW_TRACEPOINT_PROBE(sched_switch)
{
	u32 prev_pid = (u32)bpf_get_current_pid_tgid();
	u64 prev_state = ctx->args[3];
	summary_switch();
	if (prev_pid)
		park_syscall(prev_pid);
	int zero = 0;
	struct fault_slot *fs = fault_slot.lookup(&zero);
	if (!fs || !fs->active || fs->tid != prev_pid || !prev_pid)
		return 0;
	u32 tid = prev_pid;
	s64 *n = parked_count();
	if (fs->state == MT_STATE_TRACED && n) {
		if (prev_state & 3)   /* TASK_(UN)INTERRUPTIBLE: it sleeps, not preempted */
			fs->slept = 1;
		if (parked.update(&tid, fs) == 0) {   /* a copy, still active */
			__sync_fetch_and_add(n, 1);
		} else if (!fs->summary && !cfg(MT_CFG_FAULT_END)) {
			send_fault(fs, 0, 0, fs->ip);    /* most likely ended: sent now */
			count(MT_CNT_MAP_FULL);
		} else {
			count(MT_CNT_MAP_FULL);
		}
	}
	fs->active = 0;
	return 0;
}

static __always_inline int syscall_enter(void *ctx, u32 kind, u32 tgid, u32 tid,
					 struct pt_regs *regs, u64 nr);

/* Every syscall of the machine. Ends not followed: any syscall of a thread
 * closes the fault it had open (a thread enters no syscall inside a fault),
 * so that resident-set changes the syscall makes are not taken for the
 * fault's (with --fault-latency the perf event ends each fault). The
 * memory syscalls and opens of traced processes are taken from here, by
 * number, not from their own syscalls:sys_enter_* tracepoints: a raw
 * tracepoint fills no trace record, and one program serves them all.
 * TP_PROTO(struct pt_regs *regs, long id) (include/trace/events/syscalls.h).
 * The per-CPU slots assume what 6.x gives: syscall tracepoints are
 * faultable since 6.13, but their BPF probes run with preemption disabled
 * (__BPF_DECLARE_TRACE_SYSCALL in include/trace/bpf_probe.h), so nothing
 * else runs on this CPU until the program returns. */
RAW_TRACEPOINT_PROBE(sys_enter)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	if (!cfg(MT_CFG_FAULT_END))
		close_thread_fault(tid);
	u64 nr = ctx->args[1];
	u32 kind;
	switch (nr) {
	case MT_SYS_BRK: kind = MT_EV_BRK; break;
	case MT_SYS_MMAP: kind = MT_EV_MMAP; break;
	case MT_SYS_MUNMAP: kind = MT_EV_MUNMAP; break;
	case MT_SYS_MREMAP: kind = MT_EV_MREMAP; break;
	case MT_SYS_MPROTECT: kind = MT_EV_MPROTECT; break;
	case MT_SYS_MADVISE: kind = MT_EV_MADVISE; break;
	case MT_SYS_OPEN:
	case MT_SYS_OPENAT: kind = MT_EV_OPEN; break;
	default: return 0;
	}
	return syscall_enter(ctx, kind, tgid, tid, (struct pt_regs *)ctx->args[0], nr);
}

/* Ends not followed: a signal closes the thread's open fault. A SIGSEGV or
 * SIGBUS the kernel sent (si_code > 0) right after a fault is that fault's
 * failure: the kernel does not count a failed fault, so it is not sent
 * (counted: fault_failed). Summary mode counted it at entry already. */
TRACEPOINT_PROBE(signal, signal_deliver)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct fault_slot *fs = my_slot(tid);
	if (!fs || !fs->active || fs->tid != tid)
		return 0;
	if ((args->sig == 11 || args->sig == 7) && args->code > 0 &&
	    fs->state == MT_STATE_TRACED && !fs->summary) {
		fs->active = 0;
		count(MT_CNT_FAULT_FAILED);
		return 0;
	}
	/* Killed (a group exit kills every thread): a fault that slept and
	 * had changed nothing yet was interrupted by the kill (it waited on a
	 * lock, killably) and is not counted by the kernel. A fault that
	 * completed before the kill made its page resident, or never slept. */
	if (args->sig == 9 && fs->slept && fs->state == MT_STATE_TRACED && !fs->summary &&
	    !(fs->rss[0] | fs->rss[1] | fs->rss[2] | fs->rss[3]) && !fs->alloc) {
		fs->active = 0;
		count(MT_CNT_FAULT_KILLED);
		return 0;
	}
	close_slot(fs);
	return 0;
}

/* As fault_reserve (and reserve_fault below it), for events. */
static __always_inline struct mt_event *event_reserve(void)
{
	u32 cpu = bpf_get_smp_processor_id();
	void *rb = event_rings.lookup(&cpu);
	if (rb)
		return bpf_ringbuf_reserve(rb, sizeof(struct mt_event), 0);
	return events.ringbuf_reserve(sizeof(struct mt_event));
}

static __always_inline struct mt_event *reserve_event(int lost)
{
	struct mt_event *ev = event_reserve();
	if (ev)
		return ev;
	ev = events.ringbuf_reserve(sizeof(struct mt_event));   /* as reserve_fault */
	if (ev)
		count(MT_CNT_RESERVE_RETRIED);
	else
		count(lost);
	return ev;
}

/* An mt_event with its header filled (time, ids, kind, the thread's name;
 * everything else zero), or NULL with the loss counted in `lost`. */
static __always_inline struct mt_event *new_event(u32 kind, u32 tgid, u32 tid, int lost)
{
	struct mt_event *ev = reserve_event(lost);
	if (!ev)
		return 0;
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->ts = bpf_ktime_get_ns();
	ev->pid = tgid;
	ev->tid = tid;
	ev->kind = kind;
	bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
	return ev;
}

/* Likewise an mt_exec (a record that carries a path). */
static __always_inline struct mt_exec *new_path_record(u32 kind, u32 tgid, u32 tid, u32 old_tid)
{
	struct mt_exec *ev = execs.ringbuf_reserve(sizeof(struct mt_exec));
	if (!ev) {
		count(MT_CNT_LOST_EXEC);
		return 0;
	}
	ev->ts = bpf_ktime_get_ns();
	ev->pid = tgid;
	ev->tid = tid;
	ev->old_tid = old_tid;
	ev->kind = kind;
	ev->pad = 0;
	ev->ret = 0;
	ev->flags = 0;
	bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
	return ev;
}

/* ---- memory syscalls: entry stores the arguments, exit sends one event ---- */

static __always_inline s64 *inflight_count(void)
{
	int zero = 0;
	return inflight_n.lookup(&zero);
}

/* The memory syscall (or open) `tid` has in progress, NULL if none. */
static __always_inline struct syscall_entry *syscall_of(u32 tid)
{
	int zero = 0;
	struct syscall_slot *s = syscall_slot.lookup(&zero);
	if (s && s->active && s->tid == tid)
		return &s->e;
	s64 *n = inflight_count();
	if (!n || *n <= 0)
		return 0;
	return inflight.lookup(&tid);
}

/* `tid` has no syscall in progress any more (it exits, or leaves -a). */
static __always_inline void forget_syscall(u32 tid)
{
	int zero = 0;
	struct syscall_slot *s = syscall_slot.lookup(&zero);
	if (s && s->active && s->tid == tid)
		s->active = 0;
	s64 *n = inflight_count();
	if (n && *n > 0 && inflight.delete(&tid) == 0)
		__sync_fetch_and_add(n, -1);
}

/* sched_switch: the syscall the thread switched out has in progress goes
 * from this CPU's slot to `inflight` (it ends on whichever CPU it resumes). */
static __always_inline void park_syscall(u32 tid)
{
	int zero = 0;
	struct syscall_slot *s = syscall_slot.lookup(&zero);
	if (!s || !s->active || s->tid != tid)
		return;
	s->active = 0;
	s64 *n = inflight_count();
	if (!n)
		return;
	if (inflight.update(&tid, &s->e) == 0)
		__sync_fetch_and_add(n, 1);
	else
		count(MT_CNT_MAP_FULL);
}

/* ---- memory syscalls: entry stores the arguments, exit sends one event ---- */

/* A syscall of interest entered (raw sys_enter): its arguments from the
 * saved user registers (struct pt_regs, the tracepoint's argument: the
 * x86-64 syscall ABI, di si dx r10 r8 r9), into this CPU's slot. */
static __always_inline int syscall_enter(void *ctx, u32 kind, u32 tgid, u32 tid,
					 struct pt_regs *regs, u64 nr)
{
	if (current_state(tgid) != MT_STATE_TRACED)
		return 0;
	int zero = 0;
	struct syscall_slot *s = syscall_slot.lookup(&zero);
	if (!s)
		return 0;
	struct pt_regs copy;
	struct pt_regs *r = user_regs(regs, &copy);
	/* a 32-bit syscall (int 0x80, sysenter) has other numbers: the
	 * syscalls:* tracepoints skip them too (trace_get_syscall_nr) */
	if (!r || (u16)r->cs != MT_USER_CS)
		return 0;
	struct syscall_entry *e = &s->e;
	e->ts = bpf_ktime_get_ns();
	e->kind = kind;
	/* the arguments the call has, the others 0 (as its tracepoint gave) */
	e->args[0] = r->di;
	e->args[1] = kind == MT_EV_BRK ? 0 : r->si;
	e->args[2] = (kind == MT_EV_BRK || kind == MT_EV_MUNMAP) ? 0 : r->dx;
	e->args[3] = (kind == MT_EV_MMAP || kind == MT_EV_MREMAP || kind == MT_EV_OPEN) ? r->r10 : 0;
	e->args[4] = (kind == MT_EV_MMAP || kind == MT_EV_MREMAP) ? r->r8 : 0;
	e->args[5] = kind == MT_EV_MMAP ? r->r9 : 0;
	if (nr == MT_SYS_OPEN) {   /* open(path, flags, mode) as openat(AT_FDCWD, ...) */
		e->args[0] = (u64)-100;
		e->args[1] = r->di;
		e->args[2] = r->si;
		e->args[3] = r->dx;
	}
	e->stack_id = kind == MT_EV_OPEN ? -1 : user_stack(ctx, 0);
	if (kind != MT_EV_OPEN)
		bump_layout_gen(tgid);
	s->tid = tid;
	s->active = 1;
	return 0;
}

static __always_inline int open_exit(struct syscall_entry *e, u32 tgid, u32 tid, s64 ret);

/* The syscall in `e` returned `ret`: one event. */
static __always_inline int syscall_exit(struct syscall_entry *e, u32 tgid, u32 tid, s64 ret)
{
	if (e->kind == MT_EV_OPEN)
		return open_exit(e, tgid, tid, ret);
	count(MT_CNT_SYSCALLS);
	bump_layout_gen(tgid);
	struct mt_event *ev = new_event(e->kind, tgid, tid, MT_CNT_LOST_EVENT);
	if (!ev)
		return 0;
	ev->duration = ev->ts - e->ts;
	ev->ret = ret;
	ev->aux = e->stack_id;
#pragma unroll
	for (int i = 0; i < 6; i++)
		ev->args[i] = e->args[i];
	bpf_ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
	return 0;
}

/* Every syscall's return: the one in this CPU's slot, or a parked one.
 * TP_PROTO(struct pt_regs *regs, long ret). */
RAW_TRACEPOINT_PROBE(sys_exit)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	int zero = 0;
	struct syscall_slot *s = syscall_slot.lookup(&zero);
	if (!s)
		return 0;
	s64 ret = ctx->args[1];
	if (s->active && s->tid == tid) {
		s->active = 0;
		return syscall_exit(&s->e, tgid, tid, ret);
	}
	s64 *n = inflight_count();
	if (!n || *n <= 0)
		return 0;
	struct syscall_entry *e = inflight.lookup(&tid);
	if (!e)
		return 0;
	syscall_exit(e, tgid, tid, ret);
	if (inflight.delete(&tid) == 0)
		__sync_fetch_and_add(n, -1);
	return 0;
}

/* ---- open/openat: the file behind a later mmap(fd) ---- */

static __always_inline int open_exit(struct syscall_entry *e, u32 tgid, u32 tid, s64 ret)
{
	if (ret < 0)       /* a failed open names no descriptor */
		return 0;
	struct mt_exec *ev = new_path_record(MT_EV_OPEN, tgid, tid, tid);
	if (!ev)
		return 0;
	ev->ret = ret;
	ev->flags = e->args[2];
	/* the caller's path string is still there at syscall exit */
	set_busy(1);
	bpf_probe_read_user_str(ev->filename, sizeof(ev->filename), (void *)e->args[1]);
	set_busy(0);
	execs.ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
	return 0;
}

/* ---- page faults: entry (tracepoint, error code) + end (perf event, minor/major) ---- */

/* ---- --faults=summary: each fault counted at its entry ----
 *
 * Counting at entry spares the PAGE_FAULTS_MIN perf event (not attached in
 * this mode), the costliest hook of a minor fault. The kernel counts a fault
 * when it completes (mm_account_fault); an entry that does not complete
 * (SIGSEGV, a kernel access fixed up with EFAULT) is counted here as a minor
 * fault: the run's reconciliation with the kernel's counters shows them.
 * A major fault is moved from its minor entry to a major one at its end
 * (PAGE_FAULTS_MAJ), with its latency.
 *
 * A fault is counted in this CPU's run (summary_acc): the CPU's consecutive
 * faults of one key, with plain per-CPU writes. The run is flushed when a
 * fault of another key comes on this CPU (a new 67 ms slot is another key),
 * and at every task switch (so a run never waits on an idle CPU, and a
 * fault that sleeps or moves to another CPU is in the hash by then): to the
 * summary_runs ring when no fault of it is open (see summary_flush), else
 * added to the key's fault_summary entry (a lookup, an insert if new,
 * atomic adds). Resident-set changes inside a fault still in the run go to
 * the run; a major fault's move takes it from the run, or from the hash if its
 * run was flushed. MT_CNT_SUMMARY_FAULTS counts at entry what the run
 * holds; a failed flush (map full) moves the run's count to
 * MT_CNT_SUMMARY_FULL. At the end user space sets MT_CFG_SUMMARY_HOLD (no
 * flush at a switch any more), reads the runs not flushed and merges them
 * with the hash's entries. */

static __always_inline u64 now_ns(void) { return bpf_ktime_get_ns(); }

/* --faults=summary: this CPU's clock read once per tick. A fault is timed
 * with it (bpf_jiffies64 and a per-CPU read) instead of bpf_ktime_get_ns,
 * which cost about 30 ns of a 1.5 us fault here (docs/benchmarks.md): the
 * time of this CPU's first call in the current jiffy, at most a tick (4 ms
 * at HZ=250) behind, never ahead. Only slots and last_ts take it: a run's
 * first fault and a major fault's start are read exactly. */
struct tick_clock {
	u64 jiffies;
	u64 ns;
};
BPF_PERCPU_ARRAY(tick_clock, struct tick_clock, 1);

static __always_inline u64 tick_ns(u64 *jiffy)
{
	int zero = 0;
	struct tick_clock *c = tick_clock.lookup(&zero);
	u64 j = bpf_jiffies64();
	*jiffy = j;
	if (!c)
		return bpf_ktime_get_ns();
	if (c->jiffies != j) {
		c->jiffies = j;
		c->ns = bpf_ktime_get_ns();
	}
	return c->ns;
}

static __always_inline void count_add(int idx, s64 n)
{
	u64 *c = counters.lookup(&idx);
	if (c)
		*c += n;
}

/* The entry of `k`, created with this fault as its first if new; NULL if
 * the map is full. */
static __always_inline struct mt_summary *summary_entry(struct mt_summary_key *k, u64 ts,
							u64 addr, u64 ip, u32 tid)
{
	struct mt_summary *v = fault_summary.lookup(k);
	if (v)
		return v;
	/* BPF_NOEXIST: of two CPUs inserting the same key, the second finds
	 * the first's entry, never replaces it (a replaced entry would lose
	 * what was added to it) */
	struct mt_summary n = {};
	n.first_ts = ts;
	n.addr = addr;
	n.ip = ip;
	n.tid = tid;
	fault_summary.insert(k, &n);
	return fault_summary.lookup(k);
}

static __always_inline void summary_add(struct mt_summary *v, u64 ts, u64 addr)
{
	__sync_fetch_and_add(&v->count, 1);
	v->last_ts = ts;                           /* racy: the later of two */
	v->pages |= 1 << ((addr >> 12) & 15);      /* racy: see mt_summary */
}

static __always_inline int same_key(struct mt_summary_key *a, struct mt_summary_key *b)
{
	u64 *x = (u64 *)a, *y = (u64 *)b;
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2];
}

/* This CPU's run sent to the summary_runs ring, a row of its own; 0 if
 * the ring is full. */
static __always_inline int send_run(struct mt_summary_acc *acc)
{
	u32 cpu = bpf_get_smp_processor_id();    /* as fault_reserve */
	void *rb = run_rings.lookup(&cpu);
	struct mt_summary_run *r = rb ? bpf_ringbuf_reserve(rb, sizeof(*r), 0) :
					summary_runs.ringbuf_reserve(sizeof(*r));
	if (!r)
		return 0;
	__builtin_memcpy(&r->key, &acc->key, sizeof(r->key));
	__builtin_memcpy(&r->v, &acc->v, sizeof(r->v));
	bpf_ringbuf_submit(r, BPF_RB_NO_WAKEUP);
	count(MT_CNT_SUMMARY_RING);
	return 1;
}

/* Whether a fault of this CPU's run is still open in the CPU's slot (a
 * major fault's end moves it out of its entry: it must find one). */
static __always_inline int run_open(struct mt_summary_acc *acc)
{
	int zero = 0;
	struct fault_slot *fs = fault_slot.lookup(&zero);
	return !fs || (fs->active && fs->summary == acc->seq);
}

/* This CPU's run into the hash; the run is empty after. A run of one fault
 * of a key the map does not hold, and a run the full map cannot take, go
 * to the summary_runs ring; a full ring and a full map lose its faults
 * (counted). */
static __always_inline void summary_flush(struct mt_summary_acc *acc)
{
	struct mt_summary *a = &acc->v;
	acc->live = 0;
	acc->jiffies = MT_NO_FAST;
	if (!a->count && !(a->rss_file | a->rss_anon | a->rss_swap | a->rss_shmem))
		return;    /* its faults were all moved to major entries */
	/* a run of several faults, none still open (so no major fault's end
	 * will look for it): a row of its own through the ring, the hash not
	 * touched. A first touch makes a new key every 16 faults (64 KiB),
	 * and a new key's insert into a map of 131072 entries while the load
	 * zeroes pages cost more than a ring record in two sets of three
	 * (scripts/bench_hooks.py, faults 256 x 8: a per-CPU run flushed into
	 * a hash 1.068x and 1.046x, to a ring 1.029x; equal, 1.042x and
	 * 1.041x, in a set of 30 pairs; docs/benchmarks.md, twelfth session),
	 * and leaves the map for the keys that recur. Runs of one fault stay
	 * with the hash when it holds their key: one row per fault is what
	 * the map is there to spare. */
	if (a->count > 1 && !run_open(acc) && send_run(acc))
		return;
	struct mt_summary *v = fault_summary.lookup(&acc->key);
	if (!v) {
		/* one fault of a key the map does not hold, none still open: a
		 * row of its own through the ring. A load whose every fault is a
		 * key of its own (each memory syscall is a new layout
		 * generation: malloc churn) flushes one a fault, and user space
		 * turns a ring record into a row for a fraction of what a map
		 * entry costs it to read, delete and merge (docs/benchmarks.md) */
		if (a->count == 1 && !run_open(acc) && send_run(acc))
			return;
		/* a new entry: the run as it is (BPF_NOEXIST: see summary_entry) */
		if (fault_summary.insert(&acc->key, a) == 0)
			return;
		v = fault_summary.lookup(&acc->key);   /* made meanwhile on another CPU */
		if (!v) {
			/* the map is full: the run is a row of its own (its
			 * major faults' ends find no entry: late_major) */
			if (send_run(acc))
				return;
			count_add(MT_CNT_SUMMARY_FULL, a->count);
			count_add(MT_CNT_SUMMARY_FAULTS, -a->count);
			return;
		}
	}
	if (a->first_ts < v->first_ts) {          /* racy, as last_ts */
		v->first_ts = a->first_ts;
		v->addr = a->addr;
		v->ip = a->ip;
		v->tid = a->tid;
	}
	__sync_fetch_and_add(&v->count, a->count);
	if (a->latency)
		__sync_fetch_and_add(&v->latency, a->latency);
	if (a->rss_file)
		__sync_fetch_and_add(&v->rss_file, a->rss_file);
	if (a->rss_anon)
		__sync_fetch_and_add(&v->rss_anon, a->rss_anon);
	if (a->rss_swap)
		__sync_fetch_and_add(&v->rss_swap, a->rss_swap);
	if (a->rss_shmem)
		__sync_fetch_and_add(&v->rss_shmem, a->rss_shmem);
	if (a->alloc)
		__sync_fetch_and_add(&v->alloc, a->alloc);
	if (a->last_ts > v->last_ts)
		v->last_ts = a->last_ts;               /* racy: see mt_summary */
	v->pages |= a->pages;                      /* racy: see mt_summary */
}

/* A task switch on this CPU: the run is flushed (but while user space
 * reads the runs at the end). */
static __always_inline void summary_switch(void)
{
	int zero = 0;
	struct mt_summary_acc *acc = summary_acc.lookup(&zero);
	if (!acc)
		return;
	acc->jiffies = MT_NO_FAST;    /* the slot is parked or closed: see summary_continue */
	if (!acc->live || cfg(MT_CFG_SUMMARY_HOLD))
		return;
	summary_flush(acc);
}

static __always_inline void summary_enter(struct fault_slot *fs, u32 tgid, u32 tid, u64 ts,
					  u64 jiffy, u64 epoch, struct pt_regs *regs)
{
	u64 tick = ts;
	struct mt_summary_key *k = &fs->key;
	k->block = fs->addr >> MT_SUMMARY_BLOCK_SHIFT;
	k->pid = tgid;
	k->gen = fs->gen;
	k->slot = ts >> MT_SUMMARY_SLOT_SHIFT;
	k->error_code = fs->error_code & (MT_PF_PROT | MT_PF_WRITE | MT_PF_USER | MT_PF_INSTR);
	k->flags = (fs->error_code & MT_PF_USER) ? 0 : MT_FAULT_KERNEL_MODE;
	int zero = 0;
	struct mt_summary_acc *acc = summary_acc.lookup(&zero);
	if (!acc)
		return;
	struct mt_summary *a = &acc->v;
	if (!acc->live || !same_key(&acc->key, k)) {
		if (acc->live)
			summary_flush(acc);
		/* a new run, with this fault as its first: its time read exactly
		 * (the row's ts orders it among the syscalls) */
		u64 ip = regs_ip(regs);
		__builtin_memcpy(&acc->key, k, sizeof(*k));
		__builtin_memset(a, 0, sizeof(*a));
		ts = bpf_ktime_get_ns();
		fs->ts = ts;
		fs->timed = 1;
		a->first_ts = ts;
		a->addr = fs->addr;
		a->ip = ip;
		a->tid = tid;
		u32 seq = acc->seq + 1;
		acc->seq = seq < 2 ? 2 : seq;
		acc->live = 1;
	}
	a->count++;
	if (ts > a->last_ts)
		a->last_ts = ts;    /* tick time: not before the run's first */
	a->pages |= 1 << ((fs->addr >> 12) & 15);
	fs->summary = acc->seq;
	count(MT_CNT_SUMMARY_FAULTS);
	if (epoch && cfg(MT_CFG_SUMMARY_FAST)) {    /* 0: see state_word */
		acc->tick = tick;
		acc->epoch = epoch;
		acc->jiffies = jiffy;
	}
}

/* --faults=summary with no resident-set hook (MT_CFG_SUMMARY_FAST): a fault
 * of the thread whose run this CPU holds, of the run's block and access, in
 * the same jiffy (so the same time slot) and with no process changed since
 * (traced_epoch: the state and layout generation of the key are the run's),
 * is counted in the run with only the slot's per-fault fields refilled,
 * without the state lookup, the slot's refill and the key's making (taken
 * by 15 of each 16 faults of a first touch). The slot's other fields are
 * still the run's first fault's: the run stops being continued (its
 * `jiffies` set to MT_NO_FAST) by whatever else may write or park the slot
 * (a task switch, a flush, a parked fault brought back, a fault taking the
 * long path) or make a fault not the thread's (set_busy); user space moves
 * traced_epoch when it freezes the slots (MT_CFG_FROZEN). The thread is not
 * checked: the current task changes only at a task switch, where
 * sched_switch (always attached, before user space sets
 * MT_CFG_SUMMARY_FAST) stops it; that saves the bpf_get_current_pid_tgid
 * call, about 12 ns of a fault here (docs/benchmarks.md, fourteenth
 * session). A fault continuing a run reads nothing but the run's first 64
 * bytes (layout: memtrace.h), the epoch and the jiffies, and writes the
 * slot's first 32 bytes and this CPU's counter (before, three lines of the
 * run, two of the slot and the config's: no difference measurable end to
 * end, docs/benchmarks.md, eighteenth session). Not with residency: a
 * fault's resident-set changes are gathered in its slot. 1 if counted. */
static __always_inline int summary_continue(struct mt_summary_acc *acc, u64 addr, u64 error_code)
{
	if (acc->jiffies != bpf_jiffies64())    /* MT_NO_FAST and 0 never are */
		return 0;
	int zero = 0;
	u64 *ep = traced_epoch.lookup(&zero);
	if (!ep || *(volatile u64 *)ep != acc->epoch)
		return 0;
	if (acc->key.block != addr >> MT_SUMMARY_BLOCK_SHIFT ||
	    acc->key.error_code != (error_code & (MT_PF_PROT | MT_PF_WRITE | MT_PF_USER | MT_PF_INSTR)))
		return 0;
	struct fault_slot *fs = fault_slot.lookup(&zero);
	if (!fs)
		return 0;
	fs->ts = acc->tick;
	fs->addr = addr;
	fs->error_code = error_code;
	fs->active = 1;
	fs->timed = 0;
	acc->v.count++;
	acc->v.pages |= 1 << ((addr >> 12) & 15);
	count(MT_CNT_SUMMARY_FAULTS);
	return 1;
}

/* This CPU's run if it still holds the fault of `fs`, else NULL (the run
 * was flushed: the fault is in the hash under fs->key). */
static __always_inline struct mt_summary_acc *summary_run(struct fault_slot *fs)
{
	int zero = 0;
	struct mt_summary_acc *acc = summary_acc.lookup(&zero);
	if (!acc || !acc->live || acc->seq != fs->summary || !same_key(&acc->key, &fs->key))
		return 0;
	return acc;
}

/* A resident-set change inside a counted fault: onto its run, or its entry. */
static __always_inline void summary_rss(struct fault_slot *fs, u32 member, s32 pages)
{
	struct mt_summary_acc *acc = summary_run(fs);
	struct mt_summary *v = acc ? &acc->v : fault_summary.lookup(&fs->key);
	if (!v)
		return;
	if (acc) {
		if (member == 0)
			v->rss_file += pages;
		else if (member == 1)
			v->rss_anon += pages;
		else if (member == 2)
			v->rss_swap += pages;
		else
			v->rss_shmem += pages;
		return;
	}
	if (member == 0)
		__sync_fetch_and_add(&v->rss_file, pages);
	else if (member == 1)
		__sync_fetch_and_add(&v->rss_anon, pages);
	else if (member == 2)
		__sync_fetch_and_add(&v->rss_swap, pages);
	else
		__sync_fetch_and_add(&v->rss_shmem, pages);
}

/* The fault counted at entry ended as a major fault: moved from its run or
 * its entry to a major entry of the same key, with its resident-set
 * changes and its latency. A full map loses it (counted). */
static __always_inline int summary_major(struct fault_slot *fs, u64 now)
{
	struct mt_summary_acc *acc = summary_run(fs);
	struct mt_summary *v = acc ? &acc->v : fault_summary.lookup(&fs->key);
	if (!v) {
		/* its entry was drained already (a major fault longer than
		 * user space's margin): a row holds it as minor */
		count(MT_CNT_SUMMARY_LATE_MAJOR);
		return 0;
	}
	if (acc) {
		v->count--;
		v->rss_file -= fs->rss[0];
		v->rss_anon -= fs->rss[1];
		v->rss_swap -= fs->rss[2];
		v->rss_shmem -= fs->rss[3];
	} else {
		__sync_fetch_and_add(&v->count, -1);
		__sync_fetch_and_add(&v->rss_file, -fs->rss[0]);
		__sync_fetch_and_add(&v->rss_anon, -fs->rss[1]);
		__sync_fetch_and_add(&v->rss_swap, -fs->rss[2]);
		__sync_fetch_and_add(&v->rss_shmem, -fs->rss[3]);
	}
	struct mt_summary_key k = fs->key;
	k.flags |= MT_FAULT_MAJOR;
	struct mt_summary *m = summary_entry(&k, fs->ts, fs->addr, 0, fs->tid);
	if (!m) {
		/* counted at entry on some CPU: the counters are summed
		 * modulo 2^64 (tracer.probes) */
		count(MT_CNT_SUMMARY_FULL);
		count_add(MT_CNT_SUMMARY_FAULTS, -1);
		return 0;
	}
	summary_add(m, fs->ts, fs->addr);
	if (fs->timed) {
		__sync_fetch_and_add(&m->latency, now - fs->ts);
	} else {
		__sync_fetch_and_add(&m->untimed, 1);
		count(MT_CNT_SUMMARY_UNTIMED);
	}
	__sync_fetch_and_add(&m->rss_file, fs->rss[0]);
	__sync_fetch_and_add(&m->rss_anon, fs->rss[1]);
	__sync_fetch_and_add(&m->rss_swap, fs->rss[2]);
	__sync_fetch_and_add(&m->rss_shmem, fs->rss[3]);
	return 0;
}

static __always_inline int fault_enter(void *ctx, u64 addr, u64 error_code,
				       struct pt_regs *regs)
{
	/* a kernel-mode fault on a kernel address is no fault of the process */
	if (!(error_code & MT_PF_USER) && addr >= MT_USER_ADDR_END)
		return 0;
	int zero = 0;
	struct mt_summary_acc *acc = summary_acc.lookup(&zero);
	if (acc && acc->jiffies != MT_NO_FAST) {    /* events mode: so from its first fault */
		if (summary_continue(acc, addr, error_code))
			return 0;
		acc->jiffies = MT_NO_FAST;   /* the slot is this fault's now */
	}
	struct fault_slot *fs = fault_slot.lookup(&zero);
	/* busy: our own read of user memory faulted; frozen: user space is
	 * reading the faults left open */
	if (!fs || fs->busy || cfg(MT_CFG_FROZEN))
		return 0;
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	/* the epoch before the state's lookup: see state_word */
	u64 *ep = traced_epoch.lookup(&zero);
	u64 epoch = ep ? *(volatile u64 *)ep : 0;
	/* the slot is this thread's, if anyone's (sched_switch parks a fault
	 * it switches out): its previous fault has ended */
	close_slot(fs);
	u32 word = state_word(tgid);
	u32 st = word & MT_STATE_MASK;
	if (watched(st))
		close_parked(tid);
	fs->tid = tid;
	fs->pid = tgid;
	fs->active = 1;
	fs->state = st;
	fs->gen = word >> 8;
	fs->addr = addr;
	fs->error_code = error_code;
	fs->rss[0] = fs->rss[1] = fs->rss[2] = fs->rss[3] = 0;
	fs->alloc = 0;
	fs->summary = 0;
	fs->stack_id = -1;
	fs->ip = 0;
	fs->slept = 0;
	fs->timed = 0;
	u64 end_followed = cfg(MT_CFG_FAULT_END);
	if (st != MT_STATE_TRACED) {
		if (st == MT_STATE_PRE_EXEC && !end_followed)
			count(MT_CNT_PRE_EXEC_FAULT);   /* counted at entry, as faults are */
		return 0;
	}
	if (cfg(MT_CFG_FAULT_MODE) == MT_FAULT_MODE_SUMMARY) {
		/* (never with end_followed: tracer.probes) reads the ip and
		 * the exact time when a run starts */
		u64 jiffy;
		fs->ts = tick_ns(&jiffy);
		summary_enter(fs, tgid, tid, fs->ts, jiffy, epoch, regs);
		return 0;
	}
	fs->ts = bpf_ktime_get_ns();
	if (end_followed)
		return 0;             /* the end reads ip and stack */
	fs->ip = regs_ip(regs);
	if (error_code & MT_PF_USER)
		fs->stack_id = user_stack(ctx, 1);
	return 0;
}

/* Raw tracepoints: no copy of the arguments into a perf trace buffer, which
 * matters at one call per fault. TP_PROTO(unsigned long address,
 * struct pt_regs *regs, unsigned long error_code)
 * (arch/x86/include/asm/trace/exceptions.h): plain integers, no struct read. */
RAW_TRACEPOINT_PROBE(page_fault_user)
{
	return fault_enter(ctx, ctx->args[0], ctx->args[2], (struct pt_regs *)ctx->args[1]);
}

RAW_TRACEPOINT_PROBE(page_fault_kernel)
{
	return fault_enter(ctx, ctx->args[0], ctx->args[2], (struct pt_regs *)ctx->args[1]);
}

/* --faults=summary: a fault of a file page reaches filemap_fault (every
 * file system's fault handler ends there) before it waits for the page: a
 * major fault's start, read exactly, for its latency (the entry took the
 * tick's time). Once per fault: a retried fault passes again. Attached in
 * summary mode only (tracer.probes). TP_PROTO(struct file *, pgoff_t):
 * nothing read. */
RAW_TRACEPOINT_PROBE(mm_filemap_fault)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct fault_slot *fs = my_slot(tid);
	if (!fs || !fs->active || fs->tid != tid || fs->timed || !fs->summary)
		return 0;
	fs->ts = bpf_ktime_get_ns();
	fs->timed = 1;
	return 0;
}

static __always_inline int fault_end(struct bpf_perf_event_data *ctx, int major)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	struct fault_slot *fs = my_slot(tid);
	if (!fs)
		return 0;
	int entry = fs->tid == tid && fs->active;
	u32 st = entry ? fs->state : current_state(tgid);
	if (entry)
		fs->active = 0;
	u64 end_followed = cfg(MT_CFG_FAULT_END);
	if (st != MT_STATE_TRACED) {
		if (st == MT_STATE_PRE_EXEC && end_followed)
			count(MT_CNT_PRE_EXEC_FAULT);
		if (st == MT_STATE_PRE_EXEC && major)
			count(MT_CNT_PRE_EXEC_MAJOR);
		return 0;
	}
	if (entry && fs->summary)
		return summary_major(fs, now_ns());
	u16 flags = major ? MT_FAULT_MAJOR : 0;
	if (entry) {
		u64 ip = fs->ip;
		if (end_followed) {
			ip = PT_REGS_IP(&ctx->regs);
			if (fs->error_code & MT_PF_USER)
				fs->stack_id = user_stack(ctx, 1);
		}
		send_fault(fs, bpf_ktime_get_ns(), flags, ip);
		return 0;
	}
	/* the end of a fault whose entry was not seen */
	count(MT_CNT_FAULT_NO_ENTRY);
	struct mt_fault *f = reserve_fault(flags);
	if (!f)
		return 0;
	f->ts = bpf_ktime_get_ns();
	f->addr = ctx->addr;
	f->ip = PT_REGS_IP(&ctx->regs);
	f->pid = tgid;
	f->tid = tid;
	f->flags = flags | MT_FAULT_NO_ENTRY;
	f->latency = 0;
	f->error_code = 0;
	f->rss_file = f->rss_anon = f->rss_swap = f->rss_shmem = 0;
	f->alloc = 0;
	f->stack_id = user_stack(ctx, 1);
	bpf_ringbuf_submit(f, BPF_RB_NO_WAKEUP);
	return 0;
}

int on_fault_min(struct bpf_perf_event_data *ctx) { return fault_end(ctx, 0); }

/* Ends not followed: a CPU clock tick (every 50 ms) that interrupts a thread
 * in user mode closes the fault it had open (it ended when the thread went
 * back to user mode), so that a thread computing without syscalls or faults
 * does not hold its last fault back from user space for long. In kernel
 * mode the thread may be inside that fault: left open. */
int on_tick(struct bpf_perf_event_data *ctx)
{
	if (!(ctx->regs.cs & 3))
		return 0;
	close_thread_fault((u32)bpf_get_current_pid_tgid());
	return 0;
}
int on_fault_maj(struct bpf_perf_event_data *ctx) { return fault_end(ctx, 1); }

/* ---- resident-set changes ---- */

/* An rss event of process `pid` (baseline: an absolute value; otherwise a
 * change), attributed to the memory syscall `tid` has in progress if any. */
static __always_inline void rss_event(u32 pid, u32 tid, u32 member, s64 size,
				      s64 delta, u16 flags)
{
	count(MT_CNT_RSS);
	u32 cause = 0;
	if (!(flags & (MT_RSS_BASELINE | MT_RSS_OTHER_TASK))) {
		struct syscall_entry *sc = syscall_of(tid);
		cause = sc ? sc->kind : 0;
	}
	struct mt_event *ev = new_event(MT_EV_RSS, pid, tid, MT_CNT_LOST_RSS);
	if (!ev)
		return;
	ev->flags = flags;
	ev->aux = member;
	ev->args[0] = size;
	ev->args[1] = delta;
	ev->args[2] = cause;
	bpf_ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
}

/* Process `tgid` now runs on this mm (a forked child, the new image of an
 * exec, a vfork child): its series starts again from the mm's values. */
static __always_inline void adopt(struct rss_state *rs, u32 tgid, u32 tid)
{
	rs->owner = tgid;
#pragma unroll
	for (int m = 0; m < 4; m++)
		if (rs->known & (1u << m))
			rss_event(tgid, tid, m, rs->last[m], 0,
				  MT_RSS_BASELINE | MT_RSS_NEW_MM);
}

/* A change of an mm that is not the current task's (curr=0): one a traced
 * task is building (fork's child, execve's new image: a new mm, counters
 * from 0), the old image or the exited process's being torn down by its own
 * task (dropped: the process has left it), or a traced process's changed by
 * another task (reclaim, a write into it from outside). */
static __always_inline int rss_other_mm(u32 mm, u32 member, s64 size, u32 tgid, u32 tid)
{
	struct rss_state *rs = rss_mm.lookup(&mm);
	if (!rs) {
		/* the current task: no decision here (-a), a kernel thread
		 * (reclaim) may be the one changing another process's mm */
		if (!watched(state_of(tgid)))
			return 0;
		/* an exec tears its old mm down after building the new one:
		 * while the new one is pending, an unknown mm is the old one */
		u32 *b = building.lookup(&tid);
		if (b && rss_mm.lookup(b))
			return 0;
		struct rss_state n = {};
		n.known = 0xf;
		if (rss_mm.update(&mm, &n) || building.update(&tid, &mm)) {
			count(MT_CNT_MAP_FULL);
			return 0;
		}
		rs = rss_mm.lookup(&mm);
		if (!rs)
			return 0;
	}
	u32 bit = 1u << member;
	s64 delta = (rs->known & bit) ? size - rs->last[member] : 0;
	u16 flags = (rs->known & bit) ? MT_RSS_OTHER_TASK : MT_RSS_OTHER_TASK | MT_RSS_BASELINE;
	rs->known |= bit;
	rs->last[member] = size;
	u32 owner = rs->owner;
	if (owner == tgid)
		rs->owner = owner = 0;
	else if (owner && state_of(owner) == MT_STATE_TRACED)
		rss_event(owner, tid, member, size, delta, flags);
	if (!owner && !(rs->last[0] | rs->last[1] | rs->last[2] | rs->last[3]))
		rss_mm.delete(&mm);
	return 0;
}

TRACEPOINT_PROBE(kmem, rss_stat)
{
	u32 member = args->member;
	if (member > 3)
		return 0;
	u32 mm = args->mm_id;
	s64 size = args->size;
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	if (!args->curr)
		return rss_other_mm(mm, member, size, tgid, tid);
	struct fault_slot *fs = my_slot(tid);
	if (!fs)
		return 0;
	int in_fault = fs->tid == tid && fs->active;
	u32 st = in_fault ? fs->state : current_state(tgid);
	if (!watched(st))
		return 0;
	struct rss_state *rs = rss_mm.lookup(&mm);
	if (!rs) {
		if (st != MT_STATE_TRACED)
			return 0;
		struct rss_state n = {};
		n.owner = tgid;          /* attached: values unknown until seen */
		rss_mm.update(&mm, &n);
		rs = rss_mm.lookup(&mm);
		if (!rs) {
			count(MT_CNT_MAP_FULL);
			return 0;
		}
	}
	u32 bit = 1u << member;
	if (st != MT_STATE_TRACED) {
		/* memtrace's child inside its exec: the new image, sent at exec */
		rs->known |= bit;
		rs->last[member] = size;
		return 0;
	}
	if (rs->owner != tgid)
		adopt(rs, tgid, tid);
	if (!(rs->known & bit)) {
		rs->known |= bit;
		rs->last[member] = size;
		rss_event(tgid, tid, member, size, 0, MT_RSS_BASELINE);
		return 0;
	}
	s64 delta = size - rs->last[member];
	rs->last[member] = size;
	if (in_fault) {
		fs->rss[member] += delta >> 12;
		if (fs->summary)
			summary_rss(fs, member, delta >> 12);
		return 0;
	}
	/* outside a fault: an event of its own */
	rss_event(tgid, tid, member, size, delta, 0);
	return 0;
}

/* Pages allocated inside a traced fault: user and page-cache memory only
 * (__GFP_MOVABLE), not page tables or slab. TP_PROTO(struct page *page,
 * unsigned int order, gfp_t gfp_flags, int migratetype)
 * (include/trace/events/kmem.h): integers only. */
RAW_TRACEPOINT_PROBE(mm_page_alloc)
{
	if (!(ctx->args[2] & MT_GFP_MOVABLE))
		return 0;
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct fault_slot *fs = my_slot(tid);
	if (!fs || !fs->active || fs->tid != tid || fs->state != MT_STATE_TRACED)
		return 0;
	fs->alloc += 1u << (ctx->args[1] & 15);
	return 0;
}

/* The mm thread `tid` was building, now run by process `tgid`. */
static __always_inline void take_built(u32 tid, u32 tgid, u32 new_tid, int traced)
{
	u32 *mm = building.lookup(&tid);
	if (!mm)
		return;
	u32 key = *mm;
	building.delete(&tid);
	struct rss_state *rs = rss_mm.lookup(&key);
	if (rs && traced && rs->owner != tgid)
		adopt(rs, tgid, new_tid);
}

/* ---- process events ---- */

static __always_inline void proc_event(u32 kind, u32 tgid, u32 tid, s32 aux,
				       u64 arg0, u16 flags, u64 wakeup)
{
	count(MT_CNT_PROC);
	struct mt_event *ev = new_event(kind, tgid, tid, MT_CNT_LOST_EVENT);
	if (!ev)
		return;
	ev->flags = flags;
	ev->aux = aux;
	ev->args[0] = arg0;
	bpf_ringbuf_submit(ev, wakeup);
}

/* -a: a traced process that no longer matches the filters (it exec'd or
 * was renamed): an exit row (GROUP_DEAD | LEFT) ends it in the trace, and
 * its per-thread state goes (the other threads' goes at their exit). */
static __always_inline void leave(u32 tgid, u32 tid, u32 old_tid)
{
	forget_syscall(tid);
	take_built(old_tid, tgid, tid, 0);
	proc_event(MT_EV_EXIT, tgid, tid, 0, 0, MT_EXIT_GROUP_DEAD | MT_EXIT_LEFT,
		   BPF_RB_FORCE_WAKEUP);
}

TRACEPOINT_PROBE(task, task_newtask)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	u32 st = current_state(tgid);
	if ((!st || st == MT_STATE_IGNORED) && tid != cfg(MT_CFG_SPAWNER_TID))
		return 0;
	u64 flags = args->clone_flags;
	clone_flags.update(&tid, &flags);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_process_fork)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	u32 child = args->child_pid;
	u32 st = current_state(tgid);
	int spawner = tid == cfg(MT_CFG_SPAWNER_TID);
	if (!st && !spawner)
		return 0;
	if (st == MT_STATE_IGNORED)   /* -a: its children are decided when first seen */
		return 0;
	u64 flags = 0;
	u64 *fl = clone_flags.lookup(&tid);
	if (fl) {
		flags = *fl;
		clone_flags.delete(&tid);
	}
	if (flags & CLONE_THREAD) {
		if (st == MT_STATE_TRACED)
			proc_event(MT_EV_THREAD, tgid, tid, child, flags, 0, BPF_RB_NO_WAKEUP);
		return 0;
	}
	if (st == MT_STATE_EXCLUDED) {   /* memtrace's own helpers, whatever they exec */
		if (traced.update(&child, &st))
			count(MT_CNT_MAP_FULL);
		traced_changed();
		return 0;
	}
	if (spawner && !st) {
		/* memtrace's own child for `-- CMD`: traced from its exec on */
		u32 pre = MT_STATE_PRE_EXEC;
		if (traced.update(&child, &pre))
			count(MT_CNT_MAP_FULL);
		traced_changed();
		return 0;
	}
	int follow = st == MT_STATE_TRACED && cfg(MT_CFG_FOLLOW);
	if (follow && cfg(MT_CFG_ALL) && cfg(MT_CFG_COMM)) {
		/* -a --comm: the child is named after the thread that forked it
		 * (uid and cgroup are the parent's) */
		struct comm_key k = {};
		bpf_get_current_comm(&k.name, sizeof(k.name));
		if (!comm_filter.lookup(&k)) {
			u32 ign = MT_STATE_IGNORED;
			if (traced.update(&child, &ign))
				count(MT_CNT_MAP_FULL);
			traced_changed();
			follow = 0;
		}
	}
	if (follow) {
		if (traced.update(&child, &st))
			count(MT_CNT_MAP_FULL);
		traced_changed();
		/* wakes user space: it reads the rings only with a reason
		 * (tracer/drain_gate.py), and its rss sampler wants the child */
		proc_event(MT_EV_FORK, tgid, tid, child, flags, 0, BPF_RB_FORCE_WAKEUP);
	}
	/* the counters the fork gave the child (copy_page_range, curr=0) */
	take_built(tid, child, child, follow);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	u32 old = args->old_pid;
	u32 *p = traced.lookup(&tgid);
	u32 st = p ? *p & MT_STATE_MASK : 0;
	if (st == MT_STATE_PRE_EXEC) {
		*p = (*p & ~MT_STATE_MASK) | MT_STATE_TRACED;
		traced_changed();
		st = MT_STATE_TRACED;
	} else if (cfg(MT_CFG_ALL) && st != MT_STATE_EXCLUDED) {
		/* -a: the new program is decided again (name, and uid or
		 * cgroup changed before the exec: su, systemd's services) */
		u32 now = decide_current();
		if (now != st) {
			if (traced.update(&tgid, &now))
				count(MT_CNT_MAP_FULL);
			traced_changed();
		}
		if (now != MT_STATE_TRACED) {
			if (st == MT_STATE_TRACED)
				leave(tgid, tid, old);
			/* the new image's counters, built while it was traced
			 * (a rename inside this exec may have untraced it) */
			take_built(old, tgid, tid, 0);
			return 0;
		}
		st = now;
	}
	if (st != MT_STATE_TRACED)
		return 0;
	bump_layout_gen(tgid);     /* a new address space */
	/* the new image's counters (its argument pages, the loader's faults) */
	take_built(old, tgid, tid, 1);
	if (old != tid)
		forget_syscall(old);
	struct mt_exec *ev = new_path_record(MT_EV_EXEC, tgid, tid, old);
	if (!ev)
		return 0;
	TP_DATA_LOC_READ_STR(ev->filename, filename, sizeof(ev->filename));
	/* The kernel has made the new image's mappings (binary, loader, stack,
	 * vdso) without a syscall: hold the process before its first
	 * instruction until user space has read /proc/PID/maps and sends
	 * SIGCONT, so the snapshot is exactly the exec's. The stop is sent
	 * before the record that wakes user space: the other order lets a
	 * SIGCONT overtake it and leave the process stopped for good. */
	if (cfg(MT_CFG_STOP_AT_EXEC))
		bpf_send_signal(19 /* SIGSTOP */);
	execs.ringbuf_submit(ev, BPF_RB_FORCE_WAKEUP);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32, tid = (u32)id;
	u32 st = state_of(tgid);
	if (!st)
		return 0;
	u16 dead = args->group_dead ? MT_EXIT_GROUP_DEAD : 0;
	if (st == MT_STATE_IGNORED || st == MT_STATE_EXCLUDED) {
		clone_flags.delete(&tid);
		if (dead) {
			traced.delete(&tgid);
			traced_changed();
		}
		return 0;
	}
	forget_syscall(tid);
	clone_flags.delete(&tid);
	building.delete(&tid);
	close_thread_fault(tid);    /* its last fault has ended */
	if (dead) {
		traced.delete(&tgid);   /* its mm's state goes with the teardown */
		traced_changed();
	}
	if (st == MT_STATE_TRACED)
		proc_event(MT_EV_EXIT, tgid, tid, 0, 0, dead,
			   dead ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
	return 0;
}

TRACEPOINT_PROBE(task, task_rename)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32;
	u32 st = current_state(tgid);
	if ((u32)args->pid == tgid && cfg(MT_CFG_COMM) && cfg(MT_CFG_ALL) &&
	    (st == MT_STATE_TRACED || st == MT_STATE_IGNORED)) {
		/* -a --comm: the process (its main thread) takes a new name */
		struct comm_key k = {};
#pragma unroll
		for (int i = 0; i < MT_COMM_LEN - 1; i++) {
			k.name[i] = args->newcomm[i];
			if (!k.name[i])
				break;
		}
		u32 now = decide(&k);
		if (now != st) {
			if (traced.update(&tgid, &now))
				count(MT_CNT_MAP_FULL);
			traced_changed();
			if (st == MT_STATE_TRACED) {
				leave(tgid, (u32)id, (u32)id);
				return 0;
			}
			st = now;
		}
	}
	if (st != MT_STATE_TRACED)
		return 0;
	/* the tracepoint fires before the copy: take the new name from it */
	count(MT_CNT_PROC);
	struct mt_event *ev = new_event(MT_EV_RENAME, tgid, args->pid, MT_CNT_LOST_EVENT);
	if (!ev)
		return 0;
	bpf_probe_read_kernel(&ev->comm, sizeof(ev->comm), args->newcomm);
	bpf_ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
	return 0;
}
