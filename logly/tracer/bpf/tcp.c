// TCP connections (tcplife style) from sock:inet_sock_set_state, aggregated in the kernel: the
// state history of each live socket is kept in `socks` (by the socket's kernel address), both
// endpoints in `endpoints`, and one event goes to userspace when the socket closes. Userspace
// reads live sockets from the maps when a log line names one of their endpoints. At tens of
// thousands of connections per second, one event per socket instead of one per state change
// is what keeps the tracer's own CPU small.
// The pid is whoever runs when the state changes: the connecting process for SYN_SENT, the
// closing one for FIN_WAIT1/LAST_ACK; changes driven by packets run in softirq and carry
// whatever task was interrupted, so they never set the pid.
#define PROTO_TCP 6
#define FAMILY_INET 2
#define ST_ESTABLISHED 1
#define ST_SYN_SENT 2
#define ST_FIN_WAIT1 4
#define ST_CLOSE 7
#define ST_LAST_ACK 9
#define ST_LISTEN 10
#ifndef MAX_STATES
#define MAX_STATES 12
#endif
#ifndef MAX_SOCKS
#define MAX_SOCKS 65536
#endif

struct conn_t {
    u64 skaddr;
    u64 first_ts;
    u64 last_ts;
    u32 pid;
    u32 nstates;     // how many state changes (may exceed MAX_STATES: only the first are kept)
    u16 sport;
    u16 dport;
    u16 family;
    u16 first_old;   // the state before the first change we saw
    u8 saddr[16];
    u8 daddr[16];
    char comm[COMM_LEN];
    u8 states[MAX_STATES];
    u64 ts[MAX_STATES];
};

// one spelling per address: a dual-stack socket's IPv4 peer (::ffff:a.b.c.d) is keyed as IPv4
struct endpoint_t {
    u8 addr[16];
    u16 port;
    u16 pad1;
    u32 pad2;
};
struct ep_socks_t {
    u64 local;   // the socket whose own endpoint this is
    u64 remote;  // the socket whose peer this is
};

struct tcp_ev {
    u32 kind;
    u32 pad;
    struct conn_t c;
};

BPF_TABLE("lru_hash", u64, struct conn_t, socks, MAX_SOCKS);
BPF_TABLE("lru_hash", struct endpoint_t, struct ep_socks_t, endpoints, MAX_SOCKS * 2);

static __always_inline void endpoint_key(struct endpoint_t *ep, u8 *addr, u16 port)
{
    bool mapped = true;
#pragma unroll
    for (int i = 0; i < 10; i++)
        if (addr[i])
            mapped = false;
    if (mapped && addr[10] == 0xff && addr[11] == 0xff)
        __builtin_memcpy(ep->addr, addr + 12, 4);
    else
        __builtin_memcpy(ep->addr, addr, 16);
    ep->port = port;
}

static __always_inline void index_endpoint(u8 *addr, u16 port, int remote, u64 sk)
{
    struct endpoint_t ep = {};
    endpoint_key(&ep, addr, port);
    struct ep_socks_t zero = {};
    struct ep_socks_t *v = endpoints.lookup_or_try_init(&ep, &zero);
    if (!v)
        return;
    if (remote)
        v->remote = sk;
    else
        v->local = sk;
}

static __always_inline void unindex_endpoint(u8 *addr, u16 port, int remote, u64 sk)
{
    struct endpoint_t ep = {};
    endpoint_key(&ep, addr, port);
    struct ep_socks_t *v = endpoints.lookup(&ep);
    if (!v)
        return;
    // the endpoint may already belong to a newer socket: only clear our own entry
    if (remote && v->remote == sk)
        v->remote = 0;
    if (!remote && v->local == sk)
        v->local = 0;
    if (!v->local && !v->remote)
        endpoints.delete(&ep);
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != PROTO_TCP)
        return 0;
    u64 sk = (u64)args->skaddr;
    u64 now = bpf_ktime_get_ns();
    int newstate = args->newstate;
    struct conn_t zero = {};
    struct conn_t *c = socks.lookup_or_try_init(&sk, &zero);
    if (!c) {
        count_lost(EV_TCP);
        return 0;
    }
    if (c->nstates == 0) {
        c->skaddr = sk;
        c->first_ts = now;
        c->first_old = args->oldstate;
        c->family = args->family;
    }
    u32 n = c->nstates;
    if (n < MAX_STATES) {
        c->states[n] = newstate;
        c->ts[n] = now;
    }
    c->nstates = n + 1;
    c->last_ts = now;
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    if (pid && (newstate == ST_SYN_SENT || newstate == ST_LISTEN ||
                ((newstate == ST_FIN_WAIT1 || newstate == ST_LAST_ACK) && c->pid == 0))) {
        c->pid = pid;
        bpf_get_current_comm(&c->comm, sizeof(c->comm));
    }
    // connect() moves to SYN_SENT before the local port is chosen: index endpoints once known
    if (args->sport && c->sport != args->sport) {
        if (args->family == FAMILY_INET)
            bpf_probe_read_kernel(c->saddr, 4, args->saddr);
        else
            bpf_probe_read_kernel(c->saddr, 16, args->saddr_v6);
        c->sport = args->sport;
        index_endpoint(c->saddr, c->sport, 0, sk);
    }
    if (args->dport && c->dport != args->dport) {
        if (args->family == FAMILY_INET)
            bpf_probe_read_kernel(c->daddr, 4, args->daddr);
        else
            bpf_probe_read_kernel(c->daddr, 16, args->daddr_v6);
        c->dport = args->dport;
        index_endpoint(c->daddr, c->dport, 1, sk);
    }
    if (newstate != ST_CLOSE)
        return 0;
    // closed: hand the whole history to userspace, forget the socket here
    struct tcp_ev *e = events.ringbuf_reserve(sizeof(struct tcp_ev));
    if (!e) {
        count_lost(EV_TCP);
    } else {
        e->kind = EV_TCP;
        e->pad = 0;
        bpf_probe_read_kernel(&e->c, sizeof(e->c), c);
        events.ringbuf_submit(e, RB_FLAGS);
    }
    if (c->sport)
        unindex_endpoint(c->saddr, c->sport, 0, sk);
    if (c->dport)
        unindex_endpoint(c->daddr, c->dport, 1, sk);
    socks.delete(&sk);
    return 0;
}
