/*
 * connector._speedups: the per-value work of a record source's delivery, in C.
 *
 * A masked delivery of a million rows spends most of its time on two loops that Python
 * runs one value at a time holding the interpreter lock: the hash mask's HMAC-SHA256 of
 * every value, and the CSV lines of every chunk. Both are here, each an exact copy of its
 * Python twin's output (connector/transfer/masking.py, Masker.column; and
 * connector/sources/delivered.py, _csv_lines), which stays as the fallback for anything
 * this module does not take and for builds without it (the extension is optional: a
 * machine with no compiler or no OpenSSL headers installs without it).
 *
 * The HMAC is OpenSSL's (EVP_MAC "HMAC" with SHA-256), keyed once per call and re-initialised
 * per value, never a construction of our own. The values are read while holding the lock,
 * the HMACs computed without it (another thread of the provider, such as the one fetching the
 * next rows from the database, runs meanwhile), the results made holding it again.
 *
 * Either function answers None when a value is not of a kind it takes, so the caller uses
 * the Python path for that chunk: same bytes, slower.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include <string.h>

static EVP_MAC *hmac_algorithm; /* fetched once at import; EVP_MAC objects are shared safely */

static const char HEX_DIGITS[] = "0123456789abcdef";

/* A context keyed for HMAC-SHA256, or NULL with a Python error set (holding the lock). */
static EVP_MAC_CTX *
keyed_hmac(const void *key, size_t size)
{
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(hmac_algorithm);
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (ctx == NULL || !EVP_MAC_init(ctx, key, size, params)) {
        EVP_MAC_CTX_free(ctx);
        ERR_clear_error();
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not set up HMAC-SHA256");
        return NULL;
    }
    return ctx;
}

/* HMAC-SHA256 of text under ctx's key as 64 hex digits at out; 0 when OpenSSL failed.
   Needs no lock. Initialised without a key, OpenSSL starts again from the keyed state
   (checked at import: hmac_reuse_works). */
static int
hmac_hex(EVP_MAC_CTX *ctx, const char *text, size_t size, char *out)
{
    unsigned char digest[EVP_MAX_MD_SIZE];
    size_t digest_size = 0;
    if (!EVP_MAC_init(ctx, NULL, 0, NULL)
        || !EVP_MAC_update(ctx, (const unsigned char *)text, size)
        || !EVP_MAC_final(ctx, digest, &digest_size, sizeof digest) || digest_size != 32) {
        return 0;
    }
    for (size_t j = 0; j < 32; j++) {
        out[2 * j] = HEX_DIGITS[digest[j] >> 4];
        out[2 * j + 1] = HEX_DIGITS[digest[j] & 15];
    }
    return 1;
}

/* ---------------------------------------------------------------------- hmac_sha256_hex */

PyDoc_STRVAR(hmac_sha256_hex_doc,
"hmac_sha256_hex(key, values, /)\n--\n\n"
"HMAC-SHA256 under key of each value's UTF-8 bytes, as 64 lower-case hex digits; None stays\n"
"None. Answers None (not a list) when a value is neither an exact str nor None.");

