/* mailgate._io: the connections of a session and the relay between them, in C.
 *
 * A session's sockets are driven here rather than through asyncio transports and Python protocol objects:
 * per session that was hundreds of Python calls (every read, write, TLS record and timer), which made most
 * of mailgate's CPU time against nginx's. The Python session still walks the stages (protocol engines,
 * auth, backend login); it awaits this module's futures at each wait.
 *
 * Reactor  one per event loop: an epoll set of its own (edge-triggered, each socket added once, as nginx
 *          does) plus a timerfd for its deadlines; the event loop watches the epoll fd and calls process().
 * Peer     one connection (the client's or the backend's): reads on demand (only when a read is waited
 *          for, or in the relay), writes through its own output buffer, and can become the server end of
 *          TLS (start_tls). TLS runs on the connection's socket through a BIO of ours: reads go straight
 *          to recv(), writes gather in the output buffer and leave in one send() per flight. A connection
 *          under way (Peer.connect) takes writes and reads at once: they wait for the connect, without a
 *          wake-up of the session in between (failed_in tells a failed connect from a failed send).
 * Relay    pipes two Peers into each other, in C, until one side ends (rules in mailgate/proxy/relay.py).
 *
 * Everything runs on the event loop's thread with the GIL held. Futures are the event loop's own; they are
 * resolved here and never run Python code synchronously (asyncio schedules their callbacks).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/ssl.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "_session_zone.h"

/* Bytes read from a socket per recv() call, into the reactor's one scratch buffer. */
#define SCRATCH_SIZE (256 * 1024)
/* Plaintext taken from TLS per SSL_read() call (a record holds at most 16 KiB). */
#define TLS_READ_SIZE (64 * 1024)
/* The relay stops reading one side while the other's output buffer holds more than this, and reads again
 * once it is down to the low mark. */
#define RELAY_HIGH_WATER (512 * 1024)
#define RELAY_LOW_WATER (128 * 1024)
/* Seconds without any transfer after a client's half-close before the backend is told (relay.py). */
#define HALF_CLOSE_QUIET 1.0
#define EVENTS_PER_WAIT 256
/* Plaintext per SSL_write() call when much is written at once (three records), and the output buffer
 * a relaying connection keeps between writes rather than allocating one each time. */
#define TLS_WRITE_CHUNK (48 * 1024)
#define RELAY_KEPT_BUFFER (64 * 1024)

/* ---------------------------------------------------------------------------------------------------- */
/* Byte buffers */

typedef struct {
    char *data;
    size_t start; /* first unconsumed byte */
    size_t len;   /* unconsumed bytes */
    size_t cap;
} Buffer;

static int
buffer_append(Buffer *b, const char *bytes, size_t n)
{
    if (n == 0)
        return 0;
    if (b->start + b->len + n > b->cap) {
        if (b->len + n <= b->cap && b->start > 0) {
            memmove(b->data, b->data + b->start, b->len);
            b->start = 0;
        }
        else {
            size_t cap = b->cap ? b->cap : 4096;
            while (cap < b->len + n)
                cap *= 2;
            char *grown = PyMem_RawMalloc(cap);
            if (grown == NULL)
                return -1;
            if (b->len)
                memcpy(grown, b->data + b->start, b->len);
            PyMem_RawFree(b->data);
            b->data = grown;
            b->cap = cap;
            b->start = 0;
        }
    }
    memcpy(b->data + b->start + b->len, bytes, n);
    b->len += n;
    return 0;
}

static void
buffer_free(Buffer *b)
{
    PyMem_RawFree(b->data);
    b->data = NULL;
    b->start = b->len = b->cap = 0;
}

static void
buffer_consume(Buffer *b, size_t n)
{
    b->start += n;
    b->len -= n;
    if (b->len == 0)
        buffer_free(b); /* an idle connection holds no buffer */
}

/* The same, keeping a small buffer for reuse (a relay's output, written again and again). */
static void
buffer_consume_keeping(Buffer *b, size_t n, size_t keep)
{
    b->start += n;
    b->len -= n;
    if (b->len == 0) {
        if (b->cap > keep)
            buffer_free(b);
        else
            b->start = 0;
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* Module state: interned names, the exception factory set from Python */

static PyObject *str_set_result, *str_set_exception, *str_done, *str_cancelled;
static PyObject *tls_failure_factory; /* (call: str, errors: list[(code, text)]) -> exception */

static double
monotonic_now(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Types */

typedef struct ReactorObject ReactorObject;
typedef struct PeerObject PeerObject;
typedef struct RelayObject RelayObject;

enum timer_kind { TIMER_DEADLINE, TIMER_TLS, TIMER_RELAY };

typedef struct {
    double when;
    Py_ssize_t index; /* position in the reactor's heap, -1 when not armed */
    int kind;
    void *owner; /* PeerObject* or RelayObject* (borrowed: a timer is cancelled before its owner goes) */
} Timer;

struct ReactorObject {
    PyObject_HEAD
    int epfd;
    int timerfd;
    double armed; /* when the timerfd fires next; INFINITY when disarmed */
    PyObject *create_future; /* the event loop's create_future */
    Timer **heap;
    Py_ssize_t heap_len, heap_cap;
    char *scratch;
    PeerObject *peers; /* every registered Peer (a strong reference each), a doubly linked list */
    int closed;
};

enum tls_state { TLS_NONE, TLS_HANDSHAKE, TLS_OPEN, TLS_CLOSING, TLS_CLOSED };

/* Peer flags */
#define P_READABLE 0x0001    /* the socket may have input (edge-triggered: cleared on EAGAIN) */
#define P_WRITABLE 0x0002    /* the socket may take output */
#define P_EOF 0x0004         /* the peer sends no more: TCP EOF or TLS close_notify */
#define P_LOST 0x0008        /* the connection is gone: closed by us, failed or reset */
#define P_CLOSING 0x0010     /* close() was asked: output is flushed, then the socket closed */
#define P_CONNECTING 0x0020  /* a connect() in progress */
#define P_EXPIRED 0x0040     /* the deadline passed */
#define P_SHUT_WR 0x0080     /* shut our sending side down once the output is flushed */
#define P_TCP 0x0100
#define P_WRITE_EOF_DONE 0x0200
#define P_PULLING 0x0400 /* in peer_pull: a relay must not start another read of it (the scratch buffer) */
#define P_WRITING 0x0800 /* in tls_write: a relay must not write to it again before it is done */
#define P_CONNECT_FAILED 0x1000 /* lost while connecting: the connect() itself failed */
#define P_SEND_FAILED 0x2000    /* lost because a send() failed */

struct PeerObject {
    PyObject_HEAD
    ReactorObject *reactor;
    PeerObject *prev, *next; /* in the reactor's list while registered */
    int fd;
    unsigned flags;
    int family;
    Buffer in;  /* plaintext received and not yet taken */
    Buffer out; /* bytes for the socket (ciphertext once TLS is on) */
    PyObject *read_waiter, *drain_waiter, *connect_waiter, *handshake_waiter;
    PyObject *error; /* why the connection ended, when it was an error */
    Timer deadline;
    /* TLS */
    SSL *ssl;
    int tls_state;
    int resumption_checked;
    int bio_eof;
    int bio_errno;
    double shutdown_timeout;
    Timer tls_timer;
    /* start_tls(then_input=True): the handshake's future waits past the handshake for the client's first
     * input (or its end), so that a STARTTLS session wakes once for both */
    int then_input;
    Buffer backlog; /* plaintext an SSL_write could not take yet (a renegotiation wants input first) */
    RelayObject *relay; /* borrowed: the relay holds us and clears this when it ends */
    /* The front of a session run here before any Python (start_front): handshake, greeting, first input. */
    int front_stage;
    double front_wait;
    PyObject *front_greeting, *front_callback, *front_context;
    struct ListenerObject *front_listener; /* a front its listener started: a silent end stays in C */
    /* exchange(): replies judged by their first bytes and answered here, before the read resolves. */
    PyObject *exchange_steps; /* tuple of (prefix, answer) bytes pairs; NULL when not exchanging */
    Py_ssize_t exchanged;     /* steps answered by the last exchange() */
    size_t exchange_capacity;
    RelayObject *pending_relay; /* Relay.run_after_login(): started here on the login's final reply */
    /* read_auth_then_login(): how to log in to the backend an auth reply names (NULL: not reading one so),
     * and (backend, relay, upstream) once the connection did */
    PyObject *auth_plan, *login_started;
};

enum front_stage { FRONT_NONE, FRONT_HANDSHAKE, FRONT_WAITING };
enum then_input { THEN_INPUT_NO, THEN_INPUT_ASKED, THEN_INPUT_WAITING };

struct RelayObject {
    PyObject_HEAD
    PeerObject *client, *backend;
    double timeout;
    double last_activity;
    Timer timer;
    int backend_owed_eof;
    int quiet_on_timeout;
    int running, finished;
    long long client_to_backend, backend_to_client;
    PyObject *done;
    /* run_after_login(): the final reply's first bytes, what the client gets instead of its first line
     * (None: the reply itself), the client's bytes owed to the backend, called as the relay starts */
    PyObject *login_final, *login_replacement, *login_to_backend, *login_on_start;
};

static PyTypeObject ReactorType, PeerType, RelayType, ListenerType;
typedef struct ListenerObject ListenerObject;
static void listener_ready(ListenerObject *l);
static void listener_front_closed(ListenerObject *l, PeerObject *p);

static void peer_pull(PeerObject *p);
static void peer_flush(PeerObject *p);
static void peer_lost(PeerObject *p, PyObject *error);
static void peer_do_close(PeerObject *p);
static void peer_input_ended(PeerObject *p);
static void tls_handshake_step(PeerObject *p);
static void tls_shutdown_step(PeerObject *p);
static void tls_failed(PeerObject *p, PyObject *error);
static void tls_done(PeerObject *p, PyObject *outcome);
static void handshake_then_input_done(PeerObject *p);
static void relay_forward(RelayObject *r, PeerObject *source, const char *data, size_t n);
static void relay_end_of_input(RelayObject *r, PeerObject *p);
static void relay_lost(RelayObject *r, PeerObject *p);
static void relay_resume_towards(RelayObject *r, PeerObject *target);
static void relay_timer_fired(RelayObject *r);
static void relay_begin(RelayObject *r, PyObject *future, const char *to_client, size_t to_client_len,
                        const char *to_backend, size_t to_backend_len);
static void exchange_clear(PeerObject *p);
static PeerObject *peer_connect_address(ReactorObject *reactor, int family, const struct sockaddr *address,
                                        socklen_t length);
static int exchange_prepare(PeerObject *p, PyObject *steps, Py_ssize_t capacity);
static int relay_after_login(PeerObject *p);
static void relay_expect_login(RelayObject *r, PyObject *final, PyObject *replacement, PyObject *to_backend,
                               PyObject *on_start);
static void front_handshake_done(PeerObject *p);
static void front_end(PeerObject *p, const char *stage, PyObject *error);
static PyObject *Peer_close(PeerObject *p, PyObject *unused);
static PyObject *Peer_abort(PeerObject *p, PyObject *unused);

/* ---------------------------------------------------------------------------------------------------- */
/* Futures */

static PyObject *
new_future(ReactorObject *reactor)
{
    return PyObject_CallNoArgs(reactor->create_future);
}

static int
future_done(PyObject *future)
{
    PyObject *done = PyObject_CallMethodNoArgs(future, str_done);
    if (done == NULL) {
        PyErr_Clear();
        return 1;
    }
    int result = PyObject_IsTrue(done);
    Py_DECREF(done);
    return result != 0;
}

/* Settle and release *slot with `method` (set_result or set_exception) and `value` (borrowed), unless its
 * waiter is gone (a cancelled future). */
static void
settle(PyObject **slot, PyObject *method, PyObject *value)
{
    PyObject *future = *slot;
    if (future == NULL)
        return;
    *slot = NULL;
    if (!future_done(future)) {
        PyObject *r = PyObject_CallMethodOneArg(future, method, value);
        if (r == NULL)
            PyErr_WriteUnraisable(future);
        Py_XDECREF(r);
    }
    Py_DECREF(future);
}

static void
resolve(PyObject **slot, PyObject *value)
{
    settle(slot, str_set_result, value);
}

static void
fail(PyObject **slot, PyObject *exception)
{
    settle(slot, str_set_exception, exception);
}

/* A new future, settled already with `method` and `value` (borrowed). */
static PyObject *
settled_future(ReactorObject *reactor, PyObject *method, PyObject *value)
{
    PyObject *future = new_future(reactor);
    if (future == NULL)
        return NULL;
    PyObject *r = PyObject_CallMethodOneArg(future, method, value);
    if (r == NULL) {
        Py_DECREF(future);
        return NULL;
    }
    Py_DECREF(r);
    return future;
}

static PyObject *
completed_future(ReactorObject *reactor, PyObject *value)
{
    return settled_future(reactor, str_set_result, value);
}

/* A future failed with `exception`, a new reference this takes (NULL: the error already set). */
static PyObject *
failed_future(ReactorObject *reactor, PyObject *exception)
{
    if (exception == NULL)
        return NULL;
    PyObject *future = settled_future(reactor, str_set_exception, exception);
    Py_DECREF(exception);
    return future;
}

/* New exception instances */

static PyObject *
os_error(int number)
{
    return PyObject_CallFunction(PyExc_OSError, "is", number, strerror(number));
}

static PyObject *
exception0(PyObject *type)
{
    return PyObject_CallNoArgs(type);
}

static PyObject *
exception1(PyObject *type, const char *message)
{
    return PyObject_CallFunction(type, "s", message);
}

/* Call the factory for a failed SSL call, taking OpenSSL's error queue (oldest first). */
static PyObject *
tls_failure(const char *call)
{
    PyObject *errors = PyList_New(0);
    if (errors == NULL)
        return NULL;
    for (;;) {
        const char *data = NULL;
        int flags = 0;
        unsigned long code = ERR_peek_error_data(&data, &flags);
        if (code == 0)
            break;
        char text[512];
        ERR_error_string_n(code, text, sizeof text);
        /* Only text data is worth showing, as nginx's ngx_ssl_error decides. */
        if (data != NULL && *data && (flags & ERR_TXT_STRING)) {
            size_t used = strlen(text);
            snprintf(text + used, sizeof text - used, ":%s", data);
        }
        ERR_get_error();
        PyObject *entry = Py_BuildValue("(ks)", code, text);
        if (entry == NULL || PyList_Append(errors, entry) < 0) {
            Py_XDECREF(entry);
            Py_DECREF(errors);
            ERR_clear_error();
            return NULL;
        }
        Py_DECREF(entry);
    }
    PyObject *exception;
    if (tls_failure_factory != NULL)
        exception = PyObject_CallFunction(tls_failure_factory, "sO", call, errors);
    else
        exception = PyObject_CallFunction(PyExc_OSError, "sO", call, errors);
    Py_DECREF(errors);
    return exception;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Timers: a binary heap per reactor, behind one timerfd armed for the earliest */

static void
heap_swap(ReactorObject *r, Py_ssize_t a, Py_ssize_t b)
{
    Timer *t = r->heap[a];
    r->heap[a] = r->heap[b];
    r->heap[b] = t;
    r->heap[a]->index = a;
    r->heap[b]->index = b;
}

static void
heap_up(ReactorObject *r, Py_ssize_t i)
{
    while (i > 0) {
        Py_ssize_t parent = (i - 1) / 2;
        if (r->heap[parent]->when <= r->heap[i]->when)
            break;
        heap_swap(r, i, parent);
        i = parent;
    }
}

static void
heap_down(ReactorObject *r, Py_ssize_t i)
{
    for (;;) {
        Py_ssize_t left = 2 * i + 1, right = left + 1, least = i;
        if (left < r->heap_len && r->heap[left]->when < r->heap[least]->when)
            least = left;
        if (right < r->heap_len && r->heap[right]->when < r->heap[least]->when)
            least = right;
        if (least == i)
            break;
        heap_swap(r, i, least);
        i = least;
    }
}

static void
reactor_arm(ReactorObject *r, double when)
{
    struct itimerspec spec = {{0, 0}, {0, 0}};
    if (isfinite(when)) {
        if (when <= 0)
            when = 1e-9;
        spec.it_value.tv_sec = (time_t)when;
        spec.it_value.tv_nsec = (long)((when - (double)spec.it_value.tv_sec) * 1e9);
        if (spec.it_value.tv_sec == 0 && spec.it_value.tv_nsec == 0)
            spec.it_value.tv_nsec = 1;
    }
    if (r->timerfd >= 0 && timerfd_settime(r->timerfd, TFD_TIMER_ABSTIME, &spec, NULL) == 0)
        r->armed = when;
}

static void
timer_cancel(ReactorObject *r, Timer *t)
{
    Py_ssize_t i = t->index;
    if (i < 0)
        return;
    t->index = -1;
    r->heap_len--;
    if (i != r->heap_len) {
        r->heap[i] = r->heap[r->heap_len];
        r->heap[i]->index = i;
        heap_down(r, i);
        heap_up(r, i);
    }
    /* The timerfd stays armed: firing early costs one look at the heap, re-arming costs a system call. */
}

static int
timer_set(ReactorObject *r, Timer *t, double when)
{
    timer_cancel(r, t);
    if (r->heap_len == r->heap_cap) {
        Py_ssize_t cap = r->heap_cap ? r->heap_cap * 2 : 64;
        Timer **grown = PyMem_Realloc(r->heap, (size_t)cap * sizeof(Timer *));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        r->heap = grown;
        r->heap_cap = cap;
    }
    t->when = when;
    t->index = r->heap_len;
    r->heap[r->heap_len++] = t;
    heap_up(r, t->index);
    if (when < r->armed)
        reactor_arm(r, when);
    return 0;
}

static void peer_deadline_fired(PeerObject *p);
static void tls_timer_fired(PeerObject *p);

static void
reactor_run_timers(ReactorObject *r)
{
    double now = monotonic_now();
    while (r->heap_len > 0 && r->heap[0]->when <= now) {
        Timer *t = r->heap[0];
        timer_cancel(r, t);
        PyObject *owner = (PyObject *)t->owner;
        Py_INCREF(owner); /* the handler may end the connection or relay */
        switch (t->kind) {
        case TIMER_DEADLINE:
            peer_deadline_fired((PeerObject *)owner);
            break;
        case TIMER_TLS:
            tls_timer_fired((PeerObject *)owner);
            break;
        case TIMER_RELAY:
            relay_timer_fired((RelayObject *)owner);
            break;
        }
        Py_DECREF(owner);
    }
    double next = r->heap_len > 0 ? r->heap[0]->when : INFINITY;
    if (next != r->armed && (next < r->armed || r->armed <= now))
        reactor_arm(r, next);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Reactor */

static void
reactor_link(ReactorObject *r, PeerObject *p)
{
    Py_INCREF(p);
    p->prev = NULL;
    p->next = r->peers;
    if (r->peers)
        r->peers->prev = p;
    r->peers = p;
}

static void
reactor_unlink(ReactorObject *r, PeerObject *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else if (r->peers == p)
        r->peers = p->next;
    else
        return; /* not linked */
    if (p->next)
        p->next->prev = p->prev;
    p->prev = p->next = NULL;
    Py_DECREF(p);
}

static int
reactor_register(ReactorObject *r, PeerObject *p)
{
    struct epoll_event event;
    event.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    event.data.ptr = p;
    if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, p->fd, &event) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    reactor_link(r, p);
    return 0;
}

static PyObject *
Reactor_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"loop", NULL};
    PyObject *loop;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O", names, &loop))
        return NULL;
    ReactorObject *r = (ReactorObject *)type->tp_alloc(type, 0);
    if (r == NULL)
        return NULL;
    r->epfd = r->timerfd = -1;
    r->armed = INFINITY;
    r->create_future = PyObject_GetAttrString(loop, "create_future");
    if (r->create_future == NULL)
        goto failed;
    r->scratch = PyMem_RawMalloc(SCRATCH_SIZE);
    if (r->scratch == NULL) {
        PyErr_NoMemory();
        goto failed;
    }
    r->epfd = epoll_create1(EPOLL_CLOEXEC);
    r->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (r->epfd < 0 || r->timerfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto failed;
    }
    struct epoll_event event;
    event.events = EPOLLIN;
    event.data.ptr = NULL; /* the timerfd */
    if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->timerfd, &event) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto failed;
    }
    return (PyObject *)r;
failed:
    Py_DECREF(r);
    return NULL;
}

