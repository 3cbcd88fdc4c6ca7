/*
 * smtpload: a small SMTP load generator for the benchmark (bench/run.py).
 *
 * One thread, epoll, non-blocking sockets: N concurrent connections, each running
 * sessions back to back for D seconds:
 *   connect, greeting, EHLO, AUTH PLAIN <payload>, [MAIL, RCPT, DATA, body] x M, QUIT
 * Every reply is checked against the expected code; a wrong reply or a dropped
 * connection is counted as an error, never as a session. The AUTH step's latency
 * (AUTH sent -> reply read) is recorded per session.
 *
 * Usage: smtpload HOST PORT CONCURRENCY SECONDS AUTH_B64 EXPECT_AUTH MESSAGES BODY_BYTES [SPREAD]
 *   EXPECT_AUTH: the AUTH reply code expected (235 or 535); MESSAGES: per session.
 *   SPREAD: if given and 1, each connection comes from a random 127.x.y.z source
 *   address (Linux routes all of 127/8 to loopback), as clients do from many hosts.
 * Output (one line of JSON): sessions, errors, elapsed, and AUTH latency
 * percentiles in milliseconds; auth_p99_settled_ms is the p99 of the AUTHs sent
 * after the first SETTLE seconds; greeting_p50_ms and greeting_p99_ms time
 * connect() -> greeting read, the wait of a session not yet started.
 * All connections open in the same millisecond, so the first AUTHs wait while
 * the server accepts and greets the others: at 256 connections that opening
 * burst alone can be 1-2% of a 3-second cell.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum step { GREETING, EHLO, AUTH, MAIL, RCPT, DATA, BODY, QUIT };

typedef struct {
    int fd;
    enum step step;
    int messages_left;
    char in[8192];
    size_t in_len;
    double auth_sent;
    double connect_started;
} conn_t;

static const char *host, *auth_b64;
static int port, expect_auth, messages, body_bytes, spread;
static char *body;
static size_t body_len;
#define SETTLE 0.5
static double *latencies, *settled, *greetings;
static size_t latency_count, settled_count, greeting_count, latency_cap;
static double started_at;
static long sessions, errors;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void send_all(conn_t *c, const char *data, size_t len) {
    /* Replies are small and requests fit the socket buffer; a short write on
       loopback would be a bug in the benchmark, so it counts as an error. */
    ssize_t sent = send(c->fd, data, len, MSG_NOSIGNAL);
    if (sent != (ssize_t)len) errors++;
}

static void send_line(conn_t *c, const char *line) {
    char buf[1024];
    int n = snprintf(buf, sizeof buf, "%s\r\n", line);
    send_all(c, buf, (size_t)n);
}

static int open_conn(int epfd, conn_t *c) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &addr.sin_addr);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (spread) {
        struct sockaddr_in source = {.sin_family = AF_INET, .sin_port = 0};
        source.sin_addr.s_addr = htonl(0x7f000000u | ((uint32_t)(rand() % 0xfffffe) + 1u));
        bind(c->fd, (struct sockaddr *)&source, sizeof source);
    }
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) return -1;
    c->step = GREETING;
    c->connect_started = now();
    c->in_len = 0;
    c->messages_left = messages;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    return epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

static void restart(int epfd, conn_t *c) {
    close(c->fd);
    if (open_conn(epfd, c) < 0) errors++;
}

/* The code of the complete reply in c->in, or 0 if incomplete. Multi-line
   replies (250-...) end with a line whose fourth character is a space. */
static int complete_reply(conn_t *c) {
    size_t start = 0;
    for (size_t i = 0; i + 1 < c->in_len; i++) {
        if (c->in[i] == '\r' && c->in[i + 1] == '\n') {
            if (i - start >= 4 && c->in[start + 3] == ' ') {
                int code = atoi(c->in + start);
                size_t rest = c->in_len - (i + 2);
                memmove(c->in, c->in + i + 2, rest);
                c->in_len = rest;
                return code;
            }
            start = i + 2;
        }
    }
    return 0;
}

/* After AUTH or a message: the next message, or QUIT. */
static void next_message_or_quit(conn_t *c) {
    if (c->messages_left > 0) {
        send_line(c, "MAIL FROM:<test@agentmail.dev>");
        c->step = MAIL;
    } else {
        send_line(c, "QUIT");
        c->step = QUIT;
    }
}