static PyObject *
hmac_sha256_hex(PyObject *module, PyObject *args)
{
    Py_buffer key;
    PyObject *values;
    if (!PyArg_ParseTuple(args, "y*O:hmac_sha256_hex", &key, &values)) {
        return NULL;
    }
    PyObject *result = NULL;
    const char **texts = NULL;
    Py_ssize_t *sizes = NULL;
    char *hex = NULL;
    EVP_MAC_CTX *ctx = NULL;
    /* A private tuple: the items stay alive and in place while the lock is released. */
    PyObject *items = PySequence_Tuple(values);
    if (items == NULL) {
        goto done;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    texts = PyMem_Calloc(n ? n : 1, sizeof *texts);
    sizes = PyMem_Calloc(n ? n : 1, sizeof *sizes);
    hex = PyMem_Malloc(n ? (size_t)n * 64 : 1);
    if (texts == NULL || sizes == NULL || hex == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(items, i);
        if (item == Py_None) {
            continue;
        }
        if (!PyUnicode_CheckExact(item)) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        /* Raises UnicodeEncodeError for a lone surrogate, as str.encode() does. */
        texts[i] = PyUnicode_AsUTF8AndSize(item, &sizes[i]);
        if (texts[i] == NULL) {
            goto done;
        }
    }
    ctx = keyed_hmac(key.buf, (size_t)key.len);
    if (ctx == NULL) {
        goto done;
    }
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n && ok; i++) {
        if (texts[i] != NULL) {
            ok = hmac_hex(ctx, texts[i], (size_t)sizes[i], hex + i * 64);
        }
    }
    Py_END_ALLOW_THREADS
    if (!ok) {
        ERR_clear_error();
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed computing an HMAC-SHA256");
        goto done;
    }
    PyObject *list = PyList_New(n);
    if (list == NULL) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *text;
        if (texts[i] == NULL) {
            text = Py_NewRef(Py_None);
        }
        else {
            text = PyUnicode_New(64, 127);
            if (text == NULL) {
                Py_DECREF(list);
                goto done;
            }
            memcpy(PyUnicode_DATA(text), hex + i * 64, 64);
        }
        PyList_SET_ITEM(list, i, text);
    }
    result = list;
done:
    EVP_MAC_CTX_free(ctx);
    PyMem_Free(hex);
    PyMem_Free(sizes);
    PyMem_Free(texts);
    Py_XDECREF(items);
    PyBuffer_Release(&key);
    return result;
}

/* ---------------------------------------------------------------------------- csv_lines */

typedef struct {
    char *data;
    Py_ssize_t size;
    Py_ssize_t capacity;
} Buffer;

