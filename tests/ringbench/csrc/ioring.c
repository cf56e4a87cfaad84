/*
 * The C peer of ringbench: Xen's own public io/ring.h macros (from libxen-dev),
 * driven with the same message shapes, batching and notification rules as
 * ringbench's xen-ring cases (src/xen.rs), one function per side and mode.
 *
 * Barriers are mapped as Linux maps them on x86 (virt_mb/virt_rmb/virt_wmb):
 * xen_mb() is a locked add to the stack (a full fence), xen_rmb()/xen_wmb() are
 * compiler barriers (x86 keeps loads and stores in order).
 *
 * The Rust side (src/ioring.rs) declares the same structs (#[repr(C)]).
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define __XEN_INTERFACE_VERSION__ 0x00040e00
#define xen_mb() __asm__ __volatile__("lock; addl $0,-4(%%rsp)" ::: "memory", "cc")
#define xen_rmb() __asm__ __volatile__("" ::: "memory")
#define xen_wmb() __asm__ __volatile__("" ::: "memory")
#include <xen/io/ring.h>

#define CHUNK 32

/* Errors (ioring_result.error). */
enum {
    IORING_OK = 0,
    IORING_OUT_OF_ORDER = 1,
    IORING_ABORTED = 2,
    IORING_EVENTFD = 3,
    IORING_BAD_PAYLOAD = 4,
    IORING_BAD_GEOMETRY = 5,
    IORING_OVERFLOW = 6,
};

struct ioring_params {
    void *mem;
    uint64_t bytes;
    uint64_t duration_ns;
    uint64_t spin_ns;
    uint64_t *rtts;     /* pingpong front: room for max_rtts round trips */
    uint64_t max_rtts;
    int32_t *abort;     /* shared by both sides: set when one gives up */
    uint32_t capacity;  /* requests in flight at most (front) */
    uint32_t chunk;     /* 0: single; else batches of up to CHUNK */
    int32_t kick_fd;    /* front -> back eventfd */
    int32_t wake_fd;    /* back -> front eventfd */
    int32_t arm_before_spin;
    int32_t verify;     /* fill and check every payload byte */
};

struct ioring_result {
    uint64_t msgs;
    uint64_t nanos;        /* stream: wall time; pingpong: sum of round trips */
    uint64_t notifications;
    uint64_t notify_requested;
    uint64_t checksum;     /* sum over messages taken of (id + stop) */
    uint64_t n_rtts;
    uint64_t expected;     /* on IORING_OUT_OF_ORDER */
    uint64_t got;
    int32_t error;
};

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void cpu_relax(void)
{
    __asm__ __volatile__("pause" ::: "memory");
}

static inline int aborted(const struct ioring_params *p)
{
    return __atomic_load_n(p->abort, __ATOMIC_ACQUIRE) != 0;
}

static int ev_notify(int fd)
{
    uint64_t one = 1;
    for (;;) {
        ssize_t n = write(fd, &one, sizeof(one));
        if (n == (ssize_t)sizeof(one))
            return 0;
        if (n < 0 && errno == EINTR)
            continue;
        return -1;
    }
}

static int ev_wait(int fd)
{
    uint64_t v;
    for (;;) {
        ssize_t n = read(fd, &v, sizeof(v));
        if (n == (ssize_t)sizeof(v))
            return 0;
        if (n < 0 && errno == EINTR)
            continue;
        return -1;
    }
}

static void give_up(const struct ioring_params *p, int peer_fd)
{
    __atomic_store_n(p->abort, 1, __ATOMIC_RELEASE);
    (void)ev_notify(peer_fd);
}

/* Payload byte i >= 9 in verify mode. */
static inline uint8_t pattern(uint64_t id, size_t i)
{
    return (uint8_t)(id * 131u + i);
}

