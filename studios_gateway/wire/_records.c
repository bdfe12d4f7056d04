/* The tunnel's bulk TLS records in one call each way (wire/tls_lean.py's lean path).
 *
 * A 64 KiB tunnel frame is five TLS records. The Python loop made five SSL_write
 * calls through cffi, took the records out of the write BIO into a shared buffer
 * and copied them again into bytes; a 512 KiB read of the tunnel was some thirty
 * SSL_read, SSL_pending and BIO_get_mem_data calls and a copy of the cleartext out
 * of the shared buffer. Here the same OpenSSL calls are made from C, and the bytes
 * objects handed to Python are the buffers OpenSSL writes into: one copy fewer each
 * way and no Python per record.
 *
 * OpenSSL itself is the one `cryptography` links into its own extension (the one
 * pyOpenSSL uses): its functions are reached through the addresses that
 * wire/openssl_private.py takes from those cffi bindings and hands to init(). Only
 * public, stable OpenSSL calls are made, with their documented signatures:
 *
 *   int SSL_write(SSL *, const void *, int)      int SSL_read(SSL *, void *, int)
 *   int SSL_pending(const SSL *)                 int SSL_get_error(const SSL *, int)
 *   int BIO_read(BIO *, void *, int)             long BIO_get_mem_data(BIO *, char **)
 *
 * and, for the direct BIOs, from the same library's symbol table (init_direct()):
 *
 *   BIO_METHOD *BIO_meth_new(int, const char *)   int BIO_get_new_index(void)
 *   int BIO_meth_set_write_ex(BIO_METHOD *, int (*)(BIO *, const char *, size_t, size_t *))
 *   int BIO_meth_set_read_ex(BIO_METHOD *, int (*)(BIO *, char *, size_t, size_t *))
 *   int BIO_meth_set_ctrl(BIO_METHOD *, long (*)(BIO *, int, long, void *))
 *   BIO *BIO_new(const BIO_METHOD *)              void BIO_set_init(BIO *, int)
 *   int BIO_up_ref(BIO *)                         void BIO_set_flags(BIO *, int)
 *   void BIO_clear_flags(BIO *, int)              BIO *SSL_get_rbio(const SSL *)
 *   BIO *SSL_get_wbio(const SSL *)                void SSL_set0_rbio(SSL *, BIO *)
 *   void SSL_set0_wbio(SSL *, BIO *)
 *
 * seal(ssl, wbio, data, done, chunk, tail, direct=False) -> (list of bytes, done, result)
 *     SSL_write data[done:] record by record; the records taken out of the write BIO
 *     (one bytes each) once `chunk` bytes of cleartext were written since the last
 *     take and more than `tail` bytes remain, and at the end. `done` is how far
 *     SSL_write got; when it is short of len(data), `result` is the failing
 *     SSL_write's return value, the records made before it are still in the BIO,
 *     and the caller asks OpenSSL why at once (SSL_get_error reads the state that
 *     call left).
 *
 * seal_frames(ssl, wbio, sid, data, step, chunk, tail, direct=False)
 *         -> (list of bytes, done, result)
 *     seal() of frames.data_frames(sid, data, step) (flagless yamux Data frames of
 *     stream `sid`, one per `step` bytes of `data`) without joining them first: a
 *     record inside one frame's payload is written from `data` itself, one that takes
 *     in a frame's 12-byte header (one record per frame) from a 16 KiB copy. `done`
 *     counts bytes of the frames (headers included).
 *
 * open(ssl, rbio, limit) -> (bytes | None, state, result)
 *     SSL_read the records the read BIO holds into one bytes of at most `limit`.
 *     state 0: nothing more for now (all was read, or OpenSSL wants more input);
 *     1: `limit` was reached and records remain (call again after delivering);
 *     2: SSL_read failed otherwise (close_notify, an alert, a bad record): `result`
 *     is its return value for the caller's error handling, asked at once.
 *
 * open_from(ssl, rbio, data, offset, limit) -> (bytes | None, state, result, offset)
 *     open() of the records in data[offset:] (a TCP read) without writing them into the
 *     read BIO `rbio` first: OpenSSL reads them from `data` itself (direct BIOs, below).
 *     `offset` is how far it read: short of len(data) only in state 1 (call again with
 *     it) or state 2 (the caller keeps the rest in the read BIO). Refused while busy().
 *
 * Direct BIOs (init_direct(); seal()'s and seal_frames()'s `direct`, open_from()). A
 * memory BIO costs each record two more passes over its bytes: BIO_write appends it
 * to a buffer it first zeroes (BUF_MEM_grow_clean), and BIO_read copies it out again.
 * For the length of one call, these swap the connection's memory BIO for one of two
 * BIOs of a method defined here: the write BIO appends each record OpenSSL seals
 * straight into the bytes object handed on, the read BIO gives OpenSSL the TCP read's
 * own bytes. The memory BIO is put back before the call returns (SSL_set0_rbio /
 * SSL_set0_wbio, a reference held across the swap), so between calls, and to all of
 * pyOpenSSL and Twisted, the connection is as it was. Both BIOs are made once per
 * process; they hold no connection's state after a call. OpenSSL may call into Python
 * while one is swapped in (a verify callback in a renegotiation); a call made from
 * there goes through the memory BIOs (seal) or is refused (open_from: busy()).
 *
 * Nothing is kept between calls; the GIL is held throughout (the reactor's thread).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <string.h>

typedef int (*ssl_write_fn)(void *, const void *, int);
typedef int (*ssl_read_fn)(void *, void *, int);
typedef int (*ssl_pending_fn)(const void *);
typedef int (*ssl_get_error_fn)(const void *, int);
typedef int (*bio_read_fn)(void *, void *, int);
typedef long (*bio_mem_data_fn)(void *, char **);

static ssl_write_fn ssl_write;
static ssl_read_fn ssl_read;
static ssl_pending_fn ssl_pending;
static ssl_get_error_fn ssl_get_error;
static bio_read_fn bio_read;
static bio_mem_data_fn bio_mem_data;
static int want_read = -1; /* SSL_ERROR_WANT_READ, from the bindings */

