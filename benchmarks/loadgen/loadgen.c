/*
 * loadgen -- closed-loop TCP echo load generator for `python -m benchmarks echo`.
 *
 * Opens N connections to 127.0.0.1:PORT and, on each one, sends a message of
 * SIZE bytes, waits for the complete echo, checks every echoed byte against
 * what was sent, then sends the next message (pipelining depth 1).  One
 * thread, edge-triggered epoll, non-blocking sockets, TCP_NODELAY.
 *
 * Every connection has its own pseudo-random pattern (seeded by --seed and the
 * connection's index), and consecutive messages start at different offsets of
 * it, so a server that mixes up connections, repeats a stale buffer, drops or
 * reorders bytes is caught.
 *
 * Timeline: connect all -> warm-up (--warmup s, not counted) -> measured window
 * (--duration s) -> close all.  Only round trips that complete inside the
 * window are counted.  With --server-pid, the server's CPU time
 * (utime + stime of /proc/PID/stat) is sampled at the exact start and end of
 * the window.
 *
 * Output: one JSON line on stdout (msgs, bytes, msgs_per_s, p50_us, p99_us,
 * errors, ...).  Exit status: 0 ok, 1 the server closed or reset connections,
 * 2 usage error, 3 corrupted echo (any mismatch), 4 setup failure (connect,
 * /proc, resources) -- then the JSON line is {"error": "..."}.
 *
 * Build: cc -std=c11 -O2 -Wall -Wextra -Werror -o loadgen loadgen.c
 */
#define _GNU_SOURCE

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

enum {
    EXIT_DISCONNECTED = 1,
    EXIT_USAGE = 2,
    EXIT_CORRUPT = 3,
    EXIT_SETUP = 4,
};

#define MAX_CONNECTIONS 50000
#define MAX_SIZE (16 * 1024 * 1024)
#define MAX_DURATION 3600.0
#define CONNECT_TIMEOUT_NS (10 * NS_PER_S)
#define NS_PER_S 1000000000LL
/* Each message starts at offset (seq % PATTERN_SLACK) of the connection's pattern. */
#define PATTERN_SLACK 256
#define MAX_EVENTS 256
/* Only the first few problems are described on stderr; all are counted. */
#define MAX_REPORTS 5

/* ---- latency histogram: log-linear, 64 sub-buckets per power of two (< 1.6% error) ---- */

#define SUB_BITS 6
#define SUB_COUNT (1 << SUB_BITS)
#define HIST_BUCKETS ((64 - SUB_BITS + 1) * SUB_COUNT)

typedef struct {
    uint64_t counts[HIST_BUCKETS];
    uint64_t total;
    uint64_t max;
} histogram_t;

static unsigned hist_index(uint64_t v)
{
    if (v < SUB_COUNT)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v); /* >= SUB_BITS */
    unsigned shift = msb - SUB_BITS;
    return (shift + 1) * SUB_COUNT + (unsigned)((v >> shift) - SUB_COUNT);
}

/* The middle of bucket `index`'s value range. */
static double hist_value(unsigned index)
{
    if (index < 2 * SUB_COUNT)
        return (double)index;
    unsigned shift = index / SUB_COUNT - 1;
    uint64_t low = (uint64_t)(index % SUB_COUNT + SUB_COUNT) << shift;
    return (double)low + (double)((uint64_t)1 << shift) / 2.0;
}

static void hist_add(histogram_t *h, uint64_t v)
{
    h->counts[hist_index(v)]++;
    h->total++;
    if (v > h->max)
        h->max = v;
}

/* The value at quantile q (0 < q <= 1), i.e. the ceil(q * total)-th smallest sample. */
static double hist_quantile(const histogram_t *h, double q)
{
    uint64_t rank = (uint64_t)(q * (double)h->total);
    if ((double)rank < q * (double)h->total)
        rank++;
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            double v = hist_value(i);
            return v > (double)h->max ? (double)h->max : v;
        }
    }
    return (double)h->max;
}

/* ---- state ---- */

typedef enum { PHASE_WARMUP, PHASE_MEASURE, PHASE_DONE } phase_t;

typedef struct {
    int fd;
    unsigned index;
    bool connected;
    bool alive;
    bool busy;          /* a message is in flight */
    uint8_t *pattern;   /* size + PATTERN_SLACK bytes of this connection's pattern */
    const uint8_t *msg; /* the message in flight: pattern + offset */
    uint64_t seq;       /* messages started on this connection */
    size_t sent;        /* bytes of msg sent so far */
    size_t received;    /* bytes of its echo received (and verified) so far */
    int64_t started_ns; /* when the first byte of msg was handed to send() */
} conn_t;

