# Extern declarations only: the POSIX calls _core makes on raw file
# descriptors. Everything here is nogil; callers keep the return code and
# errno, and raise after leaving the nogil block.

from libc.stdint cimport uint64_t
from posix.types cimport off_t


cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EINTR
        EAGAIN                    # == EWOULDBLOCK on Linux
        EACCES
        EPERM
        EINVAL
        ENODEV



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
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    enum:
        MSG_NOSIGNAL
        MSG_DONTWAIT
        MSG_CTRUNC
        MSG_CMSG_CLOEXEC          # received fds are close-on-exec at once
    enum:
        SOL_SOCKET
        SO_RCVTIMEO
        SCM_RIGHTS
    cmsghdr *CMSG_FIRSTHDR(msghdr *msg)
    cmsghdr *CMSG_NXTHDR(msghdr *msg, cmsghdr *cmsg)
    unsigned char *CMSG_DATA(cmsghdr *cmsg)
    size_t CMSG_SPACE(size_t length)
    size_t CMSG_LEN(size_t length)
    ssize_t sendmsg(int fd, const msghdr *msg, int flags)
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t recvmsg(int fd, msghdr *msg, int flags)
    int setsockopt(int fd, int level, int name, const void *value, socklen_t size)


cdef extern from "<sys/time.h>" nogil:
    struct timeval:
        long tv_sec
        long tv_usec


cdef extern from "<unistd.h>" nogil:
    int close(int fd)
    int ftruncate(int fd, off_t length)
    ssize_t pwrite(int fd, const void *buf, size_t n, off_t offset)
    long sysconf(int name)
    enum:
        _SC_PAGESIZE


# memfd_create and the F_*SEAL* commands need _GNU_SOURCE, which Python.h
# (pyconfig.h) defines before any system header.
cdef extern from "<fcntl.h>" nogil:
    int fcntl(int fd, int cmd, ...)
    enum:
        F_ADD_SEALS
        F_GET_SEALS
        F_DUPFD_CLOEXEC
        F_SEAL_SEAL               # no further seals may be added
        F_SEAL_SHRINK             # the file may not shrink: a mapping never SIGBUSes
        F_SEAL_GROW               # the file may not grow


cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec


cdef extern from "<sys/stat.h>" nogil:
    struct struct_stat "stat":
        off_t st_size
        unsigned int st_mode
        unsigned long st_ino
        unsigned long st_dev
        timespec st_ctim
    int fstat(int fd, struct_stat *buf)
    bint S_ISREG(unsigned int mode)


cdef extern from "<sys/mman.h>" nogil:
    int memfd_create(const char *name, unsigned int flags)
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
    int munmap(void *addr, size_t length)
    void *MAP_FAILED
    enum:
        MFD_CLOEXEC
        MFD_ALLOW_SEALING
        PROT_READ
        PROT_WRITE
        MAP_SHARED
        MAP_PRIVATE
        MAP_ANONYMOUS
        MAP_POPULATE