/* The direct BIOs' functions (init_direct()). */
typedef void *(*bio_meth_new_fn)(int, const char *);
typedef int (*bio_get_new_index_fn)(void);
typedef int (*bio_write_ex_cb)(void *, const char *, size_t, size_t *);
typedef int (*bio_read_ex_cb)(void *, char *, size_t, size_t *);
typedef long (*bio_ctrl_cb)(void *, int, long, void *);
typedef int (*bio_meth_set_write_ex_fn)(void *, bio_write_ex_cb);
typedef int (*bio_meth_set_read_ex_fn)(void *, bio_read_ex_cb);
typedef int (*bio_meth_set_ctrl_fn)(void *, bio_ctrl_cb);
typedef void *(*bio_new_fn)(const void *);
typedef void (*bio_set_init_fn)(void *, int);
typedef int (*bio_up_ref_fn)(void *);
typedef void (*bio_flags_fn)(void *, int);
typedef void *(*ssl_get_bio_fn)(const void *);
typedef void (*ssl_set0_bio_fn)(void *, void *);

static bio_up_ref_fn bio_up_ref;
static bio_flags_fn bio_set_flags, bio_clear_flags;
static ssl_get_bio_fn ssl_get_rbio, ssl_get_wbio;
static ssl_set0_bio_fn ssl_set0_rbio, ssl_set0_wbio;
static void *direct_r, *direct_w; /* made once by init_direct(); NULL: not in use */
/* A direct BIO is swapped in: set from swap_in() to swap_out(). OpenSSL may call into
 * Python in between (a verify or info callback, a finalizer they run); a seal() or
 * open_from() made from there on another connection must not take the shared source
 * and sink: seal() then goes through its memory BIO, open_from() refuses (busy()). */
static int busy;

/* OpenSSL's stable ABI values (openssl/bio.h). */
#define BIO_TYPE_SOURCE_SINK 0x0400
#define BIO_FLAGS_READ 0x01
#define BIO_FLAGS_RWS 0x07
#define BIO_FLAGS_SHOULD_RETRY 0x08
#define BIO_CTRL_PENDING 10
#define BIO_CTRL_FLUSH 11

