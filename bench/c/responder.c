/*
 * responder: the benchmark's auth_http service and mail backend in one small single-threaded epoll loop,
 * so that neither is ever the bottleneck of the proxy under test.
 *
 *   responder AUTH_PORT IMAP_PORT POP3_PORT SMTP_PORT
 *
 * auth: one HTTP request per connection (read up to the empty line), answered "Auth-Status: OK" with the
 *       backend port for the request's Auth-Protocol, then closed, as nginx's auth_http client expects.
 * imap: greeting; LOGIN (synchronizing literals answered "+ OK"), NOOP, CAPABILITY, LOGOUT; and
 *       "tag FETCH N ..." answers one literal of N bytes (the bulk relay scenario).
 * pop3: USER, PASS, STAT, RETR (a 10 KiB message), NOOP, QUIT.
 * smtp: EHLO/HELO, XCLIENT (answered with a new 220 greeting, as Postfix does), MAIL, RCPT, DATA, RSET,
 *       NOOP, QUIT.
 * Every reply is a single line except the IMAP FETCH literal and POP3 RETR, which are streamed from a static
 * buffer with back-pressure (EPOLLOUT), so a 64 MiB literal costs no memory.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

enum kind { AUTH, IMAP, POP3, SMTP };

#define IN_MAX 16384
#define OUT_MAX 16384
#define POP3_MESSAGE 10240

struct conn {
	int fd;
	enum kind kind;
	char in[IN_MAX];
	size_t in_len;
	char out[OUT_MAX]; /* short replies */
	size_t out_len, out_sent;
	unsigned long long stream_left; /* bytes of the FETCH literal / RETR body still to send */
	const char *stream_tail;        /* sent after the stream (closing the literal, tagged OK) */
	char tail[128];
	size_t literal_left; /* IMAP: bytes of a client literal still to skip */
	int in_data;         /* SMTP: inside DATA, until CRLF.CRLF */
	char command[256];   /* IMAP: the first line of a command continued by literals */
	int close_after;     /* close once the output is flushed */
	int want_out;
};

static int ports[4];
static int epfd;
static char filler[1 << 20];

static void die(const char *what) {
	perror(what);
	exit(1);
}

static int listen_on(int port) {
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	int one = 1;
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(0x7f000001)};
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 4096) < 0) die("bind/listen");
	return fd;
}

static void reply(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reply(struct conn *c, const char *fmt, ...) {
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(c->out + c->out_len, OUT_MAX - c->out_len, fmt, ap);
	va_end(ap);
	if (n > 0 && c->out_len + n < OUT_MAX) c->out_len += n;
}

static void set_events(struct conn *c, int want_out) {
	struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
	if (want_out != c->want_out) {
		c->want_out = want_out;
		epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
	}
}

static void close_conn(struct conn *c) {
	close(c->fd);
	free(c);
}

/* Writes pending replies, then the stream, then its tail; returns -1 when the connection was closed. */
static int flush(struct conn *c) {
	for (;;) {
		ssize_t n;
		if (c->out_sent < c->out_len) {
			n = send(c->fd, c->out + c->out_sent, c->out_len - c->out_sent, MSG_NOSIGNAL);
			if (n > 0) {
				c->out_sent += n;
				continue;
			}
		} else if (c->stream_left > 0) {
			size_t chunk = c->stream_left < sizeof filler ? c->stream_left : sizeof filler;
			n = send(c->fd, filler, chunk, MSG_NOSIGNAL);
			if (n > 0) {
				c->stream_left -= n;
				if (c->stream_left == 0 && c->stream_tail) {
					c->out_len = c->out_sent = 0;
					reply(c, "%s", c->stream_tail);
					c->stream_tail = NULL;
				}
				continue;
			}
		} else {
			c->out_len = c->out_sent = 0;
			if (c->close_after) {
				close_conn(c);
				return -1;
			}
			set_events(c, 0);
			return 0;
		}
		if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
			set_events(c, 1);
			return 0;
		}
		close_conn(c);
		return -1;
	}
}

