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
 *
 * The C RLock's uncontended case without the method call: on the CPython
 * versions whose RLock object is {lock, owner, count} (3.11 and 3.12, the
 * layout of Modules/_threadmodule.c's rlockobject), rlock_fast_acquire does
 * what RLock.acquire does first -- count one more if this thread owns it, else
 * try the lock without waiting -- and rlock_fast_release what RLock.release
 * does for its owner.  Anything else (the lock held by another thread, a count
 * at its limit, a release by a thread that does not own it) calls the method,
 * which waits (the GIL released) or raises as always.  pyutil_init checks the
 * layout on a lock of its own through the methods (owner and count as the
 * methods set them, and the fast calls seen by them) and, if anything differs,
 * leaves the fast case off.  The method call (argument parsing included) was
 * most of a lock operation: about 0.1 us of each 4 KiB pwrite's two locks.
 */
static PyObject *str_acquire, *str_release, *str_lock;
static PyTypeObject *rlock_type;
static PyObject *rlock_acquire, *rlock_release;

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030D0000
#define DAXFS_RLOCK_LAYOUT 1
typedef struct {
    PyObject_HEAD
    PyThread_type_lock rlock_lock;
    unsigned long rlock_owner;
    unsigned long rlock_count;
    PyObject *in_weakreflist;
} rlock_layout;
#endif
/* 1 once pyutil_init has checked the layout on a lock of its own */
static int rlock_fast = 0;

/* 1: acquired (the uncontended case); 0: the caller must call the method */
__attribute__((unused)) static inline int
rlock_fast_acquire(PyObject *lock)
{
#ifdef DAXFS_RLOCK_LAYOUT
    rlock_layout *r = (rlock_layout *)lock;
    unsigned long me = PyThread_get_thread_ident();
    if (r->rlock_count > 0 && r->rlock_owner == me) {
        if (r->rlock_count + 1 == 0)
            return 0; /* the method raises OverflowError */
        r->rlock_count++;
        return 1;
    }
    if (PyThread_acquire_lock(r->rlock_lock, NOWAIT_LOCK)) {
        r->rlock_owner = me;
        r->rlock_count = 1;
        return 1;
    }
#endif
    return 0;
}

/* 1: released by its owner; 0: the caller must call the method (which raises) */
__attribute__((unused)) static inline int
rlock_fast_release(PyObject *lock)
{
#ifdef DAXFS_RLOCK_LAYOUT
    rlock_layout *r = (rlock_layout *)lock;
    if (r->rlock_count == 0 || r->rlock_owner != PyThread_get_thread_ident())
        return 0;
    if (--r->rlock_count == 0) {
        r->rlock_owner = 0;
        PyThread_release_lock(r->rlock_lock);
    }
    return 1;
#else
    return 0;
#endif
}

/* method(obj) (a method looked up on the class); its result as a C truth value,
 * -1 with an exception. */
__attribute__((unused)) static int
call_truth(PyObject *method, PyObject *obj)
{
    PyObject *r = PyObject_Vectorcall(method, &obj, 1, NULL);
    if (r == NULL)
        return -1;
    int t = PyObject_IsTrue(r);
    Py_DECREF(r);
    return t;
}

/* The layout check of rlock_fast (see above); 1 if the fast case may be used. */
__attribute__((unused)) static int
rlock_check_layout(void)
{
#ifdef DAXFS_RLOCK_LAYOUT
    if (rlock_type->tp_basicsize != (Py_ssize_t)sizeof(rlock_layout))
        return 0;
    PyObject *lock = PyObject_CallNoArgs((PyObject *)rlock_type);
    PyObject *is_owned = PyObject_GetAttrString((PyObject *)rlock_type, "_is_owned");
    int ok = 0;
    if (lock != NULL && is_owned != NULL) {
        rlock_layout *r = (rlock_layout *)lock;
        unsigned long me = PyThread_get_thread_ident();
        ok = r->rlock_count == 0 && call_truth(rlock_acquire, lock) == 1 &&
             r->rlock_count == 1 && r->rlock_owner == me && call_truth(rlock_acquire, lock) == 1 &&
             r->rlock_count == 2 && rlock_fast_release(lock) && r->rlock_count == 1 &&
             call_truth(is_owned, lock) == 1 && rlock_fast_release(lock) &&
             r->rlock_count == 0 && r->rlock_owner == 0 && call_truth(is_owned, lock) == 0 &&
             rlock_fast_acquire(lock) && call_truth(is_owned, lock) == 1 &&
             r->rlock_count == 1 && call_truth(rlock_release, lock) == 0 &&
             r->rlock_count == 0 && call_truth(is_owned, lock) == 0;
    }
    PyErr_Clear();
    Py_XDECREF(is_owned);
    Py_XDECREF(lock);
    return ok;
#else
    return 0;
#endif
}

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
    rlock_fast = rlock_check_layout();
    return 0;
}

/* lock.acquire() (release: lock.release()); -1 with an exception on failure. */
static int
lock_call(PyObject *lock, int release)
{
    PyObject *r;
    if (Py_TYPE(lock) == rlock_type) {
        if (rlock_fast && (release ? rlock_fast_release(lock) : rlock_fast_acquire(lock)))
            return 0;
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