/* What the direct read BIO gives OpenSSL: the rest of the TCP read open_from() has. */
static struct {
    const char *at;
    size_t left;
} source;

/* Where the direct write BIO puts the records OpenSSL seals: a bytes object being
 * filled (len of cap bytes used), handed on whole by sink_close(). */
static struct {
    PyObject *bytes;
    Py_ssize_t len, cap;
} sink;

static int source_read(void *bio, char *out, size_t n, size_t *got) {
    bio_clear_flags(bio, BIO_FLAGS_RWS | BIO_FLAGS_SHOULD_RETRY);
    if (source.left == 0) {
        /* as a memory BIO says it: nothing now, ask again later (SSL_ERROR_WANT_READ) */
        bio_set_flags(bio, BIO_FLAGS_READ | BIO_FLAGS_SHOULD_RETRY);
        *got = 0;
        return 0;
    }
    size_t k = n < source.left ? n : source.left;
    memcpy(out, source.at, k);
    source.at += k;
    source.left -= k;
    *got = k;
    return 1;
}

static int sink_write(void *bio, const char *in, size_t n, size_t *put) {
    bio_clear_flags(bio, BIO_FLAGS_RWS | BIO_FLAGS_SHOULD_RETRY);
    /* A failure is -1, not 0: OpenSSL 3.2-3.x took a write of 0 without a retry flag
     * for a written record (openssl/openssl#31009), -1 is fatal in every version. */
    if (sink.bytes == NULL || n > (size_t)(PY_SSIZE_T_MAX / 2 - sink.len))
        return -1; /* (never: a write outside seal(), or beyond any size) */
    if (sink.len + (Py_ssize_t)n > sink.cap) {
        Py_ssize_t cap = sink.cap * 2 > sink.len + (Py_ssize_t)n ? sink.cap * 2
                                                                 : sink.len + (Py_ssize_t)n;
        if (_PyBytes_Resize(&sink.bytes, cap) < 0) {
            /* Out of memory: the records so far are gone and SSL_write fails, so the
             * connection ends (as a memory BIO that cannot grow ends it). */
            PyErr_Clear();
            sink.bytes = NULL;
            return -1;
        }
        sink.cap = cap;
    }
    memcpy(PyBytes_AS_STRING(sink.bytes) + sink.len, in, n);
    sink.len += (Py_ssize_t)n;
    *put = n;
    return 1;
}

static long direct_ctrl(void *bio, int cmd, long num, void *ptr) {
    (void)num;
    (void)ptr;
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_PENDING:
        return bio == direct_r ? (long)source.left : 0;
    default:
        return 0; /* no kTLS, no datagrams, not at the stream's end */
    }
}

/* The connection's memory BIO `mem` swapped for `direct` (a reference to each held
 * across the swap, so that neither is freed) and back. */
static void swap_in(void *ssl, void *mem, void *direct, ssl_set0_bio_fn set0) {
    bio_up_ref(mem);
    bio_up_ref(direct);
    /* (its flags as the last call left them, maybe on another connection: cleared) */
    bio_clear_flags(direct, BIO_FLAGS_RWS | BIO_FLAGS_SHOULD_RETRY);
    set0(ssl, direct);
    busy = 1;
}

static void swap_out(void *ssl, void *mem, ssl_set0_bio_fn set0) {
    set0(ssl, mem); /* frees the direct BIO's reference, hands back ours to mem */
    busy = 0;
}

#define RECORD_MAX 16384 /* the most cleartext a TLS record carries */
#define FRAME_HEADER 12   /* a yamux frame's header (wire/frames.py) */

static int ready(void) {
    if (ssl_write == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "records: init() was not called");
        return 0;
    }
    return 1;
}

static void *address(PyObject *o) {
    void *p = PyLong_AsVoidPtr(o);
    if (p == NULL && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "records: a NULL pointer");
    return p;
}

/* The pointers `n` Python ints give (init's and init_direct's functions); -1 on an
   error set. */
static int addresses(PyObject **items, int n, void **p) {
    for (int i = 0; i < n; i++) {
        p[i] = address(items[i]);
        if (p[i] == NULL)
            return -1;
    }
    return 0;
}

