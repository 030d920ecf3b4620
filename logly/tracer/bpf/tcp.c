// TCP connections (tcplife style) from inet_sock_set_state (a raw tracepoint reading the socket
// at offsets from the kernel's BTF; the classic sock: tracepoint without BTF), aggregated in the
// kernel: the state history of each live socket is kept in `socks` (by the socket's kernel
// address), its own endpoint in `endpoints`, and one event goes to userspace when the socket
// closes. Userspace reads live sockets from the tables when a log line names one of their
// endpoints. At tens of
// thousands of connections per second, one event per socket instead of one per state change
// is what keeps the tracer's own CPU small.
// The pid is whoever runs when the state changes: the connecting process for SYN_SENT, the
// closing one for FIN_WAIT1/LAST_ACK; changes driven by packets run in softirq and carry
// whatever task was interrupted, so they never set the pid.
#define PROTO_TCP 6
#define FAMILY_INET 2
#define ST_ESTABLISHED 1
#define ST_SYN_SENT 2
#define ST_SYN_RECV 3
#define ST_FIN_WAIT1 4
#define ST_CLOSE 7
#define ST_LAST_ACK 9
#define ST_LISTEN 10
#ifndef MAX_STATES
#define MAX_STATES 12
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
    u64 bytes_sent;  // payload this socket's owner sent / received (sock:sock_*_length)
    u64 bytes_recv;
};

// one spelling per address: a dual-stack socket's IPv4 peer (::ffff:a.b.c.d) is keyed as IPv4
struct endpoint_t {
    u8 addr[16];
    u16 port;
    u16 pad1;
    u32 pad2;
};
// a slot of the endpoint table: a socket (0: free) and the endpoint it is found by
struct ep_slot_t {
    u8 addr[16];
    u16 port;
    u16 remote;  // 1: the endpoint is the socket's peer (a server's socket), 0: its own side
    u32 pad;
    u64 sk;
};

struct tcp_ev {
    u32 kind;
    u32 pad;
    struct conn_t c;
};

// Live sockets' records: a table of 2^SOCK_BITS slots (>= max_connections), not a hash map. A
// socket may take one of the SOCK_WAYS slots of the set its kernel address hashes to, claimed
// with one compare-and-swap of `skaddr` and freed by zeroing it when it closes. An array slot is
// found by address arithmetic the verifier inlines, with no helper call, hash function, lock or
// element allocation: next to a hash map's lookup, insert and delete this takes the largest
// part of the probe's cost away (bench/tracer_overhead.py --components). Userspace finds a
// socket's record the same way (ebpf.py, _sock_set).
#ifndef SOCK_BITS
#define SOCK_BITS 16
#endif
#define SOCK_WAYS 4
#define SOCK_HASH 0x9E3779B97F4A7C15ULL  // Fibonacci hashing: sockets are slab objects, their
                                        // addresses differ by multiples of the object size
BPF_ARRAY(socks, struct conn_t, 1 << SOCK_BITS);
// Live sockets by endpoint, for userspace, which maps this table (a lookup on every log line
// that names an address and port is a memory read, not a syscall): a table as `socks`, its
// sets chosen by a hash of the address and port. An endpoint may sit in several slots (a newer
// socket on it before the older one closed), each found by userspace, which then reads the
// socket's record and checks its endpoint.
#define EP_BITS SOCK_BITS
BPF_F_TABLE("array", u32, struct ep_slot_t, endpoints, 1 << EP_BITS, BPF_F_MMAPABLE);

static __always_inline u32 sock_set(u64 sk)
{
    return (u32)((sk * SOCK_HASH) >> (64 - SOCK_BITS)) & ~(u32)(SOCK_WAYS - 1);
}

static __always_inline struct conn_t *conn_find(u64 sk)
{
    u32 base = sock_set(sk);
#pragma unroll
    for (u32 w = 0; w < SOCK_WAYS; w++) {
        u32 k = base + w;
        struct conn_t *c = socks.lookup(&k);
        if (c && c->skaddr == sk)
            return c;
    }
    return NULL;
}

