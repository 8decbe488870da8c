/*
 * loadgen: the benchmark's client. One thread, epoll (edge-triggered) and non-blocking libssl, so that it
 * costs less CPU than the proxy it drives. Each of the -c slots runs one scripted session after another
 * until -n sessions were started or -d seconds passed; the result is one JSON line on stdout.
 *
 *   loadgen MODE -p PORT [-c CONCURRENCY] [-n MAX_SESSIONS] [-d SECONDS] [-v 1.2|1.3] [-r ticket|cache]
 *           [-q] [-s FETCH_BYTES]
 *
 * MODE: handshake      TLS connect, read the IMAP greeting, close
 *       imap           TLS connect, greeting, LOGIN, NOOP, LOGOUT
 *       starttls-imap  greeting, STARTTLS, handshake, LOGIN, NOOP, LOGOUT
 *       starttls-pop3  greeting, STLS, handshake, USER, PASS, RETR 1, QUIT
 *       starttls-smtp  greeting, EHLO, STARTTLS, handshake, EHLO, AUTH PLAIN, MAIL, RCPT, DATA (10 KiB), QUIT
 *       fetch          TLS connect, greeting, LOGIN, FETCH of -s bytes (timed: MB/s), LOGOUT
 *       idle           TLS connect and greeting for -n connections (-c handshakes in flight), then print
 *                      {"ready": ...} and hold them all until standard input closes or a line arrives
 * -r keeps each slot's latest TLS session and resumes it: "ticket" accepts session tickets, "cache" refuses
 *    them (TLS 1.2 then resumes by session id; in TLS 1.3 the server decides, by its ssl_session_tickets).
 * -q: TCP_QUICKACK after every read, a client that acknowledges at once; without it Linux delays ACKs.
 * A session's latency runs from connect() to the close after its last expected reply.
 */
#define _GNU_SOURCE
#include <errno.h>
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
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum op { CONNECT, HANDSHAKE, SEND, EXPECT, EXPECT_DOT, FETCH_START, FETCH_END, HOLD, END };
struct step {
	enum op op;
	const char *arg; /* SEND: the text; EXPECT: the prefix of the awaited line */
};

#define RBUF 16384
#define SESSION_TIMEOUT 15.0

struct conn {
	int fd;
	SSL *ssl;
	SSL_SESSION *session; /* the slot's latest session, for -r */
	int step;
	int connecting;
	size_t sent;           /* SEND: bytes of arg already written */
	unsigned long long skip; /* IMAP literal bytes still to skip */
	char rbuf[RBUF];
	size_t rlen;
	double started, fetch_started;
	int done; /* the slot starts no more sessions */
	int held;
};

static const struct step *script;
static struct conn *conns;
static int nconns, concurrency = 1, quickack, port, epfd, idle_mode;
static long max_sessions = 1000000, started, completed, errors, resumed, opening, held_count;
static double duration = 5.0, t0, deadline;
static double *latencies;
static long nlat;
static unsigned long long fetch_bytes, fetch_size = 64ull << 20;
static double fetch_seconds;
static SSL_CTX *ctx;
static int resume_mode; /* 0 none, 1 ticket, 2 cache */