/* Requests and blkif-sized responses: id (8 bytes LE), stop (1 byte), zeros. */
#define WIDE_MSG(T, N)                                                          \
    struct T { uint8_t b[N]; };                                                 \
    static inline void T##_fill(struct T *m, uint64_t id, int stop, int verify) \
    {                                                                           \
        memset(m->b, 0, N);                                                     \
        memcpy(m->b, &id, 8);                                                   \
        m->b[8] = (uint8_t)(stop != 0);                                         \
        if (verify)                                                             \
            for (size_t i = 9; i < N; i++)                                      \
                m->b[i] = pattern(id, i);                                       \
    }                                                                           \
    static inline uint64_t T##_id(const struct T *m)                            \
    {                                                                           \
        uint64_t id;                                                            \
        memcpy(&id, m->b, 8);                                                   \
        return id;                                                              \
    }                                                                           \
    static inline uint64_t T##_mask(uint64_t id) { return id; }                 \
    static inline int T##_stop(const struct T *m) { return m->b[8] != 0; }      \
    static inline int T##_intact(const struct T *m)                             \
    {                                                                           \
        uint64_t id = T##_id(m);                                                \
        for (size_t i = 9; i < N; i++)                                          \
            if (m->b[i] != pattern(id, i))                                      \
                return 0;                                                       \
        return 1;                                                               \
    }

WIDE_MSG(blk_req, 112)
WIDE_MSG(blk_rsp, 16)
WIDE_MSG(net_req, 12)

/* The 4-byte netif tx response: 31 bits of id, stop flag on top. */
struct net_rsp { uint8_t b[4]; };
static inline void net_rsp_fill(struct net_rsp *m, uint64_t id, int stop, int verify)
{
    uint32_t v = (uint32_t)(id & 0x7fffffffu) | ((uint32_t)(stop != 0) << 31);
    (void)verify;
    memcpy(m->b, &v, 4);
}
static inline uint64_t net_rsp_id(const struct net_rsp *m)
{
    uint32_t v;
    memcpy(&v, m->b, 4);
    return v & 0x7fffffffu;
}
static inline uint64_t net_rsp_mask(uint64_t id) { return id & 0x7fffffffu; }
static inline int net_rsp_stop(const struct net_rsp *m)
{
    uint32_t v;
    memcpy(&v, m->b, 4);
    return (v >> 31) != 0;
}
static inline int net_rsp_intact(const struct net_rsp *m)
{
    (void)m;
    return 1;
}

/* Checks a message taken from the ring: in order, intact (verify mode); adds it to
 * the checksum. */
#define CHECK_MSG(T)                                                            \
    static int T##_check(const struct T *m, uint64_t expected,                  \
                         const struct ioring_params *p,                         \
                         struct ioring_result *r)                               \
    {                                                                           \
        if (T##_id(m) != T##_mask(expected)) {                                  \
            r->error = IORING_OUT_OF_ORDER;                                     \
            r->expected = expected;                                             \
            r->got = T##_id(m);                                                 \
            return -1;                                                          \
        }                                                                       \
        if (p->verify && !T##_intact(m)) {                                      \
            r->error = IORING_BAD_PAYLOAD;                                      \
            r->expected = expected;                                             \
            return -1;                                                          \
        }                                                                       \
        r->checksum += T##_id(m) + (uint64_t)T##_stop(m);                       \
        return 0;                                                               \
    }

CHECK_MSG(blk_req)
CHECK_MSG(blk_rsp)
CHECK_MSG(net_req)
CHECK_MSG(net_rsp)

DEFINE_RING_TYPES(cblk, struct blk_req, struct blk_rsp);
DEFINE_RING_TYPES(cnet, struct net_req, struct net_rsp);

#define RING_FUNCS(NAME, REQ, RSP)                                              \
                                                                                \
/* Initialises the shared ring; returns its number of entries (0: too small). */\
uint32_t ioring_##NAME##_init(void *mem, uint64_t bytes)                        \
{                                                                               \
    struct NAME##_sring *s = mem;                                               \
    struct NAME##_front_ring f;                                                 \
    if (bytes < sizeof(*s))                                                     \
        return 0;                                                               \
    SHARED_RING_INIT(s);                                                        \
    FRONT_RING_INIT(&f, s, bytes);                                              \
    return f.nr_ents;                                                           \
}                                                                               \
                                                                                \
