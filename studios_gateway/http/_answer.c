/* The compiled lane's way back: a tool's answer, its head read in one piece, as the
 * browser's bytes, in one call.
 *
 * answer(data) -> (bytes, status, rest) | None
 *
 * `rest`: the body's bytes still to come after this read (0: the answer is whole);
 * they are the browser's bytes as they are (Exchange.lane_more counts them).
 *
 * It recognises a narrow, strict subset of HTTP/1.1 responses and returns None for
 * anything outside it, which then takes the Python way (ResponseReader, llhttp,
 * client_response_headers, ResponseFramer) with all of its verdicts. What it accepts
 * is exactly what that way turns into the same bytes (tests/unit/test_answer_lane.py
 * holds the two against each other with hypothesis):
 *
 *   - a status line "HTTP/1.1 DDD reason" with 200 <= DDD <= 599 and a reason of
 *     printable ASCII that neither starts nor ends with a space;
 *   - field lines "name: value" (any spaces after the colon), the name a token, the
 *     value printable ASCII with inner spaces, neither empty nor ending in a space;
 *   - exactly one Content-Length, of digits, at least the bytes after the head (what
 *     the read has of the body; nothing after the body); for a 204 or a 304 (no body,
 *     whatever a Content-Length says, as llhttp reads them) nothing after the head;
 *   - no Transfer-Encoding, Set-Cookie, Clear-Site-Data, Upgrade, TE, Trailer or Proxy-*
 *     field, and a Connection field only when it says keep-alive (the tool keeps the
 *     connection);
 *   - no Location, Refresh or Service-Worker-Allowed field (path mode rewrites them; a
 *     tool rarely sends the last, so both modes decline it), and no NEL, Report-To,
 *     Strict-Transport-Security, Alt-Svc or Accept-CH (path mode drops them: policies
 *     for the whole origin); with Set-Cookie declined
 *     too, path mode passes every other field as it is, so the lane serves both modes;
 *   - every line ends in CRLF.
 *
 * The output is the status line rewritten as HTTP/1.1 (as the Python way writes it),
 * the field lines without Connection and Keep-Alive (hop-by-hop), and the body.
 * Nothing here allocates but the result; nothing is kept between calls.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* RFC 9110 tchar */
static int is_tchar(unsigned char c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
    case '-': case '.': case '^': case '_': case '`': case '|': case '~':
        return 1;
    }
    return 0;
}

static int is_print(unsigned char c) { return c >= 0x20 && c <= 0x7e; }

/* `name` (length n) equals the lower-case `lower` without regard to case */
static int name_is(const char *name, Py_ssize_t n, const char *lower, Py_ssize_t ln) {
    if (n != ln)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + 32);
        if (c != (unsigned char)lower[i])
            return 0;
    }
    return 1;
}

#define IS(lit) name_is(name, name_len, lit, (Py_ssize_t)sizeof(lit) - 1)

/* What a field line means for the lane */
enum field { KEEP, DROP, LENGTH, REFUSE };

static enum field classify(const char *name, Py_ssize_t name_len, const char *value,
                           Py_ssize_t value_len) {
    switch (name_len) {
    case 2:
        return IS("te") ? REFUSE : KEEP;
    case 3:
        return IS("nel") ? REFUSE : KEEP;
    case 7:
        return (IS("trailer") || IS("upgrade") || IS("refresh") || IS("alt-svc")) ? REFUSE
                                                                                : KEEP;
    case 8:
        return IS("location") ? REFUSE : KEEP;
    case 9:
        return (IS("report-to") || IS("accept-ch")) ? REFUSE : KEEP;
    case 10:
        if (IS("set-cookie"))
            return REFUSE;
        if (IS("keep-alive"))
            return DROP;
        if (IS("connection"))
            return name_is(value, value_len, "keep-alive", 10) ? DROP : REFUSE;
        return KEEP;
    case 14:
        return IS("content-length") ? LENGTH : KEEP;
    case 15:
        return IS("clear-site-data") ? REFUSE : KEEP;
    case 16:
        return IS("proxy-connection") ? REFUSE : KEEP;
    case 17:
        return IS("transfer-encoding") ? REFUSE : KEEP;
    case 18:
        return IS("proxy-authenticate") ? REFUSE : KEEP;
    case 19:
        return IS("proxy-authorization") ? REFUSE : KEEP;
    case 22:
        return IS("service-worker-allowed") ? REFUSE : KEEP;
    case 25:
        return IS("strict-transport-security") ? REFUSE : KEEP;
    }
    return KEEP;
}

#undef IS

/* The kept field lines: offsets into data, at most this many (more: the Python way) */
#define MAX_FIELDS 64

