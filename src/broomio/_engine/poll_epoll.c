/*
 * poll_epoll.c -- the epoll backend of the poller contract (see poll.h).
 *
 * Every fd is added once with EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLET: edge-triggered, so the
 * kernel reports each readiness change once and no epoll_ctl is needed per operation.  The
 * wake-up channel is an eventfd, registered level-triggered and drained here, so that a
 * thread's bro_poller_wake() interrupts a blocking wait exactly once.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "poll.h"

#define BRO_EPOLL_BATCH 256

struct bro_poller {
    int epfd;
    int wakefd;
    struct epoll_event events[BRO_EPOLL_BATCH];
};

bro_poller *bro_poller_new(void)
{
    bro_poller *p = malloc(sizeof(*p));
    if (p == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (p->epfd < 0) {
        free(p);
        return NULL;
    }
    p->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->wakefd < 0) {
        int saved = errno;
        close(p->epfd);
        free(p);
        errno = saved;
        return NULL;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = p->wakefd};
    if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->wakefd, &ev) < 0) {
        int saved = errno;
        close(p->wakefd);
        close(p->epfd);
        free(p);
        errno = saved;
        return NULL;
    }
    return p;
}

void bro_poller_free(bro_poller *p)
{
    if (p == NULL)
        return;
    close(p->wakefd);
    close(p->epfd);
    free(p);
}

int bro_poller_add(bro_poller *p, int fd)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.fd = fd};
    return epoll_ctl(p->epfd, EPOLL_CTL_ADD, fd, &ev);
}

int bro_poller_arm(bro_poller *p, int fd, int registered)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.fd = fd};
    int r = epoll_ctl(p->epfd, registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev);
    if (r < 0 && registered && errno == ENOENT) /* closed and reopened behind our back */
        r = epoll_ctl(p->epfd, EPOLL_CTL_ADD, fd, &ev);
    else if (r < 0 && !registered && errno == EEXIST)
        r = epoll_ctl(p->epfd, EPOLL_CTL_MOD, fd, &ev);
    return r;
}

int bro_poller_remove(bro_poller *p, int fd)
{
    struct epoll_event ev = {0};
    return epoll_ctl(p->epfd, EPOLL_CTL_DEL, fd, &ev);
}

int bro_poller_wait(bro_poller *p, int timeout_ms, bro_poll_event *out, int max, int *woken)
{
    if (max > BRO_EPOLL_BATCH)
        max = BRO_EPOLL_BATCH;
    *woken = 0;
    int n = epoll_wait(p->epfd, p->events, max, timeout_ms);
    if (n < 0)
        return -1;
    int count = 0;
    for (int i = 0; i < n; i++) {
        struct epoll_event *ev = &p->events[i];
        if (ev->data.fd == p->wakefd) {
            uint64_t value;
            /* EAGAIN here only means another drain got there first. */
            while (read(p->wakefd, &value, sizeof value) > 0) {
            }
            *woken = 1;
            continue;
        }
        unsigned bits = 0;
        /* An error or hang-up must wake both directions: the next syscall reports it. */
        if (ev->events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            bits |= BRO_READABLE;
        if (ev->events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
            bits |= BRO_WRITABLE;
        if (ev->events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            bits |= BRO_HANGUP;
        out[count].fd = ev->data.fd;
        out[count].bits = bits;
        count++;
    }
    return count;
}

void bro_poller_wake(bro_poller *p)
{
    uint64_t one = 1;
    /* EAGAIN means the counter is already non-zero: the poller will wake anyway. */
    ssize_t r = write(p->wakefd, &one, sizeof one);
    (void)r;
}