static void
reactor_close(ReactorObject *r)
{
    if (r->closed)
        return;
    r->closed = 1;
    while (r->peers) {
        PeerObject *p = r->peers;
        Py_INCREF(p);
        if (p->fd >= 0)
            peer_do_close(p);
        reactor_unlink(r, p);
        Py_DECREF(p);
    }
    if (r->epfd >= 0)
        close(r->epfd);
    if (r->timerfd >= 0)
        close(r->timerfd);
    r->epfd = r->timerfd = -1;
}

static void
Reactor_dealloc(ReactorObject *r)
{
    PyObject_GC_UnTrack(r);
    reactor_close(r);
    Py_CLEAR(r->create_future);
    PyMem_Free(r->heap);
    PyMem_RawFree(r->scratch);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static int
Reactor_traverse(ReactorObject *r, visitproc visit, void *arg)
{
    Py_VISIT(r->create_future);
    return 0;
}

static int
Reactor_clear(ReactorObject *r)
{
    Py_CLEAR(r->create_future);
    return 0;
}

static void peer_events(PeerObject *p, uint32_t events);

static PyObject *
Reactor_process(ReactorObject *r, PyObject *unused)
{
    struct epoll_event events[EVENTS_PER_WAIT];
    if (r->closed)
        Py_RETURN_NONE;
    int n = epoll_wait(r->epfd, events, EVENTS_PER_WAIT, 0);
    if (n < 0 && errno != EINTR)
        return PyErr_SetFromErrno(PyExc_OSError);
    int timers = 0;
    /* A handler may end another peer of the batch: each is held until the batch is done. */
    for (int i = 0; i < n; i++)
        if (events[i].data.ptr)
            Py_INCREF((PyObject *)events[i].data.ptr);
    for (int i = 0; i < n; i++) {
        PeerObject *p = events[i].data.ptr;
        if (p == NULL) {
            uint64_t expirations;
            while (read(r->timerfd, &expirations, sizeof expirations) > 0) {
            }
            timers = 1;
            continue;
        }
        if (Py_IS_TYPE((PyObject *)p, &ListenerType))
            listener_ready((ListenerObject *)p);
        else if (p->fd >= 0)
            peer_events(p, events[i].events);
    }
    for (int i = 0; i < n; i++)
        if (events[i].data.ptr)
            Py_DECREF((PyObject *)events[i].data.ptr);
    if (timers || (r->heap_len > 0 && r->heap[0]->when <= monotonic_now()))
        reactor_run_timers(r);
    if (PyErr_Occurred())
        PyErr_WriteUnraisable((PyObject *)r);
    Py_RETURN_NONE;
}

static PyObject *
Reactor_fileno(ReactorObject *r, PyObject *unused)
{
    return PyLong_FromLong(r->epfd);
}

static PyObject *
Reactor_close_method(ReactorObject *r, PyObject *unused)
{
    reactor_close(r);
    Py_RETURN_NONE;
}

static PyObject *
Reactor_get_peers(ReactorObject *r, void *closure)
{
    long count = 0;
    for (PeerObject *p = r->peers; p; p = p->next)
        count++;
    return PyLong_FromLong(count);
}

static PyMethodDef Reactor_methods[] = {
    {"process", (PyCFunction)Reactor_process, METH_NOARGS,
     "Handle what is ready: socket events and deadlines that passed (the event loop calls it when the "
     "reactor's fileno() is readable)."},
    {"fileno", (PyCFunction)Reactor_fileno, METH_NOARGS, "The epoll descriptor for the event loop to watch."},
    {"close", (PyCFunction)Reactor_close_method, METH_NOARGS, "Abort every connection and release the reactor."},
    {NULL}};

static PyGetSetDef Reactor_getset[] = {
    {"connections", (getter)Reactor_get_peers, NULL, "Connections with a socket still open.", NULL},
    {NULL}};

static PyTypeObject ReactorType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mailgate._io.Reactor",
    .tp_basicsize = sizeof(ReactorObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Reactor(loop): the sockets and deadlines of one event loop's sessions.",
    .tp_new = Reactor_new,
    .tp_dealloc = (destructor)Reactor_dealloc,
    .tp_traverse = (traverseproc)Reactor_traverse,
    .tp_clear = (inquiry)Reactor_clear,
    .tp_methods = Reactor_methods,
    .tp_getset = Reactor_getset,
};

/* ---------------------------------------------------------------------------------------------------- */
/* The TLS BIO: reads from the socket (after any bytes received before start_tls), writes to the output
 * buffer. It also notes what the socket said (EOF, an errno), which OpenSSL's error queue would blur. */

static BIO_METHOD *peer_bio_method;

static int
peer_bio_read(BIO *bio, char *out, int size)
{
    PeerObject *p = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    if (p == NULL || size <= 0)
        return 0;
    if (p->in.len) { /* a ClientHello that arrived with the connection, before start_tls */
        size_t n = p->in.len < (size_t)size ? p->in.len : (size_t)size;
        memcpy(out, p->in.data + p->in.start, n);
        buffer_consume(&p->in, n);
        return (int)n;
    }
    if (p->fd < 0) {
        p->bio_eof = 1;
        return 0;
    }
    for (;;) {
        ssize_t n = recv(p->fd, out, (size_t)size, 0);
        if (n > 0)
            return (int)n;
        if (n == 0) {
            p->bio_eof = 1;
            return 0;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            p->flags &= ~P_READABLE;
            BIO_set_retry_read(bio);
            return -1;
        }
        p->bio_errno = errno;
        return -1;
    }
}

static int
peer_bio_write(BIO *bio, const char *data, int size)
{
    PeerObject *p = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    if (p == NULL || size < 0)
        return -1;
    if (buffer_append(&p->out, data, (size_t)size) < 0)
        return -1;
    return size;
}

static long
peer_bio_ctrl(BIO *bio, int command, long number, void *pointer)
{
    switch (command) {
    case BIO_CTRL_FLUSH:
        return 1;
    default:
        return 0;
    }
}

static int
peer_bio_create(BIO *bio)
{
    BIO_set_init(bio, 1);
    return 1;
}

static int
peer_bio_destroy(BIO *bio)
{
    BIO_set_data(bio, NULL);
    return 1;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Peer: the socket */

static int
peer_wants_input(PeerObject *p)
{
    if (p->fd < 0 || (p->flags & (P_LOST | P_CONNECTING)))
        return 0;
    if (p->tls_state == TLS_HANDSHAKE || p->tls_state == TLS_CLOSING)
        return 1;
    if (p->flags & (P_CLOSING | P_EOF))
        return 0;
    if (p->front_stage == FRONT_WAITING || p->then_input == THEN_INPUT_WAITING)
        return 1;
    if (p->relay != NULL) {
        RelayObject *r = p->relay;
        PeerObject *target = p == r->client ? r->backend : r->client;
        return target->out.len <= RELAY_HIGH_WATER;
    }
    return p->read_waiter != NULL;
}

static void peer_write(PeerObject *p, const char *data, size_t n);
static void serve_reader(PeerObject *p);
static int auth_advance(PeerObject *p);

/* Answer the replies in the input that the exchange's steps expect. 0: wait for more input; 1: the read
 * resolves now with what is in the input (a reply no step answers, or more than the capacity). As nginx
 * reads them, a reply is judged once its buffer holds 4 bytes or more and ends with CRLF, and whatever
 * else the buffer holds goes with it. */
static int
exchange_advance(PeerObject *p)
{
    while (p->exchange_steps != NULL) {
        Py_ssize_t count = PyTuple_GET_SIZE(p->exchange_steps);
        if (p->exchanged >= count) {
            if (p->pending_relay != NULL)
                return relay_after_login(p);
            break;
        }
        size_t len = p->in.len;
        const char *data = p->in.data + p->in.start;
        if (len >= p->exchange_capacity)
            break;
        if (len < 4 || data[len - 2] != '\r' || data[len - 1] != '\n')
            return 0;
        PyObject *step = PyTuple_GET_ITEM(p->exchange_steps, p->exchanged);
        PyObject *prefix = PyTuple_GET_ITEM(step, 0), *answer = PyTuple_GET_ITEM(step, 1);
        size_t prefix_len = (size_t)PyBytes_GET_SIZE(prefix);
        if (len < prefix_len || memcmp(data, PyBytes_AS_STRING(prefix), prefix_len) != 0)
            break;
        buffer_free(&p->in);
        p->exchanged++;
        peer_write(p, PyBytes_AS_STRING(answer), (size_t)PyBytes_GET_SIZE(answer));
        if (p->flags & P_LOST)
            break;
    }
    exchange_clear(p);
    return p->in.len > 0 || (p->flags & (P_EOF | P_LOST));
}

/* The exchange is over, answered or not: its steps go, and a relay that was to follow it does not start. */
static void
exchange_clear(PeerObject *p)
{
    Py_CLEAR(p->exchange_steps);
    Py_CLEAR(p->auth_plan);
    RelayObject *r = p->pending_relay;
    if (r != NULL) {
        p->pending_relay = NULL;
        Py_CLEAR(r->login_final);
        Py_CLEAR(r->login_replacement);
        Py_CLEAR(r->login_to_backend);
        Py_CLEAR(r->login_on_start);
        Py_DECREF(r);
    }
}

/* Every step answered: the login's final reply, judged as exchange_advance judges a step's. 0: wait for
 * more input, or the relay started (the read's future is now the relay's); 1: the read resolves with the
 * reply, for the session to judge. */
static int
relay_after_login(PeerObject *p)
{
    RelayObject *r = p->pending_relay;
    size_t len = p->in.len;
    const char *data = p->in.data + p->in.start;
    if (len < p->exchange_capacity && (len < 4 || data[len - 2] != '\r' || data[len - 1] != '\n'))
        return 0;
    size_t prefix_len = (size_t)PyBytes_GET_SIZE(r->login_final);
    if (len >= p->exchange_capacity || len < prefix_len ||
        memcmp(data, PyBytes_AS_STRING(r->login_final), prefix_len) != 0 || p->read_waiter == NULL) {
        exchange_clear(p);
        return 1;
    }
    Py_INCREF(r);
    PyObject *future = p->read_waiter;
    p->read_waiter = NULL;
    PyObject *to_backend = r->login_to_backend, *on_start = r->login_on_start, *replacement = r->login_replacement;
    r->login_to_backend = r->login_on_start = r->login_replacement = NULL;
    /* The reply stays in the input, which the relay sends the client first; a replacement takes the place
     * of its first line. */
    const char *to_client = "";
    size_t to_client_len = 0;
    if (replacement != NULL && replacement != Py_None) {
        size_t line_end = (size_t)((const char *)memmem(data, len, "\r\n", 2) - data) + 2;
        buffer_consume_keeping(&p->in, line_end, 0);
        to_client = PyBytes_AS_STRING(replacement);
        to_client_len = (size_t)PyBytes_GET_SIZE(replacement);
    }
    exchange_clear(p);
    /* the login's deadlines end with it: the relay has its own timeout */
    timer_cancel(p->reactor, &p->deadline);
    timer_cancel(r->client->reactor, &r->client->deadline);
    if (on_start != NULL && on_start != Py_None) {
        /* (callable, upstream) from read_auth_then_login(): the session learns where it logged in */
        PyObject *result = PyTuple_Check(on_start)
                               ? PyObject_CallOneArg(PyTuple_GET_ITEM(on_start, 0), PyTuple_GET_ITEM(on_start, 1))
                               : PyObject_CallNoArgs(on_start);
        if (result == NULL)
            PyErr_WriteUnraisable(on_start);
        Py_XDECREF(result);
    }
    relay_begin(r, future, to_client, to_client_len, PyBytes_AS_STRING(to_backend),
                (size_t)PyBytes_GET_SIZE(to_backend));
    Py_XDECREF(replacement);
    Py_DECREF(to_backend);
    Py_XDECREF(on_start);
    Py_DECREF(r);
    return 0;
}

/* An auth reply read by read_auth_then_login(): the usual one is taken here, anything else goes to the
 * session's reader. nginx reads the reply into a buffer of this size. */
#define AUTH_REPLY_LIMIT 1024

typedef struct {
    struct sockaddr_in address;
    const char *server, *port;
    size_t server_len, port_len;
} AuthReply;

static int
ascii_alnum(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* nginx's ngx_inet_addr for the plain form the reader's expression takes (1 to 3 digits per octet). */
static int
plain_ipv4(const char *text, size_t len, struct in_addr *out)
{
    uint32_t value = 0;
    size_t i = 0;
    for (int octet = 0; octet < 4; octet++) {
        if (octet > 0) {
            if (i >= len || text[i] != '.')
                return 0;
            i++;
        }
        size_t start = i;
        unsigned number = 0;
        while (i < len && i - start < 3 && text[i] >= '0' && text[i] <= '9')
            number = number * 10 + (unsigned)(text[i++] - '0');
        if (i == start || number > 255)
            return 0;
        value = (value << 8) | number;
    }
    if (i != len || value == 0xFFFFFFFFu)
        return 0;
    out->s_addr = htonl(value);
    return 1;
}

/* At a line's end (i): 2 for CRLF, `incomplete` when the bytes so far stop short of it, 1 for anything
 * else (a bare LF or CR, which only the reader's state machine takes). */
static int
line_ending(const char *d, size_t i, size_t limit, int incomplete)
{
    if (i == limit)
        return incomplete;
    if (d[i] != '\r')
        return 1;
    if (i + 1 == limit)
        return incomplete;
    return d[i + 1] == '\n' ? 2 : 1;
}

/* The reply as far as it goes: 0 incomplete, 1 not the usual reply (the reader decides), 2 the usual
 * success: a status line, `Name: value` lines ending with CRLF and an empty line, within the first
 * AUTH_REPLY_LIMIT bytes, with `Auth-Status: OK` (every time), one IPv4 `Auth-Server` and `Auth-Port`,
 * and no other `Auth-` header (a user, a password, a wait or an error code are the reader's). */
static int
auth_reply_parse(const char *d, size_t len, AuthReply *reply)
{
    size_t limit = len < AUTH_REPLY_LIMIT ? len : AUTH_REPLY_LIMIT;
    int incomplete = limit < AUTH_REPLY_LIMIT ? 0 : 1;
    if (limit < 5)
        return memcmp(d, "HTTP/", limit) == 0 ? incomplete : 1;
    if (memcmp(d, "HTTP/", 5) != 0)
        return 1;
    size_t i = 5;
    while (i < limit && d[i] != '\r' && d[i] != '\n')
        i++;
    int ending = line_ending(d, i, limit, incomplete);
    if (ending != 2)
        return ending;
    i += 2;
    int status_ok = 0;
    reply->server = reply->port = NULL;
    for (;;) {
        if (i == limit)
            return incomplete;
        if (d[i] == '\r' || d[i] == '\n') {
            ending = line_ending(d, i, limit, incomplete);
            if (ending != 2)
                return ending;
            break;
        }
        size_t name = i;
        if (!ascii_alnum(d[i]))
            return 1;
        while (i < limit && (ascii_alnum(d[i]) || d[i] == '-'))
            i++;
        if (i == limit)
            return incomplete;
        if (d[i] != ':')
            return 1;
        size_t name_len = i - name;
        i++;
        while (i < limit && d[i] == ' ')
            i++;
        size_t value = i;
        while (i < limit && d[i] != '\r' && d[i] != '\n')
            i++;
        ending = line_ending(d, i, limit, incomplete);
        if (ending != 2)
            return ending;
        size_t value_end = i;
        while (value_end > value && d[value_end - 1] == ' ')
            value_end--;
        i += 2;
        if (name_len == 11 && strncasecmp(d + name, "auth-status", 11) == 0) {
            if (value_end - value != 2 || memcmp(d + value, "OK", 2) != 0)
                return 1;
            status_ok = 1;
        }
        else if (name_len == 11 && strncasecmp(d + name, "auth-server", 11) == 0) {
            reply->server = d + value;
            reply->server_len = value_end - value;
        }
        else if (name_len == 9 && strncasecmp(d + name, "auth-port", 9) == 0) {
            reply->port = d + value;
            reply->port_len = value_end - value;
        }
        else if (name_len >= 5 && strncasecmp(d + name, "auth-", 5) == 0)
            return 1;
    }
    if (!status_ok || reply->server == NULL || reply->port == NULL || reply->port_len == 0 || reply->port_len > 5)
        return 1;
    unsigned port = 0;
    for (size_t k = 0; k < reply->port_len; k++) {
        if (reply->port[k] < '0' || reply->port[k] > '9')
            return 1;
        port = port * 10 + (unsigned)(reply->port[k] - '0');
    }
    if (port < 1 || port > 65535)
        return 1;
    memset(&reply->address, 0, sizeof reply->address);
    reply->address.sin_family = AF_INET;
    reply->address.sin_port = htons((uint16_t)port);
    return plain_ipv4(reply->server, reply->server_len, &reply->address.sin_addr) ? 2 : 1;
}

/* The usual success taken: the auth connection closes, the backend connection starts with the plan's
 * login and the read's future goes to it (then to the relay). -1: not started, nothing changed. */
static int
auth_start_login(PeerObject *p, const AuthReply *reply)
{
    PeerObject *client;
    double backend_timeout, proxy_timeout;
    PyObject *steps, *final, *replacement, *to_backend, *on_start;
    Py_ssize_t capacity;
    if (p->read_waiter == NULL ||
        !PyArg_ParseTuple(p->auth_plan, "O!ddO!nO!OO!O", &PeerType, &client, &backend_timeout, &proxy_timeout,
                          &PyTuple_Type, &steps, &capacity, &PyBytes_Type, &final, &replacement, &PyBytes_Type,
                          &to_backend, &on_start)) {
        PyErr_Clear();
        return -1;
    }
    char text[2 * AUTH_REPLY_LIMIT + 2];
    int text_len = snprintf(text, sizeof text, "%.*s:%.*s", (int)reply->server_len, reply->server,
                            (int)reply->port_len, reply->port);
    PyObject *upstream = PyUnicode_DecodeLatin1(text, text_len, NULL);
    PeerObject *backend = NULL;
    RelayObject *r = NULL;
    PyObject *started = NULL;
    if (upstream != NULL)
        backend = peer_connect_address(p->reactor, AF_INET, (const struct sockaddr *)&reply->address,
                                       sizeof reply->address);
    if (backend != NULL)
        r = (RelayObject *)PyObject_CallFunction((PyObject *)&RelayType, "OOdi", client, backend, proxy_timeout, 1);
    if (r != NULL)
        started = PyTuple_Pack(3, backend, r, upstream);
    /* on_start learns where the session logged in */
    PyObject *callback = on_start == Py_None || started == NULL ? (Py_INCREF(Py_None), Py_None)
                                                                  : PyTuple_Pack(2, on_start, upstream);
    if (started == NULL || callback == NULL ||
        timer_set(p->reactor, &backend->deadline, monotonic_now() + backend_timeout) < 0 ||
        exchange_prepare(backend, steps, capacity) < 0) {
        PyErr_Clear();
        if (backend != NULL) {
            Py_XDECREF(Peer_abort(backend, NULL));
            PyErr_Clear();
        }
        Py_XDECREF(callback);
        Py_XDECREF(started);
        Py_XDECREF(r);
        Py_XDECREF(backend);
        Py_XDECREF(upstream);
        return -1;
    }
    relay_expect_login(r, final, replacement, to_backend, callback);
    Py_DECREF(callback);
    backend->read_waiter = p->read_waiter;
    p->read_waiter = NULL;
    Py_XSETREF(p->login_started, started);
    buffer_free(&p->in);
    Py_CLEAR(p->auth_plan);
    Py_DECREF(upstream);
    Py_DECREF(r);
    Py_DECREF(backend);
    Py_XDECREF(Peer_close(p, NULL)); /* as nginx closes the auth connection once it has the reply */
    PyErr_Clear();
    return 0;
}

/* 0: wait for more of the reply, or the login started; 1: the read resolves with the reply. */
static int
auth_advance(PeerObject *p)
{
    AuthReply reply;
    int verdict = auth_reply_parse(p->in.data + p->in.start, p->in.len, &reply);
    if (verdict == 0)
        return 0;
    if (verdict == 1 || auth_start_login(p, &reply) < 0) {
        Py_CLEAR(p->auth_plan);
        return 1;
    }
    return 0;
}

/* Plaintext from the peer: to the relay, or to the buffer for read(). */
static void
peer_deliver(PeerObject *p, const char *data, size_t n)
{
    if (p->relay != NULL) {
        relay_forward(p->relay, p, data, n);
        return;
    }
    if (buffer_append(&p->in, data, n) < 0) {
        PyErr_Clear();
        return;
    }
    if (p->front_stage == FRONT_WAITING) {
        front_end(p, "greeted", NULL); /* the client's first command: the session takes over */
        return;
    }
    if (p->then_input == THEN_INPUT_WAITING) {
        handshake_then_input_done(p); /* the input stays for the session's read() */
        return;
    }
    serve_reader(p);
}

/* A waiting read, resolved with the input (unless an exchange answers it or waits for more). */
static void
serve_reader(PeerObject *p)
{
    if (p->read_waiter != NULL && (p->exchange_steps == NULL || exchange_advance(p)) &&
        (p->auth_plan == NULL || auth_advance(p)) && p->read_waiter != NULL) {
        PyObject *bytes = PyBytes_FromStringAndSize(p->in.data + p->in.start, (Py_ssize_t)p->in.len);
        if (bytes == NULL) {
            PyErr_Clear();
            return;
        }
        buffer_free(&p->in);
        resolve(&p->read_waiter, bytes);
        Py_DECREF(bytes);
    }
}

static void
wake_reader_at_end(PeerObject *p)
{
    if (p->read_waiter == NULL)
        return;
    exchange_clear(p);
    PyObject *bytes = PyBytes_FromStringAndSize(p->in.data + p->in.start, (Py_ssize_t)p->in.len);
    if (bytes == NULL) {
        PyErr_Clear();
        return;
    }
    buffer_free(&p->in);
    resolve(&p->read_waiter, bytes);
    Py_DECREF(bytes);
}

static void
plain_pull(PeerObject *p)
{
    char *scratch = p->reactor->scratch;
    while (peer_wants_input(p) && (p->flags & P_READABLE)) {
        ssize_t n = recv(p->fd, scratch, SCRATCH_SIZE, 0);
        if (n > 0) {
            peer_deliver(p, scratch, (size_t)n);
            continue;
        }
        if (n == 0) {
            peer_input_ended(p);
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            p->flags &= ~P_READABLE;
            return;
        }
        PyObject *error = os_error(errno);
        peer_lost(p, error);
        Py_XDECREF(error);
        return;
    }
}

static void tls_pull(PeerObject *p);

static void
peer_pull(PeerObject *p)
{
    if (p->fd < 0)
        return;
    if (p->flags & P_PULLING)
        return;
    Py_INCREF(p);
    p->flags |= P_PULLING;
    if (p->tls_state == TLS_NONE)
        plain_pull(p);
    else
        tls_pull(p);
    p->flags &= ~P_PULLING;
    Py_DECREF(p);
}

static void
peer_flush(PeerObject *p)
{
    while (p->out.len && p->fd >= 0 && (p->flags & P_WRITABLE)) {
        ssize_t n = send(p->fd, p->out.data + p->out.start, p->out.len, MSG_NOSIGNAL);
        if (n > 0) {
            buffer_consume_keeping(&p->out, (size_t)n, p->relay != NULL ? RELAY_KEPT_BUFFER : 0);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            p->flags &= ~P_WRITABLE;
            break;
        }
        PyObject *error = os_error(n < 0 ? errno : EPIPE);
        p->flags |= P_SEND_FAILED;
        peer_lost(p, error);
        Py_XDECREF(error);
        return;
    }
    if (p->fd < 0)
        return;
    if (p->out.len == 0 && p->backlog.len == 0) {
        resolve(&p->drain_waiter, Py_None);
        if ((p->flags & P_SHUT_WR) && !(p->flags & P_WRITE_EOF_DONE)) {
            p->flags |= P_WRITE_EOF_DONE;
            shutdown(p->fd, SHUT_WR);
        }
        if ((p->flags & P_CLOSING) && p->tls_state != TLS_CLOSING && p->tls_state != TLS_HANDSHAKE) {
            peer_do_close(p);
            return;
        }
    }
    if (p->relay != NULL && p->out.len <= RELAY_LOW_WATER && !(p->flags & P_WRITING))
        relay_resume_towards(p->relay, p);
}

/* Bytes for the peer's socket, as they are (TLS already applied, or plain). */
static void
peer_send(PeerObject *p, const char *data, size_t n)
{
    if (p->out.len == 0 && (p->flags & P_WRITABLE)) {
        for (;;) {
            ssize_t sent = send(p->fd, data, n, MSG_NOSIGNAL);
            if (sent >= 0) {
                data += sent;
                n -= (size_t)sent;
                if (n == 0)
                    return;
                continue;
            }
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                p->flags &= ~P_WRITABLE;
                break;
            }
            PyObject *error = os_error(errno);
            p->flags |= P_SEND_FAILED;
            peer_lost(p, error);
            Py_XDECREF(error);
            return;
        }
    }
    if (buffer_append(&p->out, data, n) < 0)
        PyErr_Clear();
}

static void tls_write(PeerObject *p, const char *data, size_t n);

/* What the session or the relay writes: plaintext. */
static void
peer_write(PeerObject *p, const char *data, size_t n)
{
    if (p->fd < 0 || (p->flags & (P_LOST | P_CLOSING)) || n == 0)
        return;
    if (p->tls_state == TLS_NONE) {
        peer_send(p, data, n);
        return;
    }
    if (p->tls_state != TLS_OPEN)
        return; /* closing: what is written now would follow our close_notify */
    tls_write(p, data, n);
}

/* The socket is closed: by us (close, abort), or because it failed. */
static void
peer_do_close(PeerObject *p)
{
    if (p->fd < 0)
        return;
    Py_INCREF(p);
    close(p->fd); /* also leaves the epoll set */
    p->fd = -1;
    timer_cancel(p->reactor, &p->deadline);
    timer_cancel(p->reactor, &p->tls_timer);
    buffer_free(&p->out);
    peer_lost(p, NULL);
    reactor_unlink(p->reactor, p);
    Py_DECREF(p);
}

/* The connection is over; waiters learn it. `error` (borrowed) is why, when it was an error. */
static void
peer_lost(PeerObject *p, PyObject *error)
{
    if (error != NULL && p->error == NULL) {
        Py_INCREF(error);
        p->error = error;
    }
    if (p->flags & P_LOST) {
        if (p->fd >= 0)
            peer_do_close(p);
        return;
    }
    Py_INCREF(p);
    p->flags |= P_LOST | P_EOF;
    if (p->tls_state != TLS_NONE && p->tls_state != TLS_CLOSED)
        tls_done(p, error != NULL ? error : Py_False);
    if (p->connect_waiter != NULL) {
        PyObject *e = error ? (Py_INCREF(error), error) : os_error(ECONNRESET);
        if (e != NULL) {
            fail(&p->connect_waiter, e);
            Py_DECREF(e);
        }
        else
            PyErr_Clear();
    }
    wake_reader_at_end(p);
    if (p->drain_waiter != NULL) {
        PyObject *e = exception1(PyExc_ConnectionResetError, "connection lost");
        if (e != NULL) {
            fail(&p->drain_waiter, e);
            Py_DECREF(e);
        }
        else
            PyErr_Clear();
    }
    if (p->fd >= 0)
        peer_do_close(p);
    if (p->front_stage != FRONT_NONE)
        front_end(p, "closed", NULL);
    if (p->relay != NULL)
        relay_lost(p->relay, p);
    Py_DECREF(p);
}

/* The peer sends no more (a TCP EOF, or a TLS close_notify). */
static void
peer_input_ended(PeerObject *p)
{
    if (p->flags & P_EOF)
        return;
    p->flags |= P_EOF;
    handshake_then_input_done(p);
    wake_reader_at_end(p);
    if (p->front_stage == FRONT_WAITING)
        front_end(p, "closed", NULL);
    if (p->relay != NULL)
        relay_end_of_input(p->relay, p);
}

static void
peer_connected(PeerObject *p)
{
    int error = 0;
    socklen_t length = sizeof error;
    if (getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &error, &length) < 0)
        error = errno;
    if (error == 0) {
        p->flags &= ~P_CONNECTING;
        resolve(&p->connect_waiter, Py_None);
        /* what was written and read while connecting: sent now, and a waiting read served */
        if (p->out.len)
            peer_flush(p);
        if (p->fd >= 0 && (p->flags & P_READABLE) && peer_wants_input(p))
            peer_pull(p);
        return;
    }
    PyObject *e = os_error(error);
    p->flags = (p->flags & ~P_CONNECTING) | P_CONNECT_FAILED;
    peer_lost(p, e);
    Py_XDECREF(e);
}

static void
peer_events(PeerObject *p, uint32_t events)
{
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        p->flags |= P_READABLE;
    if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
        p->flags |= P_WRITABLE;
    if (p->flags & P_CONNECTING) {
        if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
            peer_connected(p);
        return;
    }
    if ((p->flags & P_WRITABLE) && p->out.len)
        peer_flush(p);
    if (p->fd >= 0 && (p->flags & P_READABLE) && peer_wants_input(p))
        peer_pull(p);
}

static void
peer_deadline_fired(PeerObject *p)
{
    p->flags |= P_EXPIRED;
    if (p->front_stage == FRONT_WAITING) {
        /* nginx closes a client that timed out without close_notify, and (at this log level) silently */
        if (p->ssl != NULL)
            SSL_set_quiet_shutdown(p->ssl, 1);
        front_end(p, "closed", NULL);
        return;
    }
    handshake_then_input_done(p); /* the session's read() then times out */
    if (p->read_waiter != NULL || p->drain_waiter != NULL || p->connect_waiter != NULL) {
        if (p->read_waiter != NULL)
            exchange_clear(p);
        PyObject *e = exception0(PyExc_TimeoutError);
        if (e == NULL) {
            PyErr_Clear();
            return;
        }
        fail(&p->read_waiter, e);
        fail(&p->drain_waiter, e);
        fail(&p->connect_waiter, e);
        Py_DECREF(e);
    }
}

/* ---------------------------------------------------------------------------------------------------- */
/* Peer: TLS (the server end), on the connection's own socket */

/* A handshake that succeeded and waited for the client's first input (start_tls(then_input=True)) ends:
 * input came, or the input ended, the connection failed or the deadline passed; read() tells which. */
static void
handshake_then_input_done(PeerObject *p)
{
    if (p->then_input != THEN_INPUT_WAITING)
        return;
    p->then_input = THEN_INPUT_NO;
    resolve(&p->handshake_waiter, Py_True);
}

/* TLS is over on this connection; a pending handshake ends with `outcome` (an exception or a bool). */
static void
tls_done(PeerObject *p, PyObject *outcome)
{
    p->tls_state = TLS_CLOSED;
    timer_cancel(p->reactor, &p->tls_timer);
    if (p->then_input == THEN_INPUT_WAITING) {
        handshake_then_input_done(p); /* the handshake succeeded; the session's read() learns the rest */
        return;
    }
    if (p->handshake_waiter == NULL)
        return;
    if (PyExceptionInstance_Check(outcome))
        fail(&p->handshake_waiter, outcome);
    else
        resolve(&p->handshake_waiter, outcome);
}

/* The connection ends at once: the handshake raises `error`, a reader gets it as the cause. */
static void
tls_failed(PeerObject *p, PyObject *error)
{
    Py_INCREF(p);
    if (p->front_stage == FRONT_HANDSHAKE && error != NULL) {
        /* A timeout or an EOF in the handshake goes without a line at this log level; anything else is
         * the session's to log. */
        int silent = PyErr_GivenExceptionMatches(error, PyExc_TimeoutError) ||
                     (Py_IS_TYPE(error, (PyTypeObject *)PyExc_ConnectionResetError) &&
                      (((PyOSErrorObject *)error)->myerrno == NULL || ((PyOSErrorObject *)error)->myerrno == Py_None));
        Py_INCREF(error);
        PyObject *cause = error;
        p->tls_state = TLS_CLOSED;
        timer_cancel(p->reactor, &p->tls_timer);
        peer_flush(p); /* the fatal alert, if any */
        front_end(p, silent ? "closed" : "failed", silent ? NULL : cause);
        if (p->fd >= 0)
            peer_do_close(p);
        Py_DECREF(cause);
        Py_DECREF(p);
        return;
    }
    if (p->tls_state != TLS_HANDSHAKE && p->error == NULL && error != NULL) {
        Py_INCREF(error);
        p->error = error;
    }
    tls_done(p, error);
    peer_flush(p); /* the fatal alert OpenSSL wrote, if any, goes out before the socket closes */
    peer_do_close(p);
    Py_DECREF(p);
}

static void
tls_failed_new(PeerObject *p, PyObject *error)
{
    if (error == NULL) {
        PyErr_WriteUnraisable((PyObject *)p);
        error = exception0(PyExc_ConnectionResetError);
        if (error == NULL) {
            PyErr_Clear();
            peer_do_close(p);
            return;
        }
    }
    tls_failed(p, error);
    Py_DECREF(error);
}

/* An SSL call failed: why, as the socket or OpenSSL's queue says (a new reference). */
static PyObject *
tls_call_error(PeerObject *p, const char *call, int in_handshake)
{
    if (p->bio_errno) {
        ERR_clear_error();
        return os_error(p->bio_errno);
    }
    if (p->bio_eof) {
        ERR_clear_error();
        /* An EOF without close_notify: in the handshake a reset (uvloop's and nginx's view alike). */
        return exception0(PyExc_ConnectionResetError);
    }
    return tls_failure(call);
}

/* The socket ended (EOF or an error) while TLS was open or closing: close as nginx does. */
static void
tls_socket_ended(PeerObject *p)
{
    if (p->bio_errno) {
        PyObject *error = os_error(p->bio_errno);
        tls_done(p, Py_False);
        peer_lost(p, error);
        Py_XDECREF(error);
        return;
    }
    /* TLS has no half-close: an EOF without close_notify ends the connection. */
    tls_done(p, Py_False);
    p->flags |= P_CLOSING;
    peer_flush(p);
    if (p->fd >= 0)
        peer_do_close(p);
}

/* TLS 1.3 resumption renews a session's creation time; keep its total lifetime within the timeout.
 * Called between the server's first flight and the client's Finished, before OpenSSL issues the new
 * tickets, on a connection that resumed a TLS 1.3 session. */
static void
clamp_resumed_tls13_lifetime(SSL *ssl)
{
    SSL_SESSION *session = SSL_get_session(ssl);
    if (session == NULL)
        return;
    long now = (long)time(NULL);
    long created = (long)SSL_SESSION_get_time(session);
    long timeout = (long)SSL_SESSION_get_timeout(session);
    long context_timeout = (long)SSL_CTX_get_timeout(SSL_get_SSL_CTX(ssl));
    if (context_timeout < timeout)
        timeout = context_timeout;
    if (now - created >= timeout)
        SSL_SESSION_set1_id_context(session, (const unsigned char *)"", 0);
    else {
        SSL_SESSION_set_time(session, now);
        SSL_SESSION_set_timeout(session, timeout - (now - created));
    }
}

static void
tls_handshake_step(PeerObject *p)
{
    ERR_clear_error();
    p->bio_eof = p->bio_errno = 0;
    int result = SSL_do_handshake(p->ssl);
    if (result == 1) {
        p->tls_state = TLS_OPEN;
        timer_cancel(p->reactor, &p->tls_timer);
        peer_flush(p);
        if (p->fd >= 0 && p->then_input == THEN_INPUT_ASKED && p->handshake_waiter != NULL) {
            p->then_input = THEN_INPUT_WAITING; /* read on in the same pull: it may have come with Finished */
            if (p->flags & P_EXPIRED)
                handshake_then_input_done(p);
        }
        else if (p->fd >= 0)
            resolve(&p->handshake_waiter, Py_True);
        if (p->fd >= 0 && p->front_stage == FRONT_HANDSHAKE)
            front_handshake_done(p);
        return;
    }
    int error = SSL_get_error(p->ssl, result);
    if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
        if (!p->resumption_checked && SSL_session_reused(p->ssl)) {
            /* The server's flight is out and the client's Finished not yet read: OpenSSL has not issued
             * this connection's new tickets yet. */
            p->resumption_checked = 1;
            if (SSL_version(p->ssl) == TLS1_3_VERSION)
                clamp_resumed_tls13_lifetime(p->ssl);
        }
        peer_flush(p);
        return;
    }
    tls_failed_new(p, tls_call_error(p, "SSL_do_handshake()", 1));
}

