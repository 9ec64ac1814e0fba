/*
 * The record scan of a CSV or JSON Lines chunk in one native pass, used by core/inputs/tabular_scan.py
 * (`_NativeChunkScan`), which keeps its numpy scan for installs without a C compiler: both decide the same.
 *
 * A newline ends a record unless it is inside a quoted CSV field. A quote is special only where a field
 * starts (after the separator, a LF or a CR, or at the file's start), as pandas' C tokenizer reads it:
 * there it opens a quoted field; inside one, a quote closes it, and a quote right after the closing one
 * reopens it (`""` is one quote). This is `_QuoteTracker._walk` of tabular_scan.py, applied to every quote.
 *
 * The chunk is looked at 16 bytes at a time (SSE2 where the compiler has it, 8 with plain 64-bit words
 * elsewhere, or with -DAPR_PORTABLE_SCAN, which the tests build to check that path too); only the positions
 * of LF and '"' are visited one by one. The GIL is released during the pass, so the planner's threads scan
 * files side by side.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The SHA-256 of this file as setup.py built it (the planner compares it with the source next to the module). */
#ifndef APR_SOURCE_SHA256
#define APR_SOURCE_SHA256 ""
#endif

#if defined(__SSE2__) && !defined(APR_PORTABLE_SCAN)
#define APR_SSE2_SCAN 1
#include <emmintrin.h>
#endif

typedef struct {
    int64_t *ends;      /* positions of the newlines that end records */
    int64_t *lines;     /* for each, its index among all the chunk's newlines (only once one is quoted) */
    Py_ssize_t count;   /* ends found */
    Py_ssize_t cap;
    int64_t newlines;   /* all newlines seen, quoted ones too */
    int inside;         /* in a quoted field */
    int64_t closer;     /* position of the last quote that closed a field (relative to the chunk) */
    int64_t opened;     /* position of the last quote that opened one (-1: none in this chunk) */
    int64_t opened_nl;  /* newlines before it */
    int failed;         /* out of memory */
} Scan;

static int grow(Scan *s) {
    Py_ssize_t cap = s->cap ? s->cap * 2 : 4096;
    int64_t *ends = realloc(s->ends, (size_t)cap * sizeof(int64_t));
    if (ends == NULL) return -1;
    s->ends = ends;
    if (s->lines != NULL) {
        int64_t *lines = realloc(s->lines, (size_t)cap * sizeof(int64_t));
        if (lines == NULL) return -1;
        s->lines = lines;
    }
    s->cap = cap;
    return 0;
}

/* One LF or '"' at position i; `before` is the byte before the chunk. */
static inline void visit(Scan *s, const uint8_t *buf, int64_t i, uint8_t quote, const uint8_t *starts_field,
                         uint8_t before) {
    uint8_t c = buf[i];
    if (c == '\n') {
        if (!s->inside) {
            if (s->count == s->cap && grow(s) != 0) {
                s->failed = 1;
                return;
            }
            s->ends[s->count] = i;
            if (s->lines != NULL) s->lines[s->count] = s->newlines;
            s->count++;
        } else if (s->lines == NULL) {
            /* The first quoted newline: from here on an end's line is not its rank among the ends. */
            s->lines = malloc((size_t)(s->cap ? s->cap : 1) * sizeof(int64_t));
            if (s->lines == NULL) {
                s->failed = 1;
                return;
            }
            for (Py_ssize_t k = 0; k < s->count; k++) s->lines[k] = k;
        }
        s->newlines++;
        return;
    }
    if (c != quote) return;
    if (s->inside) {
        s->inside = 0;
        s->closer = i;
    } else if (s->closer == i - 1) {
        s->inside = 1; /* the second quote of "" inside a quoted field */
    } else if (starts_field[i ? buf[i - 1] : before]) {
        s->inside = 1;
        s->opened = i;
        s->opened_nl = s->newlines;
    }
}

