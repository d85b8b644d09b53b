/* tandem-bench-gen: the benchmarks' C-speed load generator (compiled on demand
 * by bench/cgen.py with the system's cc; no dependencies beyond libc).
 *
 *   gen udp  --dst IP --port P [--flows N] [--size BYTES] [--seconds S] [--max N] [--batch B]
 *   gen raw  --ifname IF --src IP --dst IP --src-mac M --dst-mac M --port P [as udp]
 *   gen tcp  --dst IP[,IP...] --port P [--conns C] [--max N] [--seconds S] [--rate CPS]
 *   gen serve --port P --name NAME [--seconds S]
 *
 * udp:   N connected UDP sockets (N source ports = N flows), sendmmsg() batches of B
 *        datagrams of BYTES payload, round-robin over the flows, as fast as the kernel
 *        takes them (MSG_DONTWAIT; EAGAIN/ENOBUFS are counted, never waited on).
 * raw:   the same datagrams as ready-made Ethernet frames written to IF with an AF_PACKET
 *        socket that bypasses the qdisc (trafgen-style), source ports 20000+flow.
 * tcp:   C concurrent connections, each: connect, send "WHOAMI\n", read one line,
 *        close; repeated until --max or --seconds (epoll, non-blocking).  --rate paces
 *        connection starts (0 = as fast as they complete).
 * serve: accept, answer each line "WHOAMI" with "<name> <peer ip>:<port>\n", echo
 *        anything else, close on EOF (epoll, non-blocking).
 *
 * Every mode is bounded by --seconds (and by alarm() at seconds + 5 as a last
 * resort) and prints one JSON object on stdout.  Targets are not checked here:
 * bench/cgen.py only ever passes lab (198.18.0.0/15) addresses.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <linux/if_packet.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static const char *arg(int argc, char **argv, const char *name, const char *def) {
    for (int i = 2; i + 1 < argc; i++)
        if (!strcmp(argv[i], name)) return argv[i + 1];
    return def;
}

static void raise_nofile(void) {
    struct rlimit r;
    if (!getrlimit(RLIMIT_NOFILE, &r)) { r.rlim_cur = r.rlim_max; setrlimit(RLIMIT_NOFILE, &r); }
}

/* ------------------------------------------------------------------------- udp */

static int udp_mode(int argc, char **argv) {
    const char *dst = arg(argc, argv, "--dst", NULL);
    int port = atoi(arg(argc, argv, "--port", "80"));
    int flows = atoi(arg(argc, argv, "--flows", "64"));
    int size = atoi(arg(argc, argv, "--size", "18"));
    double seconds = atof(arg(argc, argv, "--seconds", "5"));
    long long max = atoll(arg(argc, argv, "--max", "100000000"));
    int batch = atoi(arg(argc, argv, "--batch", "32"));
    if (!dst || flows < 1 || flows > 4096 || size < 1 || size > 1400 || batch < 1 || batch > 256) {
        fprintf(stderr, "udp: bad arguments\n");
        return 2;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, dst, &sa.sin_addr) != 1) { fprintf(stderr, "bad --dst\n"); return 2; }
    int *fds = calloc(flows, sizeof(int));
    for (int i = 0; i < flows; i++) {
        fds[i] = socket(AF_INET, SOCK_DGRAM, 0);
        int buf = 4 << 20;
        setsockopt(fds[i], SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
        if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&sa, sizeof sa) < 0) {
            perror("udp socket/connect");
            return 1;
        }
    }
    char *payload = malloc(size);
    for (int i = 0; i < size; i++) payload[i] = 'a' + i % 26;
    struct mmsghdr *msgs = calloc(batch, sizeof *msgs);
    struct iovec iov = {.iov_base = payload, .iov_len = size};
    for (int i = 0; i < batch; i++) { msgs[i].msg_hdr.msg_iov = &iov; msgs[i].msg_hdr.msg_iovlen = 1; }
    long long sent = 0, eagain = 0, other = 0, calls = 0;
    double t0 = now(), end = t0 + seconds, t = t0;
    int f = 0;
    while (sent < max) {
        if ((calls & 63) == 0 && (t = now()) >= end) break;
        int want = batch;
        if (max - sent < want) want = (int)(max - sent);
        int n = sendmmsg(fds[f], msgs, want, MSG_DONTWAIT);
        calls++;
        if (n > 0) sent += n;
        if (n < want) {
            if (n < 0 && (errno == EAGAIN || errno == ENOBUFS)) eagain++;
            else if (n < 0) other++;
        }
        if (++f == flows) f = 0;
    }
    t = now();
    printf("{\"mode\": \"udp\", \"sent\": %lld, \"seconds\": %.4f, \"pps\": %.0f, \"eagain\": %lld, "
           "\"errors\": %lld, \"flows\": %d, \"size\": %d, \"batch\": %d}\n",
           sent, t - t0, sent / (t - t0), eagain, other, flows, size, batch);
    return 0;
}