// A slot for a new socket: a free one of its set, else the one whose socket changed state
// longest ago (a socket whose close we never saw, or, with the table full, the least recently
// active one: its record is lost, as an LRU map would lose it; *evicted names that socket).
// NULL when racing CPUs took them.
static __always_inline struct conn_t *conn_claim(u64 sk, u64 *evicted)
{
    u32 base = sock_set(sk);
    struct conn_t *oldest = NULL;
    u64 oldest_sk = 0, oldest_ts = 0;
#pragma unroll
    for (u32 w = 0; w < SOCK_WAYS; w++) {
        u32 k = base + w;
        struct conn_t *c = socks.lookup(&k);
        if (!c)
            continue;
        u64 cur = c->skaddr;
        if (cur == 0) {
            if (__sync_val_compare_and_swap(&c->skaddr, 0, sk) == 0)
                return c;
            continue;
        }
        if (!oldest || c->last_ts < oldest_ts) {
            oldest = c;
            oldest_sk = cur;
            oldest_ts = c->last_ts;
        }
    }
    if (oldest && __sync_val_compare_and_swap(&oldest->skaddr, oldest_sk, sk) == oldest_sk) {
        *evicted = oldest_sk;
        return oldest;
    }
    return NULL;
}

static __always_inline void endpoint_key(struct endpoint_t *ep, u8 *addr, u16 port, u16 family)
{
    ep->port = port;
    if (family == FAMILY_INET) {
        __builtin_memcpy(ep->addr, addr, 4);
        return;
    }
    u64 hi = *(u64 *)addr;
    u32 mid = *(u32 *)(addr + 8);
    if (hi == 0 && mid == 0xffff0000)  // ::ffff:a.b.c.d (little-endian load of 00 00 ff ff)
        __builtin_memcpy(ep->addr, addr + 12, 4);
    else
        __builtin_memcpy(ep->addr, addr, 16);
}

// Each socket is indexed by the one endpoint that is its own: a server's socket by its peer
// (the client's address and port), a client's socket by its local address and ephemeral port.
// The other endpoint (a listening port, a popular service) is shared by every socket towards
// it: one slot could only ever name the latest of them. (Closed sockets are indexed by both
// endpoints in userspace.) A loopback connection's two sockets share the one key.
static __always_inline void own_endpoint(struct endpoint_t *ep, struct conn_t *c, int remote)
{
    if (remote)
        endpoint_key(ep, c->daddr, c->dport, c->family);
    else
        endpoint_key(ep, c->saddr, c->sport, c->family);
}

static __always_inline u32 ep_set(struct endpoint_t *ep)
{
    u64 lo = *(u64 *)ep->addr, hi = *(u64 *)(ep->addr + 8);
    u64 h = (lo ^ (hi * SOCK_HASH) ^ ep->port) * SOCK_HASH;
    return (u32)(h >> (64 - EP_BITS)) & ~(u32)(SOCK_WAYS - 1);
}

// A free slot of the endpoint's set, else one whose socket has no record any more (its close
// was never seen); with neither, the socket is not indexed (it is found again once it closes).
static __always_inline struct ep_slot_t *ep_claim(u32 base, u64 sk, bool stale)
{
#pragma unroll
    for (u32 w = 0; w < SOCK_WAYS; w++) {
        u32 k = base + w;
        struct ep_slot_t *e = endpoints.lookup(&k);
        if (!e)
            continue;
        u64 old = e->sk;
        if ((stale ? (old && !conn_find(old)) : old == 0) &&
            __sync_val_compare_and_swap(&e->sk, old, sk) == old)
            return e;
    }
    return NULL;
}

static __always_inline void index_endpoint(struct conn_t *c, int remote, u64 sk)
{
    struct endpoint_t ep = {};
    own_endpoint(&ep, c, remote);
    u32 base = ep_set(&ep);
    struct ep_slot_t *take = ep_claim(base, sk, false);
    if (!take)
        take = ep_claim(base, sk, true);
    if (!take)
        return;
    __builtin_memcpy(take->addr, ep.addr, 16);
    take->port = ep.port;
    take->remote = remote;
}

static __always_inline void unindex_endpoint(struct conn_t *c, int remote, u64 sk)
{
    struct endpoint_t ep = {};
    own_endpoint(&ep, c, remote);
    u32 base = ep_set(&ep);
#pragma unroll
    for (u32 w = 0; w < SOCK_WAYS; w++) {
        u32 k = base + w;
        struct ep_slot_t *e = endpoints.lookup(&k);
        if (e && e->sk == sk) {
            __sync_val_compare_and_swap(&e->sk, sk, 0);
            return;
        }
    }
}

// Which endpoint a socket is indexed by, from the state it reached ESTABLISHED from: its peer
// (1) from SYN_RECV, its own side (0) from SYN_SENT, none (-1) otherwise. One rule for
// indexing and unindexing, so a socket always leaves the slot it took.
static __always_inline int indexed_side(struct conn_t *c, int before)
{
    if (before == ST_SYN_RECV && c->dport)
        return 1;
    if (before == ST_SYN_SENT && c->sport)
        return 0;
    return -1;
}