static void stream(struct conn *c, unsigned long long size, const char *tail) {
	c->stream_left = size;
	snprintf(c->tail, sizeof c->tail, "%s", tail);
	c->stream_tail = c->tail;
}

static int word_is(const char *p, const char *word) {
	size_t n = strlen(word);
	return strncasecmp(p, word, n) == 0 && (p[n] == ' ' || p[n] == '\r' || p[n] == '\n' || p[n] == 0);
}

static void auth_request(struct conn *c) {
	int port = ports[IMAP];
	char *p = strcasestr(c->in, "\r\nAuth-Protocol: ");
	if (p) {
		p += 17;
		if (strncmp(p, "pop3", 4) == 0) port = ports[POP3];
		if (strncmp(p, "smtp", 4) == 0) port = ports[SMTP];
	}
	reply(c, "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: %d\r\n\r\n", port);
	c->close_after = 1;
}

/* One complete IMAP command line (literals already folded in). */
static void imap_command(struct conn *c, char *line) {
	char tag[64];
	char *sp = strchr(line, ' ');
	if (!sp || sp - line >= (long)sizeof tag) {
		reply(c, "* BAD\r\n");
		return;
	}
	memcpy(tag, line, sp - line);
	tag[sp - line] = 0;
	char *cmd = sp + 1;
	if (word_is(cmd, "LOGIN")) reply(c, "%s OK LOGIN completed\r\n", tag);
	else if (word_is(cmd, "NOOP")) reply(c, "%s OK NOOP completed\r\n", tag);
	else if (word_is(cmd, "CAPABILITY")) reply(c, "* CAPABILITY IMAP4rev1\r\n%s OK done\r\n", tag);
	else if (word_is(cmd, "LOGOUT")) {
		reply(c, "* BYE logging out\r\n%s OK LOGOUT completed\r\n", tag);
		c->close_after = 1;
	} else if (word_is(cmd, "FETCH")) {
		unsigned long long size = strtoull(cmd + 6, NULL, 10);
		char tail[128];
		reply(c, "* 1 FETCH (BODY[] {%llu}\r\n", size);
		snprintf(tail, sizeof tail, ")\r\n%s OK FETCH completed\r\n", tag);
		stream(c, size, tail);
	} else reply(c, "%s BAD unknown command\r\n", tag);
}

static void pop3_command(struct conn *c, char *line) {
	if (word_is(line, "RETR")) {
		reply(c, "+OK %d octets\r\n", POP3_MESSAGE);
		stream(c, POP3_MESSAGE - 2, "\r\n.\r\n"); /* the filler is 'x' lines ending in CRLF */
	} else if (word_is(line, "STAT")) reply(c, "+OK 1 %d\r\n", POP3_MESSAGE);
	else if (word_is(line, "QUIT")) {
		reply(c, "+OK bye\r\n");
		c->close_after = 1;
	} else reply(c, "+OK\r\n");
}

static void smtp_command(struct conn *c, char *line) {
	if (word_is(line, "EHLO") || word_is(line, "HELO")) reply(c, "250 backend\r\n");
	else if (word_is(line, "XCLIENT")) reply(c, "220 backend ESMTP\r\n");
	else if (word_is(line, "DATA")) {
		reply(c, "354 go ahead\r\n");
		c->in_data = 1;
	} else if (word_is(line, "QUIT")) {
		reply(c, "221 bye\r\n");
		c->close_after = 1;
	} else reply(c, "250 ok\r\n");
}

