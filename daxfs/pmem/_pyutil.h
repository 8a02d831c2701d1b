/*
 * Python-facing helpers shared by the C extensions (daxfs.pmem._native,
 * daxfs.fs._commit, daxfs.fs._stat): the error class for bad arguments, reading the __slots__
 * fields of the filesystem's own classes without attribute lookups, parsing a
 * persist mode (_persist.h), and taking and releasing the filesystem's locks.
 *
 * Include after <Python.h> and <structmember.h>.  Everything is static, so
 * each extension has its own error class, set by its set_error_class(), and
 * calls pyutil_init() from its module init.
 */
#ifndef DAXFS_PYUTIL_H
#define DAXFS_PYUTIL_H

#include <stdarg.h>

#include "_persist.h"

/* set by set_error_class (daxfs.errors.InvalidArgument); else ValueError */
static PyObject *invalid_argument = NULL;

/* Raise the error class with a formatted message; returns NULL. */
__attribute__((unused)) static PyObject *
raise_invalid(const char *fmt, ...)
{
    va_list vargs;
    va_start(vargs, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, vargs);
    va_end(vargs);
    if (msg == NULL)
        return NULL;
    PyObject *cls = invalid_argument != NULL ? invalid_argument : PyExc_ValueError;
    PyObject *exc = PyObject_CallOneArg(cls, msg);
    if (exc != NULL) {
        PyErr_SetObject(cls, exc);
        Py_DECREF(exc);
    }
    Py_DECREF(msg);
    return NULL;
}

/* set_error_class(cls): the class raise_invalid raises (a ValueError subclass). */
__attribute__((unused)) static PyObject *
set_error_class(PyObject *self, PyObject *cls)
{
    if (!PyType_Check(cls) ||
        !PyType_IsSubtype((PyTypeObject *)cls, (PyTypeObject *)PyExc_ValueError)) {
        PyErr_SetString(PyExc_TypeError, "expected a ValueError subclass");
        return NULL;
    }
    Py_XSETREF(invalid_argument, Py_NewRef(cls));
    Py_RETURN_NONE;
}

/* The offset of slot `name` of `type` (a member descriptor holding an object);
 * -1 with TypeError if `type` has no such __slots__ field. */
__attribute__((unused)) static int
slot_offset(PyTypeObject *type, const char *name, Py_ssize_t *out)
{
    PyObject *d = PyObject_GetAttrString((PyObject *)type, name);
    if (d == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return -1;
        PyErr_Clear(); /* a missing field is as much "not a __slots__ field" */
        PyErr_Format(PyExc_TypeError, "%.100s has no __slots__ field %s", type->tp_name, name);
        return -1;
    }
    int ok = PyObject_TypeCheck(d, &PyMemberDescr_Type) &&
             (((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX ||
              ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT);
    if (ok)
        *out = ((PyMemberDescrObject *)d)->d_member->offset;
    Py_DECREF(d);
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "%.100s.%s is not a __slots__ field", type->tp_name, name);
        return -1;
    }
    return 0;
}

/* The object in a slot, borrowed; NULL (no exception) if the slot is empty. */
__attribute__((unused)) static inline PyObject *
slot(PyObject *obj, Py_ssize_t offset)
{
    return *(PyObject **)((char *)obj + offset);
}

/* The persist mode called `name` (daxfs.pmem._persist.h), or -1 with the error
 * class raised: unknown, or this machine cannot use it. */
__attribute__((unused)) static int
parse_persist_mode(const char *name)
{
    const char *why;
    int mode = persist_mode_find(name, &why);
    if (mode < 0)
        raise_invalid("unknown persist mode %s", name);
    else if (why != NULL)
        raise_invalid(why, name);
    return mode < 0 || why != NULL ? -1 : mode;
}

/* ------------------------------------------------------------------- locks
 * The filesystem's locks (inode.lock, Journal.lock: threading.RLock) taken and
 * released from C through their acquire and release methods, as `with` does.
 * For the C RLock class the methods are called straight (looked up once, by
 * pyutil_init); any other lock class through a method call by name.
 */
static PyObject *str_acquire, *str_release, *str_lock;
static PyTypeObject *rlock_type;
static PyObject *rlock_acquire, *rlock_release;

/* Intern the names and find the C RLock's methods; -1 with an exception. */
__attribute__((unused)) static int
pyutil_init(void)
{
    if ((str_acquire = PyUnicode_InternFromString("acquire")) == NULL ||
        (str_release = PyUnicode_InternFromString("release")) == NULL ||
        (str_lock = PyUnicode_InternFromString("lock")) == NULL)
        return -1;
    PyObject *thread = PyImport_ImportModule("_thread");
    PyObject *type = thread != NULL ? PyObject_GetAttrString(thread, "RLock") : NULL;
    Py_XDECREF(thread);
    if (type == NULL || !PyType_Check(type)) {
        Py_XDECREF(type);
        PyErr_Clear(); /* no C RLock: every lock is called by name */
        return 0;
    }
    rlock_acquire = PyObject_GetAttr(type, str_acquire);
    rlock_release = rlock_acquire != NULL ? PyObject_GetAttr(type, str_release) : NULL;
    if (rlock_release == NULL) {
        Py_CLEAR(rlock_acquire);
        Py_DECREF(type);
        PyErr_Clear();
        return 0;
    }
    rlock_type = (PyTypeObject *)type; /* kept for the module's life */
    return 0;
}

/* lock.acquire() (release: lock.release()); -1 with an exception on failure. */
static int
lock_call(PyObject *lock, int release)
{
    PyObject *r;
    if (Py_TYPE(lock) == rlock_type) {
        r = PyObject_Vectorcall(release ? rlock_release : rlock_acquire, &lock, 1, NULL);
    } else {
        PyObject *stack[2] = {NULL, lock};
        r = PyObject_VectorcallMethod(release ? str_release : str_acquire, stack + 1,
                                      1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

__attribute__((unused)) static inline int
lock_acquire(PyObject *lock)
{
    return lock_call(lock, 0);
}

/* lock.release(), keeping an exception already set (a failing release replaces
 * it); -1 if the release failed. */
__attribute__((unused)) static int
lock_release(PyObject *lock)
{
    if (!PyErr_Occurred())
        return lock_call(lock, 1);
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (lock_call(lock, 1) < 0) {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return -1;
    }
    PyErr_Restore(type, value, tb);
    return 0;
}

#endif /* DAXFS_PYUTIL_H */