static int
buffer_reserve(Buffer *b, Py_ssize_t more)
{
    if (b->size + more <= b->capacity) {
        return 0;
    }
    Py_ssize_t capacity = b->capacity ? b->capacity : 4096;
    while (capacity < b->size + more) {
        if (capacity > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        capacity *= 2;
    }
    char *data = PyMem_Realloc(b->data, (size_t)capacity);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->capacity = capacity;
    return 0;
}

static int
buffer_put(Buffer *b, const char *text, Py_ssize_t size)
{
    if (size == 0) {
        return 0;
    }
    if (buffer_reserve(b, size) < 0) {
        return -1;
    }
    memcpy(b->data + b->size, text, (size_t)size);
    b->size += size;
    return 0;
}

/* The characters that make the csv module quote a cell (or may: NUL), as _CSV_SPECIAL. */
static int
needs_quoting(const char *text, Py_ssize_t size)
{
    for (Py_ssize_t i = 0; i < size; i++) {
        switch (text[i]) {
        case ',': case '"': case '\n': case '\r': case '\0':
            return 1;
        }
    }
    return 0;
}

/* An int of 64 bits as str() writes it, ending just before end (at most 20 characters);
   where it starts. */
static char *
format_int(char *end, long long value)
{
    char *p = end;
    unsigned long long magnitude = value < 0 ? 0ULL - (unsigned long long)value
                                             : (unsigned long long)value;
    do {
        *--p = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude);
    if (value < 0) {
        *--p = '-';
    }
    return p;
}

static int
put_int(Buffer *b, long long value)
{
    char digits[24];
    char *start = format_int(digits + sizeof digits, value);
    return buffer_put(b, start, digits + sizeof digits - start);
}

/* The cell of one value; 1 when the value is not of a kind this takes (the caller then
   answers None), -1 with an exception set. */
static int
put_cell(Buffer *b, PyObject *value)
{
    if (value == Py_None) {
        return 0;
    }
    if (PyUnicode_CheckExact(value)) {
        Py_ssize_t size;
        const char *text = PyUnicode_AsUTF8AndSize(value, &size);
        if (text == NULL) {
            return -1;
        }
        if (needs_quoting(text, size)) {
            return 1;
        }
        return buffer_put(b, text, size);
    }
    if (PyLong_CheckExact(value)) {
        int overflow;
        long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (number == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (!overflow) {
            return put_int(b, number);
        }
        PyObject *text = PyObject_Str(value);
        if (text == NULL) {
            return -1;
        }
        Py_ssize_t size;
        const char *utf8 = PyUnicode_AsUTF8AndSize(text, &size);
        int status = utf8 == NULL ? -1 : buffer_put(b, utf8, size);
        Py_DECREF(text);
        return status;
    }
    if (PyFloat_CheckExact(value)) {
        /* What float's repr (and str) writes. */
        char *text = PyOS_double_to_string(
            PyFloat_AS_DOUBLE(value), 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
        if (text == NULL) {
            return -1;
        }
        int status = buffer_put(b, text, (Py_ssize_t)strlen(text));
        PyMem_Free(text);
        return status;
    }
    return 1;
}

PyDoc_STRVAR(csv_lines_doc,
"csv_lines(columns, /)\n--\n\n"
"The UTF-8 CSV lines of rows given a column at a time, exactly as _csv_lines writes them\n"
"(one line per row, '\\n' after each), or None when _csv_lines would answer None: fewer than\n"
"two columns, or a value that is not an exact str, int, float or None, or text the csv\n"
"module would quote.");

static PyObject *
csv_lines(PyObject *module, PyObject *arg)
{
    PyObject *result = NULL;
    PyObject **columns = NULL;
    Py_ssize_t width = 0;
    Buffer out = {NULL, 0, 0};
    /* Tuples of our own: code run while cells are made (a garbage collection's __del__,
       say) cannot shrink or change what is being read. */
    PyObject *outer = PySequence_Tuple(arg);
    if (outer == NULL) {
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(outer);
    if (count < 2) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    columns = PyMem_Calloc((size_t)count, sizeof *columns);
    if (columns == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t rows = -1;
    while (width < count) {
        PyObject *column = PySequence_Tuple(PyTuple_GET_ITEM(outer, width));
        if (column == NULL) {
            goto done;
        }
        columns[width++] = column;
        Py_ssize_t size = PyTuple_GET_SIZE(column);
        if (rows >= 0 && size != rows) {
            PyErr_SetString(PyExc_ValueError, "csv_lines: columns of different lengths");
            goto done;
        }
        rows = size;
    }
    if (rows == 0) {
        result = Py_NewRef(Py_None);  /* nothing to write: the Python path decides */
        goto done;
    }
    for (Py_ssize_t r = 0; r < rows; r++) {
        for (Py_ssize_t c = 0; c < width; c++) {
            int status = put_cell(&out, PyTuple_GET_ITEM(columns[c], r));
            if (status < 0) {
                goto done;
            }
            if (status > 0) {
                result = Py_NewRef(Py_None);
                goto done;
            }
            if (buffer_put(&out, c + 1 < width ? "," : "\n", 1) < 0) {
                goto done;
            }
        }
    }
    result = PyBytes_FromStringAndSize(out.data ? out.data : "", out.size);
done:
    for (Py_ssize_t c = 0; c < width; c++) {
        Py_DECREF(columns[c]);
    }
    PyMem_Free(columns);
    PyMem_Free(out.data);
    Py_DECREF(outer);
    return result;
}

/* ---------------------------------------------------------------------------- csv_chunk */

enum { FIELD_PLAIN = 0, FIELD_HASH = 1, FIELD_TRUNCATE = 2, FIELD_REDACT = 3 };

typedef struct {
    Py_ssize_t index; /* in the source's row */
    int kind;
    Py_ssize_t keep; /* FIELD_TRUNCATE: code points kept */
} Field;

enum { CELL_EMPTY = 0, CELL_TEXT = 1, CELL_INT = 2, CELL_FLOAT = 3 };

typedef struct {
    int type;
    int kind;
    Py_ssize_t keep;
    const char *text; /* CELL_FLOAT: its repr, PyMem_Malloc'd, freed by csv_chunk */
    Py_ssize_t size;
    long long number;
} Cell;

/* The bytes of the first `keep` code points of UTF-8 text, as str slicing counts them. */
static Py_ssize_t
utf8_prefix(const char *text, Py_ssize_t size, Py_ssize_t keep)
{
    Py_ssize_t seen = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        if (((unsigned char)text[i] & 0xC0) != 0x80) {
            if (seen == keep) {
                return i;
            }
            seen++;
        }
    }
    return size;
}

/* Writes the chunk's lines into out (sized by the caller to hold them), without the
   interpreter lock: 1 when a cell needs the csv module's quoting, -1 when OpenSSL failed. */
static int
write_cells(const Cell *cells, Py_ssize_t rows, Py_ssize_t width, EVP_MAC_CTX *ctx,
            char *out, Py_ssize_t *written)
{
    char *p = out;
    for (Py_ssize_t r = 0; r < rows; r++) {
        for (Py_ssize_t c = 0; c < width; c++) {
            const Cell *cell = &cells[r * width + c];
            if (cell->type == CELL_INT) {
                char digits[24];
                char *start = format_int(digits + sizeof digits, cell->number);
                memcpy(p, start, (size_t)(digits + sizeof digits - start));
                p += digits + sizeof digits - start;
            }
            else if (cell->type == CELL_FLOAT) {
                memcpy(p, cell->text, (size_t)cell->size);
                p += cell->size;
            }
            else if (cell->type == CELL_TEXT && cell->kind == FIELD_HASH) {
                if (!hmac_hex(ctx, cell->text, (size_t)cell->size, p)) {
                    return -1;
                }
                p += 64;
            }
            else if (cell->type == CELL_TEXT) {
                Py_ssize_t size = cell->kind == FIELD_TRUNCATE
                    ? utf8_prefix(cell->text, cell->size, cell->keep)
                    : cell->size;
                if (needs_quoting(cell->text, size)) {
                    return 1;
                }
                memcpy(p, cell->text, (size_t)size);
                p += size;
            }
            *p++ = c + 1 < width ? ',' : '\n';
        }
    }
    *written = p - out;
    return 0;
}

PyDoc_STRVAR(csv_chunk_doc,
"csv_chunk(rows, width, fields, key, /)\n--\n\n"
"The UTF-8 CSV lines of a chunk of rows (tuples or lists of exactly width values) projected\n"
"and masked as the delivery's Python path does (_Projection, Masker.column, _csv_lines):\n"
"fields is a tuple of (index in the row, kind, keep), kind 0 as is, 1 hash (HMAC-SHA256\n"
"under key, hex), 2 truncate to keep code points, 3 redact. None when the Python path must\n"
"write the chunk: fewer than two fields, a row of another width, a value other than an exact\n"
"str, int, float or None (an int or float only unmasked), an int beyond 64 bits, or a cell\n"
"the csv module would quote.");

static PyObject *
csv_chunk(PyObject *module, PyObject *args)
{
    PyObject *rows_arg, *fields_arg;
    Py_ssize_t width;
    Py_buffer key;
    if (!PyArg_ParseTuple(args, "OnOy*:csv_chunk", &rows_arg, &width, &fields_arg, &key)) {
        return NULL;
    }
    PyObject *result = NULL;
    PyObject *rows = NULL;
    Field *fields = NULL;
    Cell *cells = NULL;
    char *out = NULL;
    EVP_MAC_CTX *ctx = NULL;
    Py_ssize_t count = 0, n = 0;
    int hashes = 0;

    if (!PyTuple_Check(fields_arg)) {
        PyErr_SetString(PyExc_TypeError, "csv_chunk: fields must be a tuple");
        goto done;
    }
    count = PyTuple_GET_SIZE(fields_arg);
    if (count < 2) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    fields = PyMem_Calloc((size_t)count, sizeof *fields);
    if (fields == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t f = 0; f < count; f++) {
        Field *field = &fields[f];
        if (!PyTuple_Check(PyTuple_GET_ITEM(fields_arg, f))) {
            PyErr_SetString(PyExc_TypeError, "csv_chunk: each field must be a tuple");
            goto done;
        }
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(fields_arg, f), "nin:csv_chunk field",
                              &field->index, &field->kind, &field->keep)) {
            goto done;
        }
        if (field->index < 0 || field->index >= width || field->kind < FIELD_PLAIN
            || field->kind > FIELD_REDACT || field->keep < 0) {
            PyErr_SetString(PyExc_ValueError, "csv_chunk: a field out of range");
            goto done;
        }
        hashes |= field->kind == FIELD_HASH;
    }
    /* A new tuple of tuples of our own: every value stays alive and in place while the
       lock is released, whatever another thread does to the lists it was given. */
    PyObject *given = PySequence_Tuple(rows_arg);  /* itself a copy: see csv_lines */
    if (given == NULL) {
        goto done;
    }
    n = PyTuple_GET_SIZE(given);
    rows = n ? PyTuple_New(n) : NULL;
    for (Py_ssize_t r = 0; rows != NULL && r < n; r++) {
        PyObject *row = PyTuple_GET_ITEM(given, r);
        PyObject *own;
        if (PyTuple_CheckExact(row)) {
            own = Py_NewRef(row);
        }
        else if (PyList_CheckExact(row)) {
            own = PyList_AsTuple(row);
        }
        else {
            Py_DECREF(given);
            result = Py_NewRef(Py_None);
            goto done;
        }
        if (own == NULL) {
            Py_DECREF(given);
            goto done;
        }
        PyTuple_SET_ITEM(rows, r, own);
    }
    Py_DECREF(given);
    if (n == 0) {
        result = Py_NewRef(Py_None);  /* nothing to write: the Python path decides */
        goto done;
    }
    if (rows == NULL) {
        goto done;
    }
    if (n > PY_SSIZE_T_MAX / count / (Py_ssize_t)sizeof *cells) {
        PyErr_NoMemory();
        goto done;
    }
    cells = PyMem_RawCalloc((size_t)(n * count) + 1, sizeof *cells);
    if (cells == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* With the lock: every value read into a cell (text stays owned by its str, which
       `rows` keeps alive), and the bytes the lines can take at most. */
    Py_ssize_t bound = 0;
    for (Py_ssize_t r = 0; r < n; r++) {
        PyObject *row = PyTuple_GET_ITEM(rows, r);
        if (PyTuple_GET_SIZE(row) != width) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        PyObject **items = &PyTuple_GET_ITEM(row, 0);
        for (Py_ssize_t f = 0; f < count; f++) {
            Cell *cell = &cells[r * count + f];
            PyObject *value = items[fields[f].index];
            cell->kind = fields[f].kind;
            cell->keep = fields[f].keep;
            if (cell->kind == FIELD_REDACT || value == Py_None) {
                cell->type = CELL_EMPTY;
            }
            else if (PyUnicode_CheckExact(value)) {
                cell->type = CELL_TEXT;
                cell->text = PyUnicode_AsUTF8AndSize(value, &cell->size);
                if (cell->text == NULL) {
                    if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
                        goto done;
                    }
                    /* A lone surrogate: the Python path decides (a truncation may cut it
                       off, else its encoding raises). */
                    PyErr_Clear();
                    result = Py_NewRef(Py_None);
                    goto done;
                }
            }
            else if (PyLong_CheckExact(value) && cell->kind == FIELD_PLAIN) {
                int overflow;
                cell->type = CELL_INT;
                cell->number = PyLong_AsLongLongAndOverflow(value, &overflow);
                if (cell->number == -1 && PyErr_Occurred()) {
                    goto done;
                }
                if (overflow) {
                    result = Py_NewRef(Py_None);
                    goto done;
                }
            }
            else if (PyFloat_CheckExact(value) && cell->kind == FIELD_PLAIN) {
                /* What float's repr (and str) writes. */
                char *text = PyOS_double_to_string(
                    PyFloat_AS_DOUBLE(value), 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
                if (text == NULL) {
                    goto done;
                }
                cell->type = CELL_FLOAT;
                cell->text = text;
                cell->size = (Py_ssize_t)strlen(text);
            }
            else {
                result = Py_NewRef(Py_None);
                goto done;
            }
            Py_ssize_t most = cell->type == CELL_INT ? 20 : cell->kind == FIELD_HASH ? 64 : cell->size;
            if (most > PY_SSIZE_T_MAX - 2 - bound) {
                PyErr_NoMemory();
                goto done;
            }
            bound += most + 1;
        }
    }
    out = PyMem_RawMalloc((size_t)bound + 1);
    if (out == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (hashes) {
        ctx = keyed_hmac(key.buf, (size_t)key.len);
        if (ctx == NULL) {
            goto done;
        }
    }
    /* Without the lock: the masks and the lines (the other threads of the provider, such
       as the one fetching the next rows, run meanwhile). */
    int status;
    Py_ssize_t written = 0;
    Py_BEGIN_ALLOW_THREADS
    status = write_cells(cells, n, count, ctx, out, &written);
    Py_END_ALLOW_THREADS
    if (status < 0) {
        ERR_clear_error();
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed computing an HMAC-SHA256");
        goto done;
    }
    result = status ? Py_NewRef(Py_None) : PyBytes_FromStringAndSize(out, written);
done:
    EVP_MAC_CTX_free(ctx);
    PyMem_RawFree(out);
    for (Py_ssize_t i = 0; cells != NULL && i < n * count; i++) {
        if (cells[i].type == CELL_FLOAT) {
            PyMem_Free((void *)cells[i].text);
        }
    }
    PyMem_RawFree(cells);
    PyMem_Free(fields);
    Py_XDECREF(rows);
    PyBuffer_Release(&key);
    return result;
}

/* ------------------------------------------------------------------------------ module */

static PyMethodDef speedups_methods[] = {
    {"hmac_sha256_hex", hmac_sha256_hex, METH_VARARGS, hmac_sha256_hex_doc},
    {"csv_lines", csv_lines, METH_O, csv_lines_doc},
    {"csv_chunk", csv_chunk, METH_VARARGS, csv_chunk_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    "connector._speedups",
    "The per-value work of a record source's delivery, in C (see _speedups.c).",
    -1,
    speedups_methods,
};

/* Whether this OpenSSL gives RFC 4231's HMAC-SHA256 and starts again from the keyed state
   when re-initialised without a key, as every HMAC here relies on. OpenSSL 3.0.0-3.0.2
   did not reset the state (openssl/openssl#17811): each value's pseudonym after the first
   would silently depend on the values before it. There the import fails, and deliveries
   take the Python path. */
static int
hmac_reuse_works(void)
{
    static const char rfc4231_case_2[] =
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
    const char *key = "Jefe", *text = "what do ya want for nothing?", *other = "Hi There";
    char fresh[64], first[64], again[64];
    EVP_MAC_CTX *one = keyed_hmac(key, strlen(key));
    EVP_MAC_CTX *two = keyed_hmac(key, strlen(key));
    int works = one != NULL && two != NULL
        && hmac_hex(one, text, strlen(text), fresh)
        && memcmp(fresh, rfc4231_case_2, 64) == 0
        && hmac_hex(two, other, strlen(other), first)
        && hmac_hex(two, text, strlen(text), again)
        && memcmp(again, fresh, 64) == 0
        && hmac_hex(two, other, strlen(other), again)
        && memcmp(again, first, 64) == 0;
    EVP_MAC_CTX_free(one);
    EVP_MAC_CTX_free(two);
    ERR_clear_error();
    PyErr_Clear();  /* keyed_hmac's error, if any: the import's own error says why */
    return works;
}

PyMODINIT_FUNC
PyInit__speedups(void)
{
    hmac_algorithm = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (hmac_algorithm == NULL) {
        ERR_clear_error();
        PyErr_SetString(PyExc_ImportError, "OpenSSL offers no HMAC");
        return NULL;
    }
    if (!hmac_reuse_works()) {
        PyErr_Format(PyExc_ImportError,
                     "OpenSSL %s does not reuse an HMAC key as expected (openssl#17811, "
                     "fixed in 3.0.3); deliveries take the Python path",
                     OpenSSL_version(OPENSSL_VERSION_STRING));
        return NULL;
    }
    return PyModule_Create(&speedups_module);
}