typedef struct {
    int port;
    long connections;
    long size;
    double duration;
    double warmup;
    long server_pid; /* 0: don't sample the server's CPU time */
    uint64_t seed;
} options_t;

typedef struct {
    options_t opt;
    size_t size;
    conn_t *conns;
    uint8_t *scratch; /* receive buffer, `size` bytes */
    int epfd;
    phase_t phase;
    long alive;
    uint64_t msgs; /* round trips completed inside the window */
    uint64_t mismatches;
    uint64_t disconnects;
    unsigned reports;
    char first_problem[256];
    histogram_t hist;
} state_t;

static const char *prog = "loadgen";

/* ---- helpers ---- */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static double process_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void fill_pattern(uint8_t *buf, size_t len, uint64_t seed)
{
    uint64_t state = seed;
    for (size_t i = 0; i < len; i += 8) {
        uint64_t r = splitmix64(&state);
        size_t n = len - i < 8 ? len - i : 8;
        memcpy(buf + i, &r, n);
    }
}

/* Print {"error": msg} on stdout and the message on stderr; exit EXIT_SETUP. */
static void setup_failure(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s: %s\n", prog, msg);
    printf("{\"error\": \"");
    for (const char *p = msg; *p; p++) {
        if (*p == '"' || *p == '\\')
            putchar('\\');
        putchar((unsigned char)*p >= 0x20 ? *p : ' ');
    }
    printf("\"}\n");
    fflush(stdout);
    exit(EXIT_SETUP);
}

/* utime + stime of process `pid`, in clock ticks. */
static bool read_cpu_ticks(long pid, unsigned long long *ticks)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return false;
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* Field 2 (comm) is parenthesised and may hold spaces or ')': skip past the last ')'. */
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return false;
    p++;
    /* Fields 3..13 (state .. cmajflt), then 14 utime and 15 stime. */
    for (int field = 3; field < 14; field++) {
        while (*p == ' ')
            p++;
        while (*p != ' ' && *p != '\0')
            p++;
    }
    char *end;
    errno = 0;
    unsigned long long utime = strtoull(p, &end, 10);
    if (end == p || errno != 0)
        return false;
    p = end;
    unsigned long long stime = strtoull(p, &end, 10);
    if (end == p || errno != 0)
        return false;
    *ticks = utime + stime;
    return true;
}

/* ---- connections ---- */

/* Describe a problem on stderr (the first MAX_REPORTS of them); keep the first one. */
static void report(state_t *st, const char *fmt, ...)
{
    if (st->reports == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(st->first_problem, sizeof st->first_problem, fmt, ap);
        va_end(ap);
    }
    if (st->reports >= MAX_REPORTS) {
        if (st->reports == MAX_REPORTS)
            fprintf(stderr, "%s: (further problems are counted, not shown)\n", prog);
        st->reports++;
        return;
    }
    st->reports++;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void drop(state_t *st, conn_t *c)
{
    close(c->fd);
    c->fd = -1;
    c->alive = false;
    c->busy = false;
    st->alive--;
}

static void disconnected(state_t *st, conn_t *c, const char *what, int err)
{
    st->disconnects++;
    if (err != 0)
        report(st, "conn %u: %s failed after %" PRIu64 " messages: %s", c->index, what,
               c->seq - (c->busy ? 1 : 0), strerror(err));
    else
        report(st, "conn %u: closed by the server after %" PRIu64 " messages", c->index,
               c->seq - (c->busy ? 1 : 0));
    drop(st, c);
}

static void corrupted(state_t *st, conn_t *c, const uint8_t *got, size_t n)
{
    st->mismatches++;
    if (c->received + n > c->sent) {
        report(st, "conn %u, msg %" PRIu64 ": received %zu bytes of echo but only %zu were sent",
               c->index, c->seq, c->received + n, c->sent);
    } else {
        size_t i = 0;
        while (i < n && got[i] == c->msg[c->received + i])
            i++;
        report(st, "conn %u, msg %" PRIu64 ": echoed byte %zu is 0x%02x, expected 0x%02x", c->index,
               c->seq, c->received + i, got[i], c->msg[c->received + i]);
    }
    drop(st, c); /* the stream cannot be trusted (or resynchronised) any more */
}

static void start_message(state_t *st, conn_t *c, int64_t now)
{
    c->msg = c->pattern + (c->seq % PATTERN_SLACK);
    c->seq++;
    c->sent = 0;
    c->received = 0;
    c->busy = true;
    c->started_ns = now;
    (void)st;
}

static void finish_message(state_t *st, conn_t *c)
{
    int64_t now = now_ns();
    c->busy = false;
    if (st->phase == PHASE_MEASURE) {
        st->msgs++;
        hist_add(&st->hist, (uint64_t)(now - c->started_ns));
    }
    if (st->phase != PHASE_DONE)
        start_message(st, c, now);
}

/* Make all the progress possible on `c` without blocking (edge-triggered: until EAGAIN). */
static void pump(state_t *st, conn_t *c)
{
    const size_t size = st->size;
    while (c->alive && c->busy) {
        bool progress = false;
        if (c->sent < size) {
            ssize_t n = send(c->fd, c->msg + c->sent, size - c->sent, MSG_NOSIGNAL);
            if (n > 0) {
                c->sent += (size_t)n;
                progress = true;
            } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                disconnected(st, c, "send", errno);
                return;
            }
        }
        ssize_t n = recv(c->fd, st->scratch, size - c->received, 0);
        if (n > 0) {
            size_t got = (size_t)n;
            if (c->received + got > c->sent ||
                memcmp(st->scratch, c->msg + c->received, got) != 0) {
                corrupted(st, c, st->scratch, got);
                return;
            }
            c->received += got;
            progress = true;
            if (c->received == size)
                finish_message(st, c);
        } else if (n == 0) {
            disconnected(st, c, "recv", 0);
            return;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            disconnected(st, c, "recv", errno);
            return;
        }
        if (!progress)
            return;
    }
}