static PyObject *answer(PyObject *self, PyObject *arg) {
    (void)self;
    if (!PyBytes_CheckExact(arg)) {
        PyErr_SetString(PyExc_TypeError, "answer() takes bytes");
        return NULL;
    }
    const char *d = PyBytes_AS_STRING(arg);
    const Py_ssize_t n = PyBytes_GET_SIZE(arg);

    /* the status line */
    if (n < 16 || memcmp(d, "HTTP/1.1 ", 9) != 0)
        Py_RETURN_NONE;
    if (d[9] < '2' || d[9] > '5' || d[10] < '0' || d[10] > '9' || d[11] < '0' ||
        d[11] > '9' || d[12] != ' ')
        Py_RETURN_NONE;
    const int status = (d[9] - '0') * 100 + (d[10] - '0') * 10 + (d[11] - '0');
    const int no_body = status == 204 || status == 304; /* whatever Content-Length says */
    Py_ssize_t p = 13;
    const Py_ssize_t reason_start = p;
    while (p < n && is_print((unsigned char)d[p]))
        p++;
    if (p == reason_start || d[reason_start] == ' ' || d[p - 1] == ' ')
        Py_RETURN_NONE;
    if (p + 1 >= n || d[p] != '\r' || d[p + 1] != '\n')
        Py_RETURN_NONE;
    const Py_ssize_t status_end = p; /* the status line without its CRLF */
    p += 2;

    /* the field lines */
    struct { Py_ssize_t name, name_len, value, value_len; } keep[MAX_FIELDS];
    int kept = 0;
    Py_ssize_t out_len = status_end;
    long long length = -1;
    for (;;) {
        if (p + 1 >= n)
            Py_RETURN_NONE; /* the head does not end in this read */
        if (d[p] == '\r') {
            if (d[p + 1] != '\n')
                Py_RETURN_NONE;
            p += 2; /* the empty line */
            break;
        }
        const Py_ssize_t name_start = p;
        while (p < n && is_tchar((unsigned char)d[p]))
            p++;
        if (p == name_start || p >= n || d[p] != ':')
            Py_RETURN_NONE;
        const Py_ssize_t name_len = p - name_start;
        p++;
        while (p < n && d[p] == ' ')
            p++;
        const Py_ssize_t value_start = p;
        while (p < n && is_print((unsigned char)d[p]))
            p++;
        if (p == value_start || d[p - 1] == ' ')
            Py_RETURN_NONE;
        if (p + 1 >= n || d[p] != '\r' || d[p + 1] != '\n')
            Py_RETURN_NONE;
        const Py_ssize_t value_len = p - value_start;
        const enum field what = classify(d + name_start, name_len, d + value_start, value_len);
        if (what == REFUSE)
            Py_RETURN_NONE;
        if (what == LENGTH) {
            if (length >= 0 || value_len > 15)
                Py_RETURN_NONE;
            length = 0;
            for (Py_ssize_t i = value_start; i < p; i++) {
                if (d[i] < '0' || d[i] > '9')
                    Py_RETURN_NONE;
                length = length * 10 + (d[i] - '0');
            }
        }
        if (what != DROP) {
            if (kept == MAX_FIELDS)
                Py_RETURN_NONE;
            keep[kept].name = name_start;
            keep[kept].name_len = name_len;
            keep[kept].value = value_start;
            keep[kept].value_len = value_len;
            kept++;
            out_len += 2 + name_len + 2 + value_len; /* CRLF "name: value" */
        }
        p += 2;
    }
    if (no_body ? p != n : (length < 0 || length < (long long)(n - p)))
        Py_RETURN_NONE; /* no length, or more than the body in the read */
    const long long rest = no_body ? 0 : length - (long long)(n - p);
    out_len += 4 + (n - p); /* the head's end, the body */

    PyObject *out = PyBytes_FromStringAndSize(NULL, out_len);
    if (out == NULL)
        return NULL;
    char *o = PyBytes_AS_STRING(out);
    memcpy(o, d, status_end);
    o += status_end;
    for (int i = 0; i < kept; i++) { /* each kept as the Python way writes it */
        *o++ = '\r';
        *o++ = '\n';
        memcpy(o, d + keep[i].name, keep[i].name_len);
        o += keep[i].name_len;
        *o++ = ':';
        *o++ = ' ';
        memcpy(o, d + keep[i].value, keep[i].value_len);
        o += keep[i].value_len;
    }
    memcpy(o, "\r\n\r\n", 4);
    o += 4;
    memcpy(o, d + p, n - p);
    o += n - p;
    if (o - PyBytes_AS_STRING(out) != out_len) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_SystemError, "answer(): length mismatch");
        return NULL;
    }
    return Py_BuildValue("(NiL)", out, status, rest);
}

static PyMethodDef methods[] = {
    {"answer", answer, METH_O,
     "answer(data) -> (bytes for the browser, status, body bytes still to come) | None: "
     "a tool's answer whose head is in this read, the strict case only."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "studios_gateway.http._answer",
    "The compiled lane's way back (see studios_gateway.http.lane).", -1, methods,
    NULL, NULL, NULL, NULL,
};

#ifndef ANSWER_SOURCE
#define ANSWER_SOURCE ""
#endif

PyMODINIT_FUNC PyInit__answer(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddStringConstant(m, "source", ANSWER_SOURCE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
