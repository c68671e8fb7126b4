/* The Avro longs and strings of a record, read and written in C (issue 10).
 *
 * schemas/codec.py generates a reader per schema; with this module built,
 * each run of consecutive long and string fields is one call of
 * read_run(buf, pos, kinds) instead of Python code per byte. Reading the log
 * back (catch-up, replay) and every command the worker applies spends most
 * of its decoding time there.
 *
 * It must read exactly what the generated Python code reads, and fail where
 * it fails with the same exception and message (tests/schemas/test_avro_c.py
 * holds the two to each other on random and mutated bytes):
 *
 *   - a long is a zigzag varint of at most 10 bytes whose value fits 64 bits,
 *     else CodecError(NON_CANONICAL);
 *   - a string is a long n, then n bytes of strict UTF-8: n < 0 or past the
 *     end is CodecError("string of {n} bytes does not fit the record"), bytes
 *     that are not UTF-8 CodecError("string is not UTF-8");
 *   - reading past the end is IndexError("index out of range"), as buf[pos]
 *     in Python (codec._read reports it as a truncated body).
 *
 * write_run(out, kinds, values) appends a run of longs and strings as the
 * generated Python writer would, byte for byte; a value that is not exactly
 * an int of 64 bits or a str of valid UTF-8 leaves out unchanged and returns
 * False, and the Python code then writes the run or raises its own error.
 *
 * Everything read comes from outside (Kafka, HTTP): every byte is read after
 * a bounds check, and no length is trusted.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static PyObject *codec_error = NULL;   /* schemas.codec.CodecError */
static PyObject *non_canonical = NULL; /* its message for a long outside 64 bits */

static int
past_end(void)
{
    PyErr_SetString(PyExc_IndexError, "index out of range");
    return -1;
}

static int
read_long(const unsigned char *buf, Py_ssize_t size, Py_ssize_t *pos, int64_t *value)
{
    Py_ssize_t p = *pos;
    uint64_t z;
    unsigned int b;
    int shift;

    if (p >= size)
        return past_end();
    b = buf[p++];
    z = b & 0x7F;
    for (shift = 7; b >= 0x80; shift += 7) {
        if (p >= size)
            return past_end();
        b = buf[p++];
        if (shift == 63) {
            /* The tenth byte: one more byte, or a bit past the 64th, is a
             * long outside 64 bits (the Python reader's two checks). */
            if (b > 1) {
                PyErr_SetObject(codec_error, non_canonical);
                return -1;
            }
            z |= (uint64_t)b << 63;
            break;
        }
        z |= (uint64_t)(b & 0x7F) << shift;
    }
    *value = (int64_t)((z >> 1) ^ (0 - (z & 1)));
    *pos = p;
    return 0;
}

static PyObject *
read_string(const unsigned char *buf, Py_ssize_t size, Py_ssize_t *pos)
{
    int64_t n;
    PyObject *text;

    if (read_long(buf, size, pos, &n) < 0)
        return NULL;
    if (n < 0 || n > (int64_t)(size - *pos)) {
        PyErr_Format(codec_error, "string of %lld bytes does not fit the record", (long long)n);
        return NULL;
    }
    text = PyUnicode_DecodeUTF8((const char *)buf + *pos, (Py_ssize_t)n, NULL);
    if (text == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            PyErr_SetString(codec_error, "string is not UTF-8");
        }
        return NULL;
    }
    *pos += (Py_ssize_t)n;
    return text;
}

/* read_run(buf: bytes, pos: int, kinds: bytes) -> (value, ..., pos)
 * kinds: one byte per field, b'l' a long, b's' a string. */
static PyObject *
read_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    const unsigned char *buf, *kinds;
    Py_ssize_t size, count, pos, i;
    PyObject *result;

    (void)module;
    if (nargs != 3 || !PyBytes_CheckExact(args[0]) || !PyLong_CheckExact(args[1])
            || !PyBytes_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "read_run(buf: bytes, pos: int, kinds: bytes)");
        return NULL;
    }
    if (codec_error == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "schemas._avro.init() was not called");
        return NULL;
    }
    buf = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    size = PyBytes_GET_SIZE(args[0]);
    pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    if (pos < 0) {
        PyErr_SetString(PyExc_ValueError, "negative position");
        return NULL;
    }
    kinds = (const unsigned char *)PyBytes_AS_STRING(args[2]);
    count = PyBytes_GET_SIZE(args[2]);
    result = PyTuple_New(count + 1);
    if (result == NULL)
        return NULL;
    for (i = 0; i < count; i++) {
        PyObject *value;
        if (kinds[i] == 'l') {
            int64_t n;
            if (read_long(buf, size, &pos, &n) < 0)
                goto fail;
            value = PyLong_FromLongLong((long long)n);
        } else if (kinds[i] == 's') {
            value = read_string(buf, size, &pos);
        } else {
            PyErr_Format(PyExc_ValueError, "kind %c is not l or s", kinds[i]);
            goto fail;
        }
        if (value == NULL)
            goto fail;
        PyTuple_SET_ITEM(result, i, value);
    }
    {
        PyObject *end = PyLong_FromSsize_t(pos);
        if (end == NULL)
            goto fail;
        PyTuple_SET_ITEM(result, count, end);
    }
    return result;
fail:
    Py_DECREF(result);
    return NULL;
}

/* The bytes of the varint of z: 1 to 10. */
static Py_ssize_t
varint_size(uint64_t z)
{
    Py_ssize_t n = 1;
    while (z >= 0x80) {
        z >>= 7;
        n++;
    }
    return n;
}

static uint64_t
zigzag(long long n)
{
    return ((uint64_t)n << 1) ^ (uint64_t)(0 - (uint64_t)(n < 0));
}