static void
tls_start_shutdown(PeerObject *p)
{
    p->tls_state = TLS_CLOSING;
    timer_set(p->reactor, &p->tls_timer, monotonic_now() + p->shutdown_timeout);
    tls_shutdown_step(p);
}

static void
tls_write_backlog(PeerObject *p)
{
    while (p->backlog.len) {
        ERR_clear_error();
        int n = SSL_write(p->ssl, p->backlog.data + p->backlog.start, (int)p->backlog.len);
        if (n <= 0)
            return;
        buffer_consume(&p->backlog, (size_t)n);
    }
}

static void
tls_pull(PeerObject *p)
{
    if (p->tls_state == TLS_HANDSHAKE) {
        tls_handshake_step(p);
        if (p->tls_state != TLS_OPEN || p->fd < 0)
            return;
        /* the client's first request may have come with its Finished: read it when someone wants it */
    }
    if (p->tls_state == TLS_CLOSING) {
        tls_shutdown_step(p);
        return;
    }
    if (p->tls_state != TLS_OPEN)
        return;
    char *scratch = p->reactor->scratch;
    int close_notify = 0;
    while (peer_wants_input(p) && p->tls_state == TLS_OPEN) {
        if (!(p->flags & P_READABLE) && !SSL_has_pending(p->ssl))
            break;
        ERR_clear_error();
        p->bio_eof = p->bio_errno = 0;
        int n = SSL_read(p->ssl, scratch, TLS_READ_SIZE);
        if (n > 0) {
            peer_deliver(p, scratch, (size_t)n);
            continue;
        }
        int error = SSL_get_error(p->ssl, n);
        if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
            if (!SSL_has_pending(p->ssl))
                p->flags &= ~P_READABLE;
            break;
        }
        if (error == SSL_ERROR_ZERO_RETURN) {
            close_notify = 1;
            break;
        }
        if (p->bio_eof || p->bio_errno) {
            peer_flush(p);
            tls_socket_ended(p);
            return;
        }
        tls_failed_new(p, tls_failure("SSL_read()"));
        return;
    }
    if (p->fd < 0)
        return;
    if (p->backlog.len)
        tls_write_backlog(p);
    peer_flush(p);
    if (close_notify && p->tls_state == TLS_OPEN && p->fd >= 0) {
        /* The client's close_notify: nginx closes without answering it. */
        SSL_set_quiet_shutdown(p->ssl, 1);
        peer_input_ended(p);
        if (p->tls_state == TLS_OPEN && p->fd >= 0)
            tls_start_shutdown(p);
    }
}