static PyObject *init(PyObject *self, PyObject *args) {
    PyObject *f[6];
    int wr;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOi:init", &f[0], &f[1], &f[2], &f[3], &f[4], &f[5],
                          &wr))
        return NULL;
    void *p[6];
    if (addresses(f, 6, p) < 0)
        return NULL;
    ssl_write = (ssl_write_fn)p[0];
    ssl_read = (ssl_read_fn)p[1];
    ssl_pending = (ssl_pending_fn)p[2];
    ssl_get_error = (ssl_get_error_fn)p[3];
    bio_read = (bio_read_fn)p[4];
    bio_mem_data = (bio_mem_data_fn)p[5];
    want_read = wr;
    Py_RETURN_NONE;
}

#define DIRECT_FUNCTIONS 14

static PyObject *init_direct(PyObject *self, PyObject *args) {
    PyObject *seq;
    (void)self;
    if (!ready())
        return NULL;
    if (!PyArg_ParseTuple(args, "O:init_direct", &seq))
        return NULL;
    if (direct_r != NULL)
        Py_RETURN_TRUE; /* made already */
    PyObject *fast = PySequence_Fast(seq, "records.init_direct: a sequence of addresses");
    if (fast == NULL)
        return NULL;
    if (PySequence_Fast_GET_SIZE(fast) != DIRECT_FUNCTIONS) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "records.init_direct: 14 addresses");
        return NULL;
    }
    void *p[DIRECT_FUNCTIONS];
    int got = addresses(PySequence_Fast_ITEMS(fast), DIRECT_FUNCTIONS, p);
    Py_DECREF(fast);
    if (got < 0)
        return NULL;
    bio_meth_new_fn meth_new = (bio_meth_new_fn)p[0];
    bio_get_new_index_fn new_index = (bio_get_new_index_fn)p[1];
    bio_meth_set_write_ex_fn set_write = (bio_meth_set_write_ex_fn)p[2];
    bio_meth_set_read_ex_fn set_read = (bio_meth_set_read_ex_fn)p[3];
    bio_meth_set_ctrl_fn set_ctrl = (bio_meth_set_ctrl_fn)p[4];
    bio_new_fn bio_new = (bio_new_fn)p[5];
    bio_set_init_fn set_init = (bio_set_init_fn)p[6];
    int index = new_index();
    void *meth = index < 0 ? NULL : meth_new(index | BIO_TYPE_SOURCE_SINK,
                                             "studios-gateway direct");
    if (meth == NULL || !set_write(meth, sink_write) || !set_read(meth, source_read)
        || !set_ctrl(meth, direct_ctrl))
        Py_RETURN_FALSE; /* (a method half made is left: a few bytes, once) */
    void *r = bio_new(meth), *w = r == NULL ? NULL : bio_new(meth);
    if (w == NULL)
        Py_RETURN_FALSE;
    set_init(r, 1);
    set_init(w, 1);
    bio_up_ref = (bio_up_ref_fn)p[7];
    bio_set_flags = (bio_flags_fn)p[8];
    bio_clear_flags = (bio_flags_fn)p[9];
    ssl_get_rbio = (ssl_get_bio_fn)p[10];
    ssl_get_wbio = (ssl_get_bio_fn)p[11];
    ssl_set0_rbio = (ssl_set0_bio_fn)p[12];
    ssl_set0_wbio = (ssl_set0_bio_fn)p[13];
    direct_r = r;
    direct_w = w;
    Py_RETURN_TRUE;
}

/* Everything the write BIO holds, as one bytes appended to `out`; -1 on an error set. */
static int take(void *wbio, PyObject *out) {
    long n = bio_mem_data(wbio, NULL);
    if (n <= 0)
        return 0;
    if (n > INT_MAX)
        n = INT_MAX;
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    if (b == NULL)
        return -1;
    int got = bio_read(wbio, PyBytes_AS_STRING(b), (int)n);
    if (got <= 0) {
        Py_DECREF(b);
        return 0;
    }
    if (got < n && _PyBytes_Resize(&b, got) < 0)
        return -1;
    int r = PyList_Append(out, b);
    Py_DECREF(b);
    return r;
}