/* Zigzag varint of a long, at most 10 bytes, at p; returns the end. */
static unsigned char *
put_long(unsigned char *p, long long n)
{
    uint64_t z = zigzag(n);
    while (z >= 0x80) {
        *p++ = (unsigned char)((z & 0x7F) | 0x80);
        z >>= 7;
    }
    *p++ = (unsigned char)z;
    return p;
}

/* write_run(out: bytearray, kinds: bytes, values: tuple) -> bool
 * Appends the values as Avro longs (b'l') and strings (b's') and returns True;
 * or, if a value is not exactly what its kind takes (an int that fits 64 bits,
 * a str that encodes to UTF-8), leaves out as it was and returns False: the
 * generated Python writer then writes the run itself, or raises its own error
 * (a bool, a float, an int outside the range, a lone surrogate). */
static PyObject *
write_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *out, *values;
    const unsigned char *kinds;
    Py_ssize_t count, i, start, room;
    unsigned char *p;

    (void)module;
    if (nargs != 3 || !PyByteArray_CheckExact(args[0]) || !PyBytes_CheckExact(args[1])
            || !PyTuple_CheckExact(args[2])
            || PyTuple_GET_SIZE(args[2]) != PyBytes_GET_SIZE(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "write_run(out: bytearray, kinds: bytes, values: tuple of len(kinds))");
        return NULL;
    }
    out = args[0];
    kinds = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    values = args[2];
    count = PyTuple_GET_SIZE(values);
    /* Check every value and size the run exactly first: out changes only once
     * all are known to fit, and grows once. */
    room = 0;
    for (i = 0; i < count; i++) {
        PyObject *v = PyTuple_GET_ITEM(values, i);
        if (kinds[i] == 'l') {
            int overflow;
            long long n;
            if (!PyLong_CheckExact(v))
                Py_RETURN_FALSE;
            n = PyLong_AsLongLongAndOverflow(v, &overflow);
            if (overflow)
                Py_RETURN_FALSE;
            room += varint_size(zigzag(n));
        } else if (kinds[i] == 's') {
            Py_ssize_t size;
            if (!PyUnicode_CheckExact(v))
                Py_RETURN_FALSE;
            /* An ASCII str (every id, every currency) is its own UTF-8; any
             * other keeps the UTF-8 copy made here for its lifetime. */
            if (PyUnicode_AsUTF8AndSize(v, &size) == NULL) {
                if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
                    return NULL;
                PyErr_Clear();  /* a lone surrogate: Python's encode() raises it */
                Py_RETURN_FALSE;
            }
            if (size > PY_SSIZE_T_MAX - room - 10)
                Py_RETURN_FALSE;
            room += varint_size((uint64_t)size << 1) + size;
        } else {
            PyErr_Format(PyExc_ValueError, "kind %c is not l or s", kinds[i]);
            return NULL;
        }
    }
    start = PyByteArray_GET_SIZE(out);
    if (room > PY_SSIZE_T_MAX - start) {
        PyErr_NoMemory();
        return NULL;
    }
    if (PyByteArray_Resize(out, start + room) < 0)
        return NULL;
    p = (unsigned char *)PyByteArray_AS_STRING(out) + start;
    for (i = 0; i < count; i++) {
        PyObject *v = PyTuple_GET_ITEM(values, i);
        if (kinds[i] == 'l') {
            p = put_long(p, PyLong_AsLongLong(v));
        } else {
            Py_ssize_t size;
            const char *data = PyUnicode_AsUTF8AndSize(v, &size);  /* cached above */
            p = put_long(p, (long long)size);
            memcpy(p, data, (size_t)size);
            p += size;
        }
    }
    if (p != (unsigned char *)PyByteArray_AS_STRING(out) + start + room) {
        PyErr_SetString(PyExc_SystemError, "write_run: sized and written runs differ");
        return NULL;
    }
    Py_RETURN_TRUE;
}

/* init(CodecError, non_canonical_message): the exception and the message the
 * Python reader raises, so that both raise the same. */
static PyObject *
init(PyObject *module, PyObject *args)
{
    PyObject *error, *message;

    (void)module;
    if (!PyArg_ParseTuple(args, "OU", &error, &message))
        return NULL;
    if (!PyExceptionClass_Check(error)) {
        PyErr_SetString(PyExc_TypeError, "init: not an exception class");
        return NULL;
    }
    if (codec_error != NULL && codec_error != error) {
        /* One process-wide class: a second codec module (a reload) would
         * have the first one's readers raise an error it does not catch. */
        PyErr_SetString(PyExc_RuntimeError, "schemas._avro is bound to another CodecError");
        return NULL;
    }
    Py_INCREF(error);
    Py_XSETREF(codec_error, error);
    Py_INCREF(message);
    Py_XSETREF(non_canonical, message);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"read_run", (PyCFunction)(void (*)(void))read_run, METH_FASTCALL,
     "read_run(buf, pos, kinds) -> (value, ..., pos): consecutive Avro longs (b'l') and "
     "strings (b's') from buf at pos"},
    {"write_run", (PyCFunction)(void (*)(void))write_run, METH_FASTCALL,
     "write_run(out, kinds, values) -> bool: append values as Avro longs (b'l') and strings "
     "(b's'); False, with out unchanged, if one is not exactly of its kind"},
    {"init", init, METH_VARARGS, "init(CodecError, non_canonical_message)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "schemas._avro",
    "Avro longs and strings read in C for schemas.codec's generated readers.", -1, methods,
};

PyMODINIT_FUNC
PyInit__avro(void)
{
    return PyModule_Create(&module);
}
