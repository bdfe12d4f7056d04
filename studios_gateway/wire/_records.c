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
 * seal(ssl, wbio, data, done, chunk, tail) -> (list of bytes, done, result)
 *     SSL_write data[done:] record by record; the records taken out of the write BIO
 *     (one bytes each) once `chunk` bytes of cleartext were written since the last
 *     take and more than `tail` bytes remain, and at the end. `done` is how far
 *     SSL_write got; when it is short of len(data), `result` is the failing
 *     SSL_write's return value, the records made before it are still in the BIO,
 *     and the caller asks OpenSSL why at once (SSL_get_error reads the state that
 *     call left).
 *
 * seal_frames(ssl, wbio, sid, data, step, chunk, tail) -> (list of bytes, done, result)
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

static PyObject *init(PyObject *self, PyObject *args) {
    PyObject *f[6];
    int wr;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOOi:init", &f[0], &f[1], &f[2], &f[3], &f[4], &f[5],
                          &wr))
        return NULL;
    void *p[6];
    for (int i = 0; i < 6; i++) {
        p[i] = address(f[i]);
        if (p[i] == NULL)
            return NULL;
    }
    ssl_write = (ssl_write_fn)p[0];
    ssl_read = (ssl_read_fn)p[1];
    ssl_pending = (ssl_pending_fn)p[2];
    ssl_get_error = (ssl_get_error_fn)p[3];
    bio_read = (bio_read_fn)p[4];
    bio_mem_data = (bio_mem_data_fn)p[5];
    want_read = wr;
    Py_RETURN_NONE;
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
 * taken out at `chunk` boundaries and at the end. Releases `data`. */
static PyObject *sealed(void *ssl, void *wbio, Py_buffer *data, Py_ssize_t done,
                        unsigned long sid, Py_ssize_t step, Py_ssize_t chunk, Py_ssize_t tail) {
    PyObject *out = PyList_New(0);
    if (out == NULL)
        goto fail;
    const unsigned char *buf = (const unsigned char *)data->buf;
    const Py_ssize_t len = data->len, whole = step + FRAME_HEADER;
    const Py_ssize_t total = step ? len + (len + step - 1) / step * FRAME_HEADER : len;
    unsigned char staged[RECORD_MAX];
    Py_ssize_t sent = 0; /* (the first record(s) may be in the BIO: seal()'s caller) */
    int result = 0;
    while (done < total) {
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
            break; /* the caller asks SSL_get_error now; the BIO keeps what was made */
        done += result;
        if (done == total || (done - sent >= chunk && total - done > tail)) {
            if (take(wbio, out) < 0)
                goto fail;
            sent = done;
        }
    }
    PyBuffer_Release(data);
    return Py_BuildValue("(Nni)", out, done, done == total ? 0 : result);
fail:
    Py_XDECREF(out);
    PyBuffer_Release(data);
    return NULL;
}

static PyObject *seal(PyObject *self, PyObject *args) {
    PyObject *ssl_o, *wbio_o;
    Py_buffer data;
    Py_ssize_t done, chunk, tail;
    (void)self;
    if (!ready())
        return NULL;
    if (!PyArg_ParseTuple(args, "OOy*nnn:seal", &ssl_o, &wbio_o, &data, &done, &chunk,
                          &tail))
        return NULL;
    void *ssl = address(ssl_o), *wbio = ssl ? address(wbio_o) : NULL;
    if (wbio != NULL && (done < 0 || done > data.len || chunk <= 0 || tail < 0))
        PyErr_SetString(PyExc_ValueError, "records.seal: done, chunk or tail out of range");
    if (PyErr_Occurred()) {
        PyBuffer_Release(&data);
        return NULL;
    }
    return sealed(ssl, wbio, &data, done, 0, 0, chunk, tail);
}

static PyObject *seal_frames(PyObject *self, PyObject *args) {
    PyObject *ssl_o, *wbio_o;
    Py_buffer data;
    unsigned long sid;
    Py_ssize_t step, chunk, tail;
    (void)self;
    if (!ready())
        return NULL;
    if (!PyArg_ParseTuple(args, "OOky*nnn:seal_frames", &ssl_o, &wbio_o, &sid, &data, &step,
                          &chunk, &tail))
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
    return sealed(ssl, wbio, &data, 0, sid, step, chunk, tail);
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
    int state = 0, result = 0;
    for (;;) {
        result = ssl_read(ssl, buf + got, (int)(room - got));
        if (result > 0) {
            got += result;
            int more = ssl_pending(ssl) > 0 || bio_mem_data(rbio, NULL) > 0;
            if (!more)
                break; /* OpenSSL reads no record ahead: all that was there is read */
            if (got < room)
                continue;
            state = 1;
            break;
        }
        if (ssl_get_error(ssl, result) != want_read)
            state = 2;
        break;
    }
    if (got == 0) {
        Py_DECREF(b);
        return Py_BuildValue("(Oii)", Py_None, state, result);
    }
    if (got < room && _PyBytes_Resize(&b, got) < 0)
        return NULL;
    return Py_BuildValue("(Nii)", b, state, result);
}

static PyMethodDef methods[] = {
    {"init", init, METH_VARARGS, "init(SSL_write, SSL_read, SSL_pending, SSL_get_error, "
     "BIO_read, BIO_get_mem_data, SSL_ERROR_WANT_READ): the OpenSSL functions' addresses"},
    {"seal", seal, METH_VARARGS,
     "seal(ssl, wbio, data, done, chunk, tail) -> (list of bytes, done, result)"},
    {"seal_frames", seal_frames, METH_VARARGS,
     "seal_frames(ssl, wbio, sid, data, step, chunk, tail) -> (list of bytes, done, result)"},
    {"open", open_records, METH_VARARGS,
     "open(ssl, rbio, limit) -> (bytes | None, state, result)"},
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
