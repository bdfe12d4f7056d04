/* The tunnel's protocol in C and nothing else: a floor for what each end of the
 * gateway's path could cost with a data path out of the Python interpreter.
 *
 * One program, two roles (bench/floor.py builds and starts it):
 *
 *   yamux_floor far HOST PORT SESSION TOKEN TOOL_PORT
 *       plays studios-connect: dials the tunnel port, TLS, sends the bind line,
 *       and splices every stream the gateway opens with the kind byte "T" to
 *       127.0.0.1:TOOL_PORT.
 *   yamux_floor near TUNNEL_PORT FRONT_PORT CERT KEY
 *       plays the gateway's tunnel half: takes one tunnel on TUNNEL_PORT (TLS with
 *       CERT/KEY, the bind line answered "ok"), and for every plain TCP connection
 *       on FRONT_PORT opens a stream with the kind byte "T" and splices the two.
 *       No HTTP, no login: what is left of the gateway's hop when only the
 *       tunnel's work is done, in C.
 *
 * The frames are wire/frames.py's (hashicorp yamux: 12-byte header, Data,
 * WindowUpdate, Ping, GoAway; SYN/ACK/FIN/RST). Each read from a socket becomes
 * one Data frame in one TLS record and one send; each tunnel read is decrypted and
 * its frames passed on before the next poll: the shape a C data path would have
 * (docs/decisions/compiled-lane.md). Flow control is kept simply (windows counted,
 * a WindowUpdate once half the window is used); a socket that would block is waited
 * for in place. It is a measuring tool for loopback, not a product: no certificate
 * is checked and any fault ends the process.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum { T_DATA = 0, T_WINDOW = 1, T_PING = 2, T_GOAWAY = 3 };
enum { F_SYN = 1, F_ACK = 2, F_FIN = 4, F_RST = 8 };
#define HEADER 12
#define WINDOW (256 * 1024)
#define MAX_STREAMS 4096
#define MAX_FDS 65536
#define CHUNK 16384

struct stream {
    uint32_t id;
    int fd;          /* the tool's (far) or the client's (near) socket; -1 before it */
    int64_t send_window;
    uint32_t consumed; /* bytes delivered since our last WindowUpdate */
    int fin_in, fin_out, reading;
};

static SSL *tls;
static int tunnel_fd, epfd;
static int far_role;
static int tool_port;
static struct stream *streams[MAX_STREAMS];
static struct stream *by_fd[MAX_FDS];
static uint32_t next_id = 2; /* the gateway (yamux server) opens even ids */
static unsigned char inbuf[1 << 20];
static size_t inlen;

static void die(const char *what) {
    fprintf(stderr, "yamux_floor: %s: %s\n", what, strerror(errno));
    ERR_print_errors_fp(stderr);
    exit(1);
}

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void nonblocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static void wait_fd(int fd, short events) {
    struct pollfd p = {fd, events, 0};
    if (poll(&p, 1, 30000) <= 0) die("poll");
}

static void put_header(unsigned char *h, int type, int flags, uint32_t id, uint32_t len) {
    h[0] = 0;
    h[1] = (unsigned char)type;
    h[2] = (unsigned char)(flags >> 8);
    h[3] = (unsigned char)flags;
    h[4] = id >> 24; h[5] = id >> 16; h[6] = id >> 8; h[7] = id;
    h[8] = len >> 24; h[9] = len >> 16; h[10] = len >> 8; h[11] = len;
}

static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* One TLS record (one SSL_write) of `len` bytes; waits in place if the socket is full. */
static void tunnel_send(const unsigned char *buf, int len) {
    for (;;) {
        int n = SSL_write(tls, buf, len);
        if (n > 0) return;
        int e = SSL_get_error(tls, n);
        if (e == SSL_ERROR_WANT_WRITE) wait_fd(tunnel_fd, POLLOUT);
        else if (e == SSL_ERROR_WANT_READ) wait_fd(tunnel_fd, POLLIN);
        else die("SSL_write");
    }
}

static void send_control(int type, int flags, uint32_t id, uint32_t value) {
    unsigned char h[HEADER];
    put_header(h, type, flags, id, value);
    tunnel_send(h, HEADER);
}

static void sock_send(int fd, const unsigned char *buf, size_t len) {
    while (len) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n > 0) { buf += n; len -= (size_t)n; continue; }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) { wait_fd(fd, POLLOUT); continue; }
        return; /* the peer is gone: its read end says so */
    }
}

static struct stream *find(uint32_t id) {
    struct stream *s = streams[id % MAX_STREAMS];
    return s && s->id == id ? s : NULL;
}