/* ------------------------------------------------------------------------- raw */

static uint16_t csum16(const void *data, int len, uint32_t sum) {
    const uint8_t *p = data;
    for (int i = 0; i + 1 < len; i += 2) sum += (p[i] << 8) | p[i + 1];
    if (len & 1) sum += p[len - 1] << 8;
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static int parse_mac(const char *s, uint8_t *mac) {
    return sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &mac[0], &mac[1], &mac[2], &mac[3], &mac[4],
                  &mac[5]) == 6 ? 0 : -1;
}

/* Ready-made Ethernet/IPv4/UDP frames written straight to an interface with an
 * AF_PACKET socket (PACKET_QDISC_BYPASS), as netsniff-ng's trafgen does: the
 * sender pays no socket, routing or qdisc work, only the path from the wire on. */
static int raw_mode(int argc, char **argv) {
    const char *ifname = arg(argc, argv, "--ifname", NULL);
    const char *dst = arg(argc, argv, "--dst", NULL);
    const char *src = arg(argc, argv, "--src", NULL);
    const char *dmac_s = arg(argc, argv, "--dst-mac", NULL);
    const char *smac_s = arg(argc, argv, "--src-mac", NULL);
    int port = atoi(arg(argc, argv, "--port", "80"));
    int flows = atoi(arg(argc, argv, "--flows", "64"));
    int size = atoi(arg(argc, argv, "--size", "18"));
    double seconds = atof(arg(argc, argv, "--seconds", "5"));
    long long max = atoll(arg(argc, argv, "--max", "100000000"));
    int batch = atoi(arg(argc, argv, "--batch", "32"));
    uint8_t dmac[6], smac[6];
    struct in_addr sip, dip;
    if (!ifname || !dst || !src || !dmac_s || !smac_s || parse_mac(dmac_s, dmac) || parse_mac(smac_s, smac)
        || inet_pton(AF_INET, src, &sip) != 1 || inet_pton(AF_INET, dst, &dip) != 1
        || flows < 1 || flows > 4096 || size < 1 || size > 1400 || batch < 1 || batch > 256) {
        fprintf(stderr, "raw: bad arguments\n");
        return 2;
    }
    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (fd < 0) { perror("AF_PACKET socket"); return 1; }
    int one = 1;
    setsockopt(fd, SOL_PACKET, 20 /* PACKET_QDISC_BYPASS */, &one, sizeof one);
    int sbuf = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sbuf, sizeof sbuf);
    struct sockaddr_ll ll = {.sll_family = AF_PACKET, .sll_ifindex = (int)if_nametoindex(ifname),
                             .sll_halen = 6};
    memcpy(ll.sll_addr, dmac, 6);
    if (!ll.sll_ifindex || bind(fd, (struct sockaddr *)&ll, sizeof ll) < 0) { perror("bind"); return 1; }
    int flen = 14 + 20 + 8 + size;
    uint8_t *frames = calloc(flows, flen);
    for (int f = 0; f < flows; f++) {
        uint8_t *e = frames + (size_t)f * flen, *ip = e + 14, *u = ip + 20;
        memcpy(e, dmac, 6); memcpy(e + 6, smac, 6); e[12] = 0x08; e[13] = 0x00;
        ip[0] = 0x45; ip[2] = (20 + 8 + size) >> 8; ip[3] = (20 + 8 + size) & 0xff;
        ip[6] = 0x40; ip[8] = 63; ip[9] = 17;
        memcpy(ip + 12, &sip, 4); memcpy(ip + 16, &dip, 4);
        uint16_t c = csum16(ip, 20, 0);
        ip[10] = c >> 8; ip[11] = c & 0xff;
        int sport = 20000 + f, ulen = 8 + size;
        u[0] = sport >> 8; u[1] = sport & 0xff; u[2] = port >> 8; u[3] = port & 0xff;
        u[4] = ulen >> 8; u[5] = ulen & 0xff;
        for (int i = 0; i < size; i++) u[8 + i] = 'a' + i % 26;
        uint32_t ph = 0;
        for (int i = 12; i < 20; i += 2) ph += (ip[i] << 8) | ip[i + 1];
        ph += 17 + ulen;
        c = csum16(u, ulen, ph);
        if (!c) c = 0xffff;
        u[6] = c >> 8; u[7] = c & 0xff;
    }
    struct mmsghdr *msgs = calloc(batch, sizeof *msgs);
    struct iovec *iov = calloc(batch, sizeof *iov);
    long long sent = 0, eagain = 0, other = 0, calls = 0;
    double t0 = now(), end = t0 + seconds;
    int f = 0;
    while (sent < max) {
        if ((calls & 63) == 0 && now() >= end) break;
        int want = batch;
        if (max - sent < want) want = (int)(max - sent);
        for (int i = 0; i < want; i++) {
            iov[i].iov_base = frames + (size_t)f * flen;
            iov[i].iov_len = flen;
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            if (++f == flows) f = 0;
        }
        int n = sendmmsg(fd, msgs, want, MSG_DONTWAIT);
        calls++;
        if (n > 0) sent += n;
        if (n < want) {
            if (n < 0 && (errno == EAGAIN || errno == ENOBUFS)) eagain++;
            else if (n < 0) other++;
        }
    }
    double t = now();
    printf("{\"mode\": \"raw\", \"sent\": %lld, \"seconds\": %.4f, \"pps\": %.0f, \"eagain\": %lld, "
           "\"errors\": %lld, \"flows\": %d, \"size\": %d, \"batch\": %d}\n",
           sent, t - t0, sent / (t - t0), eagain, other, flows, size, batch);
    return 0;
}

