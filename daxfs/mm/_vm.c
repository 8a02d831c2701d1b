/*
 * daxfs.mm._vm: address-space calls Python's mmap module cannot make.
 *
 * Python's mmap chooses the address itself and cannot map at a fixed one,
 * replace part of a mapping, or reserve address space.  DAX mmap needs all
 * three: a file's extents are mapped from the device, each at its place inside
 * one contiguous reservation.  This module exposes mmap(2), munmap(2) and
 * mprotect(2) with raw addresses, and MappedBuffer, the object through which
 * Python code (memoryview, numpy) reaches such memory.
 *
 * MappedBuffer invariants
 *   1. It exports the range [address, address+length) through the buffer
 *      protocol and counts the exports it has handed out.
 *   2. release() succeeds only when no export is alive (BufferError
 *      otherwise, as mmap.close() does); after it, no new export is given.
 *      The owner unmaps the memory only after release() succeeded, so no
 *      view can point at unmapped memory.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MAP_SHARED_VALIDATE
#define MAP_SHARED_VALIDATE 0x03
#endif
#ifndef MAP_SYNC
#define MAP_SYNC 0x80000
#endif

static PyObject *
os_error(const char *what, uintptr_t addr, size_t length)
{
    int e = errno;
    char text[160];
    snprintf(text, sizeof text, "%s of [%#llx, %#llx) failed: %s", what,
             (unsigned long long)addr, (unsigned long long)(addr + length), strerror(e));
    PyObject *msg = PyUnicode_FromString(text);
    if (msg == NULL)
        return NULL;
    PyObject *exc = PyObject_CallFunction(PyExc_OSError, "iO", e, msg);
    Py_DECREF(msg);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* mmap(addr, length, prot, flags, fd, offset) -> int address */
static PyObject *
vm_mmap(PyObject *self, PyObject *args)
{
    unsigned long long addr;
    Py_ssize_t length;
    int prot, flags, fd;
    long long offset;
    if (!PyArg_ParseTuple(args, "KniiiL:mmap", &addr, &length, &prot, &flags, &fd, &offset))
        return NULL;
    if (length <= 0)
        return PyErr_Format(PyExc_ValueError, "mmap length must be positive, got %zd", length);
    void *p;
    Py_BEGIN_ALLOW_THREADS
    p = mmap((void *)(uintptr_t)addr, (size_t)length, prot, flags, fd, (off_t)offset);
    Py_END_ALLOW_THREADS
    if (p == MAP_FAILED)
        return os_error("mmap", addr, length);
    return PyLong_FromVoidPtr(p);
}

static PyObject *
vm_munmap(PyObject *self, PyObject *args)
{
    unsigned long long addr;
    Py_ssize_t length;
    if (!PyArg_ParseTuple(args, "Kn:munmap", &addr, &length))
        return NULL;
    if (munmap((void *)(uintptr_t)addr, (size_t)length) != 0)
        return os_error("munmap", addr, length);
    Py_RETURN_NONE;
}

static PyObject *
vm_mprotect(PyObject *self, PyObject *args)
{
    unsigned long long addr;
    Py_ssize_t length;
    int prot;
    if (!PyArg_ParseTuple(args, "Kni:mprotect", &addr, &length, &prot))
        return NULL;
    if (mprotect((void *)(uintptr_t)addr, (size_t)length, prot) != 0)
        return os_error("mprotect", addr, length);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------ MappedBuffer */

typedef struct {
    PyObject_HEAD
    char *addr;
    Py_ssize_t length;
    int readonly;
    Py_ssize_t exports;
    int released;
} MappedBuffer;

static PyObject *
MB_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"address", "length", "readonly", NULL};
    unsigned long long addr;
    Py_ssize_t length;
    int readonly = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Kn|p:MappedBuffer", kwlist, &addr, &length,
                                     &readonly))
        return NULL;
    if (length < 0 || addr == 0)
        return PyErr_Format(PyExc_ValueError, "bad range for MappedBuffer");
    MappedBuffer *mb = (MappedBuffer *)type->tp_alloc(type, 0);
    if (mb == NULL)
        return NULL;
    mb->addr = (char *)(uintptr_t)addr;
    mb->length = length;
    mb->readonly = readonly;
    return (PyObject *)mb;
}

static int
MB_getbuffer(MappedBuffer *mb, Py_buffer *view, int flags)
{
    if (mb->released) {
        PyErr_SetString(PyExc_ValueError, "mapping is closed");
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)mb, mb->addr, mb->length, mb->readonly, flags) < 0)
        return -1;
    mb->exports++;
    return 0;
}

static void
MB_releasebuffer(MappedBuffer *mb, Py_buffer *view)
{
    mb->exports--;
}