static struct stream *add(uint32_t id) {
    if (streams[id % MAX_STREAMS]) { errno = EEXIST; die("stream table full"); }
    struct stream *s = calloc(1, sizeof *s);
    s->id = id;
    s->fd = -1;
    s->send_window = WINDOW;
    streams[id % MAX_STREAMS] = s;
    return s;
}

static void watch(struct stream *s, int on) {
    if (s->fd < 0 || s->reading == on) return;
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = s->fd};
    epoll_ctl(epfd, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, s->fd, &ev);
    s->reading = on;
}

static void drop(struct stream *s) {
    if (s->fd >= 0) {
        watch(s, 0);
        by_fd[s->fd] = NULL;
        close(s->fd);
    }
    streams[s->id % MAX_STREAMS] = NULL;
    free(s);
}

static void attach(struct stream *s, int fd) {
    nonblocking(fd);
    nodelay(fd);
    s->fd = fd;
    by_fd[fd] = s;
    watch(s, 1);
}

static int dial_tool(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(tool_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect to the tool");
    return fd;
}

/* Bytes of a Data frame for stream s: to its socket, the first byte being the kind. */
static void deliver(struct stream *s, const unsigned char *p, uint32_t len) {
    if (len == 0) return;
    s->consumed += len;
    if (s->fd < 0 && far_role) {
        if (p[0] != 'T') { send_control(T_WINDOW, F_RST, s->id, 0); drop(s); return; }
        attach(s, dial_tool());
        p++; len--;
    }
    if (s->fd >= 0 && len) sock_send(s->fd, p, len);
    if (s->consumed >= WINDOW / 2) {
        send_control(T_WINDOW, 0, s->id, s->consumed);
        s->consumed = 0;
    }
}

static void frame(const unsigned char *h, const unsigned char *payload) {
    int type = h[1], flags = h[2] << 8 | h[3];
    uint32_t id = get32(h + 4), len = get32(h + 8);
    if (type == T_PING) {
        if (flags & F_SYN) send_control(T_PING, F_ACK, 0, len);
        return;
    }
    if (type == T_GOAWAY) { fprintf(stderr, "yamux_floor: GoAway %u\n", len); exit(0); }
    struct stream *s = find(id);
    if (flags & F_SYN) {
        if (!far_role || s) { send_control(T_GOAWAY, 0, 0, 1); exit(1); }
        s = add(id);
        send_control(T_WINDOW, F_ACK, id, 0);
    }
    if (!s) return; /* a stream already dropped: its late frames */
    if (type == T_WINDOW) {
        s->send_window += len;
        if (s->send_window > 0 && !s->fin_out) watch(s, 1);
    } else {
        deliver(s, payload, len);
        if (!find(id)) return;
    }
    if (flags & F_RST) { drop(s); return; }
    if (flags & F_FIN) {
        s->fin_in = 1;
        if (s->fd >= 0) shutdown(s->fd, SHUT_WR);
        if (s->fin_out) drop(s);
    }
}

/* Every whole frame in inbuf, passed on; a partial one stays for the next read. */
static void parse_frames(void) {
    size_t at = 0;
    while (inlen - at >= HEADER) {
        const unsigned char *h = inbuf + at;
        uint32_t len = h[1] == T_DATA ? get32(h + 8) : 0;
        if (inlen - at < HEADER + len) break;
        frame(h, h + HEADER);
        at += HEADER + len;
    }
    memmove(inbuf, inbuf + at, inlen - at);
    inlen -= at;
}

static void tunnel_readable(void) {
    for (;;) {
        if (inlen == sizeof inbuf) { errno = ENOBUFS; die("frame larger than the buffer"); }
        int n = SSL_read(tls, inbuf + inlen, (int)(sizeof inbuf - inlen));
        if (n <= 0) {
            int e = SSL_get_error(tls, n);
            if (e == SSL_ERROR_WANT_READ) break;
            if (e == SSL_ERROR_ZERO_RETURN) exit(0);
            die("SSL_read");
        }
        inlen += (size_t)n;
        parse_frames();
    }
}

static void socket_readable(struct stream *s) {
    unsigned char buf[HEADER + CHUNK];
    int64_t room = s->send_window < CHUNK ? s->send_window : CHUNK;
    if (room <= 0) { watch(s, 0); return; }
    ssize_t n = recv(s->fd, buf + HEADER, (size_t)room, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n <= 0) {
        watch(s, 0);
        send_control(T_WINDOW, n == 0 ? F_FIN : F_RST, s->id, 0);
        s->fin_out = 1;
        if (n < 0 || s->fin_in) drop(s);
        return;
    }
    s->send_window -= n;
    put_header(buf, T_DATA, 0, s->id, (uint32_t)n);
    tunnel_send(buf, HEADER + (int)n);
}

static int listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 128) < 0) die("listen");
    return fd;
}