static void connect_all(state_t *st)
{
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)st->opt.port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    long pending = 0;
    for (long i = 0; i < st->opt.connections; i++) {
        conn_t *c = &st->conns[i];
        c->index = (unsigned)i;
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0)
            setup_failure("socket() for connection %ld: %s", i, strerror(errno));
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS)
            setup_failure("connect to 127.0.0.1:%d (connection %ld): %s", st->opt.port, i,
                          strerror(errno));
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                                 .data.ptr = c};
        if (epoll_ctl(st->epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
            setup_failure("epoll_ctl: %s", strerror(errno));
        c->alive = true;
        st->alive++;
        pending++;
    }

    int64_t deadline = now_ns() + CONNECT_TIMEOUT_NS;
    struct epoll_event events[MAX_EVENTS];
    while (pending > 0) {
        int64_t left = deadline - now_ns();
        if (left <= 0)
            setup_failure("timed out connecting to 127.0.0.1:%d (%ld of %ld connections pending)",
                          st->opt.port, pending, st->opt.connections);
        int n = epoll_wait(st->epfd, events, MAX_EVENTS, (int)(left / 1000000 + 1));
        if (n < 0 && errno != EINTR)
            setup_failure("epoll_wait: %s", strerror(errno));
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if (c->connected)
                continue;
            int err = 0;
            socklen_t len = sizeof err;
            if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                err = errno;
            if (err != 0)
                setup_failure("connect to 127.0.0.1:%d (connection %u): %s", st->opt.port, c->index,
                              strerror(err));
            if (!(events[i].events & EPOLLOUT))
                continue;
            c->connected = true;
            pending--;
        }
    }
}

/* ---- command line ---- */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: %s --port PORT [--connections N] [--size BYTES] [--duration SECONDS]\n"
            "               [--warmup SECONDS] [--server-pid PID] [--seed N]\n"
            "\n"
            "Closed-loop echo load against 127.0.0.1:PORT: each of N connections sends a\n"
            "message of BYTES bytes, waits for the whole echo, verifies every byte, repeats.\n"
            "Prints one JSON line (msgs, bytes, msgs_per_s, p50_us, p99_us, errors, ...).\n"
            "\n"
            "  --port PORT          server port on 127.0.0.1 (required, 1..65535)\n"
            "  --connections N      concurrent connections (default 100, max %d)\n"
            "  --size BYTES         message size (default 64, max %d)\n"
            "  --duration SECONDS   measured window (default 3, max %g)\n"
            "  --warmup SECONDS     uncounted traffic before the window (default 0.5)\n"
            "  --server-pid PID     sample this process's CPU time (/proc/PID/stat)\n"
            "                       at the start and end of the window\n"
            "  --seed N             seed of the per-connection byte patterns (default 1)\n"
            "\n"
            "Exit status: 0 ok, 1 connections closed by the server, 2 usage error,\n"
            "3 corrupted echo, 4 setup failure.\n",
            prog, MAX_CONNECTIONS, MAX_SIZE, MAX_DURATION);
}