static inline int NAME##_take_rsps(struct NAME##_front_ring *f,                 \
                                   struct RSP *buf, unsigned max)               \
{                                                                               \
    RING_IDX rp = f->sring->rsp_prod;                                           \
    unsigned k = 0;                                                             \
    xen_rmb(); /* responses seen /after/ the producer index */                  \
    if (RING_RESPONSE_PROD_OVERFLOW(f, rp))                                     \
        return -1;                                                              \
    while (f->rsp_cons != rp && k < max) {                                      \
        RING_COPY_RESPONSE(f, f->rsp_cons, &buf[k]);                            \
        f->rsp_cons++;                                                          \
        k++;                                                                    \
    }                                                                           \
    return (int)k;                                                              \
}                                                                               \
                                                                                \
static inline int NAME##_take_reqs(struct NAME##_back_ring *b,                  \
                                   struct REQ *buf, unsigned max)               \
{                                                                               \
    RING_IDX rp = b->sring->req_prod;                                           \
    unsigned k = 0;                                                             \
    xen_rmb(); /* requests seen /after/ the producer index */                   \
    if (RING_REQUEST_PROD_OVERFLOW(b, rp))                                      \
        return -1;                                                              \
    while (b->req_cons != rp && k < max) {                                      \
        if (RING_REQUEST_CONS_OVERFLOW(b, b->req_cons))                         \
            break;                                                              \
        RING_COPY_REQUEST(b, b->req_cons, &buf[k]);                             \
        b->req_cons++;                                                          \
        k++;                                                                    \
    }                                                                           \
    return (int)k;                                                              \
}                                                                               \
                                                                                \
/* RING_FINAL_CHECK_FOR_RESPONSES, asking for the notification only once      \
 * `ahead` more responses are in (clamped to 1..=outstanding), as the         \
 * comment in io/ring.h suggests for batching. */                               \
static inline int NAME##_arm_front(struct NAME##_front_ring *f, unsigned ahead) \
{                                                                               \
    int work;                                                                   \
    if (ahead <= 1) {                                                           \
        RING_FINAL_CHECK_FOR_RESPONSES(f, work);                                \
        return work;                                                            \
    }                                                                           \
    if (RING_HAS_UNCONSUMED_RESPONSES(f))                                       \
        return 1;                                                               \
    RING_IDX out = f->req_prod_pvt - f->rsp_cons;                               \
    if (ahead > out)                                                            \
        ahead = out;                                                            \
    if (ahead < 1)                                                              \
        ahead = 1;                                                              \
    f->sring->rsp_event = f->rsp_cons + ahead;                                  \
    xen_mb();                                                                   \
    return RING_HAS_UNCONSUMED_RESPONSES(f) != 0;                               \
}                                                                               \
                                                                                \
