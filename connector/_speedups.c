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
#include <openssl/evp.h>
#include <openssl/params.h>

#include <string.h>

static EVP_MAC *hmac_algorithm; /* fetched once at import; EVP_MAC objects are shared safely */

static const char HEX_DIGITS[] = "0123456789abcdef";

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
    ctx = EVP_MAC_CTX_new(hmac_algorithm);
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (ctx == NULL || !EVP_MAC_init(ctx, key.buf, (size_t)key.len, params)) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not set up HMAC-SHA256");
        goto done;
    }
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    unsigned char digest[EVP_MAX_MD_SIZE];
    size_t digest_size;
    for (Py_ssize_t i = 0; i < n && ok; i++) {
        if (texts[i] == NULL) {
            continue;
        }
        /* No key: OpenSSL starts again from the keyed state set up above. */
        ok = EVP_MAC_init(ctx, NULL, 0, NULL)
            && EVP_MAC_update(ctx, (const unsigned char *)texts[i], (size_t)sizes[i])
            && EVP_MAC_final(ctx, digest, &digest_size, sizeof digest)
            && digest_size == 32;
        char *out = hex + i * 64;
        for (size_t j = 0; ok && j < 32; j++) {
            out[2 * j] = HEX_DIGITS[digest[j] >> 4];
            out[2 * j + 1] = HEX_DIGITS[digest[j] & 15];
        }
    }
    Py_END_ALLOW_THREADS
    if (!ok) {
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

/* An int of 64 bits as str() writes it. */
static int
put_int(Buffer *b, long long value)
{
    char digits[24];
    char *end = digits + sizeof digits;
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
    return buffer_put(b, p, end - p);
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
    PyObject *outer = PySequence_Fast(arg, "csv_lines wants a sequence of columns");
    if (outer == NULL) {
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(outer);
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
    for (; width < count; width++) {
        PyObject *column = PySequence_Fast(
            PySequence_Fast_GET_ITEM(outer, width), "csv_lines wants columns as sequences");
        if (column == NULL) {
            goto done;
        }
        columns[width] = column;
        Py_ssize_t size = PySequence_Fast_GET_SIZE(column);
        if (rows >= 0 && size != rows) {
            PyErr_SetString(PyExc_ValueError, "csv_lines: columns of different lengths");
            goto done;
        }
        rows = size;
    }
    for (Py_ssize_t r = 0; r < rows; r++) {
        for (Py_ssize_t c = 0; c < width; c++) {
            int status = put_cell(&out, PySequence_Fast_ITEMS(columns[c])[r]);
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

/* ------------------------------------------------------------------------------ module */

static PyMethodDef speedups_methods[] = {
    {"hmac_sha256_hex", hmac_sha256_hex, METH_VARARGS, hmac_sha256_hex_doc},
    {"csv_lines", csv_lines, METH_O, csv_lines_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    "connector._speedups",
    "The per-value work of a record source's delivery, in C (see _speedups.c).",
    -1,
    speedups_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    hmac_algorithm = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (hmac_algorithm == NULL) {
        PyErr_SetString(PyExc_ImportError, "OpenSSL offers no HMAC");
        return NULL;
    }
    return PyModule_Create(&speedups_module);
}