static void usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(run '%s --help' for usage)\n", prog);
    va_end(ap);
    exit(EXIT_USAGE);
}

static long parse_long(const char *name, const char *text, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (end == text || *end != '\0' || errno != 0 || v < lo || v > hi)
        usage_error("--%s must be an integer in [%ld, %ld], got '%s'", name, lo, hi, text);
    return v;
}

static double parse_seconds(const char *name, const char *text, double lo, bool lo_open, double hi)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end != '\0' || errno != 0 || !(v <= hi) || v < lo || (lo_open && v == lo))
        usage_error("--%s must be a number of seconds in %s%g, %g], got '%s'", name,
                    lo_open ? "(" : "[", lo, hi, text);
    return v;
}

static options_t parse_args(int argc, char **argv)
{
    options_t o = {.port = 0,
                   .connections = 100,
                   .size = 64,
                   .duration = 3.0,
                   .warmup = 0.5,
                   .server_pid = 0,
                   .seed = 1};
    static const struct option longopts[] = {
        {"port", required_argument, NULL, 'p'},
        {"connections", required_argument, NULL, 'c'},
        {"size", required_argument, NULL, 's'},
        {"duration", required_argument, NULL, 'd'},
        {"warmup", required_argument, NULL, 'w'},
        {"server-pid", required_argument, NULL, 'P'},
        {"seed", required_argument, NULL, 'S'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'p':
            o.port = (int)parse_long("port", optarg, 1, 65535);
            break;
        case 'c':
            o.connections = parse_long("connections", optarg, 1, MAX_CONNECTIONS);
            break;
        case 's':
            o.size = parse_long("size", optarg, 1, MAX_SIZE);
            break;
        case 'd':
            o.duration = parse_seconds("duration", optarg, 0.0, true, MAX_DURATION);
            break;
        case 'w':
            o.warmup = parse_seconds("warmup", optarg, 0.0, false, MAX_DURATION);
            break;
        case 'P':
            o.server_pid = parse_long("server-pid", optarg, 1, LONG_MAX);
            break;
        case 'S':
            o.seed = (uint64_t)parse_long("seed", optarg, 0, LONG_MAX);
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case ':':
            usage_error("option '%s' needs a value", argv[optind - 1]);
            break;
        default:
            usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        usage_error("unexpected argument '%s'", argv[optind]);
    if (o.port == 0)
        usage_error("--port is required");
    return o;
}

/* Make sure `need` file descriptors can be open at once. */
static void ensure_fd_limit(long need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= (rlim_t)need)
        return;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < (rlim_t)need)
        setup_failure("need %ld file descriptors, the hard limit is %llu", need,
                      (unsigned long long)rl.rlim_max);
    rl.rlim_cur = (rlim_t)need;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        setup_failure("cannot raise the file descriptor limit to %ld: %s", need, strerror(errno));
}

/* ---- main ---- */