static int NAME##_front_idle(struct NAME##_front_ring *f, struct RSP *buf,      \
                             unsigned max, unsigned ahead,                      \
                             const struct ioring_params *p,                     \
                             struct ioring_result *r)                           \
{                                                                               \
    int n;                                                                      \
    if (p->arm_before_spin && NAME##_arm_front(f, ahead)) {                     \
        if ((n = NAME##_take_rsps(f, buf, max)) != 0)                           \
            return n;                                                           \
    }                                                                           \
    uint64_t t0 = now_ns();                                                     \
    for (;;) {                                                                  \
        for (int i = 0; i < 64; i++) {                                          \
            if ((n = NAME##_take_rsps(f, buf, max)) != 0)                       \
                return n;                                                       \
            cpu_relax();                                                        \
        }                                                                       \
        if (now_ns() - t0 >= p->spin_ns)                                        \
            break;                                                              \
    }                                                                           \
    for (;;) {                                                                  \
        if (NAME##_arm_front(f, ahead)) {                                       \
            if ((n = NAME##_take_rsps(f, buf, max)) != 0)                       \
                return n;                                                       \
        }                                                                       \
        if (aborted(p)) {                                                       \
            r->error = IORING_ABORTED;                                          \
            return -1;                                                          \
        }                                                                       \
        if (ev_wait(p->wake_fd)) {                                              \
            r->error = IORING_EVENTFD;                                          \
            return -1;                                                          \
        }                                                                       \
        if ((n = NAME##_take_rsps(f, buf, max)) != 0)                           \
            return n;                                                           \
    }                                                                           \
}                                                                               \
                                                                                \
static int NAME##_back_idle(struct NAME##_back_ring *b, struct REQ *buf,        \
                            unsigned max, const struct ioring_params *p,        \
                            struct ioring_result *r)                            \
{                                                                               \
    int n, work;                                                                \
    if (p->arm_before_spin) {                                                   \
        RING_FINAL_CHECK_FOR_REQUESTS(b, work);                                 \
        if (work && (n = NAME##_take_reqs(b, buf, max)) != 0)                   \
            return n;                                                           \
    }                                                                           \
    uint64_t t0 = now_ns();                                                     \
    for (;;) {                                                                  \
        for (int i = 0; i < 64; i++) {                                          \
            if ((n = NAME##_take_reqs(b, buf, max)) != 0)                       \
                return n;                                                       \
            cpu_relax();                                                        \
        }                                                                       \
        if (now_ns() - t0 >= p->spin_ns)                                        \
            break;                                                              \
    }                                                                           \
    for (;;) {                                                                  \
        RING_FINAL_CHECK_FOR_REQUESTS(b, work);                                 \
        if (work && (n = NAME##_take_reqs(b, buf, max)) != 0)                   \
            return n;                                                           \
        if (aborted(p)) {                                                       \
            r->error = IORING_ABORTED;                                          \
            return -1;                                                          \
        }                                                                       \
        if (ev_wait(p->kick_fd)) {                                              \
            r->error = IORING_EVENTFD;                                          \
            return -1;                                                          \
        }                                                                       \
        if ((n = NAME##_take_reqs(b, buf, max)) != 0)                           \
            return n;                                                           \
    }                                                                           \
}                                                                               \
                                                                                \
/* Stream frontend: keeps up to `capacity` requests in flight for            \
 * `duration_ns`, marks the last one, consumes every response. */               \
void ioring_##NAME##_front_stream(const struct ioring_params *p,                \
                                  struct ioring_result *r)                      \
{                                                                               \
    struct NAME##_front_ring f;                                                 \
    struct RSP rsps[CHUNK];                                                     \
    memset(r, 0, sizeof(*r));                                                   \
    FRONT_RING_INIT(&f, (struct NAME##_sring *)p->mem, p->bytes);               \
    if (p->capacity < 1 || p->capacity > f.nr_ents) {                           \
        r->error = IORING_BAD_GEOMETRY;                                         \
        give_up(p, p->kick_fd);                                                 \
        return;                                                                 \
    }                                                                           \
    unsigned slack = f.nr_ents - p->capacity;                                   \
    unsigned max_push = p->chunk ? CHUNK : 1;                                   \
    unsigned rsp_max = p->chunk ? CHUNK : 1;                                    \
    unsigned ahead = 1;                                                         \
    if (p->chunk) {                                                             \
        ahead = p->capacity / 2;                                                \
        ahead = ahead < 1 ? 1 : ahead > CHUNK ? CHUNK : ahead;                  \
    }                                                                           \
    uint64_t sent = 0, done = 0;                                                \
    int stopping = 0;                                                           \
    uint64_t start = now_ns();                                                  \
    for (;;) {                                                                  \
        int pushed = 0;                                                         \
        if (!stopping) {                                                        \
            unsigned free_ = RING_FREE_REQUESTS(&f);                            \
            unsigned n = free_ > slack ? free_ - slack : 0;                     \
            if (n > max_push)                                                   \
                n = max_push;                                                   \
            if (n > 0) {                                                        \
                int notify;                                                     \
                if ((sent >> 10) != ((sent + n) >> 10) &&                       \
                    now_ns() - start >= p->duration_ns)                         \
                    stopping = 1;                                               \
                uint64_t last = sent + n - 1;                                   \
                for (unsigned i = 0; i < n; i++) {                              \
                    uint64_t id = sent + i;                                     \
                    REQ##_fill(RING_GET_REQUEST(&f, f.req_prod_pvt), id,        \
                               stopping && id == last, p->verify);              \
                    f.req_prod_pvt++;                                           \
                }                                                               \
                RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&f, notify);                \
                if (notify) {                                                   \
                    r->notify_requested++;                                      \
                    r->notifications++;                                         \
                    if (ev_notify(p->kick_fd)) {                                \
                        r->error = IORING_EVENTFD;                              \
                        goto fail;                                              \
                    }                                                           \
                }                                                               \
                sent += n;                                                      \
                pushed = 1;                                                     \
            }                                                                   \
        }                                                                       \
        int got = NAME##_take_rsps(&f, rsps, rsp_max);                          \
        if (got == 0 && !pushed)                                                \
            got = NAME##_front_idle(&f, rsps, rsp_max, ahead, p, r);            \
        if (got < 0) {                                                          \
            if (r->error == IORING_OK)                                          \
                r->error = IORING_OVERFLOW;                                     \
            goto fail;                                                          \
        }                                                                       \
        for (int i = 0; i < got; i++) {                                         \
            if (RSP##_check(&rsps[i], done, p, r))                         \
                goto fail;                                                      \
            done++;                                                             \
        }                                                                       \
        if (stopping && done == sent)                                           \
            break;                                                              \
    }                                                                           \
    r->nanos = now_ns() - start;                                                \
    r->msgs = sent;                                                             \
    return;                                                                     \
fail:                                                                           \
    r->msgs = sent;                                                             \
    give_up(p, p->kick_fd);                                                     \
}                                                                               \
                                                                                \
/* Stream backend: answers every request until the stop flag. */               \
void ioring_##NAME##_back_stream(const struct ioring_params *p,                 \
                                 struct ioring_result *r)                       \
{                                                                               \
    struct NAME##_back_ring b;                                                  \
    struct REQ reqs[CHUNK];                                                     \
    unsigned max = p->chunk ? CHUNK : 1;                                        \
    memset(r, 0, sizeof(*r));                                                   \
    BACK_RING_INIT(&b, (struct NAME##_sring *)p->mem, p->bytes);                \
    for (;;) {                                                                  \
        int notify, stop = 0;                                                   \
        int n = NAME##_take_reqs(&b, reqs, max);                                \
        if (n == 0)                                                             \
            n = NAME##_back_idle(&b, reqs, max, p, r);                          \
        if (n < 0) {                                                            \
            if (r->error == IORING_OK)                                          \
                r->error = IORING_OVERFLOW;                                     \
            goto fail;                                                          \
        }                                                                       \
        for (int i = 0; i < n; i++) {                                           \
            if (REQ##_check(&reqs[i], r->msgs, p, r))                      \
                goto fail;                                                      \
            r->msgs++;                                                          \
            stop |= REQ##_stop(&reqs[i]);                                       \
            RSP##_fill(RING_GET_RESPONSE(&b, b.rsp_prod_pvt), REQ##_id(&reqs[i]),\
                       REQ##_stop(&reqs[i]), p->verify);                        \
            b.rsp_prod_pvt++;                                                   \
        }                                                                       \
        RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&b, notify);                       \
        if (notify) {                                                           \
            r->notify_requested++;                                              \
            r->notifications++;                                                 \
            if (ev_notify(p->wake_fd)) {                                        \
                r->error = IORING_EVENTFD;                                      \
                goto fail;                                                      \
            }                                                                   \
        }                                                                       \
        if (stop)                                                               \
            return;                                                             \
    }                                                                           \
fail:                                                                           \
    give_up(p, p->wake_fd);                                                     \
}                                                                               \
                                                                                \
/* Pingpong frontend: one request in flight, busy-polls for its response,    \
 * one clock read per round trip into p->rtts. */                               \
void ioring_##NAME##_front_pingpong(const struct ioring_params *p,              \
                                    struct ioring_result *r)                    \
{                                                                               \
    struct NAME##_front_ring f;                                                 \
    struct RSP rsp;                                                             \
    memset(r, 0, sizeof(*r));                                                   \
    FRONT_RING_INIT(&f, (struct NAME##_sring *)p->mem, p->bytes);               \
    uint64_t start = now_ns(), t = start, id = 0, total = 0;                    \
    for (;;) {                                                                  \
        int notify, got;                                                        \
        unsigned spins = 0;                                                     \
        int stop = r->n_rtts + 1 >= p->max_rtts ||                              \
                   ((id & 255) == 255 && t - start >= p->duration_ns);          \
        REQ##_fill(RING_GET_REQUEST(&f, f.req_prod_pvt), id, stop, p->verify);  \
        f.req_prod_pvt++;                                                       \
        RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&f, notify);                        \
        if (notify)                                                             \
            r->notify_requested++;                                              \
        while ((got = NAME##_take_rsps(&f, &rsp, 1)) == 0) {                    \
            if (++spins % 4096 == 0 && aborted(p)) {                            \
                r->error = IORING_ABORTED;                                      \
                goto fail;                                                      \
            }                                                                   \
            cpu_relax();                                                        \
        }                                                                       \
        if (got < 0) {                                                          \
            r->error = IORING_OVERFLOW;                                         \
            goto fail;                                                          \
        }                                                                       \
        uint64_t now = now_ns();                                                \
        p->rtts[r->n_rtts++] = now - t;                                         \
        total += now - t;                                                       \
        t = now;                                                                \
        if (RSP##_check(&rsp, id, p, r))                                   \
            goto fail;                                                          \
        id++;                                                                   \
        if (stop)                                                               \
            break;                                                              \
    }                                                                           \
    r->msgs = r->n_rtts;                                                        \
    r->nanos = total;                                                           \
    return;                                                                     \
fail:                                                                           \
    give_up(p, p->kick_fd);                                                     \
}                                                                               \
                                                                                \
/* Pingpong backend: busy-polls for each request and answers it. */            \
void ioring_##NAME##_back_pingpong(const struct ioring_params *p,               \
                                   struct ioring_result *r)                     \
{                                                                               \
    struct NAME##_back_ring b;                                                  \
    struct REQ req;                                                             \
    unsigned spins = 0;                                                         \
    memset(r, 0, sizeof(*r));                                                   \
    BACK_RING_INIT(&b, (struct NAME##_sring *)p->mem, p->bytes);                \
    for (;;) {                                                                  \
        int notify;                                                             \
        int n = NAME##_take_reqs(&b, &req, 1);                                  \
        if (n < 0) {                                                            \
            r->error = IORING_OVERFLOW;                                         \
            goto fail;                                                          \
        }                                                                       \
        if (n == 0) {                                                           \
            if (++spins % 4096 == 0 && aborted(p)) {                            \
                r->error = IORING_ABORTED;                                      \
                goto fail;                                                      \
            }                                                                   \
            cpu_relax();                                                        \
            continue;                                                           \
        }                                                                       \
        if (REQ##_check(&req, r->msgs, p, r))                              \
            goto fail;                                                          \
        r->msgs++;                                                              \
        RSP##_fill(RING_GET_RESPONSE(&b, b.rsp_prod_pvt), REQ##_id(&req),       \
                   REQ##_stop(&req), p->verify);                                \
        b.rsp_prod_pvt++;                                                       \
        RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&b, notify);                       \
        if (notify)                                                             \
            r->notify_requested++;                                              \
        if (REQ##_stop(&req))                                                   \
            return;                                                             \
    }                                                                           \
fail:                                                                           \
    give_up(p, p->wake_fd);                                                     \
}

RING_FUNCS(cblk, blk_req, blk_rsp)
RING_FUNCS(cnet, net_req, net_rsp)