static void scan(Scan *s, const uint8_t *buf, int64_t n, int quote_byte, uint8_t separator, uint8_t before) {
    uint8_t starts_field[256] = {0};
    starts_field[separator] = starts_field['\n'] = starts_field['\r'] = 1;
    /* No quote handling (JSON Lines): a quote byte that cannot occur in the mask below. */
    uint8_t quote = quote_byte < 0 ? '\n' : (uint8_t)quote_byte;
    int64_t i = 0;
#if defined(APR_SSE2_SCAN)
    const __m128i nl = _mm_set1_epi8('\n'), qt = _mm_set1_epi8((char)quote);
    for (; i + 16 <= n && !s->failed; i += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(buf + i));
        unsigned mask = (unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, nl), _mm_cmpeq_epi8(v, qt)));
        while (mask) {
            visit(s, buf, i + __builtin_ctz(mask), quote, starts_field, before);
            mask &= mask - 1;
        }
    }
#else
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    const uint64_t nl = ones * '\n', qt = ones * quote;
    for (; i + 8 <= n && !s->failed; i += 8) {
        uint64_t w, a, b;
        memcpy(&w, buf + i, 8);
        a = w ^ nl;
        b = w ^ qt;
        if (((a - ones) & ~a & highs) | ((b - ones) & ~b & highs)) {
            for (int64_t j = i; j < i + 8; j++) visit(s, buf, j, quote, starts_field, before);
        }
    }
#endif
    for (; i < n && !s->failed; i++) visit(s, buf, i, quote, starts_field, before);
}

PyDoc_STRVAR(scan_chunk_doc,
"scan_chunk(chunk, quote, separator, before, inside, closer) -> tuple\n\n"
"The record ends of one chunk. `quote`: the quote byte, or -1 for none (JSON Lines); `separator`: the\n"
"field separator's byte; `before`: the byte before the chunk (LF at the file's start); `inside`: a quoted\n"
"field is open at the chunk's start; `closer`: the position, relative to the chunk, of the last quote that\n"
"closed a field (-1: the byte before the chunk; any lower value: none that matters).\n\n"
"Returns (ends, lines, newlines, inside, closer, opened, opened_newlines): `ends` the int64 positions of\n"
"the newlines that end records, as bytes; `lines` each one's index among all the chunk's newlines, as\n"
"bytes, or None when no newline is quoted (the index is then its rank); `newlines` how many the chunk has;\n"
"`inside` and `closer` for the next chunk (closer relative to this one); `opened` the position of the last\n"
"quote that opened a field (-1: none) and `opened_newlines` the newlines before it.");

static PyObject *scan_chunk(PyObject *self, PyObject *args) {
    Py_buffer chunk;
    int quote, separator, before, inside;
    long long closer;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*iiipL", &chunk, &quote, &separator, &before, &inside, &closer)) return NULL;
    if (separator < 0 || separator > 255 || before < 0 || before > 255 || quote > 255) {
        PyBuffer_Release(&chunk);
        PyErr_SetString(PyExc_ValueError, "separator and before are bytes (0-255); quote a byte or -1");
        return NULL;
    }
    Scan s = {0};
    s.inside = inside;
    s.closer = closer;
    s.opened = -1;
    Py_BEGIN_ALLOW_THREADS
    scan(&s, (const uint8_t *)chunk.buf, (int64_t)chunk.len, quote, (uint8_t)separator, (uint8_t)before);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&chunk);
    PyObject *result = NULL;
    if (s.failed) {
        PyErr_NoMemory();
    } else {
        PyObject *ends = PyBytes_FromStringAndSize((const char *)s.ends, s.count * (Py_ssize_t)sizeof(int64_t));
        PyObject *lines = s.lines == NULL
            ? Py_NewRef(Py_None)
            : PyBytes_FromStringAndSize((const char *)s.lines, s.count * (Py_ssize_t)sizeof(int64_t));
        if (ends != NULL && lines != NULL) {
            result = Py_BuildValue("(OOLOLLL)", ends, lines, (long long)s.newlines, s.inside ? Py_True : Py_False,
                                   (long long)s.closer, (long long)s.opened, (long long)s.opened_nl);
        }
        Py_XDECREF(ends);
        Py_XDECREF(lines);
    }
    free(s.ends);
    free(s.lines);
    return result;
}

static PyMethodDef methods[] = {
    {"scan_chunk", scan_chunk, METH_VARARGS, scan_chunk_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_record_scan", "The native record scan (core/inputs/tabular_scan.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__record_scan(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddStringConstant(m, "SOURCE_SHA256", APR_SOURCE_SHA256) != 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