/* ------------------------------------------------------------------------- tcp */

enum { C_IDLE, C_CONNECTING, C_READING };
struct tconn { int fd; int state; int got; double started; };

#define LAT_BUCKETS 2000    /* 0.1 ms buckets up to 200 ms, then one overflow bucket */

static int tcp_mode(int argc, char **argv) {
    char dsts[1024];
    snprintf(dsts, sizeof dsts, "%s", arg(argc, argv, "--dst", ""));
    int port = atoi(arg(argc, argv, "--port", "80"));
    int nconn = atoi(arg(argc, argv, "--conns", "64"));
    long long max = atoll(arg(argc, argv, "--max", "1000000"));
    double seconds = atof(arg(argc, argv, "--seconds", "5"));
    double rate = atof(arg(argc, argv, "--rate", "0"));
    double timeout = atof(arg(argc, argv, "--timeout", "2"));
    struct sockaddr_in addrs[16];
    int naddr = 0;
    for (char *tok = strtok(dsts, ","); tok && naddr < 16; tok = strtok(NULL, ",")) {
        addrs[naddr] = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(port)};
        if (inet_pton(AF_INET, tok, &addrs[naddr].sin_addr) != 1) { fprintf(stderr, "bad --dst\n"); return 2; }
        naddr++;
    }
    if (!naddr || nconn < 1 || nconn > 20000) { fprintf(stderr, "tcp: bad arguments\n"); return 2; }
    raise_nofile();
    int ep = epoll_create1(0);
    struct tconn *cs = calloc(nconn, sizeof *cs);
    static long long lat[LAT_BUCKETS + 1];
    long long started = 0, ok = 0, e_connect = 0, e_reset = 0, e_eof = 0, e_timeout = 0, e_other = 0;
    double t0 = now(), end = t0 + seconds, t = t0;
    double next_start = t0, gap = rate > 0 ? 1.0 / rate : 0;
    int next_addr = 0, active = 0;
    struct epoll_event evs[256];
    const char req[] = "WHOAMI\n";

    for (;;) {
        t = now();
        /* start connections: every idle slot, paced by --rate */
        if (t < end) {
            for (int i = 0; i < nconn && started < max; i++) {
                if (cs[i].state != C_IDLE) continue;
                if (gap) {
                    if (t < next_start) break;
                    next_start += gap;
                    if (next_start < t - 0.05) next_start = t;    /* no burst after a stall */
                }
                int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
                if (fd < 0) { e_other++; break; }
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                started++;
                int r = connect(fd, (struct sockaddr *)&addrs[next_addr], sizeof addrs[0]);
                next_addr = (next_addr + 1) % naddr;
                if (r < 0 && errno != EINPROGRESS) { e_connect++; close(fd); continue; }
                cs[i] = (struct tconn){.fd = fd, .state = C_CONNECTING, .got = 0, .started = t};
                struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = i};
                epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                active++;
            }
        }
        if (!active && (t >= end || started >= max)) break;
        if (t >= end + timeout) break;
        int wait_ms = 1;
        int n = epoll_wait(ep, evs, 256, wait_ms);
        t = now();
        for (int k = 0; k < n; k++) {
            struct tconn *c = &cs[evs[k].data.u32];
            int done = 0, fail = 0;
            if (c->state == C_CONNECTING) {
                int err = 0; socklen_t l = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
                if (err) { e_connect++; fail = 1; }
                else if (send(c->fd, req, sizeof req - 1, MSG_NOSIGNAL) != sizeof req - 1) { e_other++; fail = 1; }
                else {
                    c->state = C_READING;
                    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = evs[k].data.u32};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            } else if (c->state == C_READING) {
                char buf[512];
                ssize_t r = recv(c->fd, buf, sizeof buf, 0);
                if (r > 0) {
                    if (memchr(buf, '\n', r)) done = 1;
                } else if (r == 0) { e_eof++; fail = 1; }
                else if (errno == ECONNRESET) { e_reset++; fail = 1; }
                else if (errno != EAGAIN) { e_other++; fail = 1; }
            }
            if (done) {
                ok++;
                int b = (int)((t - c->started) * 10000);
                lat[b < LAT_BUCKETS ? b : LAT_BUCKETS]++;
            }
            if (done || fail) {
                close(c->fd);       /* FIN; the client keeps TIME_WAIT (tcp_tw_reuse in the lab) */
                c->state = C_IDLE;
                active--;
            }
        }
        /* time out stuck connections (checked every wake-up; nconn is small) */
        for (int i = 0; i < nconn; i++) {
            if (cs[i].state != C_IDLE && t - cs[i].started > timeout) {
                close(cs[i].fd);
                cs[i].state = C_IDLE;
                active--;
                e_timeout++;
            }
        }
    }
    double secs = now() - t0;
    double p[3] = {0.5, 0.99, 1.0}, v[3] = {-1, -1, -1};
    for (int j = 0; j < 3; j++) {
        long long want = (long long)(p[j] * ok), acc = 0;
        if (want < 1) want = 1;
        for (int b = 0; b <= LAT_BUCKETS && ok; b++) {
            acc += lat[b];
            if (acc >= want) { v[j] = b / 10.0; break; }
        }
    }
    printf("{\"mode\": \"tcp\", \"started\": %lld, \"ok\": %lld, \"seconds\": %.4f, \"cps\": %.1f, "
           "\"errors\": {\"connect\": %lld, \"reset\": %lld, \"eof\": %lld, \"timeout\": %lld, "
           "\"other\": %lld}, \"latency_ms\": {\"p50\": %.1f, \"p99\": %.1f, \"max\": %.1f}, "
           "\"conns\": %d, \"rate\": %.1f}\n",
           started, ok, secs, ok / secs, e_connect, e_reset, e_eof, e_timeout, e_other,
           v[0], v[1], v[2], nconn, rate);
    return 0;
}

