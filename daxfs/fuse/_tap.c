/*
 * daxfs.fuse._tap: the wire tap's read and writev in C (daxfs/fuse/_wire.py).
 *
 * libfuse's custom I/O (fuse_session_custom_io) calls these for every request
 * and every reply of the session.  The Python version (_wire.Tap._read and
 * _writev) is the readable reference; it costs three entries into Python per
 * request instead of one.  These do the system calls without Python and call
 * the Python hook (Tap.look) only for the replies it acts on:
 *
 *   - a successful OPEN or CREATE reply (the tap learns the handle's node);
 *   - an ESTALE reply to GETATTR, SETATTR or one of the four xattr requests
 *     (the tap may answer it from an open File).
 *
 * Invariants
 *   1. tap_read records, in a thread-local, where the request it returns lies;
 *      libfuse's worker replies to it from the same thread before reading
 *      again, so tap_writev sees the request its reply answers (it checks that
 *      the unique numbers match).
 *   2. A reply the hook does not replace (None, or any error in the hook,
 *      printed and cleared) is written as libfuse made it.
 *   3. errno on return is the one of the system call that made the result.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <linux/fuse.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

static PyObject *hook; /* Tap.look(request_address, reply) -> bytes | None; set under the GIL */
static __thread const char *current;  /* the request this thread read last */

static ssize_t
tap_read(int fd, void *buf, size_t len, void *userdata)
{
    ssize_t n = read(fd, buf, len);
    if (n >= (ssize_t)sizeof(struct fuse_in_header))
        current = buf;
    return n;
}

static int
wanted(const struct fuse_in_header *in, const struct fuse_out_header *out)
{
    if (in->unique != out->unique)
        return 0;
    if (out->error == 0)
        return in->opcode == FUSE_OPEN || in->opcode == FUSE_CREATE;
    if (out->error == -ESTALE)
        switch (in->opcode) {
        case FUSE_GETATTR:
        case FUSE_SETATTR:
        case FUSE_GETXATTR:
        case FUSE_LISTXATTR:
        case FUSE_SETXATTR:
        case FUSE_REMOVEXATTR:
            return 1;
        }
    return 0;
}

/* The hook's answer for this reply: a new reference to bytes, or NULL (send libfuse's). */
static PyObject *
ask(PyObject *look, const char *request, const struct iovec *iov, int count)
{
    Py_ssize_t size = 0;
    for (int i = 0; i < count; i++)
        size += (Py_ssize_t)iov[i].iov_len;
    PyObject *reply = PyBytes_FromStringAndSize(NULL, size);
    if (reply == NULL)
        goto failed;
    char *p = PyBytes_AS_STRING(reply);
    for (int i = 0; i < count; i++) {
        memcpy(p, iov[i].iov_base, iov[i].iov_len);
        p += iov[i].iov_len;
    }
    PyObject *answer = PyObject_CallFunction(look, "nO", (Py_ssize_t)(uintptr_t)request, reply);
    Py_DECREF(reply);
    if (answer == NULL)
        goto failed;
    if (PyBytes_Check(answer))
        return answer;
    Py_DECREF(answer);
    return NULL;
failed:
    PyErr_WriteUnraisable(look);
    return NULL;
}

static ssize_t
tap_writev(int fd, struct iovec *iov, int count, void *userdata)
{
    const char *request = current;
    if (request != NULL && hook != NULL && count >= 1 &&
        iov[0].iov_len >= sizeof(struct fuse_out_header) &&
        wanted((const struct fuse_in_header *)request,
               (const struct fuse_out_header *)iov[0].iov_base)) {
        PyGILState_STATE gil = PyGILState_Ensure();
        PyObject *look = hook; /* read again under the GIL: set_hook may have changed it */
        PyObject *answer = NULL;
        if (look != NULL) {
            Py_INCREF(look);
            answer = ask(look, request, iov, count);
            Py_DECREF(look);
        }
        if (answer != NULL) {
            ssize_t n = write(fd, PyBytes_AS_STRING(answer), (size_t)PyBytes_GET_SIZE(answer));
            int saved = errno;
            Py_DECREF(answer);
            PyGILState_Release(gil);
            errno = saved;
            return n;
        }
        PyGILState_Release(gil);
    }
    return writev(fd, iov, count);
}

static PyObject *
set_hook(PyObject *self, PyObject *callable)
{
    if (callable != Py_None && !PyCallable_Check(callable)) {
        PyErr_SetString(PyExc_TypeError, "the hook must be callable or None");
        return NULL;
    }
    PyObject *old = hook;
    if (callable == Py_None) {
        hook = NULL;
    } else {
        Py_INCREF(callable);
        hook = callable;
    }
    Py_XDECREF(old);
    Py_RETURN_NONE;
}

static PyObject *
functions(PyObject *self, PyObject *unused)
{
    return Py_BuildValue("(nn)", (Py_ssize_t)(uintptr_t)&tap_writev,
                         (Py_ssize_t)(uintptr_t)&tap_read);
}

static PyMethodDef methods[] = {
    {"set_hook", set_hook, METH_O,
     "set_hook(look): the callable asked about the replies the tap acts on (None: none)"},
    {"functions", functions, METH_NOARGS,
     "functions() -> (writev, read): addresses for struct fuse_custom_io"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "daxfs.fuse._tap",
    "The FUSE wire tap's read and writev in C (daxfs.fuse._wire).", -1, methods,
};

PyMODINIT_FUNC
PyInit__tap(void)
{
    return PyModule_Create(&module);
}