static void
tls_write(PeerObject *p, const char *data, size_t n)
{
    if (p->backlog.len) {
        if (buffer_append(&p->backlog, data, n) < 0)
            PyErr_Clear();
        return;
    }
    p->flags |= P_WRITING;
    while (n > 0) {
        ERR_clear_error();
        int chunk = n > TLS_WRITE_CHUNK ? TLS_WRITE_CHUNK : (int)n;
        int written = SSL_write(p->ssl, data, chunk);
        if (written > 0) {
            data += written;
            n -= (size_t)written;
            if (n > 0)
                peer_flush(p); /* a few records at a time: the output buffer stays small */
            if (p->fd < 0)
                return;
            continue;
        }
        p->flags &= ~P_WRITING;
        int error = SSL_get_error(p->ssl, written);
        if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
            /* a renegotiation or key update wants the client's answer first */
            if (buffer_append(&p->backlog, data, n) < 0)
                PyErr_Clear();
            break;
        }
        tls_failed_new(p, tls_failure("SSL_write()"));
        return;
    }
    p->flags &= ~P_WRITING;
    peer_flush(p);
}

/* Send our close_notify once everything written is sent, then wait for the client's. */
static void
tls_shutdown_step(PeerObject *p)
{
    char *scratch = p->reactor->scratch;
    int close_notify = 0;
    for (;;) { /* application data that still arrives is dropped */
        ERR_clear_error();
        p->bio_eof = p->bio_errno = 0;
        int n = SSL_read(p->ssl, scratch, TLS_READ_SIZE);
        if (n > 0)
            continue;
        int error = SSL_get_error(p->ssl, n);
        if (error == SSL_ERROR_ZERO_RETURN)
            close_notify = 1;
        else if (error != SSL_ERROR_WANT_READ && error != SSL_ERROR_WANT_WRITE) {
            if (p->bio_eof || p->bio_errno) {
                tls_socket_ended(p);
                return;
            }
            if (!(SSL_get_shutdown(p->ssl) & SSL_RECEIVED_SHUTDOWN)) {
                tls_failed_new(p, tls_failure("SSL_read()"));
                return;
            }
            ERR_clear_error();
            close_notify = 1;
        }
        else if (!SSL_has_pending(p->ssl))
            p->flags &= ~P_READABLE;
        break;
    }
    if (close_notify && !(p->flags & P_EOF))
        peer_input_ended(p);
    if (p->fd < 0)
        return;
    if (p->backlog.len) {
        tls_write_backlog(p);
        if (p->backlog.len) {
            peer_flush(p);
            return;
        }
    }
    ERR_clear_error();
    int result = SSL_shutdown(p->ssl);
    if (result == 0 && (SSL_get_shutdown(p->ssl) & SSL_RECEIVED_SHUTDOWN))
        result = SSL_shutdown(p->ssl);
    if (result != 1) {
        int error = result == 0 ? SSL_ERROR_WANT_READ : SSL_get_error(p->ssl, result);
        if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
            peer_flush(p);
            return;
        }
        if (p->bio_eof || p->bio_errno) {
            tls_socket_ended(p);
            return;
        }
        tls_failed_new(p, tls_failure("SSL_shutdown()"));
        return;
    }
    tls_done(p, Py_False);
    p->flags |= P_CLOSING;
    peer_flush(p);
}

static void
tls_timer_fired(PeerObject *p)
{
    if (p->tls_state == TLS_HANDSHAKE)
        tls_failed_new(p, exception0(PyExc_TimeoutError));
    else if (p->tls_state == TLS_CLOSING)
        tls_failed_new(p, exception1(PyExc_TimeoutError, "SSL shutdown timed out"));
}

/* ---------------------------------------------------------------------------------------------------- */
/* Peer: the Python type */

static PeerObject *
peer_alloc(ReactorObject *reactor, int fd, int family)
{
    PeerObject *p = (PeerObject *)PeerType.tp_alloc(&PeerType, 0);
    if (p == NULL)
        return NULL;
    Py_INCREF(reactor);
    p->reactor = reactor;
    p->fd = fd;
    p->family = family;
    p->flags = P_READABLE | P_WRITABLE;
    if (family == AF_INET || family == AF_INET6)
        p->flags |= P_TCP;
    p->deadline.index = p->tls_timer.index = -1;
    p->deadline.kind = TIMER_DEADLINE;
    p->tls_timer.kind = TIMER_TLS;
    p->deadline.owner = p->tls_timer.owner = p;
    p->tls_state = TLS_NONE;
    return p;
}

static int
socket_family(int fd)
{
    struct sockaddr_storage address;
    socklen_t length = sizeof address;
    if (getsockname(fd, (struct sockaddr *)&address, &length) < 0)
        return -1;
    return address.ss_family;
}

static PyObject *
Peer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"reactor", "fd", "family", NULL};
    ReactorObject *reactor;
    int fd, family = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!i|i", names, &ReactorType, &reactor, &fd, &family))
        return NULL;
    if (reactor->closed) {
        PyErr_SetString(PyExc_RuntimeError, "the reactor is closed");
        return NULL;
    }
    if (family < 0)
        family = socket_family(fd);
    PeerObject *p = peer_alloc(reactor, fd, family);
    if (p == NULL)
        return NULL;
    if (reactor_register(reactor, p) < 0) {
        p->fd = -1; /* the caller keeps its descriptor */
        Py_DECREF(p);
        return NULL;
    }
    return (PyObject *)p;
}

/* Peer.connect(reactor, family, host, port): a connection to the backend, under way. */
static PyObject *
Peer_connect(PyObject *cls, PyObject *args)
{
    ReactorObject *reactor;
    int family, port;
    const char *host;
    if (!PyArg_ParseTuple(args, "O!isi", &ReactorType, &reactor, &family, &host, &port))
        return NULL;
    struct sockaddr_storage address;
    socklen_t length;
    memset(&address, 0, sizeof address);
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&address;
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &in->sin_addr) != 1)
            return PyErr_Format(PyExc_ValueError, "not an IPv4 address: %s", host);
        length = sizeof *in;
    }
    else if (family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&address;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
            return PyErr_Format(PyExc_ValueError, "not an IPv6 address: %s", host);
        length = sizeof *in6;
    }
    else if (family == AF_UNIX) {
        struct sockaddr_un *un = (struct sockaddr_un *)&address;
        un->sun_family = AF_UNIX;
        if (strlen(host) >= sizeof un->sun_path)
            return PyErr_Format(PyExc_ValueError, "socket path too long: %s", host);
        strcpy(un->sun_path, host);
        length = sizeof *un;
    }
    else
        return PyErr_Format(PyExc_ValueError, "unsupported address family %d", family);
    return (PyObject *)peer_connect_address(reactor, family, (struct sockaddr *)&address, length);
}

/* A connection under way to `address` (NULL with an exception set when it cannot even start). */
static PeerObject *
peer_connect_address(ReactorObject *reactor, int family, const struct sockaddr *address, socklen_t length)
{
    if (reactor->closed) {
        PyErr_SetString(PyExc_RuntimeError, "the reactor is closed");
        return NULL;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    if (family != AF_UNIX) {
        int on = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    }
    PeerObject *p = peer_alloc(reactor, fd, family);
    if (p == NULL) {
        close(fd);
        return NULL;
    }
    int result;
    do
        result = connect(fd, address, length);
    while (result < 0 && errno == EINTR);
    if (result < 0 && errno != EINPROGRESS) {
        PyErr_SetFromErrno(PyExc_OSError);
        close(fd);
        p->fd = -1;
        Py_DECREF(p);
        return NULL;
    }
    if (result < 0)
        p->flags = (p->flags & ~P_WRITABLE) | P_CONNECTING;
    if (reactor_register(reactor, p) < 0) {
        close(fd);
        p->fd = -1;
        Py_DECREF(p);
        return NULL;
    }
    return p;
}

static PyObject *
Peer_connected(PeerObject *p, PyObject *unused)
{
    if (p->connect_waiter != NULL && future_done(p->connect_waiter))
        Py_CLEAR(p->connect_waiter);
    if (p->connect_waiter != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "already waiting for the connection");
        return NULL;
    }
    if (p->flags & P_LOST) {
        return failed_future(p->reactor, p->error ? (Py_INCREF(p->error), p->error) : os_error(ECONNRESET));
    }
    if (!(p->flags & P_CONNECTING))
        return completed_future(p->reactor, Py_None);
    if (p->flags & P_EXPIRED) {
        return failed_future(p->reactor, exception0(PyExc_TimeoutError));
    }
    PyObject *future = new_future(p->reactor);
    if (future == NULL)
        return NULL;
    Py_INCREF(future);
    p->connect_waiter = future;
    return future;
}

static PyObject *
take_in(PeerObject *p)
{
    PyObject *bytes = PyBytes_FromStringAndSize(p->in.data + p->in.start, (Py_ssize_t)p->in.len);
    if (bytes != NULL)
        buffer_free(&p->in);
    return bytes;
}

static PyObject *wait_for_input(PeerObject *p);

static PyObject *
Peer_read(PeerObject *p, PyObject *unused)
{
    exchange_clear(p); /* left by an exchange() whose wait failed */
    if (p->read_waiter != NULL && future_done(p->read_waiter))
        Py_CLEAR(p->read_waiter); /* its waiter was cancelled */
    if (p->read_waiter != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "already reading");
        return NULL;
    }
    if (p->in.len || (p->flags & P_EOF)) {
        PyObject *bytes = take_in(p);
        if (bytes == NULL)
            return NULL;
        PyObject *f = completed_future(p->reactor, bytes);
        Py_DECREF(bytes);
        return f;
    }
    return wait_for_input(p);
}

/* For a read waiting on `future`: what is in the socket already is read at once, even past the deadline;
 * then, past it, the read fails. */
static void
pull_for_reader(PeerObject *p, PyObject *future)
{
    peer_pull(p);
    if (p->read_waiter != future || !(p->flags & P_EXPIRED))
        return;
    PyObject *e = exception0(PyExc_TimeoutError);
    if (e == NULL) {
        PyErr_Clear();
        return;
    }
    exchange_clear(p);
    fail(&p->read_waiter, e);
    Py_DECREF(e);
}

/* read()'s future when nothing can be taken yet. */
static PyObject *
wait_for_input(PeerObject *p)
{
    PyObject *future = new_future(p->reactor);
    if (future == NULL)
        return NULL;
    Py_INCREF(future);
    p->read_waiter = future;
    peer_pull(p); /* what is in the socket already is read at once, even past the deadline */
    if (p->read_waiter != NULL && (p->flags & P_EXPIRED)) {
        PyObject *e = exception0(PyExc_TimeoutError);
        if (e == NULL) {
            Py_CLEAR(p->read_waiter);
            Py_DECREF(future);
            return NULL;
        }
        fail(&p->read_waiter, e);
        Py_DECREF(e);
    }
    return future;
}

/* Checks and sets up an exchange's steps; -1 with an exception set when it cannot start. */
static int
exchange_prepare(PeerObject *p, PyObject *steps, Py_ssize_t capacity)
{
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(steps); i++) {
        PyObject *step = PyTuple_GET_ITEM(steps, i);
        if (!PyTuple_Check(step) || PyTuple_GET_SIZE(step) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(step, 0)) ||
            !PyBytes_Check(PyTuple_GET_ITEM(step, 1))) {
            PyErr_SetString(PyExc_TypeError, "exchange() steps are (prefix, answer) pairs of bytes");
            return -1;
        }
    }
    if (p->tls_state != TLS_NONE || p->relay != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "exchange() is for a plain connection outside a relay");
        return -1;
    }
    if (p->read_waiter != NULL && future_done(p->read_waiter))
        Py_CLEAR(p->read_waiter); /* its waiter was cancelled */
    if (p->read_waiter != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "already reading");
        return -1;
    }
    exchange_clear(p);
    p->exchanged = 0;
    p->exchange_capacity = capacity > 0 ? (size_t)capacity : 0;
    Py_INCREF(steps);
    p->exchange_steps = steps;
    return 0;
}

static PyObject *
Peer_exchange(PeerObject *p, PyObject *args)
{
    PyObject *steps;
    Py_ssize_t capacity;
    if (!PyArg_ParseTuple(args, "O!n", &PyTuple_Type, &steps, &capacity))
        return NULL;
    if (exchange_prepare(p, steps, capacity) < 0)
        return NULL;
    if ((p->in.len && exchange_advance(p)) || (p->flags & P_EOF))
        return Peer_read(p, NULL); /* which ends the exchange */
    PyObject *future = wait_for_input(p);
    if (future == NULL || p->read_waiter == NULL)
        exchange_clear(p); /* resolved or failed at once: nothing left to answer */
    return future;
}

static PyObject *
Peer_read_auth_then_login(PeerObject *p, PyObject *plan)
{
    PeerObject *client;
    double backend_timeout, proxy_timeout;
    PyObject *steps, *final, *replacement, *to_backend, *on_start;
    Py_ssize_t capacity;
    if (!PyTuple_Check(plan) ||
        !PyArg_ParseTuple(plan, "O!ddO!nO!OO!O", &PeerType, &client, &backend_timeout, &proxy_timeout, &PyTuple_Type,
                          &steps, &capacity, &PyBytes_Type, &final, &replacement, &PyBytes_Type, &to_backend,
                          &on_start)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "read_auth_then_login() takes a plan tuple");
        return NULL;
    }
    exchange_clear(p);
    Py_CLEAR(p->login_started);
    if (p->read_waiter != NULL && future_done(p->read_waiter))
        Py_CLEAR(p->read_waiter); /* its waiter was cancelled */
    if (p->read_waiter != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "already reading");
        return NULL;
    }
    if (p->in.len || (p->flags & P_EOF))
        return Peer_read(p, NULL); /* what is there already is the reader's */
    PyObject *future = new_future(p->reactor);
    if (future == NULL)
        return NULL;
    Py_INCREF(plan);
    p->auth_plan = plan;
    Py_INCREF(future);
    p->read_waiter = future;
    Py_INCREF(p);
    pull_for_reader(p, future);
    Py_DECREF(p);
    return future;
}

static PyObject *
Peer_get_relay(PeerObject *p, void *closure)
{
    PyObject *relay = p->relay != NULL ? (PyObject *)p->relay : Py_None;
    Py_INCREF(relay);
    return relay;
}

