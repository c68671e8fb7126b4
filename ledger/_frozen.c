/* ledger/_frozen.c: the __init__ of an @frozen class (ledger/frozen.py), in C.
 *
 * An @frozen class is a frozen dataclass with slots. Its Python __init__
 * stores each field through the slot's descriptor: about 0.05 us a field,
 * 0.5-0.7 us for a record, an account state or an index entry, which every
 * event of a catch-up, a replay and a command builds two or three of
 * (issue 10). Init(cls, names, fallback) is an __init__ that stores the
 * fields straight into their slots when it is given exactly one positional
 * argument per field for an instance of exactly ``cls``; any other call
 * (keywords, defaults left out, a wrong count, a subclass) goes to
 * ``fallback``, the Python __init__, which also gives every error. So what
 * a call does, and which calls are refused, stays in frozen.py.
 *
 * The slots are found at construction: each name must be a member
 * descriptor (an object slot, T_OBJECT_EX) of ``cls`` or of a base of it,
 * lying inside the instance, or Init refuses the class.
 *
 * An instance the fast path fills with nothing but leaves is left out of
 * the cyclic collector (untracked), as CPython leaves out a tuple of
 * strings and ints. A leaf is an object the collector does not track
 * (str, int, None...) or a member of an Enum. No cycle of garbage can pass
 * through such an instance: nothing it refers to refers back to it, except
 * through a member's class, which is not garbage. A worker caches up to
 * 50,000 account states per partition, and every full collection walked
 * all of them (74-78 ms for 300,000). An instance filled again (a second
 * __init__, by either path) with anything else is tracked again.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <descrobject.h>
#include <stddef.h>

static PyObject *enum_type;  /* enum.EnumType: the class of every Enum */

static int
is_leaf(PyObject *value)
{
    return !PyObject_IS_GC(value) || !PyObject_GC_IsTracked(value)
        || PyObject_TypeCheck((PyObject *)Py_TYPE(value), (PyTypeObject *)enum_type);
}

typedef struct {
    PyObject_HEAD
    PyTypeObject *cls;    /* the class whose instances it fills */
    PyObject *fallback;   /* the Python __init__ */
    Py_ssize_t count;     /* fields */
    Py_ssize_t *offsets;  /* of each field's slot, in field order */
    vectorcallfunc vectorcall;
} Init;

static PyObject *
init_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Init *init = (Init *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames == NULL && nargs == init->count + 1 && Py_IS_TYPE(args[0], init->cls)) {
        PyObject *self = args[0];
        char *base = (char *)self;
        int leaves = 1;
        for (Py_ssize_t i = 0; i < init->count; i++) {
            PyObject **slot = (PyObject **)(base + init->offsets[i]);
            PyObject *old = *slot;
            Py_INCREF(args[i + 1]);
            *slot = args[i + 1];
            Py_XDECREF(old);
            if (leaves && !is_leaf(args[i + 1]))
                leaves = 0;
        }
        if (PyObject_IS_GC(self)) {
            int tracked = PyObject_GC_IsTracked(self);
            if (leaves && tracked)
                PyObject_GC_UnTrack(self);
            else if (!leaves && !tracked)
                PyObject_GC_Track(self);
        }
        Py_RETURN_NONE;
    }
    if (init->fallback == NULL) {  /* cleared by the collector, with its class */
        PyErr_SetString(PyExc_TypeError, "Init: cleared");
        return NULL;
    }
    PyObject *result = PyObject_Vectorcall(init->fallback, args, nargsf, kwnames);
    /* Whatever the Python __init__ stored: an instance left out before is
     * collected again, as every instance it builds is. */
    if (result != NULL && nargs > 0 && PyObject_TypeCheck(args[0], init->cls)
            && PyObject_IS_GC(args[0]) && !PyObject_GC_IsTracked(args[0]))
        PyObject_GC_Track(args[0]);
    return result;
}

/* What it does not have itself (__name__, __qualname__, __module__,
 * __annotations__, __globals__...) is the Python __init__'s: typing.get_type_hints,
 * reprs and introspection see the function it stands for. */
static PyObject *
init_getattro(PyObject *self, PyObject *name)
{
    PyObject *found = PyObject_GenericGetAttr(self, name);
    Init *init = (Init *)self;
    if (found == NULL && init->fallback != NULL && PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        return PyObject_GetAttr(init->fallback, name);
    }
    return found;
}