/* A new bytes for the direct write BIO to fill with the records of about `clear` bytes
 * of cleartext, starting with what the memory BIO `wbio` holds (records made before
 * seal() was called). 0 on an error set. */
static int sink_open(void *wbio, Py_ssize_t clear) {
    long held = bio_mem_data(wbio, NULL);
    if (held < 0 || held > INT_MAX)
        held = 0;
    /* A TLS record adds 5 + 1 + 16 bytes (TLS 1.3), 5 + 8 + 16 (TLS 1.2, AES-GCM), up to
     * ~85 with a TLS 1.2 CBC suite; a key update OpenSSL adds on its own is one more
     * short record. (More only costs a realloc: sink_write().) */
    Py_ssize_t cap = (Py_ssize_t)held + clear + (clear / RECORD_MAX + 2) * 96 + 256;
    sink.bytes = PyBytes_FromStringAndSize(NULL, cap);
    if (sink.bytes == NULL)
        return 0;
    sink.cap = cap;
    sink.len = 0;
    if (held > 0) {
        int got = bio_read(wbio, PyBytes_AS_STRING(sink.bytes), (int)held);
        sink.len = got > 0 ? got : 0;
    }
    return 1;
}

/* The sink's records, as one bytes appended to `out` (nothing when it has none, or lost
 * them: sink_write()); -1 on an error set. */
static int sink_close(PyObject *out) {
    PyObject *b = sink.bytes;
    Py_ssize_t len = sink.len;
    sink.bytes = NULL;
    sink.len = sink.cap = 0;
    if (b == NULL)
        return 0;
    if (len == 0) {
        Py_DECREF(b);
        return 0;
    }
    if (len < PyBytes_GET_SIZE(b) && _PyBytes_Resize(&b, len) < 0)
        return -1;
    int r = PyList_Append(out, b);
    Py_DECREF(b);
    return r;
}

/* The yamux header of a Data frame without flags (frames.HEADER_STRUCT, ">BBHII"). */
static void frame_header(unsigned char *h, unsigned long sid, unsigned long length) {
    h[0] = 0; /* version */
    h[1] = 0; /* type: Data */
    h[2] = h[3] = 0; /* flags */
    h[4] = (unsigned char)(sid >> 24); h[5] = (unsigned char)(sid >> 16);
    h[6] = (unsigned char)(sid >> 8); h[7] = (unsigned char)sid;
    h[8] = (unsigned char)(length >> 24); h[9] = (unsigned char)(length >> 16);
    h[10] = (unsigned char)(length >> 8); h[11] = (unsigned char)length;
}

/* The bytes [at, at + n) of the frames of `data` (each `step` bytes of it after its
 * 12-byte header), copied to `out`. */
static void frames_copy(unsigned char *out, const unsigned char *data, Py_ssize_t len,
                        Py_ssize_t step, unsigned long sid, Py_ssize_t at, Py_ssize_t n) {
    const Py_ssize_t whole = step + FRAME_HEADER;
    while (n > 0) {
        Py_ssize_t k = at / whole, off = at % whole, start = k * step;
        Py_ssize_t payload = len - start < step ? len - start : step;
        Py_ssize_t take;
        if (off < FRAME_HEADER) {
            unsigned char h[FRAME_HEADER];
            frame_header(h, sid, (unsigned long)payload);
            take = FRAME_HEADER - off < n ? FRAME_HEADER - off : n;
            memcpy(out, h + off, (size_t)take);
        } else {
            Py_ssize_t in = off - FRAME_HEADER;
            take = payload - in < n ? payload - in : n;
            memcpy(out, data + start + in, (size_t)take);
        }
        out += take;
        at += take;
        n -= take;
    }
}

/* seal() and seal_frames(): SSL_write from `done` on, record by record, of `data` as it
 * is (step 0) or of its frames (a record inside one frame's payload is written from
 * `data` itself, one that takes in a header from a copy of its bytes); the records
 * taken out at `chunk` boundaries and at the end: from the memory BIO, or (`direct`)
 * written by OpenSSL straight into the bytes handed on. Releases `data`. */