static PyObject *
Peer_get_login_started(PeerObject *p, void *closure)
{
    PyObject *started = p->login_started != NULL ? p->login_started : Py_None;
    Py_INCREF(started);
    return started;
}

static PyObject *
Peer_get_exchanged(PeerObject *p, void *closure)
{
    return PyLong_FromSsize_t(p->exchanged);
}

static PyObject *
Peer_take_buffered(PeerObject *p, PyObject *unused)
{
    return take_in(p);
}

static PyObject *
Peer_discard_buffered(PeerObject *p, PyObject *unused)
{
    buffer_free(&p->in);
    Py_RETURN_NONE;
}

static PyObject *
Peer_write(PeerObject *p, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_INCREF(p);
    peer_write(p, view.buf, (size_t)view.len);
    Py_DECREF(p);
    PyBuffer_Release(&view);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Peer_drain(PeerObject *p, PyObject *unused)
{
    if (p->flags & P_LOST) {
        return failed_future(p->reactor, exception1(PyExc_ConnectionResetError, "connection lost"));
    }
    if (p->out.len == 0 && p->backlog.len == 0)
        return completed_future(p->reactor, Py_None);
    if (p->flags & P_EXPIRED) {
        return failed_future(p->reactor, exception0(PyExc_TimeoutError));
    }
    if (p->drain_waiter != NULL && future_done(p->drain_waiter))
        Py_CLEAR(p->drain_waiter);
    if (p->drain_waiter != NULL) {
        Py_INCREF(p->drain_waiter);
        return p->drain_waiter;
    }
    PyObject *future = new_future(p->reactor);
    if (future == NULL)
        return NULL;
    Py_INCREF(future);
    p->drain_waiter = future;
    return future;
}

static PyObject *
Peer_set_deadline(PeerObject *p, PyObject *arg)
{
    timer_cancel(p->reactor, &p->deadline);
    p->flags &= ~P_EXPIRED;
    if (arg == Py_None || p->fd < 0)
        Py_RETURN_NONE;
    double when = PyFloat_AsDouble(arg);
    if (when == -1.0 && PyErr_Occurred())
        return NULL;
    if (timer_set(p->reactor, &p->deadline, when) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* The connection becomes the server end of TLS; the handshake starts at the next tls_handshake_step. */
static int
tls_begin(PeerObject *p, unsigned long long context, double shutdown_timeout)
{
    SSL *ssl = SSL_new((SSL_CTX *)(uintptr_t)context);
    if (ssl == NULL) {
        ERR_clear_error();
        PyErr_NoMemory();
        return -1;
    }
    BIO *bio = BIO_new(peer_bio_method);
    if (bio == NULL) {
        SSL_free(ssl);
        ERR_clear_error();
        PyErr_NoMemory();
        return -1;
    }
    BIO_set_data(bio, p);
    SSL_set_bio(ssl, bio, bio);
    SSL_set_accept_state(ssl);
    /* OpenSSL frees its record buffers while a connection is idle, as nginx asks too. */
    SSL_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
    SSL_set_read_ahead(ssl, 1);
    p->ssl = ssl;
    p->tls_state = TLS_HANDSHAKE;
    p->shutdown_timeout = shutdown_timeout;
    return 0;
}

static PyObject *
Peer_start_tls(PeerObject *p, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"ssl_ctx", "timeout", "shutdown_timeout", "then_input", NULL};
    unsigned long long context;
    double timeout, shutdown_timeout;
    int then_input = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Kdd|p", names, &context, &timeout, &shutdown_timeout,
                                     &then_input))
        return NULL;
    if (p->tls_state != TLS_NONE) {
        PyErr_SetString(PyExc_RuntimeError, "TLS is on already");
        return NULL;
    }
    if (p->fd < 0 || (p->flags & P_LOST))
        return completed_future(p->reactor, Py_False);
    PyObject *future = new_future(p->reactor);
    if (future == NULL)
        return NULL;
    if (tls_begin(p, context, shutdown_timeout) < 0) {
        Py_DECREF(future);
        return NULL;
    }
    Py_INCREF(future);
    p->handshake_waiter = future;
    p->then_input = then_input ? THEN_INPUT_ASKED : THEN_INPUT_NO;
    timer_set(p->reactor, &p->tls_timer, monotonic_now() + timeout);
    Py_INCREF(p);
    tls_handshake_step(p);
    Py_DECREF(p);
    return future;
}

/* ---------------------------------------------------------------------------------------------------- */
/* The front of a session, before any Python: TLS handshake, the greeting, and the wait for the client's
 * first command. A connection that ends before it sends one (a handshake-only client, a timeout) is
 * closed here; otherwise callback(context, peer, stage, error) hands the session over once:
 * "greeted" (the first input is buffered), "handshaken" (no greeting was given), "failed" (a handshake
 * failure to log), "closed" (nothing for the session to do). The caller only asks for a front where
 * these endings log nothing (nginx logs them at info). */

static void
front_greet(PeerObject *p)
{
    if (p->front_greeting == NULL || p->front_greeting == Py_None) {
        front_end(p, "handshaken", NULL);
        return;
    }
    peer_write(p, PyBytes_AS_STRING(p->front_greeting), (size_t)PyBytes_GET_SIZE(p->front_greeting));
    if (p->fd < 0)
        return;
    p->front_stage = FRONT_WAITING;
    timer_set(p->reactor, &p->deadline, monotonic_now() + p->front_wait);
    /* input may be there already (it came with the client's Finished): read it when the pull loop runs */
}

static void
front_handshake_done(PeerObject *p)
{
    front_greet(p);
}

static void
front_end(PeerObject *p, const char *stage, PyObject *error)
{
    if (p->front_stage == FRONT_NONE)
        return;
    p->front_stage = FRONT_NONE;
    Py_INCREF(p);
    timer_cancel(p->reactor, &p->deadline);
    p->flags &= ~P_EXPIRED;
    PyObject *callback = p->front_callback, *context = p->front_context;
    ListenerObject *listener = p->front_listener;
    p->front_callback = p->front_context = NULL;
    p->front_listener = NULL;
    Py_CLEAR(p->front_greeting);
    int closed = strcmp(stage, "closed") == 0;
    if (closed && p->fd >= 0)
        Py_XDECREF(Peer_close(p, NULL));
    if (closed && listener != NULL) {
        listener_front_closed(listener, p); /* nothing for a session to do: no Python call either */
    }
    else if (callback != NULL) {
        PyObject *result = PyObject_CallFunction(callback, "OOsO", context ? context : Py_None, p, stage,
                                                 error ? error : Py_None);
        if (result == NULL) {
            PyErr_WriteUnraisable(callback);
            if (p->fd >= 0)
                Py_XDECREF(Peer_abort(p, NULL));
        }
        Py_XDECREF(result);
    }
    Py_XDECREF(callback);
    Py_XDECREF(context);
    Py_XDECREF((PyObject *)listener);
    Py_DECREF(p);
}

/* The front's arguments, as start_front() and a listener's set_front() take them. */
typedef struct {
    unsigned long long context;
    double handshake_timeout, shutdown_timeout, wait;
    PyObject *greeting;
} FrontPlan;

static int
front_plan_check(const FrontPlan *plan)
{
    if (plan->greeting != Py_None && !PyBytes_Check(plan->greeting)) {
        PyErr_SetString(PyExc_TypeError, "the greeting is bytes or None");
        return -1;
    }
    return 0;
}

static int
front_plan_parse(PyObject *args, FrontPlan *plan)
{
    if (!PyArg_ParseTuple(args, "KddOd", &plan->context, &plan->handshake_timeout, &plan->shutdown_timeout,
                          &plan->greeting, &plan->wait))
        return -1;
    return front_plan_check(plan);
}

static int
front_begin(PeerObject *p, const FrontPlan *plan, PyObject *callback, PyObject *callback_context)
{
    unsigned long long context = plan->context;
    double handshake_timeout = plan->handshake_timeout, shutdown_timeout = plan->shutdown_timeout;
    double wait = plan->wait;
    PyObject *greeting = plan->greeting;
    if (p->front_stage != FRONT_NONE || p->tls_state != TLS_NONE || p->fd < 0) {
        PyErr_SetString(PyExc_RuntimeError, "no front for this connection");
        return -1;
    }
    Py_INCREF(greeting);
    Py_INCREF(callback);
    Py_INCREF(callback_context);
    p->front_greeting = greeting;
    p->front_callback = callback;
    p->front_context = callback_context;
    p->front_wait = wait;
    Py_INCREF(p);
    if (context) {
        if (tls_begin(p, context, shutdown_timeout) < 0) {
            p->front_stage = FRONT_NONE;
            Py_CLEAR(p->front_greeting);
            Py_CLEAR(p->front_callback);
            Py_CLEAR(p->front_context);
            Py_DECREF(p);
            return -1;
        }
        p->front_stage = FRONT_HANDSHAKE;
        timer_set(p->reactor, &p->tls_timer, monotonic_now() + handshake_timeout);
        tls_handshake_step(p);
    }
    else {
        p->front_stage = FRONT_HANDSHAKE; /* so that front_greet can end it */
        front_greet(p);
    }
    if (p->front_stage == FRONT_WAITING && p->fd >= 0)
        peer_pull(p);
    Py_DECREF(p);
    return 0;
}

static PyObject *
Peer_start_front(PeerObject *p, PyObject *args)
{
    FrontPlan plan;
    PyObject *callback, *callback_context;
    if (!PyArg_ParseTuple(args, "KddOdOO", &plan.context, &plan.handshake_timeout, &plan.shutdown_timeout,
                          &plan.greeting, &plan.wait, &callback, &callback_context) ||
        front_plan_check(&plan) < 0 || front_begin(p, &plan, callback, callback_context) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Peer_close(PeerObject *p, PyObject *unused)
{
    timer_cancel(p->reactor, &p->deadline);
    if (p->read_waiter == NULL)
        exchange_clear(p); /* a waiting read still ends it, when the connection does */
    if (p->fd < 0 || (p->flags & P_CLOSING))
        Py_RETURN_NONE;
    Py_INCREF(p);
    switch (p->tls_state) {
    case TLS_NONE:
    case TLS_CLOSED:
        p->flags |= P_CLOSING;
        peer_flush(p);
        break;
    case TLS_OPEN:
        tls_start_shutdown(p);
        break;
    case TLS_HANDSHAKE:
        tls_done(p, Py_False);
        peer_do_close(p);
        break;
    }
    Py_DECREF(p);
    Py_RETURN_NONE;
}

static PyObject *
Peer_abort(PeerObject *p, PyObject *unused)
{
    Py_INCREF(p);
    timer_cancel(p->reactor, &p->deadline);
    if (p->tls_state != TLS_NONE && p->tls_state != TLS_CLOSED)
        tls_done(p, Py_False);
    peer_do_close(p);
    Py_DECREF(p);
    Py_RETURN_NONE;
}

static PyObject *
Peer_quiet_shutdown(PeerObject *p, PyObject *unused)
{
    if (p->ssl != NULL)
        SSL_set_quiet_shutdown(p->ssl, 1);
    Py_RETURN_NONE;
}

/* A socket address as Python's socket module gives it. */
static PyObject *
address_object(struct sockaddr_storage *address, socklen_t length)
{
    char text[INET6_ADDRSTRLEN];
    if (address->ss_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)address;
        inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
        return Py_BuildValue("(si)", text, ntohs(in->sin_port));
    }
    if (address->ss_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)address;
        inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text);
        return Py_BuildValue("(siII)", text, ntohs(in6->sin6_port), ntohl(in6->sin6_flowinfo),
                             in6->sin6_scope_id);
    }
    if (address->ss_family == AF_UNIX) {
        struct sockaddr_un *un = (struct sockaddr_un *)address;
        Py_ssize_t size = (Py_ssize_t)length - (Py_ssize_t)offsetof(struct sockaddr_un, sun_path);
        if (size <= 0)
            return PyUnicode_FromString("");
        if (un->sun_path[0] == 0)
            return PyBytes_FromStringAndSize(un->sun_path, size);
        return PyUnicode_DecodeFSDefault(un->sun_path);
    }
    Py_RETURN_NONE;
}

