# Filling a Py_buffer for an object that exports raw bytes it owns (a
# SharedBuffer, a RecvBuffer): writable, 1-d, itemsize 1. Inline and
# pxd-only: cimported, it compiles into each module that uses it.

from cpython.buffer cimport PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES

cdef extern from *:
    """
    static char swarm_format_b[] = "B";
    """
    char *swarm_format_b


# view.obj is set by Cython from the __getbuffer__ it is called in; the
# caller counts its exports. size and itemsize must outlive the view (the
# exporter's fields): shape and strides point at them.
cdef inline void export_bytes(Py_buffer *view, int flags, char *addr,
                              Py_ssize_t *size, Py_ssize_t *itemsize) noexcept:
    view.buf = addr
    view.len = size[0]
    view.readonly = 0
    view.itemsize = 1
    view.format = swarm_format_b if flags & PyBUF_FORMAT else NULL
    view.ndim = 1
    view.shape = size if flags & PyBUF_ND else NULL
    view.strides = itemsize if (flags & PyBUF_STRIDES) == PyBUF_STRIDES else NULL
    view.suboffsets = NULL
    view.internal = NULL