static PyObject *sealed(void *ssl, void *wbio, Py_buffer *data, Py_ssize_t done,
                        unsigned long sid, Py_ssize_t step, Py_ssize_t chunk, Py_ssize_t tail,
                        int direct) {
    PyObject *out = PyList_New(0);
    int swapped = 0;
    if (out == NULL)
        goto fail;
    const unsigned char *buf = (const unsigned char *)data->buf;
    const Py_ssize_t len = data->len, whole = step + FRAME_HEADER;
    const Py_ssize_t total = step ? len + (len + step - 1) / step * FRAME_HEADER : len;
    unsigned char staged[RECORD_MAX];
    Py_ssize_t sent = 0; /* (the first record(s) may be in the BIO: seal()'s caller) */
    int result = 0;
    /* Through the memory BIO as before when: no direct BIOs, a direct BIO is in use
     * (a call from inside another's OpenSSL call: `busy`), the caller's BIO is not the
     * connection's, or it holds more than one BIO_read takes. */
    if (direct && (direct_w == NULL || busy || ssl_get_wbio(ssl) != wbio
                   || bio_mem_data(wbio, NULL) > INT_MAX))
        direct = 0;
    while (done < total) {
        if (direct && sink.bytes == NULL) {
            /* A chunk's cleartext: up to `chunk`, then to the end of that record, or all
             * that is left when the rest after `chunk` is `tail` or less. */
            Py_ssize_t clear = total - done;
            if (clear > chunk + tail + RECORD_MAX)
                clear = chunk + tail + RECORD_MAX;
            if (!sink_open(wbio, clear))
                goto fail;
            if (!swapped) {
                swap_in(ssl, wbio, direct_w, ssl_set0_wbio);
                swapped = 1;
            }
        }
        Py_ssize_t n = total - done;
        const unsigned char *from = buf + done;
        if (step) {
            if (n > RECORD_MAX)
                n = RECORD_MAX;
            Py_ssize_t k = done / whole, off = done % whole, start = k * step;
            Py_ssize_t payload = len - start < step ? len - start : step;
            if (off >= FRAME_HEADER && off + n <= FRAME_HEADER + payload) {
                from = buf + start + (off - FRAME_HEADER);
            } else {
                frames_copy(staged, buf, len, step, sid, done, n);
                from = staged;
            }
        } else if (n > INT_MAX) {
            n = INT_MAX;
        }
        result = ssl_write(ssl, from, (int)n);
        if (result <= 0)
            break; /* the caller asks SSL_get_error now; the records made are handed on */
        done += result;
        if (done == total || (done - sent >= chunk && total - done > tail)) {
            if ((direct ? sink_close(out) : take(wbio, out)) < 0)
                goto fail;
            sent = done;
        }
    }
    if (swapped) {
        swap_out(ssl, wbio, ssl_set0_wbio);
        swapped = 0;
    }
    if (direct && sink_close(out) < 0) /* the records made before a failed SSL_write */
        goto fail;
    PyBuffer_Release(data);
    return Py_BuildValue("(Nni)", out, done, done == total ? 0 : result);
fail:
    if (swapped)
        swap_out(ssl, wbio, ssl_set0_wbio);
    Py_CLEAR(sink.bytes);
    sink.len = sink.cap = 0;
    Py_XDECREF(out);
    PyBuffer_Release(data);
    return NULL;
}

static PyObject *seal(PyObject *self, PyObject *args) {
    PyObject *ssl_o, *wbio_o;
    Py_buffer data;
    Py_ssize_t done, chunk, tail;
    int direct = 0;
    (void)self;
    if (!ready())
        return NULL;
    if (!PyArg_ParseTuple(args, "OOy*nnn|p:seal", &ssl_o, &wbio_o, &data, &done, &chunk,
                          &tail, &direct))
        return NULL;
    void *ssl = address(ssl_o), *wbio = ssl ? address(wbio_o) : NULL;
    if (wbio != NULL && (done < 0 || done > data.len || chunk <= 0 || tail < 0))
        PyErr_SetString(PyExc_ValueError, "records.seal: done, chunk or tail out of range");
    if (PyErr_Occurred()) {
        PyBuffer_Release(&data);
        return NULL;
    }
    return sealed(ssl, wbio, &data, done, 0, 0, chunk, tail, direct);
}

