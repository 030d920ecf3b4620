// Failed syscalls per process from raw_syscalls:sys_exit, counted in the kernel and read on
// demand (one map lookup per pid), plus, when compiled with SLOW_NS, syscalls slower than
// that for the pids userspace asked about (the `traced` map), sent as events.
// These run on every syscall of the machine, so they are raw tracepoints: the program gets the
// tracepoint's own arguments, (struct pt_regs *regs, long id) at sys_enter and (regs, long ret)
// at sys_exit, without the copy into a perf trace record a classic tracepoint makes first. The
// syscall number at exit is regs->orig_ax: x86-64 pt_regs is user ABI, not a kernel struct
// whose layout follows the headers. The common case (success) returns before any map work.
// The slow-syscall pair (slow_enter, slow_exit) is not attached until a pid is traced.
#define FAIL_SLOTS 16

struct fail_slot {
    u32 nr;
    u32 err;
    u64 count;
};
struct fail_t {
    struct fail_slot s[FAIL_SLOTS];
    u64 other;  // failures that found no free slot
};
// LRU: old processes fall out by themselves, the map never fills up.
BPF_TABLE("lru_hash", u32, struct fail_t, failed, FAIL_PIDS);

BPF_TABLE("lru_hash", u32, u8, traced, 4096);  // tgid -> 1: time its syscalls (LRU: pids
                                                // watched long ago make room)

struct slow_ev {
    u32 kind;
    u32 pid;
    u32 tid;
    u32 nr;
    s64 ret;
    u64 ts;
    u64 duration_ns;
};

static __always_inline u32 syscall_nr(struct bpf_raw_tracepoint_args *ctx)
{
    struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
    long nr = -1;
    bpf_probe_read_kernel(&nr, sizeof(nr), &regs->orig_ax);
    return (u32)nr;
}

#ifdef SLOW_NS
// tid -> entry time (traced pids only); LRU: a thread that never came back cannot fill it
BPF_TABLE("lru_hash", u32, u64, sys_start, 16384);

int slow_enter(struct bpf_raw_tracepoint_args *ctx)
{
    long nr = (long)ctx->args[1];
    if (nr == 60 || nr == 231)  // exit, exit_group: they never return
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!traced.lookup(&tgid))
        return 0;
    u32 tid = (u32)id;
    u64 ts = bpf_ktime_get_ns();
    sys_start.update(&tid, &ts);
    return 0;
}

int slow_exit(struct bpf_raw_tracepoint_args *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    u64 *start = sys_start.lookup(&tid);
    if (!start)
        return 0;
    u64 now = bpf_ktime_get_ns();
    u64 dur = now - *start;
    sys_start.delete(&tid);
    if (dur < SLOW_NS)
        return 0;
    struct slow_ev *e = events.ringbuf_reserve(sizeof(struct slow_ev));
    if (!e) {
        count_lost(EV_SLOW);
        return 0;
    }
    e->kind = EV_SLOW;
    e->pid = id >> 32;
    e->tid = tid;
    e->nr = syscall_nr(ctx);
    e->ret = (long)ctx->args[1];
    e->ts = now;
    e->duration_ns = dur;
    events.ringbuf_submit(e, RB_FLAGS);
    return 0;
}
#endif

#ifndef NO_FAILED
RAW_TRACEPOINT_PROBE(sys_exit)
{
    long ret = (long)ctx->args[1];
    if (ret >= 0 || ret < -4095)
        return 0;
    u32 err = (u32)(-ret);
    // not failures: "try again" of non-blocking I/O, and the kernel's internal restart codes
    if (err == 11 || err == 115 || (err >= 512 && err <= 516))
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u32 nr = syscall_nr(ctx);
    struct fail_t zero = {};
    struct fail_t *f = failed.lookup_or_try_init(&tgid, &zero);
    if (!f)
        return 0;
#pragma unroll
    for (int i = 0; i < FAIL_SLOTS; i++) {
        if (f->s[i].count == 0) {
            f->s[i].nr = nr;
            f->s[i].err = err;
            __sync_fetch_and_add(&f->s[i].count, 1);
            return 0;
        }
        if (f->s[i].nr == nr && f->s[i].err == err) {
            __sync_fetch_and_add(&f->s[i].count, 1);
            return 0;
        }
    }
    __sync_fetch_and_add(&f->other, 1);
    return 0;
}
#endif