// (ESTABLISHED seen as its first change or as the one before)
static __always_inline void unindex_conn(struct conn_t *c, u64 sk)
{
    int side = indexed_side(c, c->states[0] == ST_ESTABLISHED ? c->first_old : c->states[0]);
    if (side >= 0)
        unindex_endpoint(c, side, sk);
}

// The steps every state change takes, whichever hook runs them (below): a new socket's record,
// the change itself, then storing, indexing or closing. One table lookup per state change (plus
// a slot claimed for a new socket, freed when it closes), one endpoint index update per socket,
// and the helpers only where they are needed: this runs ~10 times per connection.
static __always_inline struct conn_t *conn_new(struct conn_t *fresh, u64 sk, int oldstate,
                                               u64 now)
{
    __builtin_memset(fresh, 0, sizeof(*fresh));
    fresh->skaddr = sk;
    fresh->first_ts = now;
    fresh->first_old = oldstate;
    return fresh;
}

// Records the change; true when the endpoints must be read: connect() moves to SYN_SENT
// before the local port is chosen, and a server's socket is SYN_RECV before its peer and local
// address are set, so they are taken at ESTABLISHED, when the socket is indexed by them (or at
// CLOSE, for a socket never established while we watched: a failed connect, a listener).
static __always_inline bool conn_step(struct conn_t *c, int newstate, u64 now)
{
    u32 n = c->nstates;
    if (n < MAX_STATES) {
        c->states[n] = newstate;
        c->ts[n] = now;
    }
    c->nstates = n + 1;
    c->last_ts = now;
    if (newstate == ST_SYN_SENT || newstate == ST_LISTEN ||
        ((newstate == ST_FIN_WAIT1 || newstate == ST_LAST_ACK) && c->pid == 0)) {
        u32 pid = bpf_get_current_pid_tgid() >> 32;
        if (pid) {
            c->pid = pid;
            bpf_get_current_comm(&c->comm, sizeof(c->comm));
        }
    }
    return newstate == ST_ESTABLISHED || (newstate == ST_CLOSE && !c->family);
}

static __always_inline int conn_done(struct conn_t *c, bool is_new, u64 sk, int oldstate,
                                     int newstate)
{
    if (newstate != ST_CLOSE) {
        if (is_new) {
            u64 evicted = 0;
            struct conn_t *slot = conn_claim(sk, &evicted);
            if (!slot) {
                count_lost(EV_TCP);
                return 0;
            }
            if (evicted)  // (its record is still in the slot)
                unindex_conn(slot, evicted);
            __builtin_memcpy(slot, c, sizeof(*slot));
        }
        // the socket's own endpoint is known once it is established
        if (newstate == ST_ESTABLISHED) {
            int side = indexed_side(c, oldstate);
            if (side >= 0)
                index_endpoint(c, side, sk);
        }
        return 0;
    }
    // closed: hand the whole history to userspace, forget the socket here
    struct tcp_ev *e = events.ringbuf_reserve(sizeof(struct tcp_ev));
    if (!e) {
        count_lost(EV_TCP);
    } else {
        e->kind = EV_TCP;
        e->pad = 0;
        __builtin_memcpy(&e->c, c, sizeof(e->c));
        events.ringbuf_submit(e, RB_FLAGS);
    }
    if (is_new)
        return 0;  // never seen open: nothing indexed, nothing stored
    unindex_conn(c, sk);
    c->skaddr = 0;  // the slot is free
    return 0;
}

