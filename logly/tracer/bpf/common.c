// Shared by every probe: one ring buffer (events carry a kind in their first field, decoded by
// logly/tracer/ebpf.py) and per-kind counters of events the ring buffer had no room for.
// Only tracepoints: their arguments come from tracefs, so they are right whatever the version
// of the kernel headers BCC compiles against. Never read task_struct or sock fields at offsets
// from the headers: the raw TCP probe (tcp.c) reads socket fields at offsets from the running
// kernel's BTF, passed in by ebpf.py.
#include <uapi/linux/ptrace.h>

#define COMM_LEN 16
// BPF_RB_NO_WAKEUP: no wake-up (a context switch) per event; userspace drains on a timer
#ifndef RB_FLAGS
#define RB_FLAGS 1
#endif
#define EV_FORK 1
#define EV_EXEC 2
#define EV_EXIT 3
#define EV_TCP 4
#define EV_SLOW 5
#define EV_ARGV 6  // counted as exec when lost

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_ARRAY(lost, u64, 8);  // index: event kind

static __always_inline void count_lost(u32 kind)
{
    u64 *v = lost.lookup(&kind);
    if (v)
        __sync_fetch_and_add(v, 1);
}