/* The bind line's answer (far) or the bind line (near): up to its newline; what
 * follows it is the first frames, kept in inbuf. */
static void read_line(char *line, size_t cap) {
    size_t have = 0;
    for (;;) {
        int n = SSL_read(tls, inbuf + inlen, (int)(sizeof inbuf - inlen));
        if (n <= 0) die("bind: SSL_read");
        inlen += (size_t)n;
        unsigned char *nl = memchr(inbuf, '\n', inlen);
        if (nl) {
            have = (size_t)(nl - inbuf);
            if (have >= cap) have = cap - 1;
            memcpy(line, inbuf, have);
            line[have] = 0;
            size_t used = (size_t)(nl - inbuf) + 1;
            memmove(inbuf, inbuf + used, inlen - used);
            inlen -= used;
            return;
        }
    }
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    int front = -1;
    char line[4096];
    if (argc == 7 && !strcmp(argv[1], "far")) {
        far_role = 1;
        tool_port = atoi(argv[6]);
        SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
        tunnel_fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
        inet_pton(AF_INET, argv[2], &a.sin_addr);
        if (connect(tunnel_fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect to the gateway");
        nodelay(tunnel_fd);
        tls = SSL_new(ctx);
        SSL_set_fd(tls, tunnel_fd);
        SSL_set_tlsext_host_name(tls, argv[2]);
        if (SSL_connect(tls) != 1) die("TLS handshake");
        snprintf(line, sizeof line,
                 "{\"session\": \"%s\", \"token\": \"%s\", \"connect_version\": \"0.12.0\", "
                 "\"tool\": \"jupyterlab\", \"tool_port\": %d}\n", argv[4], argv[5], tool_port);
        tunnel_send((unsigned char *)line, (int)strlen(line));
        read_line(line, sizeof line);
        if (!strstr(line, "\"ok\": true")) { fprintf(stderr, "bind refused: %s\n", line); return 1; }
    } else if (argc == 6 && !strcmp(argv[1], "near")) {
        SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
        SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
        if (SSL_CTX_use_certificate_chain_file(ctx, argv[4]) != 1 ||
            SSL_CTX_use_PrivateKey_file(ctx, argv[5], SSL_FILETYPE_PEM) != 1) die("certificate");
        int lfd = listen_on(atoi(argv[2]));
        front = listen_on(atoi(argv[3]));
        printf("listening\n");
        fflush(stdout);
        tunnel_fd = accept(lfd, NULL, NULL);
        if (tunnel_fd < 0) die("accept the tunnel");
        close(lfd);
        nodelay(tunnel_fd);
        tls = SSL_new(ctx);
        SSL_set_fd(tls, tunnel_fd);
        if (SSL_accept(tls) != 1) die("TLS handshake");
        read_line(line, sizeof line);
        const char *ok = "{\"ok\": true, \"tunnel_id\": \"floor\"}\n";
        tunnel_send((const unsigned char *)ok, (int)strlen(ok));
    } else {
        fprintf(stderr, "usage: yamux_floor far HOST PORT SESSION TOKEN TOOL_PORT\n"
                        "       yamux_floor near TUNNEL_PORT FRONT_PORT CERT KEY\n");
        return 2;
    }
    printf("bound\n");
    fflush(stdout);
    nonblocking(tunnel_fd);
    epfd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = tunnel_fd};
    epoll_ctl(epfd, EPOLL_CTL_ADD, tunnel_fd, &ev);
    if (front >= 0) {
        ev.data.fd = front;
        epoll_ctl(epfd, EPOLL_CTL_ADD, front, &ev);
    }
    parse_frames(); /* frames that came with the bind line */
    struct epoll_event evs[64];
    for (;;) {
        if (SSL_pending(tls)) tunnel_readable();
        int n = epoll_wait(epfd, evs, 64, -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == tunnel_fd) {
                tunnel_readable();
            } else if (fd == front) {
                int c = accept(front, NULL, NULL);
                if (c < 0) continue;
                struct stream *s = add(next_id);
                next_id += 2;
                attach(s, c);
                unsigned char open[2 * HEADER + 1];
                put_header(open, T_WINDOW, F_SYN, s->id, 0);
                put_header(open + HEADER, T_DATA, 0, s->id, 1);
                open[2 * HEADER] = 'T';
                tunnel_send(open, sizeof open);
            } else if (fd < MAX_FDS && by_fd[fd]) {
                socket_readable(by_fd[fd]);
            }
        }
    }
}