static PyBufferProcs MB_as_buffer = {
    (getbufferproc)MB_getbuffer,
    (releasebufferproc)MB_releasebuffer,
};

static PyObject *
MB_release(MappedBuffer *mb, PyObject *unused)
{
    if (mb->released)
        Py_RETURN_NONE;
    if (mb->exports > 0) {
        PyErr_Format(PyExc_BufferError, "cannot close a mapping while %zd buffer(s) are exported",
                     mb->exports);
        return NULL;
    }
    mb->released = 1;
    Py_RETURN_NONE;
}

/* reopen(): undo a release() that a larger operation had to roll back */
static PyObject *
MB_reopen(MappedBuffer *mb, PyObject *unused)
{
    mb->released = 0;
    Py_RETURN_NONE;
}

static PyObject *
MB_get_exports(MappedBuffer *mb, void *c)
{
    return PyLong_FromSsize_t(mb->exports);
}

static PyObject *
MB_get_address(MappedBuffer *mb, void *c)
{
    return PyLong_FromVoidPtr(mb->addr);
}

static PyObject *
MB_get_length(MappedBuffer *mb, void *c)
{
    return PyLong_FromSsize_t(mb->length);
}

static PyObject *
MB_get_readonly(MappedBuffer *mb, void *c)
{
    return PyBool_FromLong(mb->readonly);
}

static PyObject *
MB_get_released(MappedBuffer *mb, void *c)
{
    return PyBool_FromLong(mb->released);
}

static PyMethodDef MB_methods[] = {
    {"release", (PyCFunction)MB_release, METH_NOARGS,
     "release(): refuse further exports; BufferError while any is alive"},
    {"reopen", (PyCFunction)MB_reopen, METH_NOARGS,
     "reopen(): give exports again after a release() that is rolled back"},
    {NULL}};

static PyGetSetDef MB_getset[] = {
    {"exports", (getter)MB_get_exports, NULL, "buffers exported and not yet released", NULL},
    {"address", (getter)MB_get_address, NULL, "address of byte 0", NULL},
    {"length", (getter)MB_get_length, NULL, "bytes", NULL},
    {"readonly", (getter)MB_get_readonly, NULL, "exports are read-only", NULL},
    {"released", (getter)MB_get_released, NULL, "release() succeeded", NULL},
    {NULL}};

static PyTypeObject MappedBufferType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "daxfs.mm._vm.MappedBuffer",
    .tp_basicsize = sizeof(MappedBuffer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "MappedBuffer(address, length, readonly=False): export-counted raw memory.",
    .tp_as_buffer = &MB_as_buffer,
    .tp_methods = MB_methods,
    .tp_getset = MB_getset,
    .tp_new = MB_new,
};

static PyMethodDef module_methods[] = {
    {"mmap", vm_mmap, METH_VARARGS, "mmap(addr, length, prot, flags, fd, offset) -> address"},
    {"munmap", vm_munmap, METH_VARARGS, "munmap(addr, length)"},
    {"mprotect", vm_mprotect, METH_VARARGS, "mprotect(addr, length, prot)"},
    {NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "daxfs.mm._vm",
                                       "Raw address-space calls for DAX mmap.", -1,
                                       module_methods};

PyMODINIT_FUNC
PyInit__vm(void)
{
    if (PyType_Ready(&MappedBufferType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL)
        return NULL;
    Py_INCREF(&MappedBufferType);
    if (PyModule_AddObject(m, "MappedBuffer", (PyObject *)&MappedBufferType) < 0)
        goto fail;
    struct {
        const char *name;
        long value;
    } consts[] = {
        {"PROT_NONE", PROT_NONE},
        {"PROT_READ", PROT_READ},
        {"PROT_WRITE", PROT_WRITE},
        {"MAP_SHARED", MAP_SHARED},
        {"MAP_PRIVATE", MAP_PRIVATE},
        {"MAP_FIXED", MAP_FIXED},
        {"MAP_ANONYMOUS", MAP_ANONYMOUS},
        {"MAP_NORESERVE", MAP_NORESERVE},
        {"MAP_FIXED_NOREPLACE", MAP_FIXED_NOREPLACE},
        {"MAP_SHARED_VALIDATE", MAP_SHARED_VALIDATE},
        {"MAP_SYNC", MAP_SYNC},
        {"PAGE_SIZE", 0},
    };
    for (size_t i = 0; i < sizeof(consts) / sizeof(consts[0]); i++) {
        long v = consts[i].value;
        if (strcmp(consts[i].name, "PAGE_SIZE") == 0)
            v = sysconf(_SC_PAGESIZE);
        if (PyModule_AddIntConstant(m, consts[i].name, v) < 0)
            goto fail;
    }
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