/* Advance one step on a complete reply; returns 0 on an unexpected code. */
static int advance(conn_t *c, int code) {
    switch (c->step) {
    case GREETING:
        if (greeting_count < latency_cap) greetings[greeting_count++] = (now() - c->connect_started) * 1000.0;
        if (code != 220) return 0;
        send_line(c, "EHLO smtpload.bench");
        c->step = EHLO;
        return 1;
    case EHLO: {
        if (code != 250) return 0;
        char line[512];
        snprintf(line, sizeof line, "AUTH PLAIN %s", auth_b64);
        c->auth_sent = now();
        send_line(c, line);
        c->step = AUTH;
        return 1;
    }
    case AUTH:
        if (latency_count < latency_cap) {
            double ms = (now() - c->auth_sent) * 1000.0;
            latencies[latency_count++] = ms;
            if (c->auth_sent - started_at >= SETTLE) settled[settled_count++] = ms;
        }
        if (code != expect_auth) return 0;
        if (code != 235) c->messages_left = 0;
        next_message_or_quit(c);
        return 1;
    case MAIL:
        if (code != 250) return 0;
        send_line(c, "RCPT TO:<bench@example.com>");
        c->step = RCPT;
        return 1;
    case RCPT:
        if (code != 250) return 0;
        send_line(c, "DATA");
        c->step = DATA;
        return 1;
    case DATA:
        if (code != 354) return 0;
        send_all(c, body, body_len);
        c->step = BODY;
        return 1;
    case BODY:
        if (code != 250) return 0;
        c->messages_left--;
        next_message_or_quit(c);
        return 1;
    case QUIT:
        if (code != 221) return 0;
        sessions++;
        return 2; /* session done */
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 9 && argc != 10) {
        fprintf(stderr, "usage: %s HOST PORT CONCURRENCY SECONDS AUTH_B64 EXPECT_AUTH MESSAGES BODY_BYTES [SPREAD]\n", argv[0]);
        return 2;
    }
    host = argv[1];
    port = atoi(argv[2]);
    int concurrency = atoi(argv[3]);
    double seconds = atof(argv[4]);
    auth_b64 = argv[5];
    expect_auth = atoi(argv[6]);
    messages = atoi(argv[7]);
    body_bytes = atoi(argv[8]);
    spread = argc == 10 && atoi(argv[9]) == 1;
    /* A new sequence of source addresses every run: unseeded, every cell of a
       benchmark came from the same addresses again, and their failed AUTHs piled
       up across cells (each later cell's rate-limit reads found more of them). */
    srand((unsigned)time(NULL) ^ ((unsigned)getpid() << 16));

    /* A body of body_bytes: headers, then 76-character lines, then the end mark. */
    body = malloc((size_t)body_bytes + 256);
    body_len = (size_t)sprintf(body, "From: test@agentmail.dev\r\nTo: bench@example.com\r\nSubject: bench\r\n\r\n");
    while (body_len + 78 < (size_t)body_bytes) {
        memset(body + body_len, 'x', 76);
        body_len += 76;
        body[body_len++] = '\r';
        body[body_len++] = '\n';
    }
    memcpy(body + body_len, ".\r\n", 3);
    body_len += 3;

    latency_cap = 4000000;
    latencies = malloc(latency_cap * sizeof(double));
    settled = malloc(latency_cap * sizeof(double));
    greetings = malloc(latency_cap * sizeof(double));
    int epfd = epoll_create1(0);
    conn_t *conns = calloc((size_t)concurrency, sizeof(conn_t));
    for (int i = 0; i < concurrency; i++)
        if (open_conn(epfd, &conns[i]) < 0) errors++;

    double start = now(), deadline = start + seconds;
    started_at = start;
    struct epoll_event events[512];
    int active = concurrency;
    int stopping = 0;
    while (active > 0) {
        if (!stopping && now() >= deadline) stopping = 1;
        int n = epoll_wait(epfd, events, 512, 100);
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            ssize_t got = recv(c->fd, c->in + c->in_len, sizeof c->in - c->in_len - 1, 0);
            if (got <= 0) {
                if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                errors++; /* the server closed or reset the connection */
                if (stopping) { close(c->fd); c->fd = -1; active--; } else restart(epfd, c);
                continue;
            }
            c->in_len += (size_t)got;
            int code;
            while ((code = complete_reply(c)) != 0) {
                int result = advance(c, code);
                if (result == 0) {
                    errors++;
                    if (stopping) { close(c->fd); c->fd = -1; active--; } else restart(epfd, c);
                    break;
                }
                if (result == 2) {
                    if (stopping) { close(c->fd); c->fd = -1; active--; } else restart(epfd, c);
                    break;
                }
            }
        }
        if (stopping && now() > deadline + 30) break; /* never hang on a stuck server */
    }
    double elapsed = now() - start;
    qsort(latencies, latency_count, sizeof(double), cmp_double);
    qsort(settled, settled_count, sizeof(double), cmp_double);
    qsort(greetings, greeting_count, sizeof(double), cmp_double);
#define PCT(a, n, p) ((n) ? (a)[(size_t)((p) / 100.0 * ((n) - 1))] : 0.0)
    printf("{\"sessions\": %ld, \"errors\": %ld, \"elapsed\": %.3f, \"auth_p50_ms\": %.3f, \"auth_p95_ms\": %.3f, \"auth_p99_ms\": %.3f, "
           "\"auth_p99_settled_ms\": %.3f, \"greeting_p50_ms\": %.3f, \"greeting_p99_ms\": %.3f}\n",
           sessions, errors, elapsed, PCT(latencies, latency_count, 50), PCT(latencies, latency_count, 95),
           PCT(latencies, latency_count, 99), PCT(settled, settled_count, 99),
           PCT(greetings, greeting_count, 50), PCT(greetings, greeting_count, 99));
    return 0;
}