static PyObject *
Peer_getsockname(PeerObject *p, PyObject *unused)
{
    struct sockaddr_storage address;
    socklen_t length = sizeof address;
    if (p->fd < 0) {
        errno = EBADF;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (getsockname(p->fd, (struct sockaddr *)&address, &length) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return address_object(&address, length);
}

/* Bytes read too far (past a PROXY protocol header) go back in front of what is still to read. */
static PyObject *
Peer_unread(PeerObject *p, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Buffer joined = {0};
    int failed = buffer_append(&joined, view.buf, (size_t)view.len) < 0 ||
                 buffer_append(&joined, p->in.data ? p->in.data + p->in.start : NULL, p->in.len) < 0;
    PyBuffer_Release(&view);
    if (failed) {
        buffer_free(&joined);
        return PyErr_NoMemory();
    }
    buffer_free(&p->in);
    p->in = joined;
    Py_RETURN_NONE;
}

static PyObject *
Peer_fileno(PeerObject *p, PyObject *unused)
{
    return PyLong_FromLong(p->fd);
}

static PyObject *
Peer_get_at_eof(PeerObject *p, void *closure)
{
    return PyBool_FromLong((p->flags & P_EOF) && p->in.len == 0);
}

static PyObject *
Peer_get_input_ended(PeerObject *p, void *closure)
{
    return PyBool_FromLong(p->flags & P_EOF);
}

static PyObject *
Peer_get_is_closed(PeerObject *p, void *closure)
{
    return PyBool_FromLong(p->flags & P_LOST);
}

static PyObject *
Peer_get_failed_in(PeerObject *p, void *closure)
{
    if (p->flags & P_CONNECT_FAILED)
        return PyUnicode_FromString("connect");
    if (p->flags & P_SEND_FAILED)
        return PyUnicode_FromString("send");
    Py_RETURN_NONE;
}

static PyObject *
Peer_get_receive_error(PeerObject *p, void *closure)
{
    if (p->error != NULL && PyObject_IsInstance(p->error, PyExc_OSError) == 1) {
        Py_INCREF(p->error);
        return p->error;
    }
    Py_RETURN_NONE;
}

static PyObject *
Peer_get_write_buffer_size(PeerObject *p, void *closure)
{
    return PyLong_FromSize_t(p->out.len + p->backlog.len);
}

static PyObject *
Peer_get_ssl(PeerObject *p, void *closure)
{
    return PyLong_FromVoidPtr(p->ssl);
}

static PyObject *
Peer_get_tls_open(PeerObject *p, void *closure)
{
    return PyBool_FromLong(p->tls_state == TLS_OPEN);
}

static int
Peer_traverse(PeerObject *p, visitproc visit, void *arg)
{
    Py_VISIT(p->reactor);
    Py_VISIT(p->read_waiter);
    Py_VISIT(p->drain_waiter);
    Py_VISIT(p->connect_waiter);
    Py_VISIT(p->handshake_waiter);
    Py_VISIT(p->error);
    Py_VISIT(p->front_greeting);
    Py_VISIT(p->front_callback);
    Py_VISIT(p->front_context);
    Py_VISIT((PyObject *)p->front_listener);
    Py_VISIT(p->exchange_steps);
    Py_VISIT(p->pending_relay);
    Py_VISIT(p->auth_plan);
    Py_VISIT(p->login_started);
    return 0;
}

static int
Peer_clear(PeerObject *p)
{
    Py_CLEAR(p->read_waiter);
    Py_CLEAR(p->drain_waiter);
    Py_CLEAR(p->connect_waiter);
    Py_CLEAR(p->handshake_waiter);
    Py_CLEAR(p->error);
    Py_CLEAR(p->front_greeting);
    Py_CLEAR(p->front_callback);
    Py_CLEAR(p->front_context);
    Py_CLEAR(p->front_listener);
    exchange_clear(p);
    Py_CLEAR(p->login_started);
    return 0;
}

static void
Peer_dealloc(PeerObject *p)
{
    PyObject_GC_UnTrack(p);
    if (p->fd >= 0)
        close(p->fd);
    if (p->reactor != NULL) {
        timer_cancel(p->reactor, &p->deadline);
        timer_cancel(p->reactor, &p->tls_timer);
    }
    if (p->ssl != NULL) {
        BIO *bio = SSL_get_rbio(p->ssl);
        if (bio)
            BIO_set_data(bio, NULL);
        /* Marked as shut down however the connection ended, as nginx's ngx_ssl_shutdown does, so that
         * its session stays resumable (OpenSSL drops sessions of SSLs freed without a shutdown). */
        if (!SSL_in_init(p->ssl))
            SSL_set_shutdown(p->ssl, SSL_get_shutdown(p->ssl) | SSL_SENT_SHUTDOWN);
        SSL_free(p->ssl);
        ERR_clear_error();
    }
    buffer_free(&p->in);
    buffer_free(&p->out);
    buffer_free(&p->backlog);
    Peer_clear(p);
    Py_CLEAR(p->reactor);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static PyMethodDef Peer_methods[] = {
    {"connect", (PyCFunction)Peer_connect, METH_VARARGS | METH_CLASS,
     "connect(reactor, family, host, port): a connection under way; await connected()."},
    {"connected", (PyCFunction)Peer_connected, METH_NOARGS,
     "A future: None once connected; OSError if the connect failed, TimeoutError past the deadline."},
    {"read", (PyCFunction)Peer_read, METH_NOARGS,
     "A future: every byte received so far (at least one); b'' once the peer has closed; TimeoutError "
     "past the deadline."},
    {"read_auth_then_login", (PyCFunction)Peer_read_auth_then_login, METH_O,
     "read_auth_then_login((client, backend_timeout, proxy_timeout, steps, capacity, final, replacement, "
     "to_backend, on_start)): read() of an auth reply that, when it is the usual success (Auth-Status OK, an "
     "IPv4 Auth-Server and Auth-Port, no other Auth- header), closes this connection, connects to that "
     "backend and runs Relay(client, backend, proxy_timeout, True).run_after_login(steps, capacity, final, "
     "replacement, to_backend, on_start) on it within backend_timeout, without resolving in between "
     "(on_start is called with the upstream, `Auth-Server:Auth-Port`); "
     "login_started then tells (backend, relay, upstream) and the future resolves as that one does. "
     "Otherwise it resolves as read() does, with the reply."},
    {"exchange", (PyCFunction)Peer_exchange, METH_VARARGS,
     "exchange(steps, capacity): read() that first answers, in order, each reply that starts with a step's "
     "prefix with the step's answer (a reply: 4 bytes or more ending with CRLF, shorter than capacity); "
     "resolves with the first reply no step answers. `exchanged` tells how many were answered."},
    {"take_buffered", (PyCFunction)Peer_take_buffered, METH_NOARGS, "The bytes received and not read yet."},
    {"discard_buffered", (PyCFunction)Peer_discard_buffered, METH_NOARGS,
     "Forget unread bytes (after STARTTLS: plaintext sent behind the command is never executed)."},
    {"write", (PyCFunction)Peer_write, METH_O, "Send bytes (over TLS once it is on)."},
    {"drain", (PyCFunction)Peer_drain, METH_NOARGS,
     "A future: None once everything written is sent; ConnectionResetError if the peer is gone, "
     "TimeoutError past the deadline."},
    {"set_deadline", (PyCFunction)Peer_set_deadline, METH_O,
     "From this time on (the event loop's clock), waits raise TimeoutError; None: no deadline."},
    {"start_tls", (PyCFunction)(void (*)(void))Peer_start_tls, METH_VARARGS | METH_KEYWORDS,
     "start_tls(ssl_ctx_address, timeout, shutdown_timeout, then_input=False): be the server end of TLS; a "
     "future: True once the handshake is done (with then_input, once the client's first input after it is "
     "buffered, or its input ended, failed or timed out: read() tells), False when the connection closed "
     "during the handshake; raises the handshake's failure."},
    {"start_front", (PyCFunction)Peer_start_front, METH_VARARGS,
     "start_front(ssl_ctx or 0, handshake_timeout, shutdown_timeout, greeting or None, wait, callback, "
     "context): run the session's front here (TLS handshake, greeting, wait for the first command) and "
     "call callback(context, peer, stage, error) once: stage 'greeted', 'handshaken', 'failed' or 'closed'."},
    {"close", (PyCFunction)Peer_close, METH_NOARGS,
     "Close after the pending output is sent (over TLS: with close_notify, waiting shutdown_timeout for "
     "the client's)."},
    {"abort", (PyCFunction)Peer_abort, METH_NOARGS, "Close now, dropping pending output."},
    {"quiet_shutdown", (PyCFunction)Peer_quiet_shutdown, METH_NOARGS,
     "Let the coming TLS shutdown send no close_notify."},
    {"getsockname", (PyCFunction)Peer_getsockname, METH_NOARGS, "Our end's address, as socket.getsockname()."},
    {"unread", (PyCFunction)Peer_unread, METH_O,
     "Put bytes back in front of what the next read returns (or TLS reads first)."},
    {"fileno", (PyCFunction)Peer_fileno, METH_NOARGS, "The socket's descriptor (-1 once closed)."},
    {NULL}};

static PyGetSetDef Peer_getset[] = {
    {"at_eof", (getter)Peer_get_at_eof, NULL, "The peer sends no more and every byte was read.", NULL},
    {"input_ended", (getter)Peer_get_input_ended, NULL, "The peer sends no more (EOF, close_notify).", NULL},
    {"is_closed", (getter)Peer_get_is_closed, NULL, "The connection is gone.", NULL},
    {"failed_in", (getter)Peer_get_failed_in, NULL,
     "Where a connection that failed broke: 'connect', 'send', or None (a receive, or no failure).", NULL},
    {"receive_error", (getter)Peer_get_receive_error, NULL,
     "Why the connection was lost, when it was an error (a reset, a TLS failure) rather than a close.", NULL},
    {"write_buffer_size", (getter)Peer_get_write_buffer_size, NULL, "Bytes written and not sent yet.", NULL},
    {"ssl", (getter)Peer_get_ssl, NULL, "The address of the connection's SSL once start_tls was called, else 0.",
     NULL},
    {"exchanged", (getter)Peer_get_exchanged, NULL, "Steps answered by the last exchange().", NULL},
    {"relay", (getter)Peer_get_relay, NULL, "The relay this connection is in while it runs, else None.", NULL},
    {"login_started", (getter)Peer_get_login_started, NULL,
     "(backend, relay, upstream) once read_auth_then_login() took the reply and started the login; else None.",
     NULL},
    {"tls_open", (getter)Peer_get_tls_open, NULL, "The handshake is done and TLS not closing.", NULL},
    {NULL}};

static PyTypeObject PeerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mailgate._io.Peer",
    .tp_basicsize = sizeof(PeerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Peer(reactor, fd): one connection of a session, taking the connected socket's descriptor.",
    .tp_new = Peer_new,
    .tp_dealloc = (destructor)Peer_dealloc,
    .tp_traverse = (traverseproc)Peer_traverse,
    .tp_clear = (inquiry)Peer_clear,
    .tp_methods = Peer_methods,
    .tp_getset = Peer_getset,
};

/* ---------------------------------------------------------------------------------------------------- */
/* Relay */

static void
relay_arm(RelayObject *r)
{
    double quiet = r->timeout;
    if (r->backend_owed_eof && HALF_CLOSE_QUIET < quiet)
        quiet = HALF_CLOSE_QUIET;
    timer_set(r->client->reactor, &r->timer, r->last_activity + quiet);
}

static void
relay_finish(RelayObject *r, const char *reason)
{
    if (r->finished)
        return;
    r->finished = 1;
    Py_INCREF(r);
    timer_cancel(r->client->reactor, &r->timer);
    r->client->relay = NULL;
    r->backend->relay = NULL;
    /* Closing flushes what is queued, so bytes already relayed still reach their destination. */
    PyObject *result = Py_BuildValue("(sLLO)", reason, r->client_to_backend, r->backend_to_client,
                                     r->client->error != NULL && PyObject_IsInstance(r->client->error,
                                                                                     PyExc_OSError) == 1
                                         ? r->client->error
                                         : Py_None);
    Py_XDECREF(Peer_close(r->backend, NULL));
    Py_XDECREF(Peer_close(r->client, NULL));
    if (result != NULL)
        resolve(&r->done, result);
    else
        PyErr_WriteUnraisable((PyObject *)r);
    Py_XDECREF(result);
    Py_DECREF(r);
}

static void
relay_forward(RelayObject *r, PeerObject *source, const char *data, size_t n)
{
    PeerObject *target = source == r->client ? r->backend : r->client;
    if (target->flags & P_LOST)
        return;
    peer_write(target, data, n);
    if (source == r->client)
        r->client_to_backend += (long long)n;
    else
        r->backend_to_client += (long long)n;
    r->last_activity = monotonic_now();
}

static void
relay_end_of_input(RelayObject *r, PeerObject *p)
{
    if (r->finished)
        return;
    if (p == r->backend) {
        relay_finish(r, "backend closed");
        return;
    }
    PeerObject *backend = r->backend;
    if (backend->fd >= 0 && !(backend->flags & (P_LOST | P_CLOSING)) && backend->tls_state == TLS_NONE) {
        r->backend_owed_eof = 1;
        relay_arm(r);
    }
    else
        relay_finish(r, "client closed");
}

static void
relay_lost(RelayObject *r, PeerObject *p)
{
    if (!r->finished)
        relay_finish(r, p == r->client ? "client closed" : "backend closed");
}

/* `target` took its output down to the low mark: read its source again. */
static void
relay_resume_towards(RelayObject *r, PeerObject *target)
{
    if (r->finished || !r->running)
        return;
    PeerObject *source = target == r->client ? r->backend : r->client;
    if (source->fd >= 0 && peer_wants_input(source) &&
        ((source->flags & P_READABLE) || (source->ssl != NULL && SSL_has_pending(source->ssl))))
        peer_pull(source);
}

static void
relay_timer_fired(RelayObject *r)
{
    if (r->finished)
        return;
    double now = monotonic_now();
    if (now >= r->last_activity + r->timeout) {
        if (r->quiet_on_timeout && r->client->ssl != NULL)
            SSL_set_quiet_shutdown(r->client->ssl, 1); /* nginx closes a client that timed out quietly */
        relay_finish(r, "timed out");
        return;
    }
    if (r->backend_owed_eof && now >= r->last_activity + HALF_CLOSE_QUIET) {
        r->backend_owed_eof = 0;
        PeerObject *backend = r->backend;
        if (backend->fd >= 0 && !(backend->flags & (P_LOST | P_CLOSING))) {
            backend->flags |= P_SHUT_WR; /* sent after the bytes still queued */
            peer_flush(backend);
        }
    }
    if (!r->finished)
        relay_arm(r);
}

static PyObject *
Relay_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"client", "backend", "timeout", "quiet_on_timeout", NULL};
    PeerObject *client, *backend;
    double timeout;
    int quiet = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!d|p", names, &PeerType, &client, &PeerType, &backend,
                                     &timeout, &quiet))
        return NULL;
    RelayObject *r = (RelayObject *)type->tp_alloc(type, 0);
    if (r == NULL)
        return NULL;
    Py_INCREF(client);
    Py_INCREF(backend);
    r->client = client;
    r->backend = backend;
    r->timeout = timeout;
    r->quiet_on_timeout = quiet;
    r->timer.index = -1;
    r->timer.kind = TIMER_RELAY;
    r->timer.owner = r;
    return (PyObject *)r;
}

/* Start relaying: `future` (a reference this takes) resolves once it ends. What each side is owed goes
 * first: the backend's bytes after its login reply, the client's bytes pipelined behind its login, then
 * what the peers had buffered. */
static void
relay_begin(RelayObject *r, PyObject *future, const char *to_client, size_t to_client_len, const char *to_backend,
            size_t to_backend_len)
{
    PeerObject *client = r->client, *backend = r->backend;
    r->done = future;
    r->running = 1;
    Py_INCREF(r);
    r->last_activity = monotonic_now();
    PyObject *backend_early = take_in(backend), *client_early = take_in(client);
    client->relay = backend->relay = r;
    if (to_client_len)
        relay_forward(r, backend, to_client, to_client_len);
    if (backend_early != NULL && PyBytes_GET_SIZE(backend_early))
        relay_forward(r, backend, PyBytes_AS_STRING(backend_early), (size_t)PyBytes_GET_SIZE(backend_early));
    if (to_backend_len)
        relay_forward(r, client, to_backend, to_backend_len);
    if (client_early != NULL && PyBytes_GET_SIZE(client_early))
        relay_forward(r, client, PyBytes_AS_STRING(client_early), (size_t)PyBytes_GET_SIZE(client_early));
    Py_XDECREF(backend_early);
    Py_XDECREF(client_early);
    PyErr_Clear();
    PeerObject *peers[2] = {client, backend};
    for (int i = 0; i < 2 && !r->finished; i++) {
        if (peers[i]->flags & P_LOST)
            relay_lost(r, peers[i]);
        else if (peers[i]->flags & P_EOF)
            relay_end_of_input(r, peers[i]);
    }
    if (!r->finished) {
        relay_arm(r);
        peer_pull(client);
        if (!r->finished)
            peer_pull(backend); /* nothing, when the backend is being read already (a login's last reply) */
    }
    Py_DECREF(r);
}

static PyObject *
Relay_run(RelayObject *r, PyObject *args)
{
    Py_buffer to_client, to_backend;
    if (r->running || r->backend->pending_relay == r) {
        PyErr_SetString(PyExc_RuntimeError, "the relay runs already");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*y*", &to_client, &to_backend))
        return NULL;
    PyObject *future = new_future(r->client->reactor);
    if (future != NULL) {
        Py_INCREF(future);
        relay_begin(r, future, to_client.buf, (size_t)to_client.len, to_backend.buf, (size_t)to_backend.len);
    }
    PyBuffer_Release(&to_client);
    PyBuffer_Release(&to_backend);
    return future;
}

/* The backend's exchange (prepared) is to end in the relay when the login's final reply starts with `final`. */
static void
relay_expect_login(RelayObject *r, PyObject *final, PyObject *replacement, PyObject *to_backend, PyObject *on_start)
{
    Py_INCREF(r);
    r->backend->pending_relay = r;
    Py_INCREF(final);
    r->login_final = final;
    Py_INCREF(replacement);
    r->login_replacement = replacement;
    Py_INCREF(to_backend);
    r->login_to_backend = to_backend;
    Py_INCREF(on_start);
    r->login_on_start = on_start;
}

static PyObject *
Relay_run_after_login(RelayObject *r, PyObject *args)
{
    PyObject *steps, *final, *replacement, *to_backend, *on_start;
    Py_ssize_t capacity;
    if (!PyArg_ParseTuple(args, "O!nO!OO!O", &PyTuple_Type, &steps, &capacity, &PyBytes_Type, &final, &replacement,
                          &PyBytes_Type, &to_backend, &on_start))
        return NULL;
    if (replacement != Py_None && !PyBytes_Check(replacement)) {
        PyErr_SetString(PyExc_TypeError, "run_after_login() replacement is bytes or None");
        return NULL;
    }
    PeerObject *p = r->backend;
    if (r->running || p->pending_relay != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the relay runs already");
        return NULL;
    }
    if (exchange_prepare(p, steps, capacity) < 0)
        return NULL;
    PyObject *future = new_future(p->reactor);
    if (future == NULL) {
        exchange_clear(p);
        return NULL;
    }
    relay_expect_login(r, final, replacement, to_backend, on_start);
    Py_INCREF(future);
    p->read_waiter = future;
    Py_INCREF(p);
    if (p->in.len)
        serve_reader(p); /* a reply read already: answered, resolved with, or the relay starts */
    if (p->read_waiter == future && (p->flags & P_EOF))
        wake_reader_at_end(p);
    if (p->read_waiter == future)
        pull_for_reader(p, future);
    Py_DECREF(p);
    return future;
}

static PyObject *
Relay_get_running(RelayObject *r, void *closure)
{
    return PyBool_FromLong(r->running && !r->finished);
}

static PyObject *
Relay_stop(RelayObject *r, PyObject *arg)
{
    const char *reason = PyUnicode_AsUTF8(arg);
    if (reason == NULL)
        return NULL;
    if (r->running)
        relay_finish(r, reason);
    Py_RETURN_NONE;
}

static PyObject *
Relay_get_client_to_backend(RelayObject *r, void *closure)
{
    return PyLong_FromLongLong(r->client_to_backend);
}

static PyObject *
Relay_get_backend_to_client(RelayObject *r, void *closure)
{
    return PyLong_FromLongLong(r->backend_to_client);
}

static int
Relay_traverse(RelayObject *r, visitproc visit, void *arg)
{
    Py_VISIT(r->client);
    Py_VISIT(r->backend);
    Py_VISIT(r->done);
    Py_VISIT(r->login_final);
    Py_VISIT(r->login_replacement);
    Py_VISIT(r->login_to_backend);
    Py_VISIT(r->login_on_start);
    return 0;
}

static int
Relay_clear(RelayObject *r)
{
    Py_CLEAR(r->done);
    Py_CLEAR(r->login_final);
    Py_CLEAR(r->login_replacement);
    Py_CLEAR(r->login_to_backend);
    Py_CLEAR(r->login_on_start);
    return 0;
}

static void
Relay_dealloc(RelayObject *r)
{
    PyObject_GC_UnTrack(r);
    if (r->client != NULL) {
        timer_cancel(r->client->reactor, &r->timer);
        if (r->client->relay == r)
            r->client->relay = NULL;
    }
    if (r->backend != NULL && r->backend->relay == r)
        r->backend->relay = NULL;
    Relay_clear(r);
    Py_CLEAR(r->client);
    Py_CLEAR(r->backend);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyMethodDef Relay_methods[] = {
    {"run", (PyCFunction)Relay_run, METH_VARARGS,
     "run(to_client, to_backend): start relaying, first writing the bytes each side is owed; a future: "
     "(reason, client_to_backend, backend_to_client, client_error) once it ends."},
    {"run_after_login",
     (PyCFunction)Relay_run_after_login, METH_VARARGS,
     "run_after_login(steps, capacity, final, replacement, to_backend, on_start): the backend's "
     "exchange(steps, capacity), then, when the login's final reply starts with `final`, the relay, without "
     "a wake-up between: the client first gets the reply (with its first line replaced by `replacement` "
     "unless None), the backend `to_backend`, and `on_start()` (unless None) is called as it starts. A "
     "future: the final reply's bytes (or the read's outcome) when it does not start so, the relay's "
     "run() outcome when it ran."},
    {"stop", (PyCFunction)Relay_stop, METH_O, "End the relay from outside, for `reason`: both sides are closed."},
    {NULL}};

static PyGetSetDef Relay_getset[] = {
    {"client_to_backend", (getter)Relay_get_client_to_backend, NULL, "Bytes relayed so far.", NULL},
    {"backend_to_client", (getter)Relay_get_backend_to_client, NULL, "Bytes relayed so far.", NULL},
    {"running", (getter)Relay_get_running, NULL, "Started (by run() or after the login) and not ended.", NULL},
    {NULL}};

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mailgate._io.Relay",
    .tp_basicsize = sizeof(RelayObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Relay(client, backend, timeout, quiet_on_timeout=False): the byte relay of a session.",
    .tp_new = Relay_new,
    .tp_dealloc = (destructor)Relay_dealloc,
    .tp_traverse = (traverseproc)Relay_traverse,
    .tp_clear = (inquiry)Relay_clear,
    .tp_methods = Relay_methods,
    .tp_getset = Relay_getset,
};

/* ---------------------------------------------------------------------------------------------------- */
/* Listener: accepts on a listening socket of the worker's, each connection a Peer for the callback */

struct ListenerObject {
    PyObject_HEAD
    ReactorObject *reactor;
    int fd;
    int family;
    int tcp;
    int multi_accept;
    int watching;
    PyObject *callback; /* (peer, address) -> bool (go on accepting); (None, OSError) on a failed accept */
    /* set_front(): the front of each connection started here, and its silent end kept here, so that a
     * connection that leaves before its first command (a handshake-only client) costs no Python call */
    int has_front;
    FrontPlan front;                                  /* front.greeting is a reference of ours */
    PyObject *front_endpoint, *front_done;            /* front_done(context, peer, stage, error) */
    PyObject *fronts, *sessions;                      /* the acceptor's sets: fronts running, sessions */
    PyObject *on_first, *slot_freed, *at_limit;       /* () -> None, () -> None, () -> bool */
    Py_ssize_t limit;                                 /* worker_connections */
    uint64_t *counter;                                /* nginx's connection counter, shared */
};

static int
call_quietly(PyObject *callable)
{
    PyObject *result = PyObject_CallNoArgs(callable);
    if (result == NULL) {
        PyErr_WriteUnraisable(callable);
        return -1;
    }
    int truth = PyObject_IsTrue(result);
    Py_DECREF(result);
    if (truth < 0)
        PyErr_Clear();
    return truth == 1;
}

static Py_ssize_t
listener_in_use(ListenerObject *l)
{
    return PySet_GET_SIZE(l->fronts) + PySet_GET_SIZE(l->sessions);
}

/* An accepted connection's front, as the acceptor's _accepted() starts it: numbered, counted among the
 * fronts running. 1: accept more; 0: worker_connections are reached (at_limit said what to do). */
static int
listener_front(ListenerObject *l, PeerObject *peer, PyObject *where)
{
    unsigned long long number = __atomic_add_fetch(l->counter, 1, __ATOMIC_SEQ_CST);
    if (listener_in_use(l) == 0)
        call_quietly(l->on_first); /* the acceptor is no longer idle */
    PyObject *context = Py_BuildValue("(OOK)", l->front_endpoint, where, number);
    if (context == NULL || PySet_Add(l->fronts, (PyObject *)peer) < 0) {
        Py_XDECREF(context);
        PyErr_WriteUnraisable((PyObject *)l);
        Py_XDECREF(Peer_abort(peer, NULL));
        PyErr_Clear();
        return 1;
    }
    Py_INCREF(l);
    peer->front_listener = l;
    if (front_begin(peer, &l->front, l->front_done, context) < 0) {
        PyErr_WriteUnraisable((PyObject *)l);
        Py_CLEAR(peer->front_listener);
        if (PySet_Discard(l->fronts, (PyObject *)peer) < 0)
            PyErr_Clear();
        Py_XDECREF(Peer_abort(peer, NULL));
        PyErr_Clear();
    }
    Py_DECREF(context);
    if (listener_in_use(l) < l->limit)
        return 1;
    return call_quietly(l->at_limit) == 1;
}

/* A front this listener started ended with nothing for a session to do. */
static void
listener_front_closed(ListenerObject *l, PeerObject *p)
{
    if (!l->has_front)
        return;
    if (PySet_Discard(l->fronts, (PyObject *)p) < 0)
        PyErr_Clear();
    /* _slot_freed() has nothing to do unless the acceptor is idle now or stopped accepting for the limit */
    if (listener_in_use(l) == 0 || !l->watching)
        call_quietly(l->slot_freed);
}

/* The listening socket is ready: accept one connection, or with multi_accept all that are pending. */
static void
listener_ready(ListenerObject *l)
{
    Py_INCREF(l);
    while (l->watching && l->fd >= 0) {
        struct sockaddr_storage address;
        socklen_t length = sizeof address;
        int fd = accept4(l->fd, (struct sockaddr *)&address, &length, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            PyObject *error = os_error(errno);
            PyObject *result = error ? PyObject_CallFunction(l->callback, "OO", Py_None, error) : NULL;
            Py_XDECREF(error);
            if (result == NULL)
                PyErr_WriteUnraisable(l->callback);
            int again = result != NULL && PyObject_IsTrue(result) == 1;
            Py_XDECREF(result);
            if (!again)
                break;
            continue;
        }
        if (l->tcp) {
            /* nginx's mail module leaves Nagle on, which stalls replies behind delayed ACKs; we never do. */
            int on = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
        }
        PeerObject *peer = peer_alloc(l->reactor, fd, l->family);
        if (peer == NULL || reactor_register(l->reactor, peer) < 0) {
            if (peer != NULL) {
                peer->fd = -1;
                Py_DECREF(peer);
            }
            close(fd);
            PyErr_WriteUnraisable((PyObject *)l);
            break;
        }
        PyObject *where = address_object(&address, length);
        if (where != NULL && l->has_front) {
            int again = listener_front(l, peer, where);
            Py_DECREF(where);
            Py_DECREF(peer);
            if (!again || !l->multi_accept)
                break;
            continue;
        }
        PyObject *result = where ? PyObject_CallFunction(l->callback, "OO", peer, where) : NULL;
        Py_XDECREF(where);
        if (result == NULL) {
            PyErr_WriteUnraisable(l->callback);
            PyObject *r = Peer_abort(peer, NULL);
            Py_XDECREF(r);
        }
        Py_DECREF(peer);
        int again = result != NULL && PyObject_IsTrue(result) == 1;
        Py_XDECREF(result);
        if (!again || !l->multi_accept)
            break;
    }
    Py_DECREF(l);
}

static PyObject *
Listener_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"reactor", "fd", "callback", "multi_accept", NULL};
    ReactorObject *reactor;
    int fd, multi_accept = 0;
    PyObject *callback;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!iO|p", names, &ReactorType, &reactor, &fd, &callback,
                                     &multi_accept))
        return NULL;
    ListenerObject *l = (ListenerObject *)type->tp_alloc(type, 0);
    if (l == NULL)
        return NULL;
    Py_INCREF(reactor);
    Py_INCREF(callback);
    l->reactor = reactor;
    l->fd = fd;
    l->family = socket_family(fd);
    l->tcp = l->family == AF_INET || l->family == AF_INET6;
    l->multi_accept = multi_accept;
    l->callback = callback;
    return (PyObject *)l;
}