static PyObject *seal_frames(PyObject *self, PyObject *args) {
    PyObject *ssl_o, *wbio_o;
    Py_buffer data;
    unsigned long sid;
    Py_ssize_t step, chunk, tail;
    int direct = 0;
    (void)self;
    if (!ready())
        return NULL;
    if (!PyArg_ParseTuple(args, "OOky*nnn|p:seal_frames", &ssl_o, &wbio_o, &sid, &data,
                          &step, &chunk, &tail, &direct))
        return NULL;
    void *ssl = address(ssl_o), *wbio = ssl ? address(wbio_o) : NULL;
    if (wbio != NULL && (step <= 0 || step > 0xffffffffL || sid == 0 || sid > 0xffffffffUL
                         || chunk <= 0 || tail < 0 || data.len == 0))
        PyErr_SetString(PyExc_ValueError,
                        "records.seal_frames: sid, data, step, chunk or tail out of range");
    if (PyErr_Occurred()) {
        PyBuffer_Release(&data);
        return NULL;
    }
    return sealed(ssl, wbio, &data, 0, sid, step, chunk, tail, direct);
}

/* SSL_read into buf[*got:room] until the read BIO (`rbio`, or the direct read BIO's
 * source when NULL) and OpenSSL hold no more (0), `room` is reached with records left
 * (1), or SSL_read fails otherwise (2: *result is its return value). SSL_get_error is
 * asked at once (before any other call: it reads the state that SSL_read left, the
 * read BIO's flags among it). */
static int read_records(void *ssl, void *rbio, char *buf, Py_ssize_t room, Py_ssize_t *got,
                        int *result) {
    for (;;) {
        int r = ssl_read(ssl, buf + *got, (int)(room - *got));
        *result = r;
        if (r > 0) {
            *got += r;
            int more = ssl_pending(ssl) > 0
                || (rbio == NULL ? source.left > 0 : bio_mem_data(rbio, NULL) > 0);
            if (!more)
                return 0; /* OpenSSL reads no record ahead: all that was there is read */
            if (*got < room)
                continue;
            return 1;
        }
        return ssl_get_error(ssl, r) == want_read ? 0 : 2;
    }
}

static PyObject *open_records(PyObject *self, PyObject *args) {
    PyObject *ssl_o, *rbio_o;
    Py_ssize_t limit;
    (void)self;
    if (!ready())
        return NULL;
    if (!PyArg_ParseTuple(args, "OOn:open", &ssl_o, &rbio_o, &limit))
        return NULL;
    void *ssl = address(ssl_o), *rbio = ssl ? address(rbio_o) : NULL;
    if (rbio == NULL)
        return NULL;
    if (limit <= 0 || limit > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "records.open: limit out of range");
        return NULL;
    }
    /* The cleartext is shorter than the records it comes in: what the BIO holds, what
     * OpenSSL has decrypted but not handed out, and the start of a record it took from
     * the BIO on an earlier call (at most one record, 16 KiB of cleartext) bound it.
     * So the buffer fills up (and the call returns with records left) only at `limit`,
     * and each delivery is what the Python loop's would be. */
    long in = bio_mem_data(rbio, NULL);
    Py_ssize_t room = (Py_ssize_t)(in > 0 ? in : 0) + ssl_pending(ssl) + RECORD_MAX;
    if (room > limit)
        room = limit;
    PyObject *b = PyBytes_FromStringAndSize(NULL, room);
    if (b == NULL)
        return NULL;
    char *buf = PyBytes_AS_STRING(b);
    Py_ssize_t got = 0;
    int result = 0, state = read_records(ssl, rbio, buf, room, &got, &result);
    if (got == 0) {
        Py_DECREF(b);
        return Py_BuildValue("(Oii)", Py_None, state, result);
    }
    if (got < room && _PyBytes_Resize(&b, got) < 0)
        return NULL;
    return Py_BuildValue("(Nii)", b, state, result);
}