static PyObject *
init_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyTypeObject *cls;
    PyObject *names, *fallback;
    static char *keywords[] = {"cls", "names", "fallback", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O:Init", keywords, &PyType_Type, &cls,
                                     &PyTuple_Type, &names, &fallback))
        return NULL;
    if (!PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "Init: fallback must be callable");
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(names);
    Py_ssize_t *offsets = PyMem_New(Py_ssize_t, count > 0 ? count : 1);
    if (offsets == NULL)
        return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        /* The class's own slot or a base's: either lies in the instance. */
        PyObject *descr = PyUnicode_Check(name) ? _PyType_Lookup(cls, name) : NULL;
        PyMemberDef *member = descr != NULL && Py_IS_TYPE(descr, &PyMemberDescr_Type)
            ? ((PyMemberDescrObject *)descr)->d_member : NULL;
        if (member == NULL || !PyType_IsSubtype(cls, ((PyDescrObject *)descr)->d_type)
                || member->type != T_OBJECT_EX || (member->flags & READONLY)
                || member->offset < (Py_ssize_t)sizeof(PyObject)
                || member->offset + (Py_ssize_t)sizeof(PyObject *) > cls->tp_basicsize) {
            PyErr_Format(PyExc_TypeError, "Init: %R is not an object slot of %s", name,
                         cls->tp_name);
            PyMem_Free(offsets);
            return NULL;
        }
        offsets[i] = member->offset;
    }
    Init *init = PyObject_GC_New(Init, type);
    if (init == NULL) {
        PyMem_Free(offsets);
        return NULL;
    }
    Py_INCREF(cls);
    init->cls = cls;
    Py_INCREF(fallback);
    init->fallback = fallback;
    init->count = count;
    init->offsets = offsets;
    init->vectorcall = init_vectorcall;
    PyObject_GC_Track(init);
    return (PyObject *)init;
}

static int
init_traverse(Init *init, visitproc visit, void *arg)
{
    Py_VISIT(init->cls);
    Py_VISIT(init->fallback);
    return 0;
}

static int
init_clear(Init *init)
{
    Py_CLEAR(init->cls);
    Py_CLEAR(init->fallback);
    return 0;
}

static void
init_dealloc(Init *init)
{
    PyObject_GC_UnTrack(init);
    init_clear(init);
    PyMem_Free(init->offsets);
    PyObject_GC_Del(init);
}

/* A method of the class: bound to an instance, itself on the class. */
static PyObject *
init_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) {
        Py_INCREF(self);
        return self;
    }
    return PyMethod_New(self, obj);
}

static PyMemberDef init_members[] = {
    /* inspect.signature(cls) and help() follow it to the Python __init__. */
    {"__wrapped__", T_OBJECT, offsetof(Init, fallback), READONLY, NULL},
    {NULL}
};

static PyTypeObject InitType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ledger._frozen.Init",
    .tp_basicsize = sizeof(Init),
    .tp_dealloc = (destructor)init_dealloc,
    .tp_vectorcall_offset = offsetof(Init, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
        | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "Init(cls, names, fallback): an @frozen class's __init__ (ledger/_frozen.c)",
    .tp_traverse = (traverseproc)init_traverse,
    .tp_clear = (inquiry)init_clear,
    .tp_members = init_members,
    .tp_getattro = init_getattro,
    .tp_descr_get = init_get,
    .tp_new = init_new,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "ledger._frozen",
    "The __init__ of an @frozen class, in C (ledger/frozen.py).", -1, NULL,
};

PyMODINIT_FUNC
PyInit__frozen(void)
{
    if (PyType_Ready(&InitType) < 0)
        return NULL;
    if (enum_type == NULL) {
        PyObject *enum_module = PyImport_ImportModule("enum");
        if (enum_module == NULL)
            return NULL;
        enum_type = PyObject_GetAttrString(enum_module, "EnumType");
        Py_DECREF(enum_module);
        if (enum_type == NULL)
            return NULL;
        if (!PyType_Check(enum_type)) {
            PyErr_SetString(PyExc_TypeError, "enum.EnumType is not a type");
            Py_CLEAR(enum_type);
            return NULL;
        }
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&InitType);
    if (PyModule_AddObject(m, "Init", (PyObject *)&InitType) < 0) {
        Py_DECREF(&InitType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
