/*
 * raw_epoll -- the physical limit for the echo benchmark: a TCP echo server in
 * plain C.  One thread, edge-triggered epoll, non-blocking sockets,
 * TCP_NODELAY, one 64 KiB buffer per connection: read into it, write it back,
 * and on a partial write stop reading until the socket is writable again.
 *
 * usage: raw_epoll --port PORT    (0: any free port)
 *
 * Listens on 127.0.0.1, prints the bound port on stdout as one line once it
 * accepts connections, and serves until killed.
 *
 * Build: cc -std=c11 -O2 -Wall -Wextra -Werror -o raw_epoll raw_epoll.c
 */
#define _GNU_SOURCE

#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#define BUF_SIZE 65536
#define MAX_EVENTS 256
#define BACKLOG 1024

typedef struct {
    int fd;
    size_t start; /* buf[start:end] is received but not yet echoed */
    size_t end;
    uint8_t buf[BUF_SIZE];
} conn_t;

static const char *prog = "raw_epoll";

static void die(const char *what)
{
    fprintf(stderr, "%s: %s: %s\n", prog, what, strerror(errno));
    exit(1);
}

static void usage_error(const char *msg)
{
    fprintf(stderr, "%s: %s\nusage: %s --port PORT   (0: any free port; printed on stdout)\n", prog,
            msg, prog);
    exit(2);
}

static void close_conn(conn_t *c)
{
    close(c->fd); /* also removes it from the epoll set */
    free(c);
}

/* Echo everything that can be echoed without blocking (edge-triggered: until EAGAIN). */
static void pump(conn_t *c)
{
    for (;;) {
        if (c->end > c->start) {
            ssize_t n = send(c->fd, c->buf + c->start, c->end - c->start, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return; /* resume on EPOLLOUT; reading waits until then */
                close_conn(c);
                return;
            }
            c->start += (size_t)n;
            if (c->start < c->end)
                continue;
            c->start = c->end = 0;
        }
        ssize_t n = recv(c->fd, c->buf, BUF_SIZE, 0);
        if (n > 0) {
            c->end = (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;    /* resume on EPOLLIN */
        close_conn(c); /* EOF or error */
        return;
    }
}

static void accept_all(int epfd, int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                fprintf(stderr, "%s: accept: %s\n", prog, strerror(errno));
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn_t *c = malloc(sizeof *c);
        if (c == NULL) {
            fprintf(stderr, "%s: out of memory\n", prog);
            close(fd);
            continue;
        }
        c->fd = fd;
        c->start = c->end = 0;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                                 .data.ptr = c};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
            die("epoll_ctl");
    }
}

int main(int argc, char **argv)
{
    long port = -1;
    static const struct option longopts[] = {
        {"port", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        if (ch == 'p') {
            char *end;
            errno = 0;
            port = strtol(optarg, &end, 10);
            if (end == optarg || *end != '\0' || errno != 0 || port < 0 || port > 65535)
                usage_error("--port must be an integer in [0, 65535]");
        } else if (ch == 'h') {
            printf("usage: %s --port PORT   (0: any free port; printed on stdout)\n", prog);
            return 0;
        } else {
            usage_error(ch == ':' ? "--port needs a value" : "unknown option");
        }
    }
    if (optind < argc)
        usage_error("unexpected argument");
    if (port < 0)
        usage_error("--port is required");

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("bind");
    if (listen(lfd, BACKLOG) < 0)
        die("listen");
    socklen_t len = sizeof addr;
    if (getsockname(lfd, (struct sockaddr *)&addr, &len) < 0)
        die("getsockname");

    int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");
    struct epoll_event lev = {.events = EPOLLIN | EPOLLET, .data.ptr = NULL};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &lev) < 0)
        die("epoll_ctl");

    printf("%d\n", ntohs(addr.sin_port));
    fflush(stdout);

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr == NULL)
                accept_all(epfd, lfd);
            else
                pump(events[i].data.ptr);
        }
    }
}