static PyObject *open_from(PyObject *self, PyObject *args) {
    PyObject *ssl_o, *rbio_o;
    Py_buffer data;
    Py_ssize_t offset, limit;
    (void)self;
    if (!ready())
        return NULL;
    if (!PyArg_ParseTuple(args, "OOy*nn:open_from", &ssl_o, &rbio_o, &data, &offset, &limit))
        return NULL;
    void *ssl = address(ssl_o), *rbio = ssl ? address(rbio_o) : NULL;
    if (rbio != NULL) {
        if (direct_r == NULL)
            PyErr_SetString(PyExc_RuntimeError, "records.open_from: init_direct() did not "
                            "make the direct BIOs");
        else if (busy)
            PyErr_SetString(PyExc_RuntimeError, "records.open_from: a direct BIO is in use "
                            "(a call from inside another's OpenSSL call: ask busy() first)");
        else if (offset < 0 || offset > data.len || limit <= 0 || limit > INT_MAX)
            PyErr_SetString(PyExc_ValueError, "records.open_from: offset or limit out of range");
        else if (ssl_get_rbio(ssl) != rbio)
            PyErr_SetString(PyExc_ValueError, "records.open_from: not the connection's read BIO");
    }
    if (PyErr_Occurred()) {
        PyBuffer_Release(&data);
        return NULL;
    }
    /* As open(): the cleartext is shorter than the records it comes in. */
    Py_ssize_t room = data.len - offset + ssl_pending(ssl) + RECORD_MAX;
    if (room > limit)
        room = limit;
    PyObject *b = PyBytes_FromStringAndSize(NULL, room);
    if (b == NULL) {
        PyBuffer_Release(&data);
        return NULL;
    }
    char *buf = PyBytes_AS_STRING(b);
    Py_ssize_t got = 0;
    int result = 0, state;
    source.at = (const char *)data.buf + offset;
    source.left = (size_t)(data.len - offset);
    swap_in(ssl, rbio, direct_r, ssl_set0_rbio);
    state = read_records(ssl, NULL, buf, room, &got, &result);
    swap_out(ssl, rbio, ssl_set0_rbio);
    offset = data.len - (Py_ssize_t)source.left;
    source.at = NULL;
    source.left = 0;
    PyBuffer_Release(&data);
    if (got == 0) {
        Py_DECREF(b);
        return Py_BuildValue("(Oiin)", Py_None, state, result, offset);
    }
    if (got < room && _PyBytes_Resize(&b, got) < 0)
        return NULL;
    return Py_BuildValue("(Niin)", b, state, result, offset);
}

static PyObject *busy_now(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyBool_FromLong(busy);
}

static PyMethodDef methods[] = {
    {"init", init, METH_VARARGS, "init(SSL_write, SSL_read, SSL_pending, SSL_get_error, "
     "BIO_read, BIO_get_mem_data, SSL_ERROR_WANT_READ): the OpenSSL functions' addresses"},
    {"init_direct", init_direct, METH_VARARGS,
     "init_direct(addresses) -> bool: make the direct BIOs (the 14 functions' addresses)"},
    {"seal", seal, METH_VARARGS,
     "seal(ssl, wbio, data, done, chunk, tail, direct=False) -> (list of bytes, done, result)"},
    {"seal_frames", seal_frames, METH_VARARGS,
     "seal_frames(ssl, wbio, sid, data, step, chunk, tail, direct=False) -> "
     "(list of bytes, done, result)"},
    {"open", open_records, METH_VARARGS,
     "open(ssl, rbio, limit) -> (bytes | None, state, result)"},
    {"busy", busy_now, METH_NOARGS,
     "busy() -> bool: a direct BIO is swapped in (open_from() would refuse)"},
    {"open_from", open_from, METH_VARARGS,
     "open_from(ssl, rbio, data, offset, limit) -> (bytes | None, state, result, offset)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "studios_gateway.wire._records",
    "The tunnel's bulk TLS records in one call each way (wire/tls_lean.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__records(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddStringConstant(m, "source", RECORDS_SOURCE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
