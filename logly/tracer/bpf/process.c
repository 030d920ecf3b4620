// Process lifecycle (execsnoop style): fork, exec (with argv read at execve entry), exit
// (with the exit_group code). Userspace keeps these in a cache that outlives the process.
#ifndef MAXARGS
#define MAXARGS 20
#endif
#ifndef ARGLEN
#define ARGLEN 256
#endif
#define FILENAME_LEN 256
#define ARGBUF 8192  // a power of two above MAXARGS * ARGLEN: offsets are masked with it

// The argv of an execve, sent from its entry as its own event, packed (each argument
// NUL-terminated, back to back) and only as long as it is: /bin/true with three arguments is
// ~60 bytes, not MAXARGS * ARGLEN. The exec event that follows from the same thread (ring order
// is reservation order) carries the rest; userspace joins them by thread id. An execve that
// fails (a PATH search) leaves an argv event no exec claims.
struct argv_ev {
    u32 kind;
    u32 tid;
    u32 argc;
    u32 truncated;  // more than MAXARGS arguments
    u32 len;        // bytes of buf used
    u32 pad;
    char buf[ARGBUF + ARGLEN];
};
BPF_PERCPU_ARRAY(argv_scratch, struct argv_ev, 1);  // too big for the 512-byte BPF stack
BPF_HASH(exit_codes, u32, int, 16384);              // tgid -> exit_group() code
// tgid -> the last signal sent to it whose default action ends a process; used only when the
// process dies without calling exit_group(): then that signal killed it
BPF_TABLE("lru_hash", u32, int, kill_signals, 16384);

struct fork_ev {
    u32 kind;
    u32 pid;   // the child (a tid: threads are forks too, told apart at exit)
    u32 ppid;  // the parent's process id (tgid)
    u32 uid;
    u64 ts;
    u64 cgroup;
    char comm[COMM_LEN];
};

struct exec_ev {
    u32 kind;
    u32 pid;
    u32 old_pid;
    u32 uid;
    u64 ts;
    u64 cgroup;
    char comm[COMM_LEN];
    char filename[FILENAME_LEN];
};

struct exit_ev {
    u32 kind;
    u32 pid;     // tgid
    u32 tid;
    u32 group_dead;
    s32 code;
    u32 has_code;
    u64 ts;
};

TRACEPOINT_PROBE(sched, sched_process_fork)
{
    u32 child = args->child_pid;
    failed.delete(&child);  // a reused pid starts with no failures
    struct fork_ev *e = events.ringbuf_reserve(sizeof(struct fork_ev));
    if (!e) {
        count_lost(EV_FORK);
        return 0;
    }
    e->kind = EV_FORK;
    e->pid = child;
    e->ppid = bpf_get_current_pid_tgid() >> 32;
    e->uid = (u32)bpf_get_current_uid_gid();
    e->ts = bpf_ktime_get_ns();
    e->cgroup = bpf_get_current_cgroup_id();
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    events.ringbuf_submit(e, RB_FLAGS);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_execve)
{
    u32 zero = 0;
    struct argv_ev *a = argv_scratch.lookup(&zero);
    if (!a)
        return 0;
    const char *const *argv = (const char *const *)args->argv;
    u32 off = 0;
    a->kind = EV_ARGV;
    a->tid = (u32)bpf_get_current_pid_tgid();
    a->argc = 0;
    a->truncated = 0;
#pragma unroll
    for (int i = 0; i < MAXARGS; i++) {
        const char *p = NULL;
        bpf_probe_read_user(&p, sizeof(p), &argv[i]);
        if (!p)
            goto done;
        long n = bpf_probe_read_user_str(&a->buf[off & (ARGBUF - 1)], ARGLEN, p);
        if (n <= 0)
            goto done;
        off += n;
        a->argc = i + 1;
    }
    {
        const char *p = NULL;
        bpf_probe_read_user(&p, sizeof(p), &argv[MAXARGS]);
        if (p)
            a->truncated = 1;
    }
done:
    off &= ARGBUF - 1;
    a->len = off;
    if (events.ringbuf_output(a, offsetof(struct argv_ev, buf) + off, RB_FLAGS) != 0)
        count_lost(EV_EXEC);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u32 old = args->old_pid;
    struct exec_ev *e = events.ringbuf_reserve(sizeof(struct exec_ev));
    if (!e) {
        count_lost(EV_EXEC);
        return 0;
    }
    e->kind = EV_EXEC;
    e->pid = args->pid;
    e->old_pid = old;
    e->uid = (u32)bpf_get_current_uid_gid();
    e->ts = bpf_ktime_get_ns();
    e->cgroup = bpf_get_current_cgroup_id();
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    TP_DATA_LOC_READ_STR(e->filename, filename, FILENAME_LEN);
    events.ringbuf_submit(e, RB_FLAGS);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_exit_group)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    int code = (int)args->error_code;
    exit_codes.update(&tgid, &code);
    return 0;
}

// Signals are rare next to syscalls: this probe costs nothing measurable.
TRACEPOINT_PROBE(signal, signal_generate)
{
    int sig = args->sig;
    // default action "ignore" or "stop": SIGCHLD..SIGURG (17-23), SIGWINCH (28)
    if (sig <= 0 || (sig >= 17 && sig <= 23) || sig == 28)
        return 0;
    // 0: delivered, 2: already pending (the same signal is on its way)
    if (args->result != 0 && args->result != 2)
        return 0;
    u32 pid = args->pid;
    kill_signals.update(&pid, &sig);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    u32 tid = (u32)id;
    u32 dead = args->group_dead;
    // a thread that is not the last one and not the leader: only its own cache entry goes
    struct exit_ev *e = events.ringbuf_reserve(sizeof(struct exit_ev));
    if (!e) {
        count_lost(EV_EXIT);
        return 0;
    }
    e->kind = EV_EXIT;
    e->pid = tgid;
    e->tid = tid;
    e->group_dead = dead;
    e->has_code = 0;
    e->code = 0;
    if (dead) {
        int *c = exit_codes.lookup(&tgid);
        int *sig = kill_signals.lookup(&tgid);
        if (c) {
            e->code = *c;
            e->has_code = 1;
            exit_codes.delete(&tgid);
        } else if (sig) {
            e->code = -*sig;  // as Python's returncode: -15 is "killed by SIGTERM"
            e->has_code = 1;
        }
        if (sig)
            kill_signals.delete(&tgid);
    }
    e->ts = bpf_ktime_get_ns();
    events.ringbuf_submit(e, RB_FLAGS);
    return 0;
}