/* Consumes complete commands from the input buffer. */
static void process(struct conn *c) {
	size_t start = 0;
	if (c->kind == AUTH) {
		c->in[c->in_len < IN_MAX ? c->in_len : IN_MAX - 1] = 0;
		if (strstr(c->in, "\r\n\r\n")) auth_request(c);
		if (c->in_len >= IN_MAX - 1) c->close_after = 1;
		c->in_len = c->in_len >= IN_MAX - 1 ? 0 : c->in_len;
		return;
	}
	for (;;) {
		if (c->literal_left) {
			size_t n = c->in_len - start < c->literal_left ? c->in_len - start : c->literal_left;
			start += n;
			c->literal_left -= n;
			if (c->literal_left) break;
		}
		char *nl = memchr(c->in + start, '\n', c->in_len - start);
		if (!nl) break;
		char *line = c->in + start;
		size_t len = nl - line + 1;
		start += len;
		if (c->in_data) { /* SMTP message body: only the terminating dot line matters */
			if (len == 3 && line[0] == '.') {
				c->in_data = 0;
				reply(c, "250 queued\r\n");
			}
			continue;
		}
		*nl = 0;
		if (c->kind == IMAP && len >= 4 && nl[-1] == '\r' && nl[-2] == '}') {
			/* "{N}\r\n": acknowledge, skip the N literal bytes, and treat the rest as the same command */
			char *brace = memrchr(line, '{', len);
			if (brace) {
				c->literal_left = strtoul(brace + 1, NULL, 10);
				if (!c->command[0]) snprintf(c->command, sizeof c->command, "%s", line);
				reply(c, "+ OK\r\n");
				continue;
			}
		}
		if (c->kind == IMAP) {
			/* the command's first line carries the tag and the verb; the lines after its literals nothing new */
			if (c->command[0]) {
				imap_command(c, c->command);
				c->command[0] = 0;
			} else imap_command(c, line);
		} else if (c->kind == POP3) pop3_command(c, line);
		else smtp_command(c, line);
	}
	memmove(c->in, c->in + start, c->in_len - start);
	c->in_len -= start;
	if (c->in_len == IN_MAX) c->in_len = 0; /* an absurd line: drop it */
}

static void greet(struct conn *c) {
	if (c->kind == IMAP) reply(c, "* OK backend ready\r\n");
	if (c->kind == POP3) reply(c, "+OK backend ready\r\n");
	if (c->kind == SMTP) reply(c, "220 backend ESMTP\r\n");
}

int main(int argc, char **argv) {
	if (argc != 5) {
		fprintf(stderr, "usage: responder AUTH_PORT IMAP_PORT POP3_PORT SMTP_PORT\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	struct rlimit nofile = {65536, 65536};
	setrlimit(RLIMIT_NOFILE, &nofile);
	for (size_t i = 0; i < sizeof filler; i += 64) { /* 62 'x' + CRLF lines: valid message text */
		memset(filler + i, 'x', 62);
		filler[i + 62] = '\r';
		filler[i + 63] = '\n';
	}
	epfd = epoll_create1(0);
	int listeners[4];
	for (int k = 0; k < 4; k++) {
		ports[k] = atoi(argv[k + 1]);
		listeners[k] = listen_on(ports[k]);
		struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)k};
		epoll_ctl(epfd, EPOLL_CTL_ADD, listeners[k], &ev);
	}
	printf("ready\n");
	fflush(stdout);
	struct epoll_event events[256];
	for (;;) {
		int n = epoll_wait(epfd, events, 256, -1);
		for (int i = 0; i < n; i++) {
			if (events[i].data.u64 < 4) { /* a listener */
				int k = (int)events[i].data.u64;
				int fd;
				while ((fd = accept4(listeners[k], NULL, NULL, SOCK_NONBLOCK)) >= 0) {
					int one = 1;
					setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
					struct conn *c = calloc(1, sizeof *c);
					c->fd = fd;
					c->kind = k;
					struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
					epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
					greet(c);
					flush(c);
				}
				continue;
			}
			struct conn *c = events[i].data.ptr;
			if (events[i].events & EPOLLOUT) {
				if (flush(c) < 0) continue;
				if (c->want_out) continue; /* still writing: read nothing more until the reply is out */
			}
			if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
				ssize_t r = recv(c->fd, c->in + c->in_len, IN_MAX - c->in_len, 0);
				if (r <= 0) {
					if (r < 0 && errno == EAGAIN) continue;
					close_conn(c);
					continue;
				}
				c->in_len += r;
				if (c->want_out) continue;
				process(c);
				flush(c);
			}
		}
	}
}