static PyObject *
Listener_start(ListenerObject *l, PyObject *unused)
{
    if (l->watching || l->fd < 0)
        Py_RETURN_NONE;
    struct epoll_event event;
    event.events = EPOLLIN; /* level-triggered: a connection left pending is reported again */
    event.data.ptr = l;
    if (epoll_ctl(l->reactor->epfd, EPOLL_CTL_ADD, l->fd, &event) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_INCREF(l); /* held by the epoll set while watched */
    l->watching = 1;
    Py_RETURN_NONE;
}

static PyObject *
Listener_stop(ListenerObject *l, PyObject *unused)
{
    if (!l->watching)
        Py_RETURN_NONE;
    l->watching = 0;
    if (l->reactor->epfd >= 0)
        epoll_ctl(l->reactor->epfd, EPOLL_CTL_DEL, l->fd, NULL);
    Py_DECREF(l);
    Py_RETURN_NONE;
}

static PyObject *
Listener_set_front(ListenerObject *l, PyObject *args)
{
    PyObject *plan_args, *endpoint, *front_done, *fronts, *sessions, *on_first, *slot_freed, *at_limit;
    Py_ssize_t limit;
    PyObject *counter_address;
    FrontPlan plan;
    if (!PyArg_ParseTuple(args, "O!OOO!O!nOOOO", &PyTuple_Type, &plan_args, &endpoint, &front_done, &PySet_Type,
                          &fronts, &PySet_Type, &sessions, &limit, &counter_address, &on_first, &slot_freed,
                          &at_limit) ||
        front_plan_parse(plan_args, &plan) < 0)
        return NULL;
    uint64_t *counter = PyLong_AsVoidPtr(counter_address);
    if (counter == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "no counter");
        return NULL;
    }
    if (l->has_front) {
        PyErr_SetString(PyExc_RuntimeError, "the listener has its front already");
        return NULL;
    }
    l->front = plan;
    PyObject *held[] = {plan.greeting, endpoint, front_done, fronts, sessions, on_first, slot_freed, at_limit};
    for (size_t i = 0; i < sizeof held / sizeof held[0]; i++)
        Py_INCREF(held[i]);
    l->front_endpoint = endpoint;
    l->front_done = front_done;
    l->fronts = fronts;
    l->sessions = sessions;
    l->on_first = on_first;
    l->slot_freed = slot_freed;
    l->at_limit = at_limit;
    l->limit = limit;
    l->counter = counter;
    l->has_front = 1;
    Py_RETURN_NONE;
}

static int
Listener_traverse(ListenerObject *l, visitproc visit, void *arg)
{
    Py_VISIT(l->reactor);
    Py_VISIT(l->callback);
    if (l->has_front) {
        Py_VISIT(l->front.greeting);
        Py_VISIT(l->front_endpoint);
        Py_VISIT(l->front_done);
        Py_VISIT(l->fronts);
        Py_VISIT(l->sessions);
        Py_VISIT(l->on_first);
        Py_VISIT(l->slot_freed);
        Py_VISIT(l->at_limit);
    }
    return 0;
}

static int
Listener_clear(ListenerObject *l)
{
    Py_CLEAR(l->callback);
    if (l->has_front) {
        l->has_front = 0;
        Py_CLEAR(l->front.greeting);
        Py_CLEAR(l->front_endpoint);
        Py_CLEAR(l->front_done);
        Py_CLEAR(l->fronts);
        Py_CLEAR(l->sessions);
        Py_CLEAR(l->on_first);
        Py_CLEAR(l->slot_freed);
        Py_CLEAR(l->at_limit);
    }
    return 0;
}

static void
Listener_dealloc(ListenerObject *l)
{
    PyObject_GC_UnTrack(l);
    Listener_clear(l);
    Py_CLEAR(l->reactor);
    Py_TYPE(l)->tp_free((PyObject *)l);
}

static PyMethodDef Listener_methods[] = {
    {"start", (PyCFunction)Listener_start, METH_NOARGS, "Accept from now on."},
    {"stop", (PyCFunction)Listener_stop, METH_NOARGS, "Accept no more (the socket stays open: it is not ours)."},
    {"set_front", (PyCFunction)Listener_set_front, METH_VARARGS,
     "set_front(front, endpoint, front_done, fronts, sessions, limit, counter, on_first, slot_freed, "
     "at_limit): start each connection's front here (front: start_front's first five arguments) with "
     "front_done and the context (endpoint, address, number from the shared counter); a front that ends "
     "silently leaves `fronts` here too. on_first() when the acceptor stops being idle, slot_freed() when "
     "it is idle again or had stopped accepting, at_limit() -> bool at worker_connections."},
    {NULL}};

static PyTypeObject ListenerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mailgate._io.Listener",
    .tp_basicsize = sizeof(ListenerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Listener(reactor, fd, callback, multi_accept=False): callback(peer, address) per connection "
              "accepted on the listening socket fd (returns whether to go on); callback(None, error) when "
              "accept() fails.",
    .tp_new = Listener_new,
    .tp_dealloc = (destructor)Listener_dealloc,
    .tp_traverse = (traverseproc)Listener_traverse,
    .tp_clear = (inquiry)Listener_clear,
    .tp_methods = Listener_methods,
};

/* The next number of a counter in memory shared by processes (nginx's connection counter). */
static PyObject *
shared_increment(PyObject *module, PyObject *arg)
{
    uint64_t *counter = PyLong_AsVoidPtr(arg);
    if (counter == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "no counter");
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(__atomic_add_fetch(counter, 1, __ATOMIC_SEQ_CST));
}

/* ---------------------------------------------------------------------------------------------------- */
/* The shared session cache's zone (_session_zone.c) as a Python object: the configuration makes one per
 * `ssl_session_cache shared:NAME:SIZE` before the workers fork, and the handshake callbacks below use it. */

typedef struct {
    PyObject_HEAD
    SessionZone *zone;
    PyObject *on_full; /* () -> None: nginx's warning that a session could not be stored, or NULL */
} SessionZoneObject;

static PyTypeObject SessionZoneType;

static int
SessionZone_init(SessionZoneObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"size", "on_full", NULL};
    Py_ssize_t size;
    PyObject *on_full = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "n|O", names, &size, &on_full))
        return -1;
    if (self->zone != NULL || size < 0) {
        PyErr_SetString(PyExc_ValueError, self->zone != NULL ? "a zone is made once" : "a negative zone size");
        return -1;
    }
    uint64_t seed;
    if (RAND_bytes((unsigned char *)&seed, sizeof seed) != 1) {
        ERR_clear_error();
        PyErr_SetString(PyExc_OSError, "RAND_bytes() failed");
        return -1;
    }
    self->zone = session_zone_create((size_t)size, seed);
    if (self->zone == NULL) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (on_full != Py_None) {
        Py_INCREF(on_full);
        self->on_full = on_full;
    }
    return 0;
}

static void
SessionZone_dealloc(SessionZoneObject *self)
{
    if (self->zone != NULL)
        session_zone_destroy(self->zone);
    Py_XDECREF(self->on_full);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static SessionZone *
zone_of(SessionZoneObject *self)
{
    if (self->zone == NULL)
        PyErr_SetString(PyExc_ValueError, "the zone was not made");
    return self->zone;
}

/* nginx warns (at most once a second, zone-wide) when a session finds no room even after eviction. */
static void
warn_if_full(SessionZoneObject *self, int stored)
{
    if (stored != ZONE_FULL || self->on_full == NULL)
        return;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *result = PyObject_CallNoArgs(self->on_full);
    if (result == NULL)
        PyErr_WriteUnraisable(self->on_full);
    Py_XDECREF(result);
    PyGILState_Release(gil);
}

/* The clock of a zone call from Python: `now` if given (unix seconds, for tests), else the time. */
static int
zone_clock(PyObject *given, time_t *now)
{
    if (given == Py_None) {
        *now = time(NULL);
        return 0;
    }
    long long seconds = PyLong_AsLongLong(given);
    if (seconds == -1 && PyErr_Occurred())
        return -1;
    *now = (time_t)seconds;
    return 0;
}

static PyObject *
SessionZone_store(SessionZoneObject *self, PyObject *args)
{
    Py_buffer id, der;
    long timeout;
    PyObject *given = Py_None;
    time_t now;
    SessionZone *zone = zone_of(self);
    if (zone == NULL || !PyArg_ParseTuple(args, "y*y*l|O", &id, &der, &timeout, &given))
        return NULL;
    if (zone_clock(given, &now) < 0) {
        PyBuffer_Release(&id);
        PyBuffer_Release(&der);
        return NULL;
    }
    int stored = session_zone_store(zone, id.buf, (size_t)id.len, der.buf, (size_t)der.len, now + timeout, now);
    PyBuffer_Release(&id);
    PyBuffer_Release(&der);
    warn_if_full(self, stored);
    return PyBool_FromLong(stored == ZONE_STORED);
}

static PyObject *
SessionZone_fetch(SessionZoneObject *self, PyObject *args)
{
    Py_buffer id;
    PyObject *given = Py_None;
    time_t now;
    SessionZone *zone = zone_of(self);
    if (zone == NULL || !PyArg_ParseTuple(args, "y*|O", &id, &given))
        return NULL;
    if (zone_clock(given, &now) < 0) {
        PyBuffer_Release(&id);
        return NULL;
    }
    unsigned char der[ZONE_MAX_SESSION_SIZE];
    size_t length = session_zone_fetch(zone, id.buf, (size_t)id.len, der, now);
    PyBuffer_Release(&id);
    if (length == 0)
        Py_RETURN_NONE;
    PyObject *result = PyBytes_FromStringAndSize((const char *)der, (Py_ssize_t)length);
    OPENSSL_cleanse(der, length);
    return result;
}

static PyObject *
SessionZone_remove(SessionZoneObject *self, PyObject *arg)
{
    Py_buffer id;
    SessionZone *zone = zone_of(self);
    if (zone == NULL || PyObject_GetBuffer(arg, &id, PyBUF_SIMPLE) < 0)
        return NULL;
    session_zone_remove(zone, id.buf, (size_t)id.len);
    PyBuffer_Release(&id);
    Py_RETURN_NONE;
}

static Py_ssize_t
SessionZone_length(SessionZoneObject *self)
{
    SessionZone *zone = zone_of(self);
    return zone == NULL ? -1 : (Py_ssize_t)session_zone_count(zone);
}

static PyObject *
SessionZone_rotate_ticket_keys(SessionZoneObject *self, PyObject *args)
{
    long timeout;
    long long now;
    SessionZone *zone = zone_of(self);
    if (zone == NULL || !PyArg_ParseTuple(args, "lL", &timeout, &now))
        return NULL;
    unsigned char fresh[2][ZONE_KEY_MATERIAL];
    ZoneTicketKey keys[2];
    if (RAND_bytes(&fresh[0][0], sizeof fresh) != 1) {
        ERR_clear_error();
        return PyErr_Format(PyExc_OSError, "RAND_bytes() failed");
    }
    int status = session_zone_rotate_keys(zone, (time_t)now, timeout,
                                          (const unsigned char(*)[ZONE_KEY_MATERIAL])fresh, keys);
    OPENSSL_cleanse(fresh, sizeof fresh);
    if (status < 0)
        return PyErr_Format(PyExc_OSError, "the shared zone's lock cannot be taken");
    PyObject *result = Py_BuildValue("((Ly#)(Ly#))", (long long)keys[0].expire, keys[0].material,
                                     (Py_ssize_t)ZONE_KEY_MATERIAL, (long long)keys[1].expire, keys[1].material,
                                     (Py_ssize_t)ZONE_KEY_MATERIAL);
    OPENSSL_cleanse(keys, sizeof keys);
    return result;
}

static PyMethodDef SessionZone_methods[] = {
    {"store", (PyCFunction)SessionZone_store, METH_VARARGS,
     "store(session_id, der, timeout, now=None) -> bool: cache a session until now + timeout (False: too "
     "large, or no room even after evicting the oldest, which on_full is told of once a second)"},
    {"fetch", (PyCFunction)SessionZone_fetch, METH_VARARGS,
     "fetch(session_id, now=None) -> bytes | None: an unexpired session's DER; an expired one is removed"},
    {"remove", (PyCFunction)SessionZone_remove, METH_O, "remove(session_id)"},
    {"rotate_ticket_keys", (PyCFunction)SessionZone_rotate_ticket_keys, METH_VARARGS,
     "rotate_ticket_keys(timeout, now) -> ((expire, material), (expire, material)): the zone's current and "
     "previous ticket keys after any rotation due at `now` (unix seconds; material: name, HMAC, AES as in "
     "an 80-byte key file)"},
    {NULL},
};

static PyObject *
SessionZone_get_address(SessionZoneObject *self, void *closure)
{
    SessionZone *zone = zone_of(self);
    return zone == NULL ? NULL : PyLong_FromVoidPtr(zone);
}

static PyGetSetDef SessionZone_getset[] = {
    {"address", (getter)SessionZone_get_address, NULL,
     "where the zone is mapped: its pthread mutex comes first (for tests that hold it from elsewhere)", NULL},
    {NULL},
};

static PySequenceMethods SessionZone_sequence = {.sq_length = (lenfunc)SessionZone_length};

static PyTypeObject SessionZoneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "mailgate._io.SessionZone",
    .tp_basicsize = sizeof(SessionZoneObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "SessionZone(size, on_full=None): a shared session cache zone of `size` bytes, shared with the "
              "processes forked after it is made",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)SessionZone_init,
    .tp_dealloc = (destructor)SessionZone_dealloc,
    .tp_methods = SessionZone_methods,
    .tp_getset = SessionZone_getset,
    .tp_as_sequence = &SessionZone_sequence,
};

