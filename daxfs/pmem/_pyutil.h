/*
 * Python-facing helpers shared by the C extensions (daxfs.pmem._native,
 * daxfs.fs._commit): the error class for bad arguments, and reading the
 * __slots__ fields of the filesystem's own classes without attribute lookups.
 *
 * Include after <Python.h> and <structmember.h>.  Everything is static, so
 * each extension has its own error class, set by its set_error_class().
 */
#ifndef DAXFS_PYUTIL_H
#define DAXFS_PYUTIL_H

#include <stdarg.h>

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
static PyObject *
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

#endif /* DAXFS_PYUTIL_H */
