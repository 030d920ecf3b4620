// Failed syscalls per process from raw_syscalls:sys_exit, counted in the kernel and read on
// demand (one map lookup per pid), plus, when compiled with SLOW_NS, syscalls slower than
// that for the pids userspace asked about (the `traced` map), sent as events. These probes run
// on every syscall of the machine: the common case (success, nothing traced) returns first.
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

BPF_HASH(traced, u32, u8, 4096);          // tgid -> 1: time its syscalls

struct slow_ev {
    u32 kind;
    u32 pid;
    u32 tid;
    u32 nr;
    s64 ret;
    u64 ts;
    u64 duration_ns;
};

#ifdef SLOW_NS
BPF_HASH(sys_start, u32, u64, 16384);     // tid -> entry time (traced pids only)

TRACEPOINT_PROBE(raw_syscalls, sys_enter)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!traced.lookup(&tgid))
        return 0;
    u32 tid = (u32)id;
    u64 ts = bpf_ktime_get_ns();
    sys_start.update(&tid, &ts);
    return 0;
}
#endif

#if defined(SLOW_NS) || !defined(NO_FAILED)
TRACEPOINT_PROBE(raw_syscalls, sys_exit)
{
    long ret = args->ret;
#ifndef SLOW_NS
    if (ret >= 0 || ret < -4095)
        return 0;
#endif
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
#ifdef SLOW_NS
    u32 tid = (u32)id;
    u64 *start = sys_start.lookup(&tid);
    if (start) {
        u64 dur = bpf_ktime_get_ns() - *start;
        sys_start.delete(&tid);
        if (dur >= SLOW_NS) {
            struct slow_ev *e = events.ringbuf_reserve(sizeof(struct slow_ev));
            if (!e) {
                count_lost(EV_SLOW);
            } else {
                e->kind = EV_SLOW;
                e->pid = tgid;
                e->tid = tid;
                e->nr = (u32)args->id;
                e->ret = ret;
                e->ts = bpf_ktime_get_ns();
                e->duration_ns = dur;
                events.ringbuf_submit(e, RB_FLAGS);
            }
        }
    }
#endif
#ifdef NO_FAILED
    return 0;
#endif
    if (ret >= 0 || ret < -4095)
        return 0;
    u32 err = (u32)(-ret);
    // not failures: "try again" of non-blocking I/O, and the kernel's internal restart codes
    if (err == 11 || err == 115 || (err >= 512 && err <= 516))
        return 0;
    u32 nr = (u32)args->id;
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
