# Extern declarations only: the POSIX calls _core makes on raw file
# descriptors. Everything here is nogil; callers keep the return code and
# errno, and raise after leaving the nogil block.

from libc.stdint cimport uint64_t


cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EINTR
        EAGAIN                    # == EWOULDBLOCK on Linux



cdef extern from "<string.h>" nogil:
    void *memcpy(void *dest, const void *src, size_t n)
    void *memmove(void *dest, const void *src, size_t n)
    char *strerror(int errnum)


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    enum:
        MSG_NOSIGNAL
        MSG_DONTWAIT
    enum:
        SOL_SOCKET
        SO_RCVTIMEO
    ssize_t sendmsg(int fd, const msghdr *msg, int flags)
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    int setsockopt(int fd, int level, int name, const void *value, socklen_t size)


cdef extern from "<sys/time.h>" nogil:
    struct timeval:
        long tv_sec
        long tv_usec


cdef extern from "<unistd.h>" nogil:
    int close(int fd)