#ifdef SKC_SPAN_OFF
// The raw tracepoint: the kernel calls the program with the tracepoint's own arguments,
// (const struct sock *sk, int oldstate, int newstate), without first building the trace
// record (which reads a dozen socket fields, addresses included, on every change). The few
// fields needed are read here at byte offsets taken from the running kernel's BTF by
// logly/tracer/ebpf.py (sock_offsets; never from the headers), and only when needed: the
// protocol when a socket is first seen (a socket in `socks` is TCP), the endpoints as conn_step
// says: one span of struct sock_common, and inet_sock's own port and address only when the
// port is already released there (at CLOSE: a failed connect, a socket first seen closing).
static __always_inline void conn_ends(struct conn_t *c, u64 sk)
{
    u64 skc[SKC_SPAN_LEN / 8];  // family, ports, addresses
    if (bpf_probe_read_kernel(skc, sizeof(skc), (void *)(sk + SKC_SPAN_OFF)))
        return;
    u8 *a = (u8 *)skc;
    u16 family = *(u16 *)(a + SK_FAMILY_OFF);
    c->family = family;
    c->sport = *(u16 *)(a + SK_NUM_OFF);                        // host order
    c->dport = __builtin_bswap16(*(u16 *)(a + SK_DPORT_OFF));  // network order
    if (family == FAMILY_INET) {
        __builtin_memcpy(c->saddr, a + SK_RCV_SADDR_OFF, 4);
        __builtin_memcpy(c->daddr, a + SK_DADDR_OFF, 4);
    } else {
        __builtin_memcpy(c->saddr, a + SK_SADDR6_OFF, 16);
        __builtin_memcpy(c->daddr, a + SK_DADDR6_OFF, 16);
    }
    if (c->sport)
        return;
    u64 inet[INET_SPAN_LEN / 8];  // struct inet_sock: inet_saddr, inet_sport
    if (bpf_probe_read_kernel(inet, sizeof(inet), (void *)(sk + INET_SPAN_OFF)))
        return;
    u8 *b = (u8 *)inet;
    c->sport = __builtin_bswap16(*(u16 *)(b + SK_SPORT_OFF));
    if (family == FAMILY_INET)
        __builtin_memcpy(c->saddr, b + SK_SADDR_OFF, 4);
}

RAW_TRACEPOINT_PROBE(inet_sock_set_state)
{
    u64 sk = ctx->args[0];
    int oldstate = (int)ctx->args[1];
    int newstate = (int)ctx->args[2];
    struct conn_t fresh;
    struct conn_t *c = conn_find(sk);
    bool is_new = !c;
    if (is_new) {
#if SK_PROTO_SIZE == 1
        u8 proto = 0;
#else
        u16 proto = 0;
#endif
        bpf_probe_read_kernel(&proto, sizeof(proto), (void *)(sk + SK_PROTO_OFF));
        if (proto != PROTO_TCP)
            return 0;
    }
    u64 now = bpf_ktime_get_ns();
    if (is_new)
        c = conn_new(&fresh, sk, oldstate, now);
    if (conn_step(c, newstate, now))
        conn_ends(c, sk);
    return conn_done(c, is_new, sk, oldstate, newstate);
}
#else
// The classic tracepoint (no usable BTF): its record, laid out as tracefs says, carries the
// endpoints and the protocol.
TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != PROTO_TCP)
        return 0;
    u64 sk = (u64)args->skaddr;
    u64 now = bpf_ktime_get_ns();
    struct conn_t fresh;
    struct conn_t *c = conn_find(sk);
    bool is_new = !c;
    if (is_new)
        c = conn_new(&fresh, sk, args->oldstate, now);
    if (conn_step(c, args->newstate, now)) {
        // plain loads from the tracepoint's record (no helper call)
        c->family = args->family;
        if (args->family == FAMILY_INET) {
            __builtin_memcpy(c->saddr, args->saddr, 4);
            __builtin_memcpy(c->daddr, args->daddr, 4);
        } else {
            __builtin_memcpy(c->saddr, args->saddr_v6, 16);
            __builtin_memcpy(c->daddr, args->daddr_v6, 16);
        }
        c->sport = args->sport;
        c->dport = args->dport;
    }
    return conn_done(c, is_new, sk, args->oldstate, args->newstate);
}
#endif

#ifndef NO_TCP_BYTES
// Bytes through each traced socket, from the socket layer's send/receive tracepoints (kernel
// 6.3+), as raw tracepoints: their arguments are (struct sock *sk, int ret, int flags), `ret`
// what sendmsg/recvmsg returned. No socket field is read: a socket not in `socks` (not TCP, or
// not traced) is simply not counted, after one table lookup. A peek (MSG_PEEK, flags & 2)
// consumes nothing.
#define MSG_PEEK_FLAG 2
static __always_inline void count_bytes(u64 sk, int ret, int recv)
{
    struct conn_t *c = conn_find(sk);
    if (!c)
        return;
    if (recv)
        __sync_fetch_and_add(&c->bytes_recv, (u64)ret);
    else
        __sync_fetch_and_add(&c->bytes_sent, (u64)ret);
}

RAW_TRACEPOINT_PROBE(sock_send_length)
{
    int ret = (int)ctx->args[1];
    if (ret > 0)
        count_bytes(ctx->args[0], ret, 0);
    return 0;
}

RAW_TRACEPOINT_PROBE(sock_recv_length)
{
    int ret = (int)ctx->args[1];
    int flags = (int)ctx->args[2];
    if (ret > 0 && !(flags & MSG_PEEK_FLAG))
        count_bytes(ctx->args[0], ret, 1);
    return 0;
}
#endif