int main(int argc, char **argv)
{
    state_t st;
    memset(&st, 0, sizeof st);
    st.opt = parse_args(argc, argv);
    st.size = (size_t)st.opt.size;
    const bool sample_server = st.opt.server_pid != 0;
    const long clock_ticks = sysconf(_SC_CLK_TCK);
    unsigned long long ticks0 = 0, ticks1 = 0;
    if (sample_server && !read_cpu_ticks(st.opt.server_pid, &ticks0))
        setup_failure("cannot read the CPU time of process %ld from /proc/%ld/stat",
                      st.opt.server_pid, st.opt.server_pid);

    ensure_fd_limit(st.opt.connections + 16);
    st.conns = calloc((size_t)st.opt.connections, sizeof *st.conns);
    st.scratch = malloc(st.size);
    if (st.conns == NULL || st.scratch == NULL)
        setup_failure("out of memory");
    for (long i = 0; i < st.opt.connections; i++) {
        conn_t *c = &st.conns[i];
        c->fd = -1;
        c->pattern = malloc(st.size + PATTERN_SLACK);
        if (c->pattern == NULL)
            setup_failure("out of memory");
        fill_pattern(c->pattern, st.size + PATTERN_SLACK,
                     st.opt.seed * 0x100000001B3ULL ^ (uint64_t)i);
    }
    st.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (st.epfd < 0)
        setup_failure("epoll_create1: %s", strerror(errno));

    connect_all(&st);

    int64_t t = now_ns();
    const int64_t warmup_end = t + (int64_t)(st.opt.warmup * NS_PER_S);
    int64_t window_start = 0, window_end = 0, measure_end = 0;
    double client_cpu0 = 0.0, client_cpu1 = 0.0;
    st.phase = PHASE_WARMUP;
    for (long i = 0; i < st.opt.connections; i++) {
        start_message(&st, &st.conns[i], t);
        pump(&st, &st.conns[i]);
    }

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        t = now_ns();
        if (st.phase == PHASE_WARMUP && t >= warmup_end) {
            if (sample_server && !read_cpu_ticks(st.opt.server_pid, &ticks0))
                setup_failure("the server (pid %ld) is gone", st.opt.server_pid);
            client_cpu0 = process_cpu_s();
            window_start = t;
            measure_end = t + (int64_t)(st.opt.duration * NS_PER_S);
            st.phase = PHASE_MEASURE;
        }
        if ((st.phase == PHASE_MEASURE && t >= measure_end) || st.alive == 0) {
            if (st.phase == PHASE_MEASURE) {
                if (sample_server && !read_cpu_ticks(st.opt.server_pid, &ticks1))
                    setup_failure("the server (pid %ld) is gone", st.opt.server_pid);
                client_cpu1 = process_cpu_s();
                window_end = t;
            } else { /* every connection died during the warm-up: an empty window */
                ticks1 = ticks0;
            }
            st.phase = PHASE_DONE;
            break;
        }
        int64_t boundary = st.phase == PHASE_WARMUP ? warmup_end : measure_end;
        int timeout_ms = (int)((boundary - t + 999999) / 1000000);
        int n = epoll_wait(st.epfd, events, MAX_EVENTS, timeout_ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            setup_failure("epoll_wait: %s", strerror(errno));
        }
        for (int i = 0; i < n; i++)
            pump(&st, events[i].data.ptr);
    }
    for (long i = 0; i < st.opt.connections; i++) {
        if (st.conns[i].fd >= 0)
            close(st.conns[i].fd);
    }

    double window_s = (double)(window_end - window_start) / 1e9;
    uint64_t errors = st.mismatches + st.disconnects;
    printf("{\"msgs\": %" PRIu64 ", \"bytes\": %" PRIu64 ", \"msgs_per_s\": %.1f", st.msgs,
           st.msgs * (uint64_t)st.size, window_s > 0 ? (double)st.msgs / window_s : 0.0);
    if (st.hist.total > 0)
        printf(", \"p50_us\": %.2f, \"p99_us\": %.2f, \"max_us\": %.2f",
               hist_quantile(&st.hist, 0.50) / 1e3, hist_quantile(&st.hist, 0.99) / 1e3,
               (double)st.hist.max / 1e3);
    else
        printf(", \"p50_us\": null, \"p99_us\": null, \"max_us\": null");
    printf(", \"errors\": %" PRIu64 ", \"mismatches\": %" PRIu64 ", \"disconnects\": %" PRIu64,
           errors, st.mismatches, st.disconnects);
    printf(", \"connections\": %ld, \"size\": %zu, \"duration_s\": %.6f, \"warmup_s\": %g",
           st.opt.connections, st.size, window_s, st.opt.warmup);
    printf(", \"client_cpu_s\": %.6f", client_cpu1 - client_cpu0);
    if (sample_server)
        printf(", \"server_pid\": %ld, \"server_cpu_ticks\": %llu, \"clock_ticks_per_s\": %ld"
               ", \"server_cpu_s\": %.6f",
               st.opt.server_pid, ticks1 - ticks0, clock_ticks,
               (double)(ticks1 - ticks0) / (double)clock_ticks);
    printf("}\n");
    fflush(stdout);

    if (errors > 0) /* last on stderr, so a harness showing the last line shows this */
        fprintf(stderr,
                "%s: %" PRIu64 " corrupted echo(es), %" PRIu64 " disconnect(s); first: %s\n", prog,
                st.mismatches, st.disconnects, st.first_problem);
    if (st.mismatches > 0)
        return EXIT_CORRUPT;
    if (st.disconnects > 0)
        return EXIT_DISCONNECTED;
    return 0;
}