/* The callbacks OpenSSL makes in every handshake, in C: session ticket keys, ALPN, and the shared session
 * cache's store, lookup and removal. Each context's state hangs off its SSL_CTX; only a ticket-key rotation
 * in the shared zone calls back into Python, with the GIL already held. */

#define MAX_TICKET_KEYS 16

typedef struct {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
    int aes_length, hmac_length;
    long expire;
} TicketKey;

typedef struct {
    unsigned char alpn[64];
    int alpn_length;
    PyObject *ticket_keys; /* () -> ([(name, aes_key, hmac_key, expire)], valid_until) or NULL */
    double keys_valid_until;
    int key_count;
    TicketKey keys[MAX_TICKET_KEYS];
    SessionZoneObject *zone; /* the shared session cache, or NULL */
} ContextState;

static int context_state_index = -1;

static void
context_state_free(void *parent, void *pointer, CRYPTO_EX_DATA *data, int index, long argl, void *argp)
{
    ContextState *state = pointer;
    if (state == NULL)
        return;
    Py_XDECREF(state->ticket_keys);
    Py_XDECREF(state->zone);
    OPENSSL_cleanse(state->keys, sizeof state->keys);
    PyMem_RawFree(state);
}

static int
copy_key_part(PyObject *value, unsigned char *out, int *length, int limit)
{
    char *bytes;
    Py_ssize_t size;
    if (PyBytes_AsStringAndSize(value, &bytes, &size) < 0)
        return -1;
    if (size > limit || (length == NULL && size != limit)) {
        PyErr_SetString(PyExc_ValueError, "a ticket key part has the wrong size");
        return -1;
    }
    memcpy(out, bytes, (size_t)size);
    if (length != NULL)
        *length = (int)size;
    return 0;
}

/* Ask Python for the keys when the ones held may be stale (a rotation in the shared zone is due). */
static int
refresh_ticket_keys(ContextState *state)
{
    if (state->key_count > 0 && monotonic_now() < state->keys_valid_until)
        return 0;
    PyObject *answer = PyObject_CallNoArgs(state->ticket_keys);
    if (answer == NULL)
        return -1;
    PyObject *keys;
    double valid_for;
    if (!PyArg_ParseTuple(answer, "Od", &keys, &valid_for) || !PyList_Check(keys)) {
        Py_DECREF(answer);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "ticket keys: ([(name, aes, hmac, expire)], seconds)");
        return -1;
    }
    Py_ssize_t count = PyList_GET_SIZE(keys);
    if (count < 1 || count > MAX_TICKET_KEYS) {
        Py_DECREF(answer);
        PyErr_SetString(PyExc_ValueError, "ticket keys: 1 to 16 keys");
        return -1;
    }
    TicketKey fresh[MAX_TICKET_KEYS];
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *name, *aes, *hmac;
        long expire;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(keys, i), "SSSl", &name, &aes, &hmac, &expire) ||
            copy_key_part(name, fresh[i].name, NULL, 16) < 0 ||
            copy_key_part(aes, fresh[i].aes, &fresh[i].aes_length, 32) < 0 ||
            copy_key_part(hmac, fresh[i].hmac, &fresh[i].hmac_length, 32) < 0) {
            OPENSSL_cleanse(fresh, sizeof fresh);
            Py_DECREF(answer);
            return -1;
        }
        fresh[i].expire = expire;
    }
    memcpy(state->keys, fresh, sizeof fresh);
    OPENSSL_cleanse(fresh, sizeof fresh);
    state->key_count = (int)count;
    state->keys_valid_until = monotonic_now() + valid_for;
    Py_DECREF(answer);
    return 0;
}

static int
set_ticket_mac(EVP_MAC_CTX *mac, TicketKey *key)
{
    OSSL_PARAM parameters[3];
    parameters[0] = OSSL_PARAM_construct_octet_string("key", key->hmac, (size_t)key->hmac_length);
    parameters[1] = OSSL_PARAM_construct_utf8_string("digest", "SHA256", 0);
    parameters[2] = OSSL_PARAM_construct_end();
    return EVP_MAC_CTX_set_params(mac, parameters);
}

static int
ticket_key_callback(SSL *ssl, unsigned char *name, unsigned char *iv, EVP_CIPHER_CTX *cipher, EVP_MAC_CTX *mac,
                    int encrypt)
{
    ContextState *state = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), context_state_index);
    if (state == NULL || state->ticket_keys == NULL)
        return -1;
    if (refresh_ticket_keys(state) < 0) {
        PyErr_WriteUnraisable(state->ticket_keys);
        return -1;
    }
    if (encrypt == 1) {
        TicketKey *key = &state->keys[0];
        const EVP_CIPHER *kind = key->aes_length == 16 ? EVP_aes_128_cbc() : EVP_aes_256_cbc();
        if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(kind)) != 1 ||
            EVP_EncryptInit_ex(cipher, kind, NULL, key->aes, iv) != 1 || set_ticket_mac(mac, key) != 1)
            return -1;
        memcpy(name, key->name, 16);
        return 1;
    }
    for (int i = 0; i < state->key_count; i++) {
        TicketKey *key = &state->keys[i];
        if (memcmp(name, key->name, 16) != 0)
            continue;
        const EVP_CIPHER *kind = key->aes_length == 16 ? EVP_aes_128_cbc() : EVP_aes_256_cbc();
        if (set_ticket_mac(mac, key) != 1 || EVP_DecryptInit_ex(cipher, kind, NULL, key->aes, iv) != 1)
            return -1;
        if (SSL_version(ssl) == TLS1_3_VERSION)
            return 2;
        return i != 0 && key->expire ? 2 : 1; /* 2: renew the ticket with the current key */
    }
    return 0; /* unknown key: a full handshake, and a fresh ticket */
}

static int
alpn_select_callback(SSL *ssl, const unsigned char **out, unsigned char *out_length, const unsigned char *offered,
                     unsigned int offered_length, void *arg)
{
    ContextState *state = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), context_state_index);
    if (state == NULL || offered == NULL)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    unsigned int position = 0;
    while (position < offered_length) {
        unsigned int length = offered[position];
        if (position + 1 + length > offered_length)
            break;
        if ((int)length == state->alpn_length && memcmp(offered + position + 1, state->alpn, length) == 0) {
            *out = state->alpn;
            *out_length = (unsigned char)length;
            return SSL_TLSEXT_ERR_OK;
        }
        position += 1 + length;
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL; /* nginx's mail module refuses a client that wants another protocol */
}

static ContextState *
zone_state_of(SSL_CTX *ctx)
{
    ContextState *state = SSL_CTX_get_ex_data(ctx, context_state_index);
    return state != NULL && state->zone != NULL && state->zone->zone != NULL ? state : NULL;
}

static int
new_session_callback(SSL *ssl, SSL_SESSION *session)
{
    ContextState *state = zone_state_of(SSL_get_SSL_CTX(ssl));
    if (state == NULL)
        return 0;
    /* OpenSSL reports TLS 1.3 sessions even when a ticket carries them; nginx does not store those. */
    if (SSL_version(ssl) == TLS1_3_VERSION && !(SSL_get_options(ssl) & SSL_OP_NO_TICKET))
        return 0;
    int length = i2d_SSL_SESSION(session, NULL);
    unsigned int id_length = 0;
    const unsigned char *id = SSL_SESSION_get_id(session, &id_length);
    if (length <= 0 || length > ZONE_MAX_SESSION_SIZE || id == NULL) {
        ERR_clear_error();
        return 0;
    }
    unsigned char der[ZONE_MAX_SESSION_SIZE];
    unsigned char *cursor = der;
    i2d_SSL_SESSION(session, &cursor);
    time_t now = time(NULL);
    int stored = session_zone_store(state->zone->zone, id, id_length, der, (size_t)length,
                                    now + (time_t)SSL_SESSION_get_timeout(session), now);
    OPENSSL_cleanse(der, (size_t)length);
    warn_if_full(state->zone, stored);
    return 0; /* OpenSSL keeps its own reference */
}

static SSL_SESSION *
get_session_callback(SSL *ssl, const unsigned char *id, int id_length, int *copy)
{
    *copy = 0; /* the session returned is the caller's */
    ContextState *state = zone_state_of(SSL_get_SSL_CTX(ssl));
    if (state == NULL || id_length <= 0)
        return NULL;
    unsigned char der[ZONE_MAX_SESSION_SIZE];
    size_t length = session_zone_fetch(state->zone->zone, id, (size_t)id_length, der, time(NULL));
    if (length == 0)
        return NULL;
    const unsigned char *cursor = der;
    SSL_SESSION *session = d2i_SSL_SESSION(NULL, &cursor, (long)length);
    OPENSSL_cleanse(der, length);
    if (session == NULL)
        ERR_clear_error();
    return session;
}

/* Called without the GIL too (SSL_CTX_remove_session through ctypes): no Python here. */
static void
remove_session_callback(SSL_CTX *ctx, SSL_SESSION *session)
{
    ContextState *state = zone_state_of(ctx);
    unsigned int id_length = 0;
    const unsigned char *id = state != NULL ? SSL_SESSION_get_id(session, &id_length) : NULL;
    if (id != NULL)
        session_zone_remove(state->zone->zone, id, id_length);
}

/* What tls_facts() reads of a finished handshake, in one call rather than a dozen through ctypes:
 * (version, cipher, resumed, verify_result, has_peer_certificate, server_name, alpn, our certificate's
 * signature algorithm, our key as "RSA2048" / "EC256" / "DSA2048"). */
static PyObject *
tls_summary(PyObject *module, PyObject *arg)
{
    SSL *ssl = PyLong_AsVoidPtr(arg);
    if (ssl == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "no SSL");
        return NULL;
    }
    const char *version = SSL_get_version(ssl);
    const SSL_CIPHER *cipher = SSL_get_current_cipher(ssl);
    const char *cipher_name = cipher != NULL ? SSL_CIPHER_get_name(cipher) : NULL;
    X509 *peer_certificate = SSL_get0_peer_certificate(ssl);
    const char *server_name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    const unsigned char *alpn = NULL;
    unsigned int alpn_length = 0;
    SSL_get0_alpn_selected(ssl, &alpn, &alpn_length);
    const char *signature = NULL;
    char key[32] = "";
    X509 *own = SSL_get_certificate(ssl);
    if (own != NULL) {
        signature = OBJ_nid2sn(X509_get_signature_nid(own));
        EVP_PKEY *public_key = X509_get0_pubkey(own);
        if (public_key != NULL) {
            int id = EVP_PKEY_get_base_id(public_key);
            const char *kind = id == EVP_PKEY_RSA ? "RSA" : id == EVP_PKEY_EC ? "EC" : id == EVP_PKEY_DSA ? "DSA" : NULL;
            if (kind != NULL)
                snprintf(key, sizeof key, "%s%d", kind, EVP_PKEY_get_bits(public_key));
        }
    }
    ERR_clear_error();
    return Py_BuildValue("(ssNlNyy#zz)", version ? version : "", cipher_name ? cipher_name : "",
                         PyBool_FromLong(SSL_session_reused(ssl)), (long)SSL_get_verify_result(ssl),
                         PyBool_FromLong(peer_certificate != NULL), server_name, (const char *)alpn,
                         (Py_ssize_t)(alpn != NULL ? alpn_length : 0), signature, key[0] ? key : NULL);
}

static PyObject *
install_context_callbacks(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"ssl_ctx", "alpn", "ticket_keys", "session_zone", NULL};
    unsigned long long address;
    Py_buffer alpn;
    PyObject *ticket_keys = Py_None, *zone = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Ky*|OO", names, &address, &alpn, &ticket_keys, &zone))
        return NULL;
    if (zone != Py_None && !PyObject_TypeCheck(zone, &SessionZoneType)) {
        PyBuffer_Release(&alpn);
        return PyErr_Format(PyExc_TypeError, "session_zone must be a SessionZone");
    }
    SSL_CTX *ctx = (SSL_CTX *)(uintptr_t)address;
    if (alpn.len < 1 || alpn.len > 63) {
        PyBuffer_Release(&alpn);
        return PyErr_Format(PyExc_ValueError, "an ALPN protocol name is 1 to 63 bytes");
    }
    ContextState *state = SSL_CTX_get_ex_data(ctx, context_state_index);
    if (state == NULL) {
        state = PyMem_RawCalloc(1, sizeof *state);
        if (state == NULL) {
            PyBuffer_Release(&alpn);
            return PyErr_NoMemory();
        }
        if (!SSL_CTX_set_ex_data(ctx, context_state_index, state)) {
            PyMem_RawFree(state);
            PyBuffer_Release(&alpn);
            ERR_clear_error();
            return PyErr_NoMemory();
        }
    }
    memcpy(state->alpn, alpn.buf, (size_t)alpn.len);
    state->alpn_length = (int)alpn.len;
    PyBuffer_Release(&alpn);
    Py_CLEAR(state->ticket_keys);
    Py_CLEAR(state->zone);
    state->key_count = 0;
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select_callback, NULL);
    if (ticket_keys != Py_None) {
        Py_INCREF(ticket_keys);
        state->ticket_keys = ticket_keys;
        SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_key_callback);
    }
    if (zone != Py_None) {
        Py_INCREF(zone);
        state->zone = (SessionZoneObject *)zone;
        SSL_CTX_sess_set_new_cb(ctx, new_session_callback);
        SSL_CTX_sess_set_get_cb(ctx, get_session_callback);
        SSL_CTX_sess_set_remove_cb(ctx, remove_session_callback);
    }
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------------------------------------------- */
/* The module */

static PyObject *
set_tls_failure_factory(PyObject *module, PyObject *factory)
{
    Py_INCREF(factory);
    Py_XSETREF(tls_failure_factory, factory);
    Py_RETURN_NONE;
}

static PyObject *
openssl_version_number(PyObject *module, PyObject *unused)
{
    return PyLong_FromUnsignedLong(OpenSSL_version_num());
}

/* The connection's judgement of an auth reply, for the tests that hold it to the session's reader. */
static PyObject *
usual_auth_success(PyObject *module, PyObject *arg)
{
    char *data;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(arg, &data, &len) < 0)
        return NULL;
    AuthReply reply;
    int verdict = auth_reply_parse(data, (size_t)len, &reply);
    if (verdict == 0)
        Py_RETURN_FALSE;
    if (verdict == 1)
        Py_RETURN_NONE;
    char address[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &reply.address.sin_addr, address, sizeof address);
    return Py_BuildValue("(siy#y#)", address, (int)ntohs(reply.address.sin_port), reply.server,
                         (Py_ssize_t)reply.server_len, reply.port, (Py_ssize_t)reply.port_len);
}

static PyMethodDef module_methods[] = {
    {"usual_auth_success", usual_auth_success, METH_O,
     "usual_auth_success(reply): how read_auth_then_login() judges an auth reply: (address, port, "
     "Auth-Server, Auth-Port) when it takes it; False while it is incomplete; None: the reader's."},
    {"shared_increment", shared_increment, METH_O,
     "shared_increment(address): atomically add one to the 64-bit counter at address (in memory shared by "
     "processes) and return the new value."},
    {"tls_summary", tls_summary, METH_O,
     "tls_summary(ssl): (version, cipher, resumed, verify_result, has_peer_certificate, server_name, alpn, "
     "signature_algorithm, key_algorithm) of a connection's SSL* after its handshake."},
    {"install_context_callbacks", (PyCFunction)(void (*)(void))install_context_callbacks,
     METH_VARARGS | METH_KEYWORDS,
     "install_context_callbacks(ssl_ctx, alpn, ticket_keys=None, session_zone=None): the handshake "
     "callbacks of a server's SSL_CTX. ticket_keys() -> ([(name, aes_key, hmac_key, expire)], seconds the "
     "keys hold for); session_zone: the SessionZone that stores, finds and removes sessions (not a TLS 1.3 "
     "ticket's)."},
    {"set_tls_failure_factory", set_tls_failure_factory, METH_O,
     "The callable that turns a failed SSL call and OpenSSL's queued errors [(code, text)] into the "
     "exception its waiter gets: factory(call, errors)."},
    {"openssl_version_number", openssl_version_number, METH_NOARGS,
     "OpenSSL_version_num() of the libcrypto this module runs with."},
    {NULL}};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT, "mailgate._io", "The connections of a session and the relay between them, in C.",
    -1, module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__io(void)
{
    if (PyType_Ready(&ReactorType) < 0 || PyType_Ready(&PeerType) < 0 || PyType_Ready(&RelayType) < 0 ||
        PyType_Ready(&ListenerType) < 0 || PyType_Ready(&SessionZoneType) < 0)
        return NULL;
    str_set_result = PyUnicode_InternFromString("set_result");
    str_set_exception = PyUnicode_InternFromString("set_exception");
    str_done = PyUnicode_InternFromString("done");
    str_cancelled = PyUnicode_InternFromString("cancelled");
    if (!str_set_result || !str_set_exception || !str_done || !str_cancelled)
        return NULL;
    context_state_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, context_state_free);
    if (context_state_index < 0) {
        PyErr_SetString(PyExc_ImportError, "mailgate._io: no SSL_CTX ex_data index");
        return NULL;
    }
    peer_bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "mailgate peer");
    if (peer_bio_method == NULL || !BIO_meth_set_read(peer_bio_method, peer_bio_read) ||
        !BIO_meth_set_write(peer_bio_method, peer_bio_write) ||
        !BIO_meth_set_ctrl(peer_bio_method, peer_bio_ctrl) ||
        !BIO_meth_set_create(peer_bio_method, peer_bio_create) ||
        !BIO_meth_set_destroy(peer_bio_method, peer_bio_destroy)) {
        PyErr_SetString(PyExc_ImportError, "mailgate._io: cannot make its BIO method");
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_definition);
    if (module == NULL)
        return NULL;
    Py_INCREF(&ReactorType);
    Py_INCREF(&PeerType);
    Py_INCREF(&RelayType);
    Py_INCREF(&ListenerType);
    Py_INCREF(&SessionZoneType);
    if (PyModule_AddObject(module, "Reactor", (PyObject *)&ReactorType) < 0 ||
        PyModule_AddObject(module, "Peer", (PyObject *)&PeerType) < 0 ||
        PyModule_AddObject(module, "Relay", (PyObject *)&RelayType) < 0 ||
        PyModule_AddObject(module, "Listener", (PyObject *)&ListenerType) < 0 ||
        PyModule_AddObject(module, "SessionZone", (PyObject *)&SessionZoneType) < 0 ||
        PyModule_AddObject(module, "HALF_CLOSE_QUIET", PyFloat_FromDouble(HALF_CLOSE_QUIET)) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