static double now(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void close_conn(struct conn *c) {
	if (c->ssl) {
		if (c->step > 0 && SSL_is_init_finished(c->ssl)) SSL_shutdown(c->ssl); /* send close_notify only */
		SSL_free(c->ssl);
		c->ssl = NULL;
	}
	if (c->fd >= 0) close(c->fd);
	c->fd = -1;
}

static int may_start(void) {
	return started < max_sessions && (idle_mode || now() < deadline);
}

static void start_session(struct conn *c);

/* The session ended (ok or not); the slot starts the next one if the bounds allow. */
static void finish(struct conn *c, int ok) {
	if (ok && resume_mode && c->ssl) { /* replies were read, so the session's tickets have arrived */
		SSL_SESSION *latest = SSL_get1_session(c->ssl);
		if (c->session) SSL_SESSION_free(c->session);
		c->session = latest;
	}
	if (ok) {
		completed++;
		if (latencies && nlat < max_sessions) latencies[nlat++] = now() - c->started;
	} else
		errors++;
	close_conn(c);
	if (idle_mode) {
		opening--;
		c->done = 1;
		for (int i = 0; i < nconns && opening < concurrency && may_start(); i++)
			if (conns[i].fd < 0 && !conns[i].done) start_session(&conns[i]);
		return;
	}
	if (may_start()) start_session(c);
	else c->done = 1;
}

static void start_session(struct conn *c) {
	started++;
	if (idle_mode) opening++;
	c->step = 0;
	c->rlen = 0;
	c->skip = 0;
	c->sent = 0;
	c->started = now();
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (c->fd < 0) {
		perror("socket");
		exit(1);
	}
	int one = 1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(0x7f000001)};
	if (connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
		finish(c, 0);
		return;
	}
	c->connecting = 1;
	struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
	epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

static void ack_now(struct conn *c) {
	int one = 1;
	if (quickack) setsockopt(c->fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
}

/* Reads more bytes (TLS once the handshake is done): >0 read, 0 would block, -1 closed or failed. */
static int fill(struct conn *c) {
	if (c->rlen == RBUF) return -1; /* a line longer than the buffer: not a reply we expect */
	int n;
	if (c->ssl) {
		n = SSL_read(c->ssl, c->rbuf + c->rlen, RBUF - c->rlen);
		if (n <= 0) {
			int e = SSL_get_error(c->ssl, n);
			ack_now(c);
			return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? 0 : -1;
		}
	} else {
		n = recv(c->fd, c->rbuf + c->rlen, RBUF - c->rlen, 0);
		if (n <= 0) {
			ack_now(c);
			return n < 0 && errno == EAGAIN ? 0 : -1;
		}
	}
	ack_now(c);
	c->rlen += n;
	return n;
}

/* Consumes lines until one starts with `prefix` (or is "." for EXPECT_DOT): 1 found, 0 needs more, -1 error. */
static int scan(struct conn *c, const struct step *s) {
	size_t pos = 0;
	int found = 0;
	while (!found) {
		if (c->skip) { /* inside an IMAP literal */
			size_t n = c->rlen - pos < c->skip ? c->rlen - pos : c->skip;
			pos += n;
			c->skip -= n;
			if (c->skip) break;
		}
		char *nl = memchr(c->rbuf + pos, '\n', c->rlen - pos);
		if (!nl) break;
		char *line = c->rbuf + pos;
		size_t len = nl - line + 1;
		pos += len;
		if (s->op == EXPECT_DOT) {
			found = len == 3 && line[0] == '.';
			continue;
		}
		if (strncmp(line, s->arg, strlen(s->arg)) == 0) {
			found = 1;
		} else if (strncmp(line, "-ERR", 4) == 0 || ((line[0] == '4' || line[0] == '5') && len > 4 && line[3] != '-'
		                                             && s->arg[0] >= '0' && s->arg[0] <= '9')) {
			if (errors < 3) fprintf(stderr, "loadgen: unexpected reply %.*s", (int)len, line);
			return -1;
		} else if (len >= 4 && line[len - 2] == '\r' && line[len - 3] == '}') {
			char *brace = memrchr(line, '{', len);
			if (brace) c->skip = strtoull(brace + 1, NULL, 10);
		} else if (line[0] == s->arg[0] && line[1] == ' ' && line[0] != '*') { /* our tag, but not OK */
			if (errors < 3) fprintf(stderr, "loadgen: unexpected reply %.*s", (int)len, line);
			return -1;
		}
	}
	memmove(c->rbuf, c->rbuf + pos, c->rlen - pos);
	c->rlen -= pos;
	return found;
}

static SSL *new_ssl(struct conn *c) {
	SSL *ssl = SSL_new(ctx);
	SSL_set_fd(ssl, c->fd);
	SSL_set_connect_state(ssl);
	if (c->session) SSL_set_session(ssl, c->session);
	return ssl;
}

/* Runs the slot's script until it has to wait for the socket. */
static void advance(struct conn *c) {
	for (;;) {
		const struct step *s = &script[c->step];
		int r, e;
		switch (s->op) {
		case CONNECT:
			if (c->connecting) {
				int err = 0;
				socklen_t len = sizeof err;
				getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
				if (err == EINPROGRESS || err == EALREADY) return;
				if (err) return finish(c, 0);
				c->connecting = 0;
			}
			c->step++;
			break;
		case HANDSHAKE:
			if (!c->ssl) c->ssl = new_ssl(c);
			r = SSL_do_handshake(c->ssl);
			if (r == 1) {
				resumed += SSL_session_reused(c->ssl);
				c->step++;
				break;
			}
			e = SSL_get_error(c->ssl, r);
			ack_now(c);
			if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
			if (e == SSL_ERROR_SSL && errors < 3) ERR_print_errors_fp(stderr); /* the first few say why */
			ERR_clear_error();
			return finish(c, 0);
		case SEND: {
			size_t len = strlen(s->arg);
			if (c->ssl) {
				r = SSL_write(c->ssl, s->arg, (int)len); /* all or nothing: retried with the same buffer */
				if (r <= 0) {
					e = SSL_get_error(c->ssl, r);
					if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) return;
					return finish(c, 0);
				}
				c->sent = len;
			} else {
				ssize_t n = send(c->fd, s->arg + c->sent, len - c->sent, MSG_NOSIGNAL);
				if (n < 0) {
					if (errno == EAGAIN) return;
					return finish(c, 0);
				}
				c->sent += n;
			}
			if (c->sent == len) {
				c->sent = 0;
				c->step++;
			}
			break;
		}
		case EXPECT:
		case EXPECT_DOT:
			r = scan(c, s);
			if (r < 0) return finish(c, 0);
			if (r == 1) {
				c->step++;
				break;
			}
			r = fill(c);
			if (r == 0) return;
			if (r < 0) return finish(c, 0);
			break;
		case FETCH_START:
			c->fetch_started = now();
			c->step++;
			break;
		case FETCH_END:
			fetch_seconds += now() - c->fetch_started;
			fetch_bytes += fetch_size;
			c->step++;
			break;
		case HOLD:
			if (!c->held) {
				c->held = 1;
				held_count++;
				opening--;
				for (int i = 0; i < nconns && opening < concurrency && may_start(); i++)
					if (conns[i].fd < 0 && !conns[i].done) start_session(&conns[i]);
			}
			return;
		case END:
			return finish(c, 1);
		}
	}
}

static int cmp_double(const void *a, const void *b) {
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double percentile(double p) {
	if (nlat == 0) return 0;
	long i = (long)(p * (nlat - 1) + 0.5);
	return latencies[i] * 1000.0;
}

static double cpu_seconds(void) {
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* Waits for events until every slot is done (or held); stragglers past their timeout are failed. */
static void run_loop(int until_held) {
	struct epoll_event events[512];
	for (;;) {
		int active = 0;
		double t = now();
		for (int i = 0; i < nconns; i++) {
			struct conn *c = &conns[i];
			if (c->fd >= 0 && !c->held) {
				active = 1;
				if (t - c->started > SESSION_TIMEOUT) finish(c, 0);
			}
		}
		if (!active && (!until_held || !may_start())) return;
		int n = epoll_wait(epfd, events, 512, 100);
		for (int i = 0; i < n; i++) {
			struct conn *c = events[i].data.ptr;
			if (c->fd >= 0) advance(c);
		}
	}
}

static const char *mode_script(const char *mode, char *fetch_cmd, char *smtp_message) {
	static struct step steps[32];
	const struct step tls_greeting[] = {{CONNECT, 0}, {HANDSHAKE, 0}, {EXPECT, "* OK"}};
	const struct step imap_rest[] = {{SEND, "a LOGIN bench secret\r\n"}, {EXPECT, "a OK"}, {SEND, "b NOOP\r\n"},
	                                 {EXPECT, "b OK"},  {SEND, "c LOGOUT\r\n"}, {EXPECT, "c OK"}, {END, 0}};
	int n = 0;
#define ADD(array) (memcpy(steps + n, array, sizeof array), n += sizeof array / sizeof array[0])
	if (strcmp(mode, "handshake") == 0) {
		const struct step end[] = {{END, 0}};
		ADD(tls_greeting);
		ADD(end);
	} else if (strcmp(mode, "imap") == 0) {
		ADD(tls_greeting);
		ADD(imap_rest);
	} else if (strcmp(mode, "idle") == 0) {
		const struct step hold[] = {{HOLD, 0}};
		ADD(tls_greeting);
		ADD(hold);
	} else if (strcmp(mode, "fetch") == 0) {
		const struct step rest[] = {{SEND, "a LOGIN bench secret\r\n"}, {EXPECT, "a OK"}, {FETCH_START, 0},
		                            {SEND, fetch_cmd}, {EXPECT, "f OK"}, {FETCH_END, 0},
		                            {SEND, "c LOGOUT\r\n"}, {EXPECT, "c OK"}, {END, 0}};
		ADD(tls_greeting);
		ADD(rest);
	} else if (strcmp(mode, "starttls-imap") == 0) {
		const struct step head[] = {{CONNECT, 0}, {EXPECT, "* OK"}, {SEND, "s STARTTLS\r\n"}, {EXPECT, "s OK"},
		                            {HANDSHAKE, 0}};
		ADD(head);
		ADD(imap_rest);
	} else if (strcmp(mode, "starttls-pop3") == 0) {
		const struct step all[] = {{CONNECT, 0},        {EXPECT, "+OK"},         {SEND, "STLS\r\n"},
		                           {EXPECT, "+OK"},     {HANDSHAKE, 0},          {SEND, "USER bench\r\n"},
		                           {EXPECT, "+OK"},     {SEND, "PASS secret\r\n"}, {EXPECT, "+OK"},
		                           {SEND, "RETR 1\r\n"}, {EXPECT_DOT, 0},        {SEND, "QUIT\r\n"},
		                           {EXPECT, "+OK"},     {END, 0}};
		ADD(all);
	} else if (strcmp(mode, "starttls-smtp") == 0) {
		const struct step all[] = {{CONNECT, 0},
		                           {EXPECT, "220 "},
		                           {SEND, "EHLO bench.example\r\n"},
		                           {EXPECT, "250 "},
		                           {SEND, "STARTTLS\r\n"},
		                           {EXPECT, "220 "},
		                           {HANDSHAKE, 0},
		                           {SEND, "EHLO bench.example\r\n"},
		                           {EXPECT, "250 "},
		                           {SEND, "AUTH PLAIN AGJlbmNoAHNlY3JldA==\r\n"}, /* \0bench\0secret */
		                           {EXPECT, "235 "},
		                           {SEND, "MAIL FROM:<bench@example.com>\r\n"},
		                           {EXPECT, "250 "},
		                           {SEND, "RCPT TO:<user@example.com>\r\n"},
		                           {EXPECT, "250 "},
		                           {SEND, "DATA\r\n"},
		                           {EXPECT, "354 "},
		                           {SEND, smtp_message},
		                           {EXPECT, "250 "},
		                           {SEND, "QUIT\r\n"},
		                           {EXPECT, "221 "},
		                           {END, 0}};
		ADD(all);
	} else
		return NULL;
	script = steps;
	return mode;
}

int main(int argc, char **argv) {
	if (argc < 2) {
		fprintf(stderr, "usage: loadgen MODE -p PORT [-c N] [-n N] [-d S] [-v 1.2|1.3] [-r ticket|cache] [-q] [-s B]\n");
		return 2;
	}
	const char *mode = argv[1];
	const char *version = NULL;
	int opt;
	optind = 2;
	while ((opt = getopt(argc, argv, "p:c:n:d:v:r:qs:")) != -1) {
		switch (opt) {
		case 'p': port = atoi(optarg); break;
		case 'c': concurrency = atoi(optarg); break;
		case 'n': max_sessions = atol(optarg); break;
		case 'd': duration = atof(optarg); break;
		case 'v': version = optarg; break;
		case 'r': resume_mode = strcmp(optarg, "ticket") == 0 ? 1 : strcmp(optarg, "cache") == 0 ? 2 : 0; break;
		case 'q': quickack = 1; break;
		case 's': fetch_size = strtoull(optarg, NULL, 10); break;
		default: return 2;
		}
	}
	static char fetch_cmd[64], smtp_message[11 * 1024];
	snprintf(fetch_cmd, sizeof fetch_cmd, "f FETCH %llu BODY[]\r\n", fetch_size);
	size_t m = (size_t)snprintf(smtp_message, sizeof smtp_message, "Subject: bench\r\n\r\n");
	while (m < 10 * 1024) { /* a 10 KiB body of 78-character lines */
		memset(smtp_message + m, 'y', 76);
		memcpy(smtp_message + m + 76, "\r\n", 2);
		m += 78;
	}
	memcpy(smtp_message + m, ".\r\n", 4);
	if (!mode_script(mode, fetch_cmd, smtp_message) || !port) {
		fprintf(stderr, "loadgen: unknown mode or no port\n");
		return 2;
	}
	idle_mode = strcmp(mode, "idle") == 0;
	signal(SIGPIPE, SIG_IGN);

	ctx = SSL_CTX_new(TLS_client_method());
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS); /* 5,000 idle connections stay small on our side */
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF); /* each slot keeps its own session */
	if (version) {
		int v = strcmp(version, "1.2") == 0 ? TLS1_2_VERSION : TLS1_3_VERSION;
		SSL_CTX_set_min_proto_version(ctx, v);
		SSL_CTX_set_max_proto_version(ctx, v);
	}
	if (resume_mode == 2) SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);

	nconns = idle_mode ? (int)max_sessions : concurrency;
	struct rlimit nofile = {nconns + 64, nconns + 64};
	if (setrlimit(RLIMIT_NOFILE, &nofile) < 0) perror("setrlimit");
	conns = calloc(nconns, sizeof *conns);
	if (!idle_mode) latencies = calloc(max_sessions < 2000000 ? max_sessions : 2000000, sizeof *latencies);
	if (!idle_mode && max_sessions > 2000000) max_sessions = 2000000;
	epfd = epoll_create1(0);
	t0 = now();
	deadline = t0 + duration;
	for (int i = 0; i < nconns; i++) conns[i].fd = -1;
	for (int i = 0; i < nconns && (!idle_mode || i < concurrency) && may_start(); i++) start_session(&conns[i]);
	run_loop(idle_mode);
	double elapsed = now() - t0;

	if (idle_mode) {
		printf("{\"ready\": %ld, \"errors\": %ld, \"elapsed\": %.3f, \"cpu_s\": %.4f}\n", held_count, errors,
		       elapsed, cpu_seconds());
		fflush(stdout);
		struct pollfd in = {.fd = 0, .events = POLLIN};
		poll(&in, 1, 600 * 1000); /* until the caller has measured (a line, or EOF) */
		for (int i = 0; i < nconns; i++) close_conn(&conns[i]);
		return 0;
	}
	qsort(latencies, nlat, sizeof *latencies, cmp_double);
	printf("{\"mode\": \"%s\", \"sessions\": %ld, \"errors\": %ld, \"resumed\": %ld, \"elapsed\": %.4f, "
	       "\"rate\": %.2f, \"p50_ms\": %.3f, \"p99_ms\": %.3f, \"cpu_s\": %.4f, \"fetch_bytes\": %llu, "
	       "\"fetch_seconds\": %.4f}\n",
	       mode, completed, errors, resumed, elapsed, completed / elapsed, percentile(0.5), percentile(0.99),
	       cpu_seconds(), fetch_bytes, fetch_seconds);
	return 0;
}