/* ----------------------------------------------------------------------- serve */

struct sconn { int fd; int len; char peer[64]; char buf[256]; };

static int serve_mode(int argc, char **argv) {
    int port = atoi(arg(argc, argv, "--port", "8081"));
    const char *name = arg(argc, argv, "--name", "srv");
    double seconds = atof(arg(argc, argv, "--seconds", "60"));
    raise_nofile();
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(ls, 4096) < 0) { perror("listen"); return 1; }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    long long accepted = 0, answered = 0;
    double end = now() + seconds;
    struct epoll_event evs[256];
    fprintf(stderr, "serve %s: listening on :%d\n", name, port);
    while (now() < end) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int k = 0; k < n; k++) {
            struct sconn *c = evs[k].data.ptr;
            if (!c) {
                for (;;) {
                    struct sockaddr_in pa; socklen_t pl = sizeof pa;
                    int fd = accept4(ls, (struct sockaddr *)&pa, &pl, SOCK_NONBLOCK);
                    if (fd < 0) break;
                    accepted++;
                    c = calloc(1, sizeof *c);
                    c->fd = fd;
                    char ip[32];
                    inet_ntop(AF_INET, &pa.sin_addr, ip, sizeof ip);
                    snprintf(c->peer, sizeof c->peer, "%s:%d", ip, ntohs(pa.sin_port));
                    struct epoll_event e2 = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e2);
                }
                continue;
            }
            ssize_t r = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                close(c->fd);
                free(c);
                continue;
            }
            c->len += r;
            char *nl;
            while ((nl = memchr(c->buf, '\n', c->len))) {
                int ll = nl - c->buf + 1;
                char out[160];
                int ol;
                if (ll >= 7 && !memcmp(c->buf, "WHOAMI", 6)) {
                    ol = snprintf(out, sizeof out, "%s %s\n", name, c->peer);
                    answered++;
                    send(c->fd, out, ol, MSG_NOSIGNAL | MSG_DONTWAIT);
                } else {
                    send(c->fd, c->buf, ll, MSG_NOSIGNAL | MSG_DONTWAIT);
                }
                memmove(c->buf, c->buf + ll, c->len - ll);
                c->len -= ll;
            }
            if (c->len == (int)sizeof c->buf) c->len = 0;
        }
    }
    printf("{\"mode\": \"serve\", \"accepted\": %lld, \"answered\": %lld}\n", accepted, answered);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: gen udp|tcp|serve [options]\n"); return 2; }
    signal(SIGPIPE, SIG_IGN);
    double seconds = 0;
    for (int i = 2; i + 1 < argc; i++) if (!strcmp(argv[i], "--seconds")) seconds = atof(argv[i + 1]);
    alarm((unsigned)(seconds > 0 ? seconds : 60) + 5);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(argv[1], "udp")) return udp_mode(argc, argv);
    if (!strcmp(argv[1], "raw")) return raw_mode(argc, argv);
    if (!strcmp(argv[1], "tcp")) return tcp_mode(argc, argv);
    if (!strcmp(argv[1], "serve")) return serve_mode(argc, argv);
    fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
}
